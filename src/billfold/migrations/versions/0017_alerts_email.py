"""alerts and e-mail: alert settings per team, e-mail deliveries

Revision ID: 0017
Revises: 0016

* ``team_alert_settings``: one row per team that set its alerts (no row: the defaults):
  spend thresholds (percent, JSON list), the low-credit threshold (cents, null: none), the
  e-mail addresses (JSON list, empty: the billing-info e-mail).
* ``email_deliveries``: one per (message, recipient address), the twin of ``webhook_deliveries``
  (state, real attempts, the next attempt which is also the lease, the last error).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import JSONType, UTCDateTime

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
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
    op.create_table(
        "email_deliveries",
        sa.Column(
            "message_id",
            sa.String(40),
            sa.ForeignKey("outbox_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("recipient", sa.String(254), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("max_attempts", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_email_deliveries_due", "email_deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_email_deliveries_due", table_name="email_deliveries")
    op.drop_table("email_deliveries")
    op.drop_table("team_alert_settings")
