"""auto top-up: the settings per team, and auto top-ups as top-ups of their own origin

Revision ID: 0020
Revises: 0019

* ``auto_topup_settings``: per team, whether auto top-up is on, the threshold, a fixed amount or
  a target level, the monthly cap, the failures in a row and why it was turned off.
* ``topups.origin``: ``PURCHASE`` (a top-up asked for through the API) or ``AUTO_PURCHASE``;
  ``topups.lease_until``: when the background charger's claim of a pending auto top-up ends.
* ``uq_topups_one_pending_auto``: a partial unique index, at most one pending (``TO_CHARGE``)
  auto top-up per team.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import UTCDateTime

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_AUTO = sa.text("status = 'TO_CHARGE' AND origin = 'AUTO_PURCHASE'")


def upgrade() -> None:
    op.create_table(
        "auto_topup_settings",
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold_cents", sa.BigInteger(), nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=True),
        sa.Column("target_cents", sa.BigInteger(), nullable=True),
        sa.Column("monthly_limit_cents", sa.BigInteger(), nullable=True),
        sa.Column("consecutive_failures", sa.BigInteger(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=64), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("team_id"),
    )
    op.add_column(
        "topups",
        sa.Column("origin", sa.String(length=16), server_default="PURCHASE", nullable=False),
    )
    op.add_column("topups", sa.Column("lease_until", UTCDateTime(timezone=True), nullable=True))
    op.create_index(
        "uq_topups_one_pending_auto",
        "topups",
        ["team_id"],
        unique=True,
        postgresql_where=PENDING_AUTO,
        sqlite_where=PENDING_AUTO,
    )


def downgrade() -> None:
    op.drop_index("uq_topups_one_pending_auto", table_name="topups")
    op.execute("ALTER TABLE topups DROP COLUMN lease_until")
    op.execute("ALTER TABLE topups DROP COLUMN origin")
    op.drop_table("auto_topup_settings")
