"""invoicing: month index on billing_cycles; finalized invoices are immutable in the database

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What identifies an invoice and what it bills: fixed once the invoice exists. Only ``status`` and
# ``charge_attempts`` (the payment side) may change.
_FROZEN_INVOICE_COLUMNS = (
    "team_id",
    "number",
    "kind",
    "dedupe_key",
    "cycle_year",
    "cycle_month",
    "topup_id",
    "subtotal_cents",
    "tax_cents",
    "total_cents",
    "usage_cents",
    "credits_applied_cents",
    "vat_rate",
    "created_at",
)


def upgrade() -> None:
    with op.batch_alter_table("billing_cycles", schema=None) as batch_op:
        batch_op.create_index("ix_billing_cycles_month", ["year", "month"], unique=False)

    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # billfold_append_only() comes from 0001 (the ledger's trigger function).
        op.execute(
            "CREATE TRIGGER invoice_lines_append_only BEFORE UPDATE OR DELETE ON invoice_lines "
            "FOR EACH ROW EXECUTE FUNCTION billfold_append_only()"
        )
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in _FROZEN_INVOICE_COLUMNS)
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION billfold_invoice_immutable() RETURNS trigger AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    RAISE EXCEPTION 'invoices are never deleted';
                END IF;
                IF {changed} THEN
                    RAISE EXCEPTION 'a finalized invoice''s lines and amounts never change';
                END IF;
                RETURN NEW;
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices "
            "FOR EACH ROW EXECUTE FUNCTION billfold_invoice_immutable()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER invoice_lines_no_{action.lower()} BEFORE {action} ON invoice_lines "
                "BEGIN SELECT RAISE(ABORT, 'invoice_lines is append-only'); END"
            )
        # SQLite's UPDATE OF fires when a statement sets the column at all; the ORM only sets
        # columns whose value changed, so it fires exactly on a change.
        op.execute(
            f"CREATE TRIGGER invoices_immutable BEFORE UPDATE OF "
            f"{', '.join(_FROZEN_INVOICE_COLUMNS)} ON invoices "
            "BEGIN SELECT RAISE(ABORT, 'a finalized invoice''s lines and amounts never change'); END"
        )
        op.execute(
            "CREATE TRIGGER invoices_no_delete BEFORE DELETE ON invoices "
            "BEGIN SELECT RAISE(ABORT, 'invoices are never deleted'); END"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS invoices_immutable ON invoices")
        op.execute("DROP FUNCTION IF EXISTS billfold_invoice_immutable()")
        op.execute("DROP TRIGGER IF EXISTS invoice_lines_append_only ON invoice_lines")
    else:
        for name in (
            "invoices_no_delete",
            "invoices_immutable",
            "invoice_lines_no_update",
            "invoice_lines_no_delete",
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("billing_cycles", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_cycles_month")
