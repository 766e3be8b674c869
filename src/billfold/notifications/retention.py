"""Outbox retention: delivered messages are deleted ``BILLFOLD_OUTBOX_RETENTION_DAYS`` after
their fan-out, by every serving process's periodic loop (``kit/background.py``), once an hour.

"Delivered": fanned out (``dispatched_at`` set) at least that many days ago -- on the wall clock,
like every delivery schedule -- with no delivery still ``pending`` (each webhook and e-mail
delivery ``succeeded`` or ``failed``). A message goes with its deliveries and their attempt log.
Deleted in batches of :data:`BATCH`, one short transaction each, the oldest first (the index on
``dispatched_at``); two processes at once only do the same work twice (a batch deletes what is
still there). ``0`` keeps everything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.kit.background import periodic
from billfold.kit.db import transaction
from billfold.notifications.models import EmailDelivery, WebhookAttempt, WebhookDelivery
from billfold.notifications.service import PENDING, wall_clock
from billfold.outbox.models import OutboxMessage

log = logging.getLogger("billfold.webhooks")

BATCH = 1000
INTERVAL_SECONDS = 3600.0


def purge_delivered(
    sessions: sessionmaker[Session], settings: Settings, stop: threading.Event | None = None
) -> int:
    """Delete the delivered messages past the retention; how many."""
    days = settings.outbox_retention_days
    if days <= 0:
        return 0
    cutoff = wall_clock() - timedelta(days=days)
    deleted = 0
    while stop is None or not stop.is_set():
        with transaction(sessions) as session:
            ids = list(
                session.scalars(
                    select(OutboxMessage.id)
                    .where(
                        OutboxMessage.dispatched_at < cutoff,
                        ~exists().where(
                            WebhookDelivery.message_id == OutboxMessage.id,
                            WebhookDelivery.state == PENDING,
                        ),
                        ~exists().where(
                            EmailDelivery.message_id == OutboxMessage.id,
                            EmailDelivery.state == PENDING,
                        ),
                    )
                    .order_by(OutboxMessage.dispatched_at)
                    .limit(BATCH)
                )
            )
            if not ids:
                break
            session.execute(delete(WebhookAttempt).where(WebhookAttempt.message_id.in_(ids)))
            session.execute(delete(WebhookDelivery).where(WebhookDelivery.message_id.in_(ids)))
            session.execute(delete(EmailDelivery).where(EmailDelivery.message_id.in_(ids)))
            session.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < BATCH:
            break
    if deleted:
        log.info("deleted %d delivered outbox messages older than %d days", deleted, days)
    return deleted


@asynccontextmanager
async def retention_tasks(app: FastAPI) -> AsyncIterator[None]:
    """Started with the app and stopped with it (see app.create_app's lifespan)."""
    settings: Settings = app.state.settings

    def purge(stop: threading.Event) -> None:
        purge_delivered(app.state.sessionmaker, settings, stop)

    enabled = settings.outbox_retention_days > 0
    async with periodic(app, "outbox_retention", INTERVAL_SECONDS, purge, log, enabled=enabled):
        yield
