"""ledger: per-team booking order of entries (seq); cached next grant expiry on credit accounts

Revision ID: 0002
Revises: 0001

``ledger_entries`` is append-only (0001's triggers refuse UPDATE), so numbering rows that already
exist means lifting the trigger for exactly that statement. SQLite adds the column in place (ALTER
TABLE ADD COLUMN with a default): a batch "copy and move" would drop the table's triggers.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billfold.kit.db

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Existing entries are numbered in booking order as well as it is known: time, then id.
_NUMBER_EXISTING = """
UPDATE ledger_entries SET seq = (
    SELECT COUNT(*) FROM ledger_entries AS earlier
    WHERE earlier.team_id = ledger_entries.team_id
      AND (earlier.created_at < ledger_entries.created_at
           OR (earlier.created_at = ledger_entries.created_at AND earlier.id <= ledger_entries.id))
)
"""

# Before this revision nothing wrote expiry entries, so every grant with an expiry is still due.
_NEXT_EXPIRY = """
UPDATE credit_accounts SET next_expiry_at = (
    SELECT MIN(e.expires_at) FROM ledger_entries AS e
    WHERE e.team_id = credit_accounts.team_id AND e.kind = 'grant' AND e.expires_at IS NOT NULL
)
"""


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column(
        "ledger_entries",
        sa.Column("seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only")
        op.execute(_NUMBER_EXISTING)
        op.execute("ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_append_only")
        op.alter_column("ledger_entries", "seq", server_default=None)
    else:
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_no_update")
        op.execute(_NUMBER_EXISTING)
        op.execute(
            "CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries "
            "BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END"
        )
    op.create_index("ux_ledger_entries_team_seq", "ledger_entries", ["team_id", "seq"], unique=True)

    op.add_column(
        "credit_accounts",
        sa.Column("next_expiry_at", billfold.kit.db.UTCDateTime(timezone=True), nullable=True),
    )
    op.execute(_NEXT_EXPIRY)
    op.create_index(
        "ix_credit_accounts_next_expiry", "credit_accounts", ["next_expiry_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_credit_accounts_next_expiry", table_name="credit_accounts")
    op.drop_index("ux_ledger_entries_team_seq", table_name="ledger_entries")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_column("credit_accounts", "next_expiry_at")
        op.drop_column("ledger_entries", "seq")
    else:
        # SQLite >= 3.35 drops a column in place (no table copy, so the triggers stay).
        op.execute("ALTER TABLE credit_accounts DROP COLUMN next_expiry_at")
        op.execute("ALTER TABLE ledger_entries DROP COLUMN seq")
