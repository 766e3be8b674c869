from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base, BigInt


class WebhookEndpoint(Base):
    """Where messages go. ``secret`` signs; after a rotation ``previous_secret`` signs too until
    ``previous_secret_expires_at`` (receivers switch without losing a message)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # we_...
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]]
    description: Mapped[str] = mapped_column(String(500), server_default="")
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One message to one endpoint: its state and its schedule. ``attempts`` counts real HTTP
    attempts (rows of ``webhook_attempts``), never scheduler rounds. ``next_attempt_at`` is also
    the lease: a claimed delivery is pushed past the lease, so a process killed mid-send leaves it
    due again once the lease ends."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    message_id: Mapped[str] = mapped_column(
        ForeignKey("outbox_messages.id", ondelete="CASCADE"), primary_key=True
    )
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16))  # pending | succeeded | failed
    attempts: Mapped[int]
    max_attempts: Mapped[int]
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: what came back (the body cut to 2 KB, NUL stripped)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "endpoint_id", "message_id"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    status_code: Mapped[int | None]
    response_body: Mapped[str] = mapped_column(Text, server_default="")
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int]
    created_at: Mapped[datetime]


class EmailDelivery(Base):
    """One message to one e-mail address: the twin of ``WebhookDelivery`` (same states, same
    schedule, ``next_attempt_at`` also the lease). Made by the same fan-out, claimed and recorded
    by the same deliverer; ``attempts`` counts real SMTP attempts."""

    __tablename__ = "email_deliveries"
    __table_args__ = (Index("ix_email_deliveries_due", "state", "next_attempt_at"),)

    message_id: Mapped[str] = mapped_column(
        ForeignKey("outbox_messages.id", ondelete="CASCADE"), primary_key=True
    )
    recipient: Mapped[str] = mapped_column(String(254), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | succeeded | failed
    attempts: Mapped[int]
    max_attempts: Mapped[int]
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
