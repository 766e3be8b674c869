"""Month partitions of the usage tables on PostgreSQL (migration 0023; the design: docs/scale.md).

* ``usage_events`` is range-partitioned by ``ts``, with no unique key (index ``(team_id, ts)``);
* ``usage_event_keys`` -- the de-duplication key ``(id_digest, month)`` (:func:`id_digest` of
  the team and event id) and the event's ``ts`` -- by ``month`` (the first day of the event's UTC
  month);
* the six rollup tables by ``bucket_start`` (their keys unchanged).

A month's partitions of all eight tables are created together (:func:`create_months`), ahead of
use by the migration and the serving processes' periodic loop (:func:`ensure_ahead`), and by
ingestion for a month a batch needs that has none (:func:`ensure_for_batch`). Retention drops
whole months of ``usage_events`` and ``usage_event_keys`` (:func:`drop_months_before`).

Exactly once: an event writes its key in the month of its timestamp and, within
:data:`RESEND_SPAN` of a month boundary, a shadow key in the neighbouring month
(:func:`key_months`); it is accepted only if all its keys are new. So a resend is recognised by
the unique index alone when it falls in the same month, or less than a day from the stored
event's timestamp across a boundary. SQLite keeps one table keyed ``(event_id, team_id)``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from hashlib import md5

from sqlalchemy import (
    Column,
    Date,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Uuid,
    delete,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from billfold.kit.db import UTCDateTime
from billfold.metering.events import RatedEvent

Month = tuple[int, int]  # (year, month)

# A resend across a month boundary is recognised when its timestamp is less than this from the
# stored event's. At most retention.GRACE: a shadow key then never points into a month that is
# dropped while its event could still be resent (docs/scale.md, "the window").
RESEND_SPAN = timedelta(days=1)

EVENTS = "usage_events"
KEYS = "usage_event_keys"
ROLLUP_TABLES = (
    "usage_rollups",
    "usage_rollups_by_version",
    "usage_rollups_hourly",
    "usage_rollups_hourly_by_version",
    "usage_rollups_daily",
    "usage_rollups_daily_by_version",
)
# Every partitioned table and its partition column, in the order a month is created.
PARTITIONED: dict[str, str] = {
    EVENTS: "ts",
    KEYS: "month",
    **{table: "bucket_start" for table in ROLLUP_TABLES},
}
# Retention drops these; rollups are kept.
RAW = (EVENTS, KEYS)

_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<year>\d{4})(?P<month>\d{2})$")
# An advisory lock of its own (the period locks use 0x42F0, compaction 0x42F1).
_LOCK = {"space": 0x42F2, "key": 1}

# Not in Base.metadata: PostgreSQL only (SQLite has no such table, and the model check compares
# Base.metadata with both databases). ``id_digest``: :func:`id_digest` of the team and event id.
usage_event_keys = Table(
    KEYS,
    MetaData(),
    Column("id_digest", Uuid(), nullable=False),
    Column("month", Date(), nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("id_digest", "month", name="usage_event_keys_pkey"),
)


def id_digest(team_id: bytes, event_id: str) -> bytes:
    """The key of an event id: MD5 of the team id's 16 bytes and the id's UTF-8, 16 bytes
    (PostgreSQL: ``md5(uuid_send(team_id) || convert_to(event_id, 'UTF8'))::uuid``).

    Why not the id's text and the team: an index entry of ~36 bytes instead of ~70 with
    36-character ids, so twice the keys of a month fit in the same memory (the key tree's pages
    are ingestion's working set: docs/scale.md). Two different (team, id) pairs with the same
    digest would make the second a duplicate: at 128 bits, with 10^11 keys in a month, the odds
    are ~10^-17 -- not a design concern, as for random UUIDs (MD5's weakness is crafted
    collisions: a team could only make its own events collide with its own)."""
    return md5(team_id + event_id.encode(), usedforsecurity=False).digest()


def is_partition(name: str) -> bool:
    """A month partition of one of the tables (the model check leaves them out)."""
    match = _NAME.match(name)
    return match is not None and match["table"] in PARTITIONED


def month_of(ts: datetime) -> Month:
    return ts.year, ts.month


def next_month(month: Month) -> Month:
    year, number = month
    return (year + 1, 1) if number == 12 else (year, number + 1)


def previous_month(month: Month) -> Month:
    year, number = month
    return (year - 1, 12) if number == 1 else (year, number - 1)


def month_start(month: Month) -> datetime:
    return datetime(month[0], month[1], 1, tzinfo=UTC)


def partition_name(table: str, month: Month) -> str:
    return f"{table}_p{month[0]:04d}{month[1]:02d}"


def months_between(first: Month, last: Month) -> list[Month]:
    months = []
    month = first
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months


def key_months(ts: datetime) -> tuple[Month, ...]:
    """The months of an event's keys: its own first, then the neighbour whose boundary is less
    than :data:`RESEND_SPAN` away (a shadow key), if any."""
    own = (ts.year, ts.month)
    if ts - month_start(own) < RESEND_SPAN:
        return own, previous_month(own)
    following = next_month(own)
    if month_start(following) - ts < RESEND_SPAN:
        return own, following
    return (own,)


def event_key_rows(events: Sequence[RatedEvent]) -> list[tuple[bytes, date, datetime, int]]:
    """(id digest, month, ts, position in ``events``) of every key of the events
    (:func:`key_months`), sorted: the lock order, the same in every batch."""
    rows: list[tuple[bytes, date, datetime, int]] = []
    append = rows.append
    teams = {team: uuid.UUID(team).bytes for team in {e[0] for e in events}}
    # (year, month) -> (its first day, the previous month's, the next's, and the times within
    # RESEND_SPAN of its start and of its end)
    bounds: dict[Month, tuple[date, date, date, datetime, datetime]] = {}
    for position, (team, event_id, ts, *_) in enumerate(events):
        digest = md5(teams[team] + event_id.encode(), usedforsecurity=False).digest()
        month = (ts.year, ts.month)
        b = bounds.get(month)
        if b is None:
            start, end = month_start(month), month_start(next_month(month))
            b = bounds[month] = (
                start.date(),
                month_start(previous_month(month)).date(),
                end.date(),
                start + RESEND_SPAN,
                end - RESEND_SPAN,
            )
        append((digest, b[0], ts, position))
        if ts < b[3]:
            append((digest, b[1], ts, position))
        elif ts > b[4]:
            append((digest, b[2], ts, position))
    rows.sort()
    return rows


def insert_keys(session: Session, events: Sequence[RatedEvent]) -> set[int]:
    """The events' keys with ``INSERT ... ON CONFLICT DO NOTHING`` (in key order); the positions
    of the events NOT accepted (one of their keys was stored). The keys this statement inserted
    for such an event are deleted again, so a rejected event leaves nothing behind."""
    rows = event_key_rows(events)
    c = usage_event_keys.c
    stmt = (
        pg_insert(usage_event_keys)
        .on_conflict_do_nothing(index_elements=["id_digest", "month"])
        .returning(c.id_digest, c.month)
    )
    inserted = {
        (digest.bytes, month)
        for digest, month in session.execute(
            stmt,
            [
                {"id_digest": uuid.UUID(bytes=digest), "month": month, "ts": ts}
                for digest, month, ts, _ in rows
            ],
        )
    }
    rejected = {position for digest, month, _, position in rows if (digest, month) not in inserted}
    undo = [
        (uuid.UUID(bytes=digest), month)
        for digest, month, _, position in rows
        if position in rejected and (digest, month) in inserted
    ]
    if undo:
        session.execute(delete(usage_event_keys).where(tuple_(c.id_digest, c.month).in_(undo)))
    return rejected


def event_times(session: Session, team_id: uuid.UUID, ids: Sequence[str]) -> list[datetime]:
    """The timestamps of a team's stored events with these ids (from their keys), so a lookup by
    id reads ``usage_events`` by its index ``(team_id, ts)``."""
    c = usage_event_keys.c
    digests = [uuid.UUID(bytes=id_digest(team_id.bytes, event_id)) for event_id in ids]
    return sorted(set(session.scalars(select(c.ts).where(c.id_digest.in_(digests)))))


# --- creating and dropping months ----------------------------------------------------------------


def _bounds(table: str, month: Month) -> tuple[str, str]:
    lo, hi = month_start(month), month_start(next_month(month))
    if PARTITIONED[table] == "month":
        return lo.date().isoformat(), hi.date().isoformat()
    return lo.isoformat(), hi.isoformat()


def missing_partitions(connection: object, months: Iterable[Month]) -> list[Month]:
    """The months (of ``months``) some table has no partition for."""
    wanted = sorted(set(months))
    if not wanted:
        return []
    names = [partition_name(table, month) for month in wanted for table in PARTITIONED]
    rows = connection.execute(  # type: ignore[attr-defined]
        text("SELECT n FROM unnest(CAST(:names AS text[])) AS n WHERE to_regclass(n) IS NULL"),
        {"names": names},
    )
    absent = {name for (name,) in rows}
    return [m for m in wanted if any(partition_name(t, m) in absent for t in PARTITIONED)]


def create_months(engine: Engine, months: Iterable[Month]) -> list[Month]:
    """Create the partitions of these months that do not exist yet, in a transaction of its own
    (committed before this returns); the months that were missing any.

    Each partition is created alone and then attached: ``ATTACH PARTITION`` takes a SHARE UPDATE
    EXCLUSIVE lock on the parent, which neither waits for nor blocks ingestion (``CREATE TABLE
    ... PARTITION OF`` would take an ACCESS EXCLUSIVE one). An advisory lock keeps two processes
    from creating the same month at once."""
    with engine.begin() as connection:
        missing = missing_partitions(connection, months)
        if not missing:
            return []
        connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        connection.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"), _LOCK)
        for month in missing_partitions(connection, missing):
            for table in PARTITIONED:
                name = partition_name(table, month)
                exists = connection.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar()
                if exists is not None:
                    continue
                lo, hi = _bounds(table, month)
                connection.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING ALL)"))
                connection.execute(
                    text(
                        f"ALTER TABLE {table} ATTACH PARTITION {name}"
                        f" FOR VALUES FROM ('{lo}') TO ('{hi}')"
                    )
                )
        return missing


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def ensure_for_batch(session: Session, events: Sequence[RatedEvent]) -> None:
    """Before a batch writes: the months of its events and their neighbours (shadow keys) have
    their partitions (one catalog query; the missing ones created and committed apart, see
    :func:`create_months`)."""
    own = {(e[2].year, e[2].month) for e in events}
    months = own | {previous_month(m) for m in own} | {next_month(m) for m in own}
    if missing_partitions(session.connection(), months):
        create_months(_engine_of(session), months)


def ensure_ahead(engine: Engine, now: datetime, ahead: int = 2) -> list[Month]:
    """The current month and the next ``ahead`` (the periodic loop, the migration)."""
    months = [month_of(now)]
    for _ in range(ahead):
        months.append(next_month(months[-1]))
    return create_months(engine, months)


def partition_months(connection: object, table: str) -> list[Month]:
    """The months a table has partitions for, oldest first."""
    rows = connection.execute(  # type: ignore[attr-defined]
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": table},
    )
    months = []
    for (name,) in rows:
        match = _NAME.match(name)
        if match is not None and match["table"] == table:
            months.append((int(match["year"]), int(match["month"])))
    return sorted(months)


def drop_months_before(engine: Engine, cutoff: datetime) -> tuple[list[Month], int]:
    """Detach and drop the raw event and key partitions of every month that ends at or before
    ``cutoff``, one short transaction per month; the months dropped and their rows (the
    planner's estimate: counting would read them)."""
    dropped: list[Month] = []
    rows = 0
    with engine.connect() as connection:
        months = sorted(
            set(partition_months(connection, EVENTS)) | set(partition_months(connection, KEYS))
        )
    for month in months:
        if month_start(next_month(month)) > cutoff:
            break
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '5s'"))
            for table in RAW:
                name = partition_name(table, month)
                if connection.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is None:
                    continue
                if table == EVENTS:
                    estimate = connection.execute(
                        text(
                            "SELECT greatest(reltuples, 0)::bigint FROM pg_class"
                            " WHERE oid = to_regclass(:n)"
                        ),
                        {"n": name},
                    ).scalar()
                    rows += int(estimate or 0)
                connection.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
                connection.execute(text(f"DROP TABLE {name}"))
        dropped.append(month)
    return dropped, rows
