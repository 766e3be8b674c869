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
import re
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Interval,
    Select,
    case,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.kit.clock import utc_now
from billfold.kit.errors import InvalidField
from billfold.kit.money import PICO_PER_USD, pico_to_usd_float
from billfold.metering.models import (
    ROLLUP_WIDTHS,
    ROLLUPS_BY_WIDTH,
    VERSION_ROLLUPS_BY_WIDTH,
    RollupByVersion,
    RollupWithDims,
    UsageEvent,
    UsagePropertySet,
)
from billfold.metering.schemas import AnalyticsRequest
from billfold.pricing.models import PriceVersion
from billfold.teams.models import ManagementKey

MAX_POINTS = 10_000
MAX_SERIES = 1_000
MAX_DATA_POINTS = 250_000
# Conditions in all filters of one request: each is decided once per (price version, property
# combination) read, so the cap bounds the filtering work whatever the filter strings hold.
MAX_CONDITIONS = 1_000
MIN_YEAR, MAX_YEAR = 1900, 2999

ROLLUP_SECONDS = 900
QUARTER = timedelta(seconds=ROLLUP_SECONDS)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Added to epoch seconds before integer division in SQL, so the division never sees a negative
# number (SQL truncates toward zero, we want floor). A multiple of every partition width.
_EPOCH_SHIFT = 86_400 * 10**6
# date_bin's origin for local partitions, minus the UTC offset: a UTC midnight (so a whole number
# of days and hours from any other) before every bucket a query can read (MIN_YEAR), so every
# bucket is after it.
_BIN_ORIGIN = datetime(1800, 1, 1, tzinfo=UTC)
# Offsets are sampled this often over the data's span to find DST transitions (they are months
# apart in every real zone; a miss would only cost a slower, still exact, re-read).
_OFFSET_SAMPLE = timedelta(hours=6)

REQUEST = "analyticsRequest"


class TimeUnit(StrEnum):
    MONTH = "TIME_UNIT_MONTH"
    CALENDAR_WEEK = "TIME_UNIT_CALENDAR_WEEK"
    DAY = "TIME_UNIT_DAY"
    HOUR = "TIME_UNIT_HOUR"
    QUARTER_HOUR = "TIME_UNIT_QUARTER_HOUR"
    MINUTE = "TIME_UNIT_MINUTE"
    SECOND = "TIME_UNIT_SECOND"
    NONE = "TIME_UNIT_NONE"


# proto numbers (xai.shared.analytics.TimeUnit), accepted as proto3 JSON parsers do
_UNIT_NUMBERS = {
    1: TimeUnit.MONTH,
    2: TimeUnit.CALENDAR_WEEK,
    3: TimeUnit.DAY,
    4: TimeUnit.HOUR,
    5: TimeUnit.QUARTER_HOUR,
    6: TimeUnit.MINUTE,
    7: TimeUnit.SECOND,
    8: TimeUnit.NONE,
}
_FIXED_STEP = {TimeUnit.QUARTER_HOUR: 900, TimeUnit.MINUTE: 60, TimeUnit.SECOND: 1}
_RAW_UNITS = (TimeUnit.MINUTE, TimeUnit.SECOND)


class Aggregation(StrEnum):
    """xai.shared.analytics.Aggregation by name (proto numbers: ``_AGGREGATION_NUMBERS``)."""

    NONE = "AGGREGATION_NONE"
    SUM = "AGGREGATION_SUM"
    AVG = "AGGREGATION_AVG"
    VAR = "AGGREGATION_VAR"
    STD = "AGGREGATION_STD"
    MIN = "AGGREGATION_MIN"
    MAX = "AGGREGATION_MAX"
    P50 = "AGGREGATION_P50"
    P90 = "AGGREGATION_P90"
    P99 = "AGGREGATION_P99"
    P999 = "AGGREGATION_P999"
    COUNT = "AGGREGATION_COUNT"
    COUNT_DISTINCT = "AGGREGATION_COUNT_DISTINCT"


_AGGREGATION_NUMBERS = dict(enumerate(Aggregation))  # NONE = 0 ... COUNT_DISTINCT = 12
# Values measured per event: an event's usd (quantity x unit price) and num_units (quantity).
PER_EVENT_VALUES = ("usd", "num_units")
# Of these, what the rollups' sums and counts give (flat cost), and what needs every event's own
# value (read from raw events: the cost grows with the events in the range).
ROLLUP_AGGREGATIONS = (Aggregation.SUM, Aggregation.AVG, Aggregation.COUNT)
EVENT_AGGREGATIONS = (
    Aggregation.MIN,
    Aggregation.MAX,
    Aggregation.VAR,
    Aggregation.STD,
    Aggregation.P50,
    Aggregation.P90,
    Aggregation.P99,
    Aggregation.P999,
)
# Nearest rank: the smallest event value with at least this share of the events at or below it.
PERCENTILES = {
    Aggregation.P50: Fraction(50, 100),
    Aggregation.P90: Fraction(90, 100),
    Aggregation.P99: Fraction(99, 100),
    Aggregation.P999: Fraction(999, 1000),
}
_VALUE_NAMES = {*PER_EVENT_VALUES, "requests"}
# Rows of per-event values one query may read from raw events (each a distinct quantity of one
# price version and property set in one time slice): bounds the memory and time of such a query.
MAX_EVENT_VALUES = 1_000_000


# --- the query ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A field to group or filter by: a price version attribute or a groupable event property."""

    name: str  # as the client wrote it
    kind: Literal["price", "property"]
    key: str  # PriceVersion attribute, or the property name as sent in events (camelCase)

    @property
    def is_api_key(self) -> bool:
        return self.kind == "property" and self.key == "apiKeyId"


@dataclass(frozen=True)
class Condition:
    field: Field
    op: Literal["=", ">", ">=", "<", "<="]
    operand: str
    number: Decimal | None
    negated: bool

    def matches(self, value: str) -> bool:
        return self._holds(value) != self.negated

    def _holds(self, value: str) -> bool:
        if self.op == "=":
            return value == self.operand
        assert self.number is not None
        number = _number(value)
        if number is None:  # a non-numeric value never satisfies a numeric comparison
            return False
        if self.op == ">":
            return number > self.number
        if self.op == ">=":
            return number >= self.number
        if self.op == "<":
            return number < self.number
        return number <= self.number


# One filter string: alternatives joined by " OR ", each a conjunction joined by " AND ".
Filter = tuple[tuple[Condition, ...], ...]


@dataclass(frozen=True)
class ValueSpec:
    name: str
    aggregation: Aggregation
    field: Field | None = None  # what AGGREGATION_COUNT_DISTINCT counts the values of

    @property
    def from_events(self) -> bool:
        """Needs each event's own value (raw events), not only the rollups' sums and counts."""
        return self.aggregation in EVENT_AGGREGATIONS


@dataclass(frozen=True)
class AnalyticsQuery:
    team_id: uuid.UUID
    zone: ZoneInfo
    unit: TimeUnit
    start: datetime  # UTC, as asked (inclusive)
    end: datetime  # UTC, as asked (exclusive)
    values: tuple[ValueSpec, ...]
    group_by: tuple[Field, ...]
    filters: tuple[Filter, ...]

    @property
    def fields(self) -> list[Field]:
        used = list(self.group_by)
        used.extend(v.field for v in self.values if v.field is not None)
        for one in self.filters:
            used.extend(c.field for alternative in one for c in alternative)
        return used


@dataclass
class Series:
    group: list[str]
    labels: list[str]
    points: list[tuple[datetime, list[int | float]]]


@dataclass
class AnalyticsResult:
    series: list[Series]
    limit_reached: bool


# --- parsing the wire request ------------------------------------------------------------------


def available_fields(settings: Settings) -> dict[str, Field]:
    """Fields by the names clients use: price attributes, then groupable properties in snake_case
    (``apiKeyId`` -> ``api_key_id``) and, as an alias, as declared."""
    fields = {
        "description": Field("description", "price", "description"),
        "unit_type": Field("unit_type", "price", "unit_type"),
        "sku": Field("sku", "price", "sku"),
    }
    for prop in settings.groupable():
        for name in (_snake(prop), prop):
            fields.setdefault(name, Field(name, "property", prop))
    return fields


def parse_query(
    request: AnalyticsRequest, settings: Settings, team_id: uuid.UUID
) -> AnalyticsQuery:
    """Validate the request into a query; every problem is a 400 naming its field."""
    time_range = request.time_range
    zone = _parse_zone(time_range.timezone)
    start = _parse_local_time(time_range.start_time, zone, f"{REQUEST}.timeRange.startTime")
    end = _parse_local_time(time_range.end_time, zone, f"{REQUEST}.timeRange.endTime")
    if end <= start:
        raise InvalidField(
            f"{REQUEST}.timeRange",
            "endTime must be after startTime (start inclusive, end exclusive)",
            code="invalid_time_range",
        )
    unit = _parse_unit(request.time_unit)
    fields = available_fields(settings)
    values = tuple(
        _parse_value(i, v.name, v.aggregation, fields) for i, v in enumerate(request.values)
    )
    if not values:
        raise InvalidField(
            f"{REQUEST}.values",
            'at least one value is required, e.g. {"name": "usd", "aggregation": '
            '"AGGREGATION_SUM"}',
        )
    group_by: list[Field] = []
    for i, name in enumerate(request.group_by):
        field = _lookup_field(fields, name.strip(), f"{REQUEST}.groupBy.{i}")
        if any(g.kind == field.kind and g.key == field.key for g in group_by):
            raise InvalidField(f"{REQUEST}.groupBy.{i}", f"{name!r} is grouped by twice")
        group_by.append(field)
    filters: list[Filter] = []
    budget = MAX_CONDITIONS
    for i, text in enumerate(request.filters):
        parsed = parse_filter(text, fields, f"{REQUEST}.filters.{i}", budget)
        budget -= sum(len(alternative) for alternative in parsed)
        if parsed:
            filters.append(parsed)
    return AnalyticsQuery(team_id, zone, unit, start, end, values, tuple(group_by), tuple(filters))


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _parse_zone(name: str) -> ZoneInfo:
    key = name.strip() or "UTC"  # proto3 sends "" for an unset string
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidField(
            f"{REQUEST}.timeRange.timezone",
            f"unknown time zone {name!r}; use an IANA name such as America/New_York or UTC",
            code="unknown_timezone",
        ) from None


_LOCAL_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def _parse_local_time(text: str, zone: ZoneInfo, field: str) -> datetime:
    match = _LOCAL_TIME.fullmatch(text.strip())
    if match is None:
        raise InvalidField(
            field,
            f'{text!r} is not "YYYY-MM-DD HH:MM:SS" (local to timeRange.timezone)',
            code="invalid_time",
        )
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise InvalidField(
            field, f"the year must be between {MIN_YEAR} and {MAX_YEAR}", code="invalid_time"
        )
    try:
        # fold=0: a wall time repeated by a DST fall-back is its first occurrence; one skipped
        # by a spring-forward gap is read with the offset in force before the gap.
        local = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError as exc:
        raise InvalidField(
            field, f"{text!r} is not a valid time: {exc}", code="invalid_time"
        ) from None
    return local.astimezone(UTC)


def _parse_unit(value: str | int) -> TimeUnit:
    unit: TimeUnit | None
    if isinstance(value, int):
        unit = _UNIT_NUMBERS.get(value)
    else:
        try:
            unit = TimeUnit(value.strip())
        except ValueError:
            unit = None
    if unit is None:
        raise InvalidField(
            f"{REQUEST}.timeUnit",
            f"{value!r} is not a time unit; one of {', '.join(u.value for u in TimeUnit)}",
            code="invalid_time_unit",
        )
    return unit


_SUPPORTED = (
    "usd and num_units with AGGREGATION_SUM, _AVG, _COUNT, _MIN, _MAX, _VAR, _STD, _P50, _P90, "
    "_P99 or _P999; requests with AGGREGATION_COUNT; a groupBy field (such as api_key_id) with "
    "AGGREGATION_COUNT_DISTINCT"
)


def _parse_value(
    index: int, name: str, aggregation: str | int, fields: dict[str, Field]
) -> ValueSpec:
    path = f"{REQUEST}.values.{index}"
    name = name.strip()
    agg = _parse_aggregation(aggregation, name, path)
    if agg is Aggregation.COUNT_DISTINCT:
        field = fields.get(name)
        if field is None:
            raise InvalidField(
                path,
                f"AGGREGATION_COUNT_DISTINCT counts the distinct values of a field, and {name!r} "
                f"is not one; fields: {_field_names(fields)}",
                code="unsupported_value",
            )
        return ValueSpec(name, agg, field)
    supported = (name == "requests" and agg is Aggregation.COUNT) or (
        name in PER_EVENT_VALUES and agg in (*ROLLUP_AGGREGATIONS, *EVENT_AGGREGATIONS)
    )
    if not supported:
        raise InvalidField(
            path,
            f"unsupported value {name!r} with {agg.value}; supported: {_SUPPORTED}",
            code="unsupported_value",
        )
    return ValueSpec(name, agg)


def _parse_aggregation(value: str | int, name: str, path: str) -> Aggregation:
    agg: Aggregation | None
    if isinstance(value, int):
        agg = _AGGREGATION_NUMBERS.get(value)
    else:
        try:
            agg = Aggregation(value.strip())
        except ValueError:
            agg = None
    if agg is None:
        raise InvalidField(
            path,
            f"{value!r} is not an aggregation; one of "
            f"{', '.join(a.value for a in Aggregation if a is not Aggregation.NONE)}",
            code="invalid_aggregation",
        )
    if agg is Aggregation.NONE:
        raise InvalidField(
            path,
            f"AGGREGATION_NONE (what a missing aggregation means) does not say how to aggregate "
            f"{name!r} per bucket; send one, e.g. AGGREGATION_SUM. Supported: {_SUPPORTED}",
            code="invalid_aggregation",
        )
    return agg


def _field_names(fields: dict[str, Field]) -> str:
    return ", ".join(sorted({f.name for f in fields.values() if f.name == _snake(f.name)}))


def _lookup_field(fields: dict[str, Field], name: str, path: str) -> Field:
    field = fields.get(name)
    if field is not None:
        return field
    if name in _VALUE_NAMES:
        raise InvalidField(
            path,
            f"{name!r} is a value, not a field: filters and groups apply to description, "
            "unit_type, sku and the groupable properties (per-event amounts are not kept)",
            code="unsupported_field",
        )
    raise InvalidField(
        path, f"unknown field {name!r}; known fields: {_field_names(fields)}", code="unknown_field"
    )


def parse_filter(
    text: str, fields: dict[str, Field], path: str, budget: int = MAX_CONDITIONS
) -> Filter:
    """One filter string: ``[NOT ]field:[op]value`` conditions joined by ``AND`` inside
    alternatives joined by ``OR`` (AND binds tighter). ``op`` is one of ``> >= < <=`` (numeric)
    or none (equality). An empty filter string is ignored.

    Keywords are the upper-case words ``OR``, ``AND``, ``NOT`` standing alone (between
    whitespace) outside quotes; a value may be double-quoted to hold them, spaces or a leading
    operator character (``\\"`` escapes a quote, ``\\\\`` a backslash). Every other shape is a 400
    ``invalid_filter`` naming the filter, never a silently different filter: a keyword with
    nothing before or after it (``model:a OR``, ``OR model:a``, ``model:a OR  OR model:b``), a
    condition without a field or without a value (``model:`` -- write ``model:""`` for events
    without the property), ``NOT`` alone, a comparison with something that is not a number, a
    value starting with ``=`` or ``!`` (not operators here; use ``NOT``), stray quotes.
    More than ``budget`` conditions is a 400 ``too_many_conditions``.
    """
    if not text.strip():
        return ()
    return tuple(
        tuple(_parse_condition(condition, fields, path) for condition in alternative)
        for alternative in _split_filter(text, path, budget)
    )


_JOINERS = ("OR", "AND")


def _split_filter(text: str, path: str, budget: int) -> list[list[str]]:
    """The raw condition texts of a filter, as alternatives (split at ``OR``) of conjunctions
    (split at ``AND``); the keywords count only as whole words outside quotes."""
    alternatives: list[list[str]] = [[]]
    previous: str | None = None  # the keyword before the current condition
    start = 0  # where the current condition's text begins
    quoted = False
    i = 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 2
                continue
            quoted = char != '"'
            i += 1
            continue
        if char == '"':
            quoted = True
            i += 1
            continue
        keyword = _keyword_at(text, i)
        if keyword is None:
            i += 1
            continue
        condition = text[start:i]
        if not condition.strip():
            where = f"between {previous!r} and {keyword!r}" if previous else f"before {keyword!r}"
            raise _bad_filter(path, f"no condition {where} in {text!r}")
        alternatives[-1].append(condition)
        budget = _spend_condition(budget, path)
        if keyword == "OR":
            alternatives.append([])
        previous = keyword
        i = start = i + len(keyword)
    if quoted:
        raise _bad_filter(path, f"unterminated quote in {text!r}")
    last = text[start:]
    if not last.strip():
        raise _bad_filter(path, f"no condition after {previous!r} in {text!r}")
    alternatives[-1].append(last)
    _spend_condition(budget, path)
    return alternatives


def _spend_condition(budget: int, path: str) -> int:
    """One more condition out of the request's budget: refused as soon as it is exceeded, so an
    absurdly long filter is not parsed to its end."""
    if budget <= 0:
        raise InvalidField(
            path,
            f"the filters hold more than {MAX_CONDITIONS} conditions in all",
            code="too_many_conditions",
        )
    return budget - 1


def _keyword_at(text: str, i: int) -> str | None:
    """``OR`` or ``AND`` standing alone at ``i`` (whitespace or an end on both sides)."""
    if i > 0 and not text[i - 1].isspace():
        return None
    for keyword in _JOINERS:
        end = i + len(keyword)
        if text.startswith(keyword, i) and (end == len(text) or text[end].isspace()):
            return keyword
    return None


_SHAPES = "write field:value, NOT field:value or field:>number"


def _parse_condition(text: str, fields: dict[str, Field], path: str) -> Condition:
    condition = text.strip()
    negated = condition == "NOT" or (condition.startswith("NOT") and condition[3].isspace())
    if negated:
        condition = condition[3:].strip()
        if not condition:
            raise _bad_filter(path, f"NOT needs a condition after it; {_SHAPES}")
    name, colon, rest = condition.partition(":")
    name = name.strip()
    if not colon or '"' in name or any(c.isspace() for c in name):
        raise _bad_filter(path, f"{text.strip()!r} is not a condition; {_SHAPES}")
    if not name:
        raise _bad_filter(path, f"{text.strip()!r} has no field before ':'; {_SHAPES}")
    field = _lookup_field(fields, name, path)
    rest = rest.strip()
    op: Literal["=", ">", ">=", "<", "<="] = "="
    for candidate in (">=", "<=", ">", "<"):
        if rest.startswith(candidate):
            op = candidate
            rest = rest[len(candidate) :].strip()
            break
    operand = _operand(rest, name, op, path)
    number = None
    if op != "=":
        number = _number(operand)
        if number is None:
            raise _bad_filter(path, f"{name}:{op} needs a number, not {rest!r}")
    return Condition(field, op, operand, number, negated)


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)


def _operand(text: str, name: str, op: str, path: str) -> str:
    """The value of a condition: quoted (exactly one quoted string) or bare (not empty, no
    quotes, not starting with an operator character that is not one)."""
    if text.startswith('"'):
        match = _QUOTED.fullmatch(text)
        if match is None:
            raise _bad_filter(path, f"bad quoting in {text!r}; quote the whole value")
        return re.sub(r"\\(.)", r"\1", match.group(1), flags=re.DOTALL)
    if '"' in text:
        raise _bad_filter(path, f"a quote inside the value {text!r}; quote the whole value")
    if not text:
        if op != "=":
            raise _bad_filter(path, f"{name}:{op} needs a number")
        raise _bad_filter(
            path, f'{name}: has no value; write {name}:"" to match events without {name}'
        )
    if op == "=" and text[0] in "=!":
        raise _bad_filter(
            path,
            f"the value {text!r} of {name} starts with an operator this filter syntax does not "
            f"have; write "
            f"{name}:value, NOT {name}:value, {name}:>number (>=, <, <=), or quote a value "
            f"that starts with {text[0]!r}",
        )
    return text


def _bad_filter(path: str, message: str) -> InvalidField:
    return InvalidField(path, message, code="invalid_filter")


# A plain decimal number, as in a comparison: no NaN, infinities, underscores or spaces.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _number(text: str) -> Decimal | None:
    """The number ``text`` writes, or None -- also for one whose exponent Decimal cannot hold
    (beyond about 10^18 either way): such a value never satisfies a comparison, and such an
    operand is refused like any other that is not a number."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


# --- the time grid -----------------------------------------------------------------------------


class TooManyBuckets(Exception):
    pass


def floor_to(at: datetime, seconds: int) -> datetime:
    step = timedelta(seconds=seconds)
    return EPOCH + ((at - EPOCH) // step) * step


def ceil_to(at: datetime, seconds: int) -> datetime:
    floored = floor_to(at, seconds)
    return floored if floored == at else floored + timedelta(seconds=seconds)


def bucket_starts(
    unit: TimeUnit, zone: ZoneInfo, start: datetime, end: datetime, limit: int = MAX_POINTS
) -> list[datetime]:
    """UTC starts of the buckets covering [start, end), the first aligned at or before start.

    Raises TooManyBuckets when more than ``limit`` would be needed (without building them).
    """
    if unit is TimeUnit.NONE:
        return [start]
    if unit in _FIXED_STEP:
        seconds = _FIXED_STEP[unit]
        first = floor_to(start, seconds)
        if (end - first) / timedelta(seconds=seconds) > limit:
            raise TooManyBuckets
        step = timedelta(seconds=seconds)
        return [first + i * step for i in range(-(-(end - first) // step))]
    if unit is TimeUnit.HOUR:
        return _hour_starts(zone, start, end, limit)
    return _calendar_starts(unit, zone, start, end, limit)


def _hour_key(at: datetime, zone: ZoneInfo) -> tuple[int, int, int, int, timedelta | None]:
    local = at.astimezone(zone)
    return (local.year, local.month, local.day, local.hour, local.utcoffset())


def _hour_starts(zone: ZoneInfo, start: datetime, end: datetime, limit: int) -> list[datetime]:
    # A bucket is a run of quarter hours with the same local wall hour *and* offset: so the hour
    # repeated at a fall-back is two buckets, and a half-hour DST shift (Australia/Lord_Howe)
    # gives a half-hour bucket, as a wall clock shows them.
    if (end - start) > 2 * limit * timedelta(hours=1):
        raise TooManyBuckets
    at = floor_to(start, ROLLUP_SECONDS)
    key = _hour_key(at, zone)
    for _ in range(8):
        if _hour_key(at - QUARTER, zone) != key:
            break
        at -= QUARTER
    starts: list[datetime] = []
    last_key = None
    while at < end:
        key = _hour_key(at, zone)
        if key != last_key:
            if len(starts) == limit:
                raise TooManyBuckets
            starts.append(at)
            last_key = key
        at += QUARTER
    return starts


def _calendar_starts(
    unit: TimeUnit, zone: ZoneInfo, start: datetime, end: datetime, limit: int
) -> list[datetime]:
    day = start.astimezone(zone).date()
    if unit is TimeUnit.CALENDAR_WEEK:
        day -= timedelta(days=day.weekday())
    elif unit is TimeUnit.MONTH:
        day = day.replace(day=1)
    starts: list[datetime] = []
    while True:
        # Local midnight (fold=0: where midnight falls in a DST gap this is the first instant
        # of the day; where it repeats, its first occurrence).
        begin = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
        if starts and begin >= end:
            break
        if not starts or begin > starts[-1]:  # a skipped day (Pacific/Apia 2011) is no bucket
            if len(starts) == limit:
                raise TooManyBuckets
            starts.append(begin)
        day = _next_period(day, unit)
    return starts


def _next_period(day: date, unit: TimeUnit) -> date:
    if unit is TimeUnit.DAY:
        return day + timedelta(days=1)
    if unit is TimeUnit.CALENDAR_WEEK:
        return day + timedelta(days=7)
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def offset_segments(zone: ZoneInfo, first: datetime, last: datetime) -> list[tuple[datetime, int]]:
    """``(from, UTC offset in seconds)`` for each stretch of constant offset in [first, last],
    to the quarter hour (rollup buckets start on quarter hours; so do all of today's offsets)."""

    def offset(at: datetime) -> int:
        delta = at.astimezone(zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    segments = [(first, offset(first))]
    at = first
    while at < last:
        following = min(at + _OFFSET_SAMPLE, last)
        if offset(following) != segments[-1][1]:
            low, high = at, following  # offset(low) is the current one, offset(high) is not
            while high - low > QUARTER:
                middle = low + ((high - low) // QUARTER // 2) * QUARTER
                if offset(middle) == segments[-1][1]:
                    low = middle
                else:
                    high = middle
            segments.append((high, offset(high)))
            if offset(following) != segments[-1][1]:  # two changes within one sample
                segments.append((following, offset(following)))
        at = following
    return segments


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


def _zero(spec: ValueSpec) -> int | float:
    """A bucket without usage: 0 for every aggregation (no events have no mean, extreme or
    spread; the wire's doubles have no null), as a float where the value is one."""
    integral = spec.aggregation in (Aggregation.COUNT, Aggregation.COUNT_DISTINCT) or (
        spec.name == "num_units"
        and spec.aggregation not in (Aggregation.AVG, Aggregation.VAR, Aggregation.STD)
    )
    return 0 if integral else 0.0


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


def _per_event(spec: ValueSpec, seen: Counter[tuple[int, int]] | None) -> int | float:
    """MIN, MAX, VAR, STD or a percentile of the events' own values, exact: computed over the
    integers (pico-dollars for usd), turned into a float once."""
    usd = spec.name == "usd"
    values: Counter[int] = Counter()
    for (quantity, price), events in (seen or {}).items():
        values[quantity * price if usd else quantity] += events
    if not values:  # the rollups saw usage the raw events do not hold (see docs)
        return _zero(spec)
    agg = spec.aggregation
    if agg in (Aggregation.VAR, Aggregation.STD):
        # Population variance (the events of the bucket are all its events, not a sample):
        # (n * sum(x^2) - sum(x)^2) / n^2, in integers; dollars^2 for usd.
        n = sum(values.values())
        s1 = sum(x * k for x, k in values.items())
        s2 = sum(x * x * k for x, k in values.items())
        numerator, denominator = n * s2 - s1 * s1, n * n * (PICO_PER_USD**2 if usd else 1)
        if agg is Aggregation.VAR:
            return numerator / denominator  # correctly rounded
        return float((Decimal(numerator) / Decimal(denominator)).sqrt(_SQRT_CONTEXT))
    if agg is Aggregation.MIN:
        value = min(values)
    elif agg is Aggregation.MAX:
        value = max(values)
    else:
        value = _nearest_rank(values, PERCENTILES[agg])
    return pico_to_usd_float(value) if usd else value


# Enough digits that the square root, rounded once more to a float, is the float nearest to the
# exact one (but in cases ~10^-40 apart from a tie).
_SQRT_CONTEXT = Context(prec=60)


def _nearest_rank(values: Counter[int], share: Fraction) -> int:
    """The smallest value with at least ``share`` of the events at or below it: a value some
    event has (PostgreSQL's percentile_disc), exact."""
    n = sum(values.values())
    rank = max(1, -(-share.numerator * n // share.denominator))  # ceil(share * n)
    below = 0
    for value in sorted(values):
        below += values[value]
        if below >= rank:
            return value
    raise AssertionError("rank beyond the events")  # pragma: no cover


def _bucket_index(starts: list[datetime], at: datetime) -> int:
    # Usage before the first aligned start can only come from a zone whose historical offset is
    # not a multiple of 15 minutes; it is counted in the first bucket.
    return max(0, bisect.bisect_right(starts, at) - 1)


def raw_event_sums(
    session: Session,
    team_id: uuid.UUID,
    start: datetime,
    end: datetime,
    step: int,
    *,
    with_properties: bool,
) -> Iterator[tuple[int, int, int, int, dict[str, Any]]]:
    """A team's raw events in ``[start, end)``, canceled ones left out, summed per
    ``step``-second part of the time since 1970 and price version (and property set, with
    ``with_properties``): ``(part, price version id, quantity, events, properties)``, the
    properties ``{}`` without ``with_properties``. MINUTE and SECOND analytics read this, and so
    do the rollup rebuild (metering/rebuild.py) and the cancellation (metering/cancellation.py)."""
    e = UsageEvent
    second = _epoch_seconds(session, e.ts)
    inner = (
        select(
            (second // step if step > 1 else second).label("part"),
            e.price_version_id.label("version"),
            e.quantity,
            e.property_set_id,
        )
        .where(e.team_id == team_id, e.ts >= start, e.ts < end, e.canceled_at.is_(None))
        .subquery()
    )
    keys = [inner.c.part, inner.c.version]
    if with_properties:
        keys.append(inner.c.property_set_id)
    grouped = (
        select(*keys, func.sum(inner.c.quantity).label("quantity"), func.count().label("n"))
        .group_by(*keys)
        .subquery()
    )
    stmt = select(grouped.c.part, grouped.c.version, grouped.c.quantity, grouped.c.n)
    if with_properties:
        # Each group's properties from its set, once per group rather than per event (outer: an
        # event whose set is missing still counts, without properties).
        s = UsagePropertySet
        stmt = stmt.add_columns(s.properties).outerjoin(s, s.id == grouped.c.property_set_id)
    row: Any
    for row in session.execute(stmt):
        properties = (row[4] if with_properties else None) or {}
        yield int(row[0]), int(row[1]), int(row[2]), int(row[3]), properties


class TooManyEventValues(Exception):
    pass


def raw_event_values(
    session: Session,
    team_id: uuid.UUID,
    start: datetime,
    end: datetime,
    step: int,
    *,
    with_properties: bool,
    extremes: bool,
    limit: int,
) -> list[tuple[int, int, dict[str, Any], list[tuple[int, int]]]]:
    """A team's raw events in ``[start, end)``, canceled ones left out, per ``step``-second part
    of the time since 1970 (a single part 0 with ``step`` 0), price version (and property set,
    with ``with_properties``): ``(part, price version id, properties, [(quantity, events)])`` --
    every distinct quantity with its number of events, or with ``extremes`` only the smallest and
    the largest (each with 1).

    The database groups, and finds the extremes; the variance and percentiles are computed by the
    caller in Python ints: SQLite has neither, and a sum of squared quantities (up to 10^24 each)
    overflows its int64. Raises TooManyEventValues when more than ``limit`` rows would come back.
    """
    e = UsageEvent
    second = _epoch_seconds(session, e.ts)
    part: ColumnElement[int] = second // step if step > 1 else second
    if step == 0:  # one part
        part = literal(0, BigInteger)
    inner = (
        select(
            part.label("part"),
            e.price_version_id.label("version"),
            e.quantity.label("quantity"),
            e.property_set_id.label("set_id"),
        )
        .where(e.team_id == team_id, e.ts >= start, e.ts < end, e.canceled_at.is_(None))
        .subquery()
    )
    keys = [inner.c.part, inner.c.version, inner.c.set_id if with_properties else null()]
    grouping = keys[:3] if with_properties else keys[:2]
    stmt: Select[Any]
    if extremes:  # (smallest, largest)
        stmt = select(*keys, func.min(inner.c.quantity), func.max(inner.c.quantity)).group_by(
            *grouping
        )
    else:  # (quantity, events)
        stmt = select(*keys, inner.c.quantity, func.count()).group_by(*grouping, inner.c.quantity)
    rows: Sequence[Any] = session.execute(stmt.limit(limit + 1)).all()
    if len(rows) > limit:
        raise TooManyEventValues
    slices: dict[tuple[int, int, Any], list[tuple[int, int]]] = {}
    for part_, version, set_id, first, second_ in rows:
        quantities = slices.setdefault((int(part_), int(version), set_id), [])
        if extremes:
            quantities += [(int(first), 1), (int(second_), 1)]
        else:
            quantities.append((int(first), int(second_)))
    sets: dict[Any, dict[str, Any]] = {}
    if with_properties:
        wanted = sorted({set_id for _, _, set_id in slices})
        s = UsagePropertySet
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            for set_id, properties in session.execute(
                select(s.id, s.properties).where(s.id.in_(chunk))
            ):
                sets[set_id] = properties
    # an event whose set is missing still counts, without properties
    return [
        (part_, version, sets.get(set_id) or {}, quantities)
        for (part_, version, set_id), quantities in slices.items()
    ]


def _has_date_bin(session: Session) -> bool:
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and (dialect.server_version_info or (0,)) >= (14,)


def _local_part(
    session: Session,
    column: Any,
    segments: list[tuple[datetime, int]],
    offset: ColumnElement[Any],
    seconds: int,
) -> ColumnElement[Any]:
    """The local hour or day (``seconds`` wide) of a rollup bucket at its segment's UTC offset: a
    value that two buckets of one segment share exactly when they are in the same local hour or
    day (so, grouped together with the offset, a partition).

    On PostgreSQL 14+ that is ``date_bin`` with an origin shifted by the offset: timestamp
    arithmetic in integers, where epoch seconds (``extract`` gives a numeric since 14) cost ~2x
    more per row -- half the query's time for a busy month. Elsewhere, epoch seconds.
    """
    if not _has_date_bin(session):
        return (_epoch_seconds(session, column) + offset + _EPOCH_SHIFT) // seconds
    origins = [
        literal(_BIN_ORIGIN - timedelta(seconds=utc_offset), DateTime(timezone=True))
        for _, utc_offset in segments
    ]
    origin: ColumnElement[Any] = (
        origins[0]
        if len(segments) == 1
        else case(
            *[(column < segments[i + 1][0], origins[i]) for i in range(len(segments) - 1)],
            else_=origins[-1],
        )
    )
    return func.date_bin(literal(timedelta(seconds=seconds), Interval()), column, origin)


def _epoch_seconds(session: Session, column: Any) -> ColumnElement[int]:
    """Whole seconds since 1970 (floored) of a UTC timestamp column, per dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), BigInteger)
    # SQLite stores naive UTC text ("2026-11-10 10:01:59.999600"). strftime('%s') rounds it to
    # the millisecond first (to 10:02:00), so the fraction is cut off before: the whole seconds.
    return cast(func.strftime("%s", func.substr(column, 1, 19)), BigInteger)


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
