"""refunds: a refund is committed PENDING before the provider is asked (two-phase, as top-ups)

Revision ID: 0018
Revises: 0017

* ``refunds``: Billfold's refund id (the provider's idempotency key, named in the refund's
  metadata), the team, the purchase (its receipt invoice), amount, reason, the caller's
  idempotency key (unique per team) and the request's fingerprint, the provider's charge and
  refund ids, PENDING | SUCCEEDED | FAILED, the failure, the REFUND ledger entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import UTCDateTime

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "refunds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_charge_id", sa.String(length=200), nullable=False),
        sa.Column("provider_refund_id", sa.String(length=200), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=False),
        sa.Column("failure_message", sa.String(length=500), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("settled_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("team_id", "idempotency_key"),
    )
    op.create_index("ix_refunds_team_invoice", "refunds", ["team_id", "invoice_id"])
    op.create_index("ix_refunds_status_created", "refunds", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_refunds_status_created", table_name="refunds")
    op.drop_index("ix_refunds_team_invoice", table_name="refunds")
    op.drop_table("refunds")
