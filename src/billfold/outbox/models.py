from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base


class OutboxMessage(Base):
    """One event, written in the transaction of its cause and never changed afterwards, except
    ``dispatched_at``: when the deliverer made its deliveries (one per matching webhook endpoint,
    ``notifications/``). Its id is the ``webhook-id`` of every delivery of it."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        # What the deliverer scans each round: the few messages not fanned out yet.
        Index(
            "ix_outbox_messages_undispatched",
            "created_at",
            postgresql_where=text("dispatched_at IS NULL"),
            sqlite_where=text("dispatched_at IS NULL"),
        ),
        # What retention deletes, the oldest first (notifications/retention.py).
        Index("ix_outbox_messages_dispatched", "dispatched_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_...
    type: Mapped[str] = mapped_column(String(64))
    team_id: Mapped[uuid.UUID | None]
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    dispatched_at: Mapped[datetime | None]
