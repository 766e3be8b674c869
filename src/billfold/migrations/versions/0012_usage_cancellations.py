"""metering: usage events can be canceled (``usage_events.canceled_at``, ``usage_cancellations``)

Revision ID: 0012
Revises: 0011

A canceled event stays in ``usage_events`` with ``canceled_at`` set, so its id stays used
(exactly once: sending it again is a duplicate) and every reader of raw events leaves it out;
``usage_cancellations`` is the append-only record of each cancellation (who asked, why, and what
it took back). See metering/cancellation.py.

The new column is nullable without a default: PostgreSQL adds it without rewriting the table
(instant, whatever its size), and it costs a row nothing while it is NULL (the row's null bitmap
fits in the padding of its header). SQLite adds it in place too. Downgrade deletes the canceled
events, so that every event left counts as before 0012, and the record of the cancellations.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billfold.kit.db

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch_op:
        batch_op.add_column(
            sa.Column("canceled_at", billfold.kit.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "usage_cancellations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column(
            "event_id",
            sa.String(length=200).with_variant(sa.String(length=200, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("ts", billfold.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "price_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("canceled_at", billfold.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"]),
        sa.ForeignKeyConstraint(["price_version_id"], ["price_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_usage_cancellations_team_event", "usage_cancellations", ["team_id", "event_id"]
    )


def downgrade() -> None:
    # Before 0012 every stored event counts: a canceled one, whose usage the aggregates no longer
    # hold, goes (its id is then free again: sending the event anew would count it).
    op.execute("DELETE FROM usage_events WHERE canceled_at IS NOT NULL")
    op.drop_table("usage_cancellations")
    with op.batch_alter_table("usage_events") as batch_op:
        batch_op.drop_column("canceled_at")
