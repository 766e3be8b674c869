"""The analytics request (spec section 13) read into a query, and the answer's shape."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billfold.config import Settings
from billfold.kit.errors import InvalidField
from billfold.metering.analytics.buckets import _UNIT_NUMBERS, TimeUnit
from billfold.metering.analytics.fields import (
    _AGGREGATION_NUMBERS,
    EVENT_AGGREGATIONS,
    PER_EVENT_VALUES,
    ROLLUP_AGGREGATIONS,
    Aggregation,
    Field,
    _field_names,
    _lookup_field,
    available_fields,
)
from billfold.metering.analytics.filters import MAX_CONDITIONS, Filter, parse_filter
from billfold.metering.schemas import AnalyticsRequest

MIN_YEAR, MAX_YEAR = 1900, 2999


REQUEST = "analyticsRequest"


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
