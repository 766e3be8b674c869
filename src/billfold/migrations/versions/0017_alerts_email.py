"""alerts and e-mail: alert settings per team, e-mail deliveries

Revision ID: 0017
Revises: 0015 (in this branch; 0016 is written concurrently: the chain is fixed at merge)

* ``team_alert_settings``: one row per team that set its alerts (no row: the defaults):
  spend thresholds (percent, JSON list), the low-credit threshold (cents, null: none), the
  e-mail addresses (JSON list, empty: the billing-info e-mail).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import JSONType, UTCDateTime

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "team_alert_settings",
        sa.Column(
            "team_id",
            sa.Uuid(),
            sa.ForeignKey("teams.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("spend_thresholds_percent", JSONType, nullable=False),
        sa.Column("low_credit_cents", sa.BigInteger(), nullable=True),
        sa.Column("emails", JSONType, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("team_alert_settings")
