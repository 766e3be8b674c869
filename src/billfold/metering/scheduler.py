"""Automatic compaction of raw usage events (``BILLFOLD_AUTO_COMPACT_EVENTS=true``).

Every serving process then runs :func:`compact_now` once an hour: the same deletions as
``billfold usage compact`` (metering/retention.py), one transaction per batch. On PostgreSQL one
process at a time does it (a transaction-level advisory lock, tried, not waited for: the others
skip that round). The lock's transaction stays open on a connection of its own for the round --
it holds no snapshot and no transaction id, so it holds back no vacuum -- because a session-level
lock does not hold behind a pooler in transaction mode (PgBouncer's): the next statement may run
on another server connection. Two running at once would be safe anyway, only wasteful -- a batch
skips the rows another deleted. When the server stops, a round ends after its batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.kit.background import periodic
from billfold.kit.clock import utc_now
from billfold.metering import retention

log = logging.getLogger("billfold.scheduler")

COMPACT_INTERVAL_SECONDS = 3600.0
# An advisory lock of its own (the period locks use 0x42F0).
_LOCK = {"space": 0x42F1, "key": 1}


def compact_now(
    sessions: sessionmaker[Session], settings: Settings, stop: threading.Event | None = None
) -> retention.Compaction | None:
    """Compact, unless another process is at it (PostgreSQL): then None. ``stop`` set ends
    the round after the batch in progress."""
    engine: Engine = sessions.kw["bind"]
    if engine.dialect.name != "postgresql":
        return _compact(sessions, settings, stop)
    # A connection of its own holds the lock in a transaction that only holds it (the batches
    # commit in transactions of their own); the rollback at the end releases it.
    with engine.connect() as holder:
        try:
            locked = holder.execute(
                text("SELECT pg_try_advisory_xact_lock(:space, :key)"), _LOCK
            ).scalar()
            if not locked:
                return None
            return _compact(sessions, settings, stop)
        finally:
            holder.rollback()


def _compact(
    sessions: sessionmaker[Session], settings: Settings, stop: threading.Event | None
) -> retention.Compaction:
    done = retention.compact_all(sessions, settings, utc_now(), stop=stop)
    if done.deleted:
        log.info("compacted %d raw usage events older than %s", done.deleted, done.cutoff)
    return done


@asynccontextmanager
async def compaction_tasks(app: FastAPI) -> AsyncIterator[None]:
    """Started with the app and stopped with it (see app.create_app's lifespan)."""
    settings: Settings = app.state.settings

    def compact(stop: threading.Event) -> None:
        compact_now(app.state.sessionmaker, settings, stop)

    enabled = settings.auto_compact_events
    async with periodic(
        app, "auto_compact", COMPACT_INTERVAL_SECONDS, compact, log, enabled=enabled
    ):
        yield
