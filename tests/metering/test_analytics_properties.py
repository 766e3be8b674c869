"""Usage analytics against a brute force over the raw events (hypothesis), on both databases.

Random events (SKUs with prices, one SKU changing price and description mid-window, timestamps
over a month that holds the Berlin and New York DST changes, properties) are ingested for a fresh
team; random queries (zone, unit, range, groupBy, filters, values) must equal a sum over the
events computed here independently: every bucket present (dense), every value exact (usd compared
with the float of the exact Decimal sum; every aggregation from its definition, in fractions),
series in the documented order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billfold.kit.clock import frozen
from tests.conftest import Api, unique_sku
from tests.metering.test_analytics import NOW, post_usage

WINDOW_START = datetime(2026, 10, 15, tzinfo=UTC)
WINDOW = timedelta(days=31)
ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Australia/Eucla",
    "UTC",
    "Etc/GMT",
]
UNITS = [
    "TIME_UNIT_DAY",
    "TIME_UNIT_HOUR",
    "TIME_UNIT_NONE",
    "TIME_UNIT_MONTH",
    "TIME_UNIT_CALENDAR_WEEK",
    "TIME_UNIT_QUARTER_HOUR",
    "TIME_UNIT_MINUTE",
]
# a range short enough that the answer stays small (and under the point cap)
MAX_RANGE = {
    "TIME_UNIT_HOUR": timedelta(days=3),
    "TIME_UNIT_QUARTER_HOUR": timedelta(days=1),
    "TIME_UNIT_MINUTE": timedelta(hours=6),
}
GROUP_FIELDS = ["description", "unit_type", "sku", "api_key_id", "model", "cluster_name"]
VALUES = [
    {"name": "usd", "aggregation": "AGGREGATION_SUM"},
    {"name": "num_units", "aggregation": "AGGREGATION_SUM"},
    {"name": "requests", "aggregation": "AGGREGATION_COUNT"},
    {"name": "usd", "aggregation": "AGGREGATION_AVG"},
    {"name": "usd", "aggregation": "AGGREGATION_MIN"},
    {"name": "usd", "aggregation": "AGGREGATION_MAX"},
    {"name": "usd", "aggregation": "AGGREGATION_VAR"},
    {"name": "usd", "aggregation": "AGGREGATION_P90"},
    {"name": "num_units", "aggregation": "AGGREGATION_MAX"},
    {"name": "num_units", "aggregation": "AGGREGATION_STD"},
    {"name": "num_units", "aggregation": "AGGREGATION_P50"},
    {"name": "model", "aggregation": "AGGREGATION_COUNT_DISTINCT"},
    {"name": "api_key_id", "aggregation": "AGGREGATION_COUNT_DISTINCT"},
]
OWN_KEY = "own"  # stands for the team's own management key id in generated events


@dataclass(frozen=True)
class Version:
    price: Decimal
    description: str
    unit_type: str
    effective_from: datetime


@dataclass(frozen=True)
class Sku:
    name: str
    versions: tuple[Version, ...]

    def version_at(self, at: datetime) -> Version:
        return [v for v in self.versions if v.effective_from <= at][-1]


@pytest.fixture
def catalogue(api: Api) -> list[Sku]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    change = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    plan = [
        [("0.000003", "Prompt text tokens", base)],
        [("0.000015", "Completion tokens", base)],
        [("0.0000007", "Prompt text tokens", base)],  # same unit type as the first
        [("0.02", "Images", base), ("0.035", "Images", change)],  # a price change mid-window
    ]
    skus = []
    for versions in plan:
        name = unique_sku("prop")
        made = []
        for i, (price, unit_type, start) in enumerate(versions):
            description = f"Model {name}" + (f" v{i + 1}" if i else "")
            api.set_price(name, price, start.isoformat(), description, unit_type)
            made.append(Version(Decimal(price), description, unit_type, start))
        skus.append(Sku(name, tuple(made)))
    return skus


@dataclass(frozen=True)
class Usage:
    sku: int
    quantity: int
    at: datetime
    key: str | None
    model: str | None
    cluster: str | None


usages = st.builds(
    Usage,
    sku=st.integers(0, 3),
    quantity=st.one_of(st.integers(0, 1000), st.integers(0, 10**12)),
    at=st.integers(0, int(WINDOW.total_seconds()) - 1).map(
        lambda s: WINDOW_START + timedelta(seconds=s)
    ),
    key=st.sampled_from([None, OWN_KEY, "6b1f3a2e-0000-4000-8000-000000000001", "legacy-key"]),
    model=st.sampled_from([None, "m1", "m2", "7"]),
    cluster=st.sampled_from([None, "us-1", "eu-1"]),
)


def _m2_off_us_or_7(v: dict[str, str]) -> bool:
    return (v["model"] == "m2" and v["cluster_name"] != "us-1") or v["model"] == "7"


# (filter text, the same predicate over one event's group values)
Predicate = Callable[[dict[str, str]], bool]
FILTERS: list[tuple[str, Predicate]] = [
    ("model:m1", lambda v: v["model"] == "m1"),
    ("NOT model:m1", lambda v: v["model"] != "m1"),
    ("model:m1 OR model:m2", lambda v: v["model"] in ("m1", "m2")),
    ('cluster_name:""', lambda v: v["cluster_name"] == ""),
    ("model:m2 AND NOT cluster_name:us-1 OR model:7", lambda v: _m2_off_us_or_7(v)),
    ("model:>=7", lambda v: v["model"] == "7"),
    ("unit_type:Prompt text tokens", lambda v: v["unit_type"] == "Prompt text tokens"),
]  # fmt: skip


@dataclass(frozen=True)
class Query:
    zone: str
    unit: str
    start_offset: int  # seconds after WINDOW_START - 1 day, as a local wall time
    length: int  # seconds
    group_by: tuple[str, ...]
    values: tuple[int, ...]
    filters: tuple[int, ...]


@st.composite
def queries(draw: st.DrawFn) -> Query:
    unit = draw(st.sampled_from(UNITS))
    longest = MAX_RANGE.get(unit, WINDOW + timedelta(days=2))
    return Query(
        zone=draw(st.sampled_from(ZONES)),
        unit=unit,
        start_offset=draw(st.integers(0, int((WINDOW + timedelta(days=1)).total_seconds()))),
        length=draw(st.integers(1, int(longest.total_seconds()))),
        group_by=tuple(draw(st.lists(st.sampled_from(GROUP_FIELDS), unique=True, max_size=3))),
        values=tuple(
            draw(st.lists(st.integers(0, len(VALUES) - 1), unique=True, min_size=1, max_size=4))
        ),
        filters=tuple(draw(st.lists(st.integers(0, len(FILTERS) - 1), unique=True, max_size=2))),
    )


def bucket_key(unit: str, zone: ZoneInfo, at: datetime) -> Any:
    """The bucket of an instant, computed independently of the implementation."""
    local = at.astimezone(zone)
    if unit == "TIME_UNIT_DAY":
        return local.date()
    if unit == "TIME_UNIT_CALENDAR_WEEK":
        return local.date() - timedelta(days=local.weekday())
    if unit == "TIME_UNIT_MONTH":
        return date(local.year, local.month, 1)
    if unit == "TIME_UNIT_HOUR":
        return (local.date(), local.hour, local.utcoffset())
    if unit == "TIME_UNIT_QUARTER_HOUR":
        return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)
    if unit == "TIME_UNIT_MINUTE":
        return at.replace(second=0, microsecond=0)
    return None  # NONE: one bucket


def floor_quarter(at: datetime) -> datetime:
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def ceil_quarter(at: datetime) -> datetime:
    floored = floor_quarter(at)
    return floored if floored == at else floored + timedelta(minutes=15)


def parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(usages, max_size=30), asked=st.lists(queries(), min_size=1, max_size=3))
def test_analytics_equal_a_brute_force_over_events(
    api: Api, catalogue: list[Sku], events: list[Usage], asked: list[Query]
) -> None:
    with frozen(NOW):
        team_id = api.create_team()
        key = api.create_key(team_id)
        headers = {"Authorization": f"Bearer {key['apiKey']}"}
        key_label = f"{key['name']} ({key['redactedApiKey']})"
        wire = []
        for i, usage in enumerate(events):
            properties = {}
            if usage.key is not None:
                properties["apiKeyId"] = key["keyId"] if usage.key == OWN_KEY else usage.key
            if usage.model is not None:
                properties["model"] = usage.model
            if usage.cluster is not None:
                properties["clusterName"] = usage.cluster
            wire.append(
                {
                    "eventId": f"e{i}",
                    "teamId": team_id,
                    "sku": catalogue[usage.sku].name,
                    "quantity": str(usage.quantity),
                    "timestamp": usage.at.isoformat(),
                    "properties": properties,
                }
            )
        result = api.ingest(wire)
        assert result["accepted"] == len(events) and result["rejected"] == [], result
        for query in asked:
            check(api, team_id, headers, catalogue, events, query, key["keyId"], key_label)


def check(
    api: Api,
    team_id: str,
    headers: dict[str, str],
    catalogue: list[Sku],
    events: list[Usage],
    query: Query,
    own_key_id: str,
    own_key_label: str,
) -> None:
    zone = ZoneInfo(query.zone)
    local_start = (WINDOW_START - timedelta(days=1)).replace(tzinfo=None) + timedelta(
        seconds=query.start_offset
    )
    local_end = local_start + timedelta(seconds=query.length)
    start = local_start.replace(tzinfo=zone).astimezone(UTC)  # fold=0, as documented
    end = local_end.replace(tzinfo=zone).astimezone(UTC)
    if end <= start:  # a range that is empty once the zone's gap is applied: a 400
        return
    if query.unit == "TIME_UNIT_MINUTE":  # exact, from raw events
        low, high = start, end
    else:  # widened to quarter hours
        low, high = floor_quarter(start), ceil_quarter(end)
    values = [VALUES[i] for i in query.values]
    body = {
        "analyticsRequest": {
            "timeRange": {
                "startTime": local_start.strftime("%Y-%m-%d %H:%M:%S"),
                "endTime": local_end.strftime("%Y-%m-%d %H:%M:%S"),
                "timezone": query.zone,
            },
            "timeUnit": query.unit,
            "values": values,
            "groupBy": list(query.group_by),
            "filters": [FILTERS[i][0] for i in query.filters],
        }
    }
    response = post_usage(api, team_id, headers, body)
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert answer["limitReached"] is False

    # brute force: group -> bucket key -> [(units, exact dollars, group values) of each event]
    expected: dict[tuple[str, ...], dict[Any, list[tuple[int, Decimal, dict[str, str]]]]] = {}
    for usage in events:
        if not low <= usage.at < high:
            continue
        sku = catalogue[usage.sku]
        version = sku.version_at(usage.at)
        key_id = (own_key_id if usage.key == OWN_KEY else usage.key) or ""
        fields = {
            "description": version.description,
            "unit_type": version.unit_type,
            "sku": sku.name,
            "api_key_id": key_id,
            "model": usage.model or "",
            "cluster_name": usage.cluster or "",
        }
        if not all(FILTERS[i][1](fields) for i in query.filters):
            continue
        group = tuple(fields[f] for f in query.group_by)
        expected.setdefault(group, {}).setdefault(
            bucket_key(query.unit, zone, usage.at), []
        ).append((usage.quantity, usage.quantity * version.price, fields))
    if not query.group_by:
        expected.setdefault((), {})

    # every bucket of the range is there, once, in order
    step = timedelta(minutes=1 if query.unit == "TIME_UNIT_MINUTE" else 15)
    all_keys: list[Any] = []
    at = floor_quarter(low) if query.unit != "TIME_UNIT_MINUTE" else low.replace(second=0)
    while at < high:
        k = bucket_key(query.unit, zone, at)
        if not all_keys or all_keys[-1] != k:
            all_keys.append(k)
        at += step

    series = answer["timeSeries"]
    assert {tuple(s["group"]) for s in series} == set(expected)

    def totals(group: tuple[str, ...]) -> tuple[Decimal, int, int, tuple[str, ...]]:
        cells = expected[group].values()
        return (
            -sum((e[1] for c in cells for e in c), Decimal(0)),
            -sum(e[0] for c in cells for e in c),
            -sum(len(c) for c in cells),
            group,
        )

    assert [tuple(s["group"]) for s in series] == sorted(expected, key=totals)
    for s in series:
        group = tuple(s["group"])
        labels = [
            own_key_label if f == "api_key_id" and v == own_key_id else v
            for f, v in zip(query.group_by, group, strict=True)
        ]
        assert s["groupLabels"] == labels
        stamps = [parse_stamp(p["timestamp"]) for p in s["dataPoints"]]
        assert stamps == sorted(stamps)
        if query.unit != "TIME_UNIT_NONE":
            assert [bucket_key(query.unit, zone, t) for t in stamps] == all_keys
            assert stamps[0] <= low
        else:
            assert stamps == [low]
        for point in s["dataPoints"]:
            k = bucket_key(query.unit, zone, parse_stamp(point["timestamp"]))
            in_bucket = expected[group].get(k, [])
            for spec, got in zip(values, point["values"], strict=True):
                want = brute_force(spec["name"], spec["aggregation"], in_bucket)
                if spec["aggregation"] == "AGGREGATION_STD":
                    assert got == pytest.approx(want, rel=1e-15, abs=0), (query, group, k, spec)
                else:
                    assert (type(got), got) == (type(want), want), (query, group, k, spec)


def brute_force(
    name: str, aggregation: str, events: list[tuple[int, Decimal, dict[str, str]]]
) -> int | float:
    """One value of one bucket, from its definition (docs/api-decisions.md), over its events:
    (units, exact dollars, the event's group values)."""
    kind = aggregation.removeprefix("AGGREGATION_")
    if kind == "COUNT_DISTINCT":
        return len({fields[name] for _, _, fields in events} - {""})
    if kind == "COUNT":
        return len(events)
    xs = [Fraction(dollars) if name == "usd" else Fraction(units) for units, dollars, _ in events]
    floating = name == "usd" or kind in ("AVG", "VAR", "STD")
    if not xs:
        return 0.0 if floating else 0
    n = len(xs)
    if kind == "SUM":
        result = sum(xs, Fraction(0))
    elif kind in ("AVG", "VAR", "STD"):
        mean = sum(xs, Fraction(0)) / n
        variance = sum(((x - mean) ** 2 for x in xs), Fraction(0)) / n
        if kind == "STD":
            return math.sqrt(variance)
        result = mean if kind == "AVG" else variance
    elif kind == "MIN":
        result = min(xs)
    elif kind == "MAX":
        result = max(xs)
    else:  # nearest rank
        share = Fraction(int(kind[1:]), 10 ** len(kind[1:]))
        result = sorted(xs)[max(1, math.ceil(share * n)) - 1]
    return float(result) if floating else int(result)
