"""documents: invoice_documents, the PDF and CSV of finalized invoices, append-only

Revision ID: 0016
Revises: 0015

One row per (invoice, kind): the bytes rendered at finalization (or by
``billfold invoices backfill-documents`` for invoices finalized before this revision), their
SHA-256, the buyer's billing-info snapshot and when the row was written. Rows are never updated or
deleted (a trigger refuses both), so every download is the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import JSONType, UTCDateTime

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "invoice_documents"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("invoice_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("buyer", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("invoice_id", "kind"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # billfold_append_only() comes from 0001 (the ledger's trigger function).
        op.execute(
            f"CREATE TRIGGER {_TABLE}_append_only BEFORE UPDATE OR DELETE ON {_TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION billfold_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {_TABLE}_no_{action.lower()} BEFORE {action} ON {_TABLE} "
                f"BEGIN SELECT RAISE(ABORT, '{_TABLE} is append-only'); END"
            )


def downgrade() -> None:
    op.drop_table(_TABLE)  # its triggers go with it
