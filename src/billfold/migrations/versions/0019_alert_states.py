"""crossing events: where each team stands on its alert lines

Revision ID: 0019
Revises: 0018

* ``team_alert_states``: one row per team that ever had a crossing event (spend/crossings.py):
  whether ``spend.blocked``, ``credit.low`` and ``credit.depleted`` fired and are not re-armed
  yet, and the spend thresholds (percent, JSON list) that fired in the cycle it names. The row
  is what the transaction that fires locks, so each crossing fires once under any concurrency.
  One row per team, whatever the usage: it does not grow with time.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import JSONType, UTCDateTime

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "team_alert_states",
        sa.Column(
            "team_id",
            sa.Uuid(),
            sa.ForeignKey("teams.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("credit_low", sa.Boolean(), nullable=False),
        sa.Column("depleted", sa.Boolean(), nullable=False),
        sa.Column("cycle_year", sa.BigInteger(), nullable=False),
        sa.Column("cycle_month", sa.BigInteger(), nullable=False),
        sa.Column("thresholds_fired", JSONType, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("team_alert_states")
