"""payments: Stripe -- a Customer id per team, the PaymentIntent of an invoice, Stripe's events

Revision ID: 0014
Revises: 0013

* ``teams.stripe_customer_id``: the team's Stripe Customer, created on first need (the sandbox's
  customer stays in ``payment_customer_ref``: switching providers never mixes the two).
* ``invoices.provider_charge_id``: the PaymentIntent of a cycle-close charge, committed between
  creating and confirming it (top-ups keep theirs in ``topups.provider_charge_id``). Not one of
  the columns the invoice triggers freeze: like the status, it moves after finalization.
* ``stripe_events``: each Stripe webhook event id once (replays are no-ops); the payload is kept
  (disputes are recorded, not acted on).
* indexes on ``payment_methods.provider_ref`` (``payment_method.detached`` finds the method) and
  on the provider charge ids of top-ups and invoices (a PaymentIntent's event finds its record).

The columns are added and dropped with plain ``ALTER TABLE`` (SQLite 3.35+ drops columns in
place): a batch copy of ``invoices`` would lose its triggers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import billfold.kit.db

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("teams", sa.Column("stripe_customer_id", sa.String(length=200), nullable=True))
    op.add_column("invoices", sa.Column("provider_charge_id", sa.String(length=200), nullable=True))
    op.create_index("ix_payment_methods_provider_ref", "payment_methods", ["provider_ref"])
    op.create_index("ix_topups_provider_charge_id", "topups", ["provider_charge_id"])
    op.create_index("ix_invoices_provider_charge_id", "invoices", ["provider_charge_id"])
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=False),
        sa.Column("outcome", sa.String(length=500), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", billfold.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_stripe_events_type", "stripe_events", ["type", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_stripe_events_type", table_name="stripe_events")
    op.drop_table("stripe_events")
    op.drop_index("ix_invoices_provider_charge_id", table_name="invoices")
    op.drop_index("ix_topups_provider_charge_id", table_name="topups")
    op.drop_index("ix_payment_methods_provider_ref", table_name="payment_methods")
    op.execute("ALTER TABLE invoices DROP COLUMN provider_charge_id")
    op.execute("ALTER TABLE teams DROP COLUMN stripe_customer_id")
