"""Usage analytics (billing-api §13): time series of one team's rated usage.

What is read
    Rollups -- per 15-minute UTC bucket and price version -- and the price versions they name. A
    query that groups or filters by an event property reads ``usage_rollups`` (which also keep the
    groupable properties); one that needs none (groupBy and filters only on ``description``,
    ``unit_type``, ``sku``, or none) reads ``usage_rollups_by_version``, the same sums without the
    property dimensions: up to ~40x fewer rows for a team with many property combinations, and
    the same answer (both are written by the same batch, in the same transaction). Each has an
    hourly and a daily twin (per UTC hour and day): where no requested bucket boundary falls
    inside their buckets -- one bucket (NONE); every bucket starting on a whole UTC hour (HOUR,
    DAY, CALENDAR_WEEK and MONTH in zones with whole-hour offsets) or day (DAY, CALENDAR_WEEK and
    MONTH in ``UTC``/``Etc/GMT``, what dashboards send) -- the range is read from the coarsest
    table that fits and only its ragged ends from the finer ones, in one statement (a UNION ALL):
    a month by day in ``Etc/GMT`` is ~30 rows per price version (and property combination). The
    database sums rollups into *partitions* that are never wider than a requested bucket (a
    local hour, or a local day, at a constant UTC offset); Python attributes each partition to
    its bucket, filters, groups, and computes dollars exactly: ``usd = sum(quantity *
    unit_price_pico)`` in Python ints, turned into a float only for the wire. The cost of a query
    grows with buckets x price versions (x property combinations, when it needs properties),
    never with the number of events (but for the per-event values below). ``TIME_UNIT_MINUTE``
    and ``TIME_UNIT_SECOND`` are finer than the rollups: they are answered from raw
    ``usage_events`` (index ``(team_id, ts)``), only inside the retention window, and the point
    cap bounds their range (about 6.9 days of minutes, 2.8 hours of seconds).

Values
    ``usd`` (an event's cost: quantity x its price version's unit price, exact pico-dollars,
    dollars on the wire) and ``num_units`` (its quantity) with SUM, AVG (sum / events) and COUNT
    (events), ``requests`` with COUNT, and COUNT_DISTINCT of a groupBy field: all from the rollups'
    sums, counts and keys, so at the flat cost above. MIN, MAX, VAR and STD (population: the
    bucket's events are all of them, not a sample) and the percentiles P50, P90, P99, P999
    (nearest rank: the value of an actual event) need each event's own value: they are read from
    raw ``usage_events`` over the same range (``raw_event_values``: the database groups the events
    per slice, price version, property set and quantity, or finds each slice's extremes when MIN
    and MAX are all that is asked), so their cost grows with the events in the range; only within
    the retention window, at most ``MAX_EVENT_VALUES`` rows. All are exact: computed in Python
    ints (SQLite has no variance nor percentiles, and sums of squared quantities overflow int64),
    turned into a float once. A bucket without events is 0 for every aggregation.

Resolution (the rule clients see; docs/api-decisions.md)
    The rollups' resolution is 15 minutes, so for every unit but MINUTE and SECOND the range is
    widened to whole 15-minute UTC intervals: ``startTime`` rounded down, ``endTime`` rounded up.
    "now minus 30 days" therefore starts at the quarter hour before, and an inclusive-looking end
    such as ``23:59:59`` counts the whole last day. MINUTE and SECOND ranges are exact.

Buckets
    Aligned to the unit's boundaries in the request's IANA zone: DAY at local midnight (23 or 25
    hours on DST days), CALENDAR_WEEK at local Monday 00:00, MONTH at the local first of the month,
    HOUR at each local wall-clock hour (a repeated fall-back hour is two buckets, one per offset),
    QUARTER_HOUR / MINUTE / SECOND at UTC multiples (equal to local ones in every zone whose offset
    is a multiple of 15 minutes -- all zones in use today), NONE one bucket for the whole range.
    Points are dense; a point's timestamp is the UTC start of its bucket, and for the first bucket
    that is the aligned start even when the range begins inside it. A wall time that does not
    exist (DST gap) is read with the offset before the gap; an ambiguous one as its first
    occurrence.

Fields, filters, series
    groupBy and filters take ``description``, ``unit_type``, ``sku`` (of the price version) and
    every groupable property in snake_case (``api_key_id``, ``model``, ``cluster_name``; the
    property's own camelCase name is accepted too). An event without the property has the value
    "". Labels are the values, except ``api_key_id``: ``"<key name> (<redacted key>)"`` for the
    team's own keys. A filter is ``field:value`` (equality), ``NOT field:value``, or a numeric
    comparison ``field:>n`` (also ``>=``, ``<``, ``<=``; values that are not numbers never match);
    conditions join with `` AND `` inside alternatives joined with `` OR ``; filters are ANDed. A
    malformed filter is a 400 naming it, never read as some other filter (``parse_filter``).
    Per-event amounts (usd, num_units, requests) cannot be filtered on: rollups do not keep them.
    Series are ordered by dollars, then units, then requests (all descending), then group values.

Caps
    ``MAX_POINTS`` buckets per series (more is a 400 ``too_many_buckets``: a clearly absurd
    request, answered with nothing rather than a silently cut chart); at most ``MAX_SERIES``
    series and ``MAX_DATA_POINTS`` points in all: the series with the most dollars are kept and
    ``limitReached`` is true. At most ``MAX_CONDITIONS`` filter conditions in all (400
    ``too_many_conditions``).
"""

from __future__ import annotations

import bisect
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    case,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.kit.clock import utc_now
from billfold.kit.errors import InvalidField
from billfold.kit.money import PICO_PER_USD, pico_to_usd_float
from billfold.metering.analytics.buckets import (
    _FIXED_STEP,
    _RAW_UNITS,
    EPOCH,
    MAX_POINTS,
    ROLLUP_SECONDS,
    TimeUnit,
    TooManyBuckets,
    bucket_starts,
    ceil_to,
    floor_to,
    offset_segments,
)
from billfold.metering.analytics.fields import Aggregation, Field
from billfold.metering.analytics.query import (
    REQUEST,
    AnalyticsQuery,
    AnalyticsResult,
    Series,
    ValueSpec,
)
from billfold.metering.analytics.raw import (
    MAX_EVENT_VALUES,
    TooManyEventValues,
    _local_part,
    _per_event,
    _zero,
    raw_event_sums,
    raw_event_values,
)
from billfold.metering.models import (
    ROLLUP_WIDTHS,
    ROLLUPS_BY_WIDTH,
    VERSION_ROLLUPS_BY_WIDTH,
    RollupByVersion,
    RollupWithDims,
)
from billfold.pricing.models import PriceVersion
from billfold.teams.models import ManagementKey

MAX_SERIES = 1_000
MAX_DATA_POINTS = 250_000


# --- the query ---------------------------------------------------------------------------------


# --- parsing the wire request ------------------------------------------------------------------


# --- the time grid -----------------------------------------------------------------------------


# --- the service -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Partition:
    """How the database pre-sums rollups. ``local``: one partition per (UTC offset, local hour or
    day), which a requested bucket of that unit always contains whole."""

    kind: Literal["none", "bucket", "local"]
    seconds: int = 0


# A pre-summed slice of usage: first and last 15-minute bucket (or event second) in it, price
# version, a hashable key of its property values and the values, quantity, event count.
_Slice = tuple[datetime, datetime, int, Any, dict[str, str], int, int]


# The events of one slice (bucket, price version, property combination): price version, a
# hashable key of its property values and the values, and (quantity, events with it) pairs.
_EventValues = tuple[int, Any, dict[str, str], list[tuple[int, int]]]


class _Straddles(Exception):
    """A partition spans two requested buckets (a DST transition the sampling missed)."""


# A rollup table: per quarter hour, hour or day, with property dimensions or without.
_RollupTable = type[RollupWithDims] | type[RollupByVersion]
# What one query reads: a table, from and to (exclusive).
_Source = tuple[_RollupTable, datetime, datetime]


def _split(
    tables: dict[int, _RollupTable], widths: list[int], start: datetime, end: datetime
) -> list[_Source]:
    """[start, end) as whole buckets of the widest table (``widths`` ascending, in seconds), and
    its ragged ends the same way from the finer ones: a month from 00:20 on the 1st reads the
    quarter hours to 01:00, the hours to midnight, then days."""
    if start >= end:
        return []
    width, finer = widths[-1], widths[:-1]
    if not finer:
        return [(tables[width], start, end)]
    middle = (ceil_to(start, width), floor_to(end, width))
    if middle[0] >= middle[1]:
        return _split(tables, finer, start, end)
    return [
        *_split(tables, finer, start, middle[0]),
        (tables[width], *middle),
        *_split(tables, finer, middle[1], end),
    ]


class UsageAnalytics:
    def __init__(
        self, *, version_rollups: bool = True, widths: tuple[int, ...] = ROLLUP_WIDTHS
    ) -> None:
        """``version_rollups=False`` reads the tables with property dimensions for every query;
        ``widths`` are the rollup widths (seconds) it may read, 900 always among them (the tests
        that compare the tables' answers)."""
        assert ROLLUP_SECONDS in widths and set(widths) <= set(ROLLUPS_BY_WIDTH)
        self._version_rollups = version_rollups
        self._widths = sorted(widths)

    def run(self, session: Session, settings: Settings, query: AnalyticsQuery) -> AnalyticsResult:
        """The time series of ``query``; reads only, so any transaction will do."""
        raw = query.unit in _RAW_UNITS
        per_event = [i for i, spec in enumerate(query.values) if spec.from_events]
        if raw or per_event:  # raw events are needed: only within their retention window
            self._check_raw_window(settings, query, None if raw else per_event[0])
        if raw:
            start, end = query.start, query.end
        else:
            start = floor_to(query.start, ROLLUP_SECONDS)
            end = ceil_to(query.end, ROLLUP_SECONDS)
        try:
            starts = bucket_starts(query.unit, query.zone, start, end)
        except TooManyBuckets:
            raise InvalidField(
                f"{REQUEST}.timeUnit",
                f"the range needs more than {MAX_POINTS} {query.unit.value} buckets; "
                "use a coarser timeUnit or a shorter range",
                code="too_many_buckets",
            ) from None
        properties = sorted({f.key for f in query.fields if f.kind == "property"})
        if raw:
            slices = self._event_slices(session, query, starts, properties)
        else:
            slices = self._rollup_slices(session, query, start, end, starts, bool(properties))
        values: list[tuple[int, _EventValues]] = []
        if per_event and slices:  # no usage in the rollups, no events either
            values = self._event_values(session, query, start, end, starts, properties, per_event)
        return self._shape(session, query, starts, slices, values)

    @staticmethod
    def _check_raw_window(
        settings: Settings, query: AnalyticsQuery, value_index: int | None = None
    ) -> None:
        oldest = utc_now() - timedelta(days=settings.usage_retention_days)
        if query.start >= oldest:
            return
        if value_index is None:
            field = f"{REQUEST}.timeUnit"
            what = f"{query.unit.value} is answered"
            instead = "use TIME_UNIT_QUARTER_HOUR or coarser"
        else:
            field = f"{REQUEST}.values.{value_index}"
            what = f"{query.values[value_index].aggregation.value} is computed"
            instead = "use AGGREGATION_SUM, AGGREGATION_AVG or AGGREGATION_COUNT"
        raise InvalidField(
            field,
            f"{what} from raw events, which are kept {settings.usage_retention_days} days; "
            f"start after {oldest:%Y-%m-%d %H:%M:%S} UTC or {instead}",
            code="outside_raw_retention",
        )

    # -- reading -------------------------------------------------------------------------------

    def _rollup_slices(
        self,
        session: Session,
        query: AnalyticsQuery,
        start: datetime,
        end: datetime,
        starts: list[datetime],
        with_dims: bool,
    ) -> list[tuple[int, _Slice]]:
        # Without properties, the rollups by version give the same sums from fewer rows.
        by_version = not with_dims and self._version_rollups
        tables: dict[int, _RollupTable] = dict(
            VERSION_ROLLUPS_BY_WIDTH if by_version else ROLLUPS_BY_WIDTH
        )
        quarters = tables[ROLLUP_SECONDS]
        span = self._data_span(session, quarters, query.team_id, start, end)
        if span is None:
            return []
        segments: list[tuple[datetime, int]] = []
        if query.unit is TimeUnit.NONE:
            partition = _Partition("none")
        elif query.unit is TimeUnit.QUARTER_HOUR:
            partition = _Partition("bucket")
        else:
            partition = _Partition("local", 3600 if query.unit is TimeUnit.HOUR else 86_400)
            segments = offset_segments(query.zone, *span)
        # A coarser table is read where no requested bucket boundary falls inside its buckets:
        # for a single bucket, or when every bucket starts on a whole UTC hour (hours, days,
        # weeks and months of every zone whose offsets are whole hours) or day (days, weeks and
        # months in UTC). Each row then lies in one bucket, so the straddle check on the
        # partitions' first and last rows stays exact. The range's ragged ends come from the
        # finer tables (it is widened to quarter hours only: the resolution clients see).
        widths = [
            width
            for width in self._widths
            if width == ROLLUP_SECONDS
            or partition.kind == "none"
            or (partition.kind == "local" and all(floor_to(at, width) == at for at in starts))
        ]
        sources = _split(tables, widths, start, end)
        try:
            return self._attribute(
                starts, self._read_rollups(session, query, partition, segments, with_dims, sources)
            )
        except _Straddles:
            # Exact whatever the zone does: re-read at the rollups' own 15-minute resolution.
            return self._attribute(
                starts,
                self._read_rollups(
                    session, query, _Partition("bucket"), [], with_dims, [(quarters, start, end)]
                ),
            )

    @staticmethod
    def _data_span(
        session: Session, table: _RollupTable, team_id: uuid.UUID, start: datetime, end: datetime
    ) -> tuple[datetime, datetime] | None:
        # Two index probes on the primary key (team_id, bucket_start, ...), not one min/max scan.
        base = select(table.bucket_start).where(
            table.team_id == team_id,
            table.bucket_start >= start,
            table.bucket_start < end,
        )
        first = session.scalar(base.order_by(table.bucket_start).limit(1))
        last = session.scalar(base.order_by(table.bucket_start.desc()).limit(1))
        return None if first is None or last is None else (first, last)

    @staticmethod
    def _read_rollups(
        session: Session,
        query: AnalyticsQuery,
        partition: _Partition,
        segments: list[tuple[datetime, int]],
        with_dims: bool,
        sources: list[_Source],
    ) -> list[_Slice]:
        """The sources' rows summed per partition (and price version, and property combination
        when ``with_dims``), in one statement over their UNION ALL."""

        def rows_of(r: _RollupTable, lo: datetime, hi: datetime) -> Select[Any]:
            columns: list[ColumnElement[Any]] = [
                r.bucket_start.label("bucket_start"),
                r.price_version_id.label("version"),
                r.quantity.label("quantity"),
                r.events.label("events"),
            ]
            if with_dims:
                assert issubclass(r, RollupWithDims), "a table without properties"
                columns.append(r.dims_key.label("dims_key"))
            if partition.kind == "local":
                offset: ColumnElement[Any] = (
                    literal(segments[0][1], BigInteger)
                    if len(segments) == 1
                    else case(
                        *[
                            (r.bucket_start < segments[i + 1][0], segments[i][1])
                            for i in range(len(segments) - 1)
                        ],
                        else_=segments[-1][1],
                    )
                )
                part = _local_part(session, r.bucket_start, segments, offset, partition.seconds)
                columns += [offset.label("utc_offset"), part.label("part")]
            return select(*columns).where(
                r.team_id == query.team_id, r.bucket_start >= lo, r.bucket_start < hi
            )

        selects = [rows_of(*source) for source in sources]
        inner = (selects[0] if len(selects) == 1 else union_all(*selects)).subquery()
        keys: list[Any] = [inner.c.version]
        if partition.kind == "bucket":
            keys.append(inner.c.bucket_start)
        elif partition.kind == "local":
            keys += [inner.c.utc_offset, inner.c.part]
        if with_dims:
            # Grouped by the canonical JSON text only (hashing the JSONB dims cost as much again);
            # the dims are that JSON, parsed once per combination below.
            keys.append(inner.c.dims_key)
        stmt: Select[Any] = select(
            func.min(inner.c.bucket_start),
            func.max(inner.c.bucket_start),
            inner.c.version,
            inner.c.dims_key if with_dims else literal(""),
            func.sum(inner.c.quantity),
            func.sum(inner.c.events),
        ).group_by(*keys)
        dims_of: dict[str, dict[str, str]] = {"": {}}
        slices: list[_Slice] = []
        for first, last, version, dims_key, qty, events in session.execute(stmt):
            dims = dims_of.get(dims_key)
            if dims is None:
                dims = dims_of[dims_key] = json.loads(dims_key)
            slices.append((first, last, int(version), dims_key, dims, int(qty), int(events)))
        return slices

    @staticmethod
    def _event_slices(
        session: Session, query: AnalyticsQuery, starts: list[datetime], properties: list[str]
    ) -> list[tuple[int, _Slice]]:
        step = _FIXED_STEP[query.unit]
        slices: list[tuple[int, _Slice]] = []
        rows = raw_event_sums(
            session, query.team_id, query.start, query.end, step, with_properties=bool(properties)
        )
        for part, version, qty, events, values in rows:
            at = EPOCH + timedelta(seconds=part * step)
            # The same text as ingestion puts into rollup dims: str() of the JSON value.
            dims = {p: str(values[p]) for p in properties if values.get(p) is not None}
            key = tuple(dims.get(p) for p in properties)
            slices.append((_bucket_index(starts, at), (at, at, version, key, dims, qty, events)))
        return slices

    @staticmethod
    def _event_values(
        session: Session,
        query: AnalyticsQuery,
        start: datetime,
        end: datetime,
        starts: list[datetime],
        properties: list[str],
        per_event: list[int],
    ) -> list[tuple[int, _EventValues]]:
        """The events' own values, for the aggregations the rollups cannot give (MIN, MAX, VAR,
        STD, percentiles): per bucket, price version and property combination, each distinct
        quantity with its number of events -- or, when only MIN and MAX are asked, just the
        smallest and the largest, which the database finds. Read from ``usage_events`` over the
        same range as the rollups (widened to quarter hours, but for MINUTE and SECOND), canceled
        events left out; grouped in slices no requested bucket boundary cuts."""
        if query.unit is TimeUnit.NONE:
            step = 0
        elif query.unit in _RAW_UNITS:
            step = _FIXED_STEP[query.unit]
        else:  # the widest slice whose boundaries every bucket start is one of
            step = max(w for w in ROLLUP_WIDTHS if all(floor_to(at, w) == at for at in starts))
        extremes = all(
            query.values[i].aggregation in (Aggregation.MIN, Aggregation.MAX) for i in per_event
        )
        try:
            rows = raw_event_values(
                session,
                query.team_id,
                start,
                end,
                step,
                with_properties=bool(properties),
                extremes=extremes,
                limit=MAX_EVENT_VALUES,
            )
        except TooManyEventValues:
            raise InvalidField(
                f"{REQUEST}.values.{per_event[0]}",
                f"{query.values[per_event[0]].aggregation.value} reads every event, and the range "
                f"holds more than {MAX_EVENT_VALUES} distinct event values; use a shorter range",
                code="too_many_events",
            ) from None
        found: list[tuple[int, _EventValues]] = []
        for part, version, values, quantities in rows:
            at = EPOCH + timedelta(seconds=part * step)
            dims = {p: str(values[p]) for p in properties if values.get(p) is not None}
            key = tuple(dims.get(p) for p in properties)
            found.append((_bucket_index(starts, at), (version, key, dims, quantities)))
        return found

    @staticmethod
    def _attribute(starts: list[datetime], slices: list[_Slice]) -> list[tuple[int, _Slice]]:
        attributed = []
        for piece in slices:
            index = _bucket_index(starts, piece[0])
            if _bucket_index(starts, piece[1]) != index:
                raise _Straddles
            attributed.append((index, piece))
        return attributed

    # -- shaping -------------------------------------------------------------------------------

    def _shape(
        self,
        session: Session,
        query: AnalyticsQuery,
        starts: list[datetime],
        slices: list[tuple[int, _Slice]],
        event_values: list[tuple[int, _EventValues]],
    ) -> AnalyticsResult:
        versions = _versions(session, {piece[2] for _, piece in slices})
        versions.update(_versions(session, {v[0] for _, v in event_values} - set(versions)))
        # Filters and groups depend only on (price version, properties): decided once per pair.
        decided: dict[tuple[int, Any], tuple[str, ...] | None] = {}

        def group_of(
            version_id: int, dims_key: Any, dims: dict[str, str]
        ) -> tuple[str, ...] | None:
            context = (version_id, dims_key)
            if context not in decided:
                decided[context] = _group_of(query, versions[version_id], dims)
            return decided[context]

        distinct = [spec.field for spec in query.values if spec.field is not None]
        # group -> bucket index -> cell (exact ints)
        cells: dict[tuple[str, ...], dict[int, _Cell]] = {}
        for index, (_, _, version_id, dims_key, dims, quantity, events) in slices:
            group = group_of(version_id, dims_key, dims)
            if group is None:
                continue
            cell = cells.setdefault(group, {}).get(index)
            if cell is None:
                cell = cells[group][index] = _Cell([set() for _ in distinct])
            version = versions[version_id]
            cell.quantity += quantity
            cell.pico += quantity * version.unit_price_pico
            cell.events += events
            for seen, field in zip(cell.distinct, distinct, strict=True):
                value = _field_value(field, version, dims)
                if value:  # events without the field have no value to count
                    seen.add(value)
        for index, (version_id, dims_key, dims, quantities) in event_values:
            group = group_of(version_id, dims_key, dims)
            cell = None if group is None else cells.get(group, {}).get(index)
            if cell is None:  # filtered out, or not in the rollups (see docs/api-decisions.md)
                continue
            price = versions[version_id].unit_price_pico
            if cell.values is None:
                cell.values = Counter()
            for quantity, events in quantities:
                cell.values[quantity, price] += events
        if not query.group_by and not cells:
            cells[()] = {}  # groupBy [] always answers one (here all-zero) series

        def total(group: tuple[str, ...]) -> tuple[int, int, int]:
            in_group = cells[group].values()
            return (
                sum(c.pico for c in in_group),
                sum(c.quantity for c in in_group),
                sum(c.events for c in in_group),
            )

        totals = {group: total(group) for group in cells}
        ordered = sorted(cells, key=lambda g: (-totals[g][0], -totals[g][1], -totals[g][2], g))
        max_series = max(1, min(MAX_SERIES, MAX_DATA_POINTS // len(starts)))
        kept = ordered[:max_series]
        labels = _labels(session, query, kept)
        zeros = [_zero(spec) for spec in query.values]
        series = []
        for group in kept:
            in_group = cells[group]
            points = []
            for index, at in enumerate(starts):
                cell = in_group.get(index)
                values = list(zeros) if cell is None else _values(query.values, cell)
                points.append((at, values))
            series.append(
                Series(
                    list(group),
                    [
                        labels.get((field.key, value), value)
                        for field, value in zip(query.group_by, group, strict=True)
                    ],
                    points,
                )
            )
        return AnalyticsResult(series, limit_reached=len(ordered) > len(kept))


@dataclass(slots=True)
class _Cell:
    """One group's usage in one bucket, exact: sums and counts from the rollups, the distinct
    values of each COUNT_DISTINCT field, and -- for the aggregations that need them -- the events'
    own values: (quantity, unit price in pico-dollars) -> events (only the smallest and largest
    quantities of each slice, with 1, when MIN and MAX are all that is asked)."""

    distinct: list[set[str]]
    quantity: int = 0
    pico: int = 0
    events: int = 0
    values: Counter[tuple[int, int]] | None = None  # made when the first event value comes


def _values(specs: Sequence[ValueSpec], cell: _Cell) -> list[int | float]:
    values: list[int | float] = []
    distinct = iter(cell.distinct)
    for spec in specs:
        agg = spec.aggregation
        usd = spec.name == "usd"
        if agg is Aggregation.COUNT_DISTINCT:
            values.append(len(next(distinct)))
        elif agg is Aggregation.COUNT:
            values.append(cell.events)
        elif agg is Aggregation.SUM:
            values.append(pico_to_usd_float(cell.pico) if usd else cell.quantity)
        elif agg is Aggregation.AVG:
            # int / int is the correctly rounded quotient in Python, however large the ints
            total, scale = (cell.pico, PICO_PER_USD) if usd else (cell.quantity, 1)
            values.append(total / (cell.events * scale) if cell.events else 0.0)
        else:
            values.append(_per_event(spec, cell.values))
    return values


def _bucket_index(starts: list[datetime], at: datetime) -> int:
    # Usage before the first aligned start can only come from a zone whose historical offset is
    # not a multiple of 15 minutes; it is counted in the first bucket.
    return max(0, bisect.bisect_right(starts, at) - 1)


def _versions(session: Session, ids: set[int]) -> dict[int, PriceVersion]:
    if not ids:
        return {}
    return {v.id: v for v in session.scalars(select(PriceVersion).where(PriceVersion.id.in_(ids)))}


def _field_value(field: Field, version: PriceVersion, dims: dict[str, str]) -> str:
    if field.kind == "price":
        return str(getattr(version, field.key))
    return dims.get(field.key, "")  # an event without the property groups under ""


def _group_of(
    query: AnalyticsQuery, version: PriceVersion, dims: dict[str, str]
) -> tuple[str, ...] | None:
    """The group of a (version, properties) pair, or None when the filters exclude it."""

    def value(field: Field) -> str:
        return _field_value(field, version, dims)

    for one in query.filters:
        if not any(all(c.matches(value(c.field)) for c in alternative) for alternative in one):
            return None
    return tuple(value(field) for field in query.group_by)


def _labels(
    session: Session, query: AnalyticsQuery, groups: list[tuple[str, ...]]
) -> dict[tuple[str, str], str]:
    """Labels that differ from the raw value: ``"<key name> (<redacted key>)"`` for the team's own
    management keys (revoked ones too: their usage stays). Other values label themselves."""
    positions = [i for i, field in enumerate(query.group_by) if field.is_api_key]
    written: dict[uuid.UUID, set[str]] = {}  # key id -> the texts events wrote it as
    for group in groups:
        for i in positions:
            key_id = _as_uuid(group[i])
            if key_id is not None:
                written.setdefault(key_id, set()).add(group[i])
    if not written:
        return {}
    keys = session.scalars(
        select(ManagementKey).where(
            ManagementKey.team_id == query.team_id, ManagementKey.id.in_(sorted(written))
        )
    )
    return {
        ("apiKeyId", text): f"{key.name} ({key.redacted})"
        for key in keys
        for text in written[key.id]
    }


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


usage_analytics = UsageAnalytics()
