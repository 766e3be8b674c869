"""Rebuilding the rollups with property dimensions from raw events: ``billfold usage
rebuild-rollups``.

Why it exists: a rollup row keeps the groupable properties (``BILLFOLD_GROUPABLE_PROPERTIES``) as
they were when its events were ingested. After the operator makes another property groupable,
analytics can group and filter by it, but the usage ingested before the change has no value for it
in the rollups (it groups under ``""``); after a property stops being groupable, the old rows keep
it as a dimension nobody reads. Raw events keep every property (through their property set), so
within the raw retention window the rollups can be computed again, exactly as ingestion would
have written them with the current setting (:func:`metering.service.dims_of`,
:func:`metering.service.rollup_sums`).

What it touches: only the three rollup tables with property dimensions, one team and one UTC day
at a time (the day's quarter-hour, hourly and daily rows), each in its own transaction. The
rollups by version, cycle lines, cycles and invoices do not depend on the groupable setting (a
line's cluster is the events' ``clusterName`` as sent, groupable or not) and are never written
here. They are the check that the events are complete: a team-day is rewritten only when
its events, summed per version, equal its rollups by version. Otherwise it is reported and left
as it is -- its raw events are not the whole record (compacted under a shorter retention setting
than today's, or deleted by hand), and rebuilding from them would drop usage from analytics.

Concurrency: a team-day's rebuild takes its month's period lock exclusively
(:func:`invoicing.periods.lock_month_exclusive`, as cycle close does), so it waits for the
ingestion batches in flight for that month and holds new ones back until it commits: no event
can be summed twice or missed between reading the events and replacing the rows. One team-day
is a short transaction (a day of one team's events, summed by the database: ~0.3 s for 200,000
events), but the lock is the month's, for every team: a full rebuild of a large deployment
delays that month's ingestion many times briefly. A check (``write=False``) takes no lock; the
caller runs it in a snapshot (REPEATABLE READ on PostgreSQL; SQLite's transactions are
serialized), so the events and the rows it compares are of one instant.

Numbers in old property sets: sets made by migration 0010 from events stored before it hold
numbers as PostgreSQL's JSONB printed them (``1e16`` as ``10000000000000000``, ``-0.0`` as
``0.0``; migration 0011), while their rollups kept the text ingestion saw. Rebuilding a day of
such events relabels those values (a filter on ``"1e+16"`` then no longer matches them); what is
billed does not change.

Range: only days whose raw events are all still there, i.e. from the first UTC midnight at or
after the compaction cutoff (:func:`metering.retention.cutoff`): ingestion never accepts an
event older than the window, and compaction never deletes one newer than the cutoff.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, select, union
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.cycles.periods import lock_month_exclusive
from billfold.kit.errors import BadRequest
from billfold.metering import retention
from billfold.metering.analytics.raw import raw_event_sums
from billfold.metering.events import MAX_DIMS_KEY_BYTES, MAX_DIMS_KEY_LENGTH, dims_key, dims_of
from billfold.metering.models import (
    ROLLUP_WIDTHS,
    ROLLUPS_BY_WIDTH,
    VERSION_ROLLUPS_BY_WIDTH,
    UsageRollupDaily,
    UsageRollupDailyByVersion,
)
from billfold.metering.service import metering_service
from billfold.metering.writers import RollupKey, Sums, VersionRollupKey, bucket_number, rollup_sums
from billfold.teams.service import team_service

QUARTER = ROLLUP_WIDTHS[0]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class DayResult:
    """One team-day: its rollup rows with properties before and after, how many differ between
    the two (a row added, removed, or with other sums), and how many rows by version disagree
    with the events."""

    team_id: uuid.UUID
    day: date
    stored_rows: int
    rebuilt_rows: int
    changed_rows: int
    version_mismatches: int


@dataclass
class RebuildTotals:
    team_days: int = 0
    changed_team_days: int = 0
    changed_rows: int = 0
    version_mismatches: list[DayResult] = field(default_factory=list)

    def add(self, result: DayResult) -> None:
        """Count a team-day: as changed when it is (or, checking, would be) rebuilt; as not
        adding up, and nothing else, when its events disagree with its rollups by version."""
        self.team_days += 1
        if result.version_mismatches:
            self.version_mismatches.append(result)
        elif result.changed_rows:
            self.changed_team_days += 1
            self.changed_rows += result.changed_rows


def first_rebuildable_day(settings: Settings, now: datetime) -> date:
    """The first UTC day whose raw events compaction can never have deleted."""
    cutoff = retention.cutoff(settings, now)
    day = cutoff.date()
    return day if cutoff.timetz() == time(tzinfo=UTC) else day + timedelta(days=1)


def check_range(settings: Settings, now: datetime, first: date, end: date) -> None:
    """``[first, end)`` as UTC days; a 400 when it starts before the raw events do."""
    earliest = first_rebuildable_day(settings, now)
    if first < earliest:
        raise BadRequest(
            f"rollups before {earliest} cannot be rebuilt: raw events older than the retention "
            f"window (BILLFOLD_USAGE_RETENTION_DAYS={settings.usage_retention_days}, plus a day "
            "of grace) may have been compacted",
            code="outside_raw_retention",
            field="from",
        )
    if end <= first:
        raise BadRequest(
            f"the range {first} to {end} is empty: --to must be after --from (default {earliest})",
            code="invalid_range",
        )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def days_with_usage(session: Session, team_id: uuid.UUID, first: date, end: date) -> list[date]:
    """The UTC days of ``[first, end)`` on which the team has daily rollups, with or without
    properties (read by their primary keys; a day missing from one of the two is rebuilt or
    reported). Days with raw events and no daily rollup at all -- damage no Billfold write can
    cause -- are not looked for."""
    lo, hi = _midnight(first), _midnight(end)
    starts = union(
        *(
            select(t.bucket_start).where(
                t.team_id == team_id, t.bucket_start >= lo, t.bucket_start < hi
            )
            for t in (UsageRollupDaily, UsageRollupDailyByVersion)
        )
    ).subquery()
    return sorted({start.date() for start in session.scalars(select(starts.c.bucket_start))})


def _quarter_sums(
    session: Session, groupable: tuple[str, ...], team_id: uuid.UUID, day: date
) -> dict[RollupKey, Sums]:
    """The team's events of the day, summed as ingestion sums them into quarter-hour rollups
    (the database sums per quarter hour, price version and property set)."""
    team_key = str(team_id)
    start = _midnight(day)
    numbers: dict[int, int] = {}  # 15-minute part since 1970 -> rollup bucket number
    quarters: dict[RollupKey, Sums] = {}
    rows = raw_event_sums(
        session, team_id, start, start + timedelta(days=1), QUARTER, with_properties=True
    )
    for part, version_id, quantity, events, properties in rows:
        number = numbers.get(part)
        if number is None:
            number = numbers[part] = bucket_number(EPOCH + timedelta(seconds=part * QUARTER))
        key = dims_key(dims_of(properties, groupable))
        if len(key) > MAX_DIMS_KEY_LENGTH or len(key.encode()) > MAX_DIMS_KEY_BYTES:
            raise BadRequest(
                f"team {team_id}, {day}: the groupable properties of some events take more than "
                f"{MAX_DIMS_KEY_LENGTH} characters or {MAX_DIMS_KEY_BYTES} bytes together as JSON "
                f"({key[:80]}...); ingestion would refuse such events now: group by fewer "
                "properties",
                code="dims_too_long",
            )
        sums = quarters.setdefault((team_key, number, version_id, key), [0, 0])
        sums[0] += quantity
        sums[1] += events
    return quarters


def _stored(session: Session, table: Any, team_id: uuid.UUID, day: date) -> dict[Any, Sums]:
    """A rollup table's rows of the team-day, keyed as :func:`rollup_sums` keys them."""
    start = _midnight(day)
    with_dims = hasattr(table, "dims_key")
    columns = [table.bucket_start, table.price_version_id, table.quantity, table.events]
    if with_dims:
        columns.append(table.dims_key)
    stmt = select(*columns).where(
        table.team_id == team_id,
        table.bucket_start >= start,
        table.bucket_start < start + timedelta(days=1),
    )
    team_key = str(team_id)
    stored: dict[Any, Sums] = {}
    for row in session.execute(stmt):
        key = (team_key, bucket_number(row[0]), int(row[1]))
        stored[(*key, row[4]) if with_dims else key] = [int(row[2]), int(row[3])]
    return stored


def _differences(stored: dict[Any, Sums], rebuilt: dict[Any, Sums]) -> int:
    return sum(1 for key in stored.keys() | rebuilt.keys() if stored.get(key) != rebuilt.get(key))


def rebuild_day(
    session: Session, settings: Settings, team_id: uuid.UUID, day: date, *, write: bool
) -> DayResult:
    """Compare the team-day's rollups with its events and, with ``write``, a difference, and
    events that add up to its rollups by version, replace its rows with properties. Runs in
    ``session``'s transaction (the caller commits one per team-day); with ``write``, takes the
    month's period lock exclusively (see the module docstring)."""
    if write:
        lock_month_exclusive(session, day.year, day.month)
    rollups, version_rollups = rollup_sums(
        _quarter_sums(session, settings.groupable(), team_id, day)
    )
    stored_rows = rebuilt_rows = changed = mismatches = 0
    for width in ROLLUP_WIDTHS:
        table = ROLLUPS_BY_WIDTH[width]
        stored = _stored(session, table, team_id, day)
        rebuilt: dict[RollupKey, Sums] = rollups[width]
        stored_rows += len(stored)
        rebuilt_rows += len(rebuilt)
        changed += _differences(stored, rebuilt)
        by_version: dict[VersionRollupKey, Sums] = version_rollups[width]
        mismatches += _differences(
            _stored(session, VERSION_ROLLUPS_BY_WIDTH[width], team_id, day), by_version
        )
    if write and changed and not mismatches:
        writer = metering_service.writer(session)
        start = _midnight(day)
        for width in ROLLUP_WIDTHS:  # finest first: the order ingestion writes them in
            table = ROLLUPS_BY_WIDTH[width]
            session.execute(
                delete(table).where(
                    table.team_id == team_id,
                    table.bucket_start >= start,
                    table.bucket_start < start + timedelta(days=1),
                )
            )
            if rollups[width]:  # none when every event of the day is canceled
                writer.add_to_rollups(session, sorted(rollups[width].items()), width=width)
    return DayResult(team_id, day, stored_rows, rebuilt_rows, changed, mismatches)


def team_ids(session: Session, team_id: uuid.UUID | None) -> Iterator[uuid.UUID]:
    """The one team asked for (a 404 when there is none), or every team."""
    if team_id is not None:
        yield team_service.get(session, team_id).id
    else:
        yield from retention.team_ids(session)
