"""Retention of raw usage events: ``billfold usage compact``.

Raw ``usage_events`` exist for two reasons: exactly-once ingestion (the primary key
``(event_id, team_id)``) and MINUTE/SECOND analytics. Everything billed or charted at 15 minutes
and coarser lives in the rollup tables (quarter-hour, hourly and daily, metering/models.py) and
``cycle_lines``, which compaction never touches. So events older than
``BILLFOLD_USAGE_RETENTION_DAYS`` (default 400) may be deleted.

Why deleting them cannot double-count: ingestion rejects events older than the same window
(``timestamp_too_old``), so an event id that compaction removed can never be accepted again as new.
Compaction deletes only events older than the window *plus* :data:`GRACE`: an ingestion batch
compares timestamps with the ``now`` it read when it started, and another host's clock may lag, so
a batch in flight may still accept an event slightly older than this host's window; the grace
keeps that event's twin (if any) in place until no such batch can exist.

Deletes go per team through the index ``(team_id, ts)`` in batches of at most ``batch_size`` rows,
so each statement is short and bounded; the CLI commits after every batch, so a long compaction
never holds locks (or SQLite's write lock) for long and can be stopped and resumed at any time.

``usage_property_sets`` are kept: one row per distinct combination of properties, shared by the
events of every team and time, so a set whose last event was deleted is only found out by a
scan, and keeping it costs one small row per combination ever seen.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.kit.db import transaction
from billfold.metering.models import UsageEvent
from billfold.teams.models import Team

GRACE = timedelta(days=1)
DEFAULT_BATCH = 10_000
_TEAM_PAGE = 1_000


@dataclass
class Compaction:
    cutoff: datetime
    deleted: int = 0


def cutoff(settings: Settings, now: datetime) -> datetime:
    """Events strictly older than this may be deleted."""
    return now - timedelta(days=settings.usage_retention_days) - GRACE


def team_ids(session: Session) -> Iterator[uuid.UUID]:
    """Every team id, in pages (usage_events has no team index of its own to scan)."""
    after: uuid.UUID | None = None
    while True:
        stmt = select(Team.id).order_by(Team.id).limit(_TEAM_PAGE)
        if after is not None:
            stmt = stmt.where(Team.id > after)
        page = list(session.scalars(stmt))
        yield from page
        if len(page) < _TEAM_PAGE:
            return
        after = page[-1]


def compact_batch(
    session: Session, team_id: uuid.UUID, older_than: datetime, batch_size: int = DEFAULT_BATCH
) -> int:
    """Delete at most ``batch_size`` of one team's events older than ``older_than``; the count."""
    doomed = (
        select(UsageEvent.event_id)
        .where(UsageEvent.team_id == team_id, UsageEvent.ts < older_than)
        .limit(batch_size)
        .scalar_subquery()
    )
    result = session.execute(
        delete(UsageEvent).where(UsageEvent.team_id == team_id, UsageEvent.event_id.in_(doomed))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def compact_team(
    sessions: sessionmaker[Session],
    team_id: uuid.UUID,
    older_than: datetime,
    batch_size: int = DEFAULT_BATCH,
    stop: threading.Event | None = None,
) -> int:
    """Delete one team's events older than ``older_than``, one transaction per batch (never
    holding locks, or SQLite's write lock, for long); the count. ``stop`` set: no more batches."""
    deleted = 0
    while stop is None or not stop.is_set():
        with transaction(sessions) as session:
            count = compact_batch(session, team_id, older_than, batch_size)
        deleted += count
        if count < batch_size:
            break
    return deleted


def compact_all(
    sessions: sessionmaker[Session],
    settings: Settings,
    now: datetime,
    *,
    batch_size: int = DEFAULT_BATCH,
    stop: threading.Event | None = None,
) -> Compaction:
    """Every team's events past the window, a transaction per batch (the automatic compaction;
    ``billfold usage compact`` does the same team by team, with a progress bar). ``stop`` set:
    no more batches."""
    done = Compaction(cutoff(settings, now))
    with transaction(sessions) as session:
        teams = list(team_ids(session))
    for team_id in teams:
        if stop is not None and stop.is_set():
            break
        done.deleted += compact_team(sessions, team_id, done.cutoff, batch_size, stop)
    return done
