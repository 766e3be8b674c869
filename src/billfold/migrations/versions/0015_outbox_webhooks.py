"""notifications: the transactional outbox, webhook endpoints, their deliveries and attempts

Revision ID: 0015
Revises: 0014

* ``outbox_messages``: every event, written in the transaction of its cause (``outbox.enqueue``);
  ``dispatched_at`` is set when the deliverer has made its deliveries (a partial index finds the
  few not yet dispatched).
* ``webhook_endpoints``: url, event types, the signing secret and, after a rotation, the previous
  one with the end of its grace period.
* ``webhook_deliveries``: one per (message, endpoint): state, real attempts, the next attempt
  (also the lease of a claimed delivery), the last status and error.
* ``webhook_attempts``: one row per HTTP attempt (status, body cut to 2 KB, error, duration).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import BigInt, JSONType, UTCDateTime

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_messages",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        sa.Column("data", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("dispatched_at", UTCDateTime(), nullable=True),
    )
    op.create_index(
        "ix_outbox_messages_undispatched",
        "outbox_messages",
        ["created_at"],
        postgresql_where=sa.text("dispatched_at IS NULL"),
        sqlite_where=sa.text("dispatched_at IS NULL"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event_types", JSONType, nullable=False),
        sa.Column("description", sa.String(500), nullable=False, server_default=""),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("previous_secret", sa.String(100), nullable=True),
        sa.Column("previous_secret_expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "message_id",
            sa.String(40),
            sa.ForeignKey("outbox_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "endpoint_id",
            sa.String(40),
            sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("max_attempts", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_status_code", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column(
            "endpoint_id",
            sa.String(40),
            sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.BigInteger(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=False, server_default=""),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_webhook_attempts_delivery", "webhook_attempts", ["endpoint_id", "message_id"]
    )


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_outbox_messages_undispatched", table_name="outbox_messages")
    op.drop_table("outbox_messages")
