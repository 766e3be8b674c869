"""Usage analytics' other aggregations (issue 14): AVG, MIN, MAX, VAR, STD and percentiles per
event, COUNT of a value, COUNT_DISTINCT of a field -- through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billfold.kit.clock import frozen
from billfold.metering.analytics import reader as analytics
from tests.conftest import Api, event, unique_sku
from tests.metering.test_analytics import NOW, by_group, post_usage, request_body, usage


def value(name: str, aggregation: str) -> dict[str, str]:
    return {"name": name, "aggregation": f"AGGREGATION_{aggregation}"}


def cancel(api: Api, team_id: str, *event_ids: str) -> None:
    body = {"events": [{"teamId": team_id, "eventId": e} for e in event_ids]}
    response = api.admin("POST", "/admin/v1/usage-events/cancel", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["canceled"] == len(event_ids)


def values_of(series: dict[str, Any]) -> list[list[Any]]:
    return [p["values"] for p in series["dataPoints"]]


def typed(values: list[Any]) -> list[tuple[type, Any]]:
    """Values with their JSON types: 0 and 0.0 are told apart."""
    return [(type(v), v) for v in values]


@pytest.fixture
def team(api: Api) -> tuple[str, dict[str, str], str, str]:
    """A team with usage over Nov 9-10: SKU a at $0.01 a unit, then $0.02 from Nov 10 12:00 (same
    description), SKU b at $0.001 a unit; one event canceled."""
    a, b = unique_sku("a"), unique_sku("b")
    api.set_price(a, "0.01", "2026-01-01T00:00:00Z", description=f"Model {a}")
    api.set_price(a, "0.02", "2026-11-10T12:00:00Z", description=f"Model {a}")
    api.set_price(b, "0.001", "2026-01-01T00:00:00Z", description=f"Model {b}")
    team_id, headers = api.team_with_key()
    events = [
        event(team_id, a, 100, "2026-11-09T01:00:00Z", "e1", model="m1", apiKeyId="k1"),  # $1
        event(team_id, a, 300, "2026-11-09T02:00:00Z", "e2", model="m1", apiKeyId="k2"),  # $3
        event(team_id, b, 1000, "2026-11-09T03:00:00Z", "e3", model="m2", apiKeyId="k1"),  # $1
        event(team_id, a, 50, "2026-11-09T04:00:00Z", "e4", model="m2", apiKeyId="k3"),  # canceled
        event(team_id, a, 100, "2026-11-10T10:00:00Z", "e5", model="m1", apiKeyId="k1"),  # $1
        event(team_id, a, 100, "2026-11-10T13:00:00Z", "e6", model="m1", apiKeyId="k1"),  # $2
        event(team_id, b, 4000, "2026-11-10T14:00:00Z", "e7", model="m2", apiKeyId="k2"),  # $4
    ]
    result = api.ingest(events)
    assert result["accepted"] == len(events), result
    cancel(api, team_id, "e4")
    return team_id, headers, a, b


DAYS = ("2026-11-08 00:00:00", "2026-11-11 00:00:00")  # Nov 8 (empty), 9, 10


def test_per_event_aggregations_by_hand(
    api: Api, team: tuple[str, dict[str, str], str, str]
) -> None:
    team_id, headers, _, _ = team
    asked = [
        value("usd", "AVG"),
        value("usd", "MIN"),
        value("usd", "MAX"),
        value("usd", "VAR"),
        value("usd", "STD"),
        value("usd", "P50"),
        value("num_units", "MIN"),
        value("num_units", "MAX"),
        value("num_units", "AVG"),
        value("num_units", "P90"),
        value("api_key_id", "COUNT_DISTINCT"),
        value("usd", "COUNT"),
        value("num_units", "SUM"),
    ]
    body = usage(api, team_id, headers, *DAYS, values=asked, group_by=["model"])
    series = body["timeSeries"]
    assert [s["group"] for s in series] == [["m1"], ["m2"]]  # $7, then $5
    m1, m2 = (values_of(s) for s in series)
    empty = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0.0, 0, 0, 0, 0]
    # Nov 9, m1: $1 and $3 (100 and 300 units, keys k1 and k2)
    # Nov 10, m1: $1 and $2 (100 units each, at two price versions, key k1)
    assert [typed(v) for v in m1] == [
        typed(empty),
        typed([2.0, 1.0, 3.0, 1.0, 1.0, 1.0, 100, 300, 200.0, 300, 2, 2, 400]),
        typed([1.5, 1.0, 2.0, 0.25, 0.5, 1.0, 100, 100, 100.0, 100, 1, 2, 200]),
    ]
    # m2: the canceled $0.50 (50 units, key k3) counts for nothing, not even a distinct key
    assert [typed(v) for v in m2] == [
        typed(empty),
        typed([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1000, 1000, 1000.0, 1000, 1, 1, 1000]),
        typed([4.0, 4.0, 4.0, 0.0, 0.0, 4.0, 4000, 4000, 4000.0, 4000, 1, 1, 4000]),
    ]


def test_one_bucket_over_everything(api: Api, team: tuple[str, dict[str, str], str, str]) -> None:
    team_id, headers, a, b = team
    # usd of the six events left: 1, 3, 1, 1, 2, 4 (mean 2, squared deviations 1+1+1+0+1+4 = 8)
    asked = [
        value("usd", "MIN"),
        value("usd", "MAX"),
        value("usd", "AVG"),
        value("usd", "VAR"),
        value("usd", "STD"),
        value("usd", "P50"),
        value("usd", "P90"),
        value("usd", "P99"),
        value("usd", "P999"),
        value("model", "COUNT_DISTINCT"),
        value("description", "COUNT_DISTINCT"),
        value("sku", "COUNT_DISTINCT"),
        value("unit_type", "COUNT_DISTINCT"),
        value("requests", "COUNT"),
    ]
    for unit in ("TIME_UNIT_NONE", "TIME_UNIT_MONTH"):
        body = usage(api, team_id, headers, *DAYS, unit=unit, values=asked)
        [point] = body["timeSeries"][0]["dataPoints"]
        assert point["values"] == [
            1.0,
            4.0,
            2.0,
            8 / 6,
            pytest.approx(math.sqrt(8 / 6), rel=1e-15),
            1.0,  # nearest rank: the 3rd of 6
            4.0,  # the 6th (5.4 rounded up)
            4.0,
            4.0,
            2,
            2,  # both versions of a have one description
            2,
            1,
            6,
        ], unit
    # grouped by description (the rollups without properties, raw events without sets)
    body = usage(
        api,
        team_id,
        headers,
        *DAYS,
        unit="TIME_UNIT_NONE",
        values=[
            value("num_units", "MAX"),
            value("num_units", "VAR"),
            value("sku", "COUNT_DISTINCT"),
        ],
        group_by=["description"],
    )
    groups = {g: values_of(s)[0] for g, s in by_group(body).items()}
    # a: 100, 300, 100, 100 units (mean 150, variance (2500 * 3 + 22500) / 4 = 7500)
    assert groups == {(f"Model {a}",): [300, 7500.0, 1], (f"Model {b}",): [4000, 2250000.0, 1]}


def test_min_and_max_alone_and_with_others_agree(
    api: Api, team: tuple[str, dict[str, str], str, str]
) -> None:
    """MIN and MAX alone are read as each slice's extremes; with VAR, as every quantity."""
    team_id, headers, _, _ = team
    extremes = [value("usd", "MIN"), value("usd", "MAX"), value("num_units", "MIN")]
    for unit, tz in [("TIME_UNIT_HOUR", "Asia/Kolkata"), ("TIME_UNIT_DAY", "America/New_York")]:
        alone = usage(api, team_id, headers, *DAYS, unit=unit, tz=tz, values=extremes)
        both = usage(
            api, team_id, headers, *DAYS, unit=unit, tz=tz, values=[*extremes, value("usd", "VAR")]
        )
        assert [v[:3] for v in values_of(both["timeSeries"][0])] == values_of(
            alone["timeSeries"][0]
        )
        assert sum(v[0] for v in values_of(alone["timeSeries"][0])) > 0


def test_minutes_from_raw_events(api: Api, team: tuple[str, dict[str, str], str, str]) -> None:
    team_id, headers, _, _ = team
    body = usage(
        api,
        team_id,
        headers,
        "2026-11-10 12:59:00",
        "2026-11-10 13:01:00",
        unit="TIME_UNIT_MINUTE",
        values=[value("usd", "MAX"), value("usd", "AVG"), value("api_key_id", "COUNT_DISTINCT")],
        group_by=["model"],
    )
    assert {g: values_of(s) for g, s in by_group(body).items()} == {
        ("m1",): [[0.0, 0.0, 0], [2.0, 2.0, 1]]
    }


def test_rollup_aggregations_never_read_raw_events(
    api: Api, team: tuple[str, dict[str, str], str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AVG, COUNT and COUNT_DISTINCT come from the rollups (flat cost), so they also answer for
    a range older than the raw events' retention window."""
    team_id, headers, _, _ = team

    def no_raw_events(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("raw events read")

    monkeypatch.setattr(analytics, "raw_event_values", no_raw_events)
    asked = [
        value("usd", "AVG"),
        value("num_units", "COUNT"),
        value("api_key_id", "COUNT_DISTINCT"),
        value("description", "COUNT_DISTINCT"),
    ]
    body = usage(api, team_id, headers, *DAYS, unit="TIME_UNIT_NONE", values=asked)
    assert values_of(body["timeSeries"][0]) == [[2.0, 6, 2, 2]]
    body = usage(api, team_id, headers, "2025-01-01 00:00:00", "2025-01-02 00:00:00", values=asked)
    assert values_of(body["timeSeries"][0]) == [[0.0, 0, 0, 0]]


def test_too_many_event_values_is_a_400_and_changes_nothing(
    api: Api, team: tuple[str, dict[str, str], str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    team_id, headers, _, _ = team
    before = usage(api, team_id, headers, *DAYS, values=[value("usd", "SUM")])
    monkeypatch.setattr(analytics, "MAX_EVENT_VALUES", 5)  # the 6 events have 6 values
    body = request_body(*DAYS, values=[value("usd", "SUM"), value("num_units", "P99")])
    response = post_usage(api, team_id, headers, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert (error["code"], error["field"]) == ("too_many_events", "analyticsRequest.values.1")
    assert usage(api, team_id, headers, *DAYS, values=[value("usd", "SUM")]) == before
    # MIN and MAX alone read one row per slice: 3 price versions in one bucket
    body = usage(api, team_id, headers, *DAYS, unit="TIME_UNIT_NONE", values=[value("usd", "MAX")])
    assert values_of(body["timeSeries"][0]) == [[4.0]]


@pytest.mark.parametrize(
    ("aggregation", "message"),
    [
        ("AGGREGATION_NONE", "AGGREGATION_NONE"),
        (0, "AGGREGATION_NONE"),
        (None, "AGGREGATION_NONE"),  # left out: proto3's default
        ("AGGREGATION_P95", "is not an aggregation"),
        (" ", "is not an aggregation"),
    ],
)
def test_no_aggregation_is_a_clear_400(
    api: Api, team: tuple[str, dict[str, str], str, str], aggregation: Any, message: str
) -> None:
    team_id, headers, _, _ = team
    before = usage(api, team_id, headers, *DAYS)
    asked: dict[str, Any] = {"name": "num_units"}
    if aggregation is not None:
        asked["aggregation"] = aggregation
    response = post_usage(api, team_id, headers, request_body(*DAYS, values=[asked]))
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_aggregation"
    assert error["field"] == "analyticsRequest.values.0"
    assert message in error["error"] and "AGGREGATION_SUM" in error["error"]
    assert usage(api, team_id, headers, *DAYS) == before


def test_proto_numbers_of_every_aggregation(
    api: Api, team: tuple[str, dict[str, str], str, str]
) -> None:
    team_id, headers, _, _ = team
    names = [
        "SUM", "AVG", "VAR", "STD", "MIN", "MAX", "P50", "P90", "P99", "P999", "COUNT",
    ]  # fmt: skip
    by_name = usage(api, team_id, headers, *DAYS, values=[value("usd", name) for name in names])
    by_number = usage(
        api,
        team_id,
        headers,
        *DAYS,
        values=[{"name": "usd", "aggregation": n} for n in range(1, 12)],
    )
    assert by_number == by_name
    distinct = usage(api, team_id, headers, *DAYS, values=[{"name": "model", "aggregation": 12}])
    assert values_of(distinct["timeSeries"][0]) == [[0], [2], [2]]


# --- exactness against a Python reference -------------------------------------------------------


def reference(kind: str, name: str, events: list[tuple[int, int]]) -> int | float:
    """One aggregation over (quantity, unit price in pico-dollars) events, from the definitions."""
    xs = [Fraction(q * p, 10**12) if name == "usd" else Fraction(q) for q, p in events]
    if not xs:
        return 0.0 if name == "usd" or kind in ("AVG", "VAR", "STD") else 0
    n = len(xs)
    mean = sum(xs, Fraction(0)) / n
    variance = sum(((x - mean) ** 2 for x in xs), Fraction(0)) / n
    ranked = sorted(xs)
    share = {"P50": Fraction(1, 2), "P90": Fraction(9, 10), "P99": Fraction(99, 100)}
    results: dict[str, Fraction] = {
        "AVG": mean,
        "MIN": ranked[0],
        "MAX": ranked[-1],
        "VAR": variance,
        **{k: ranked[max(1, math.ceil(s * n)) - 1] for k, s in share.items()},
    }
    if kind == "STD":
        return math.sqrt(float(variance))
    result = results[kind]
    if name == "num_units" and kind not in ("AVG", "VAR"):
        return int(result)
    return float(result)


KINDS = ["AVG", "MIN", "MAX", "VAR", "STD", "P50", "P90", "P99"]
quantities = st.one_of(st.integers(0, 1000), st.integers(0, 10**12))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.lists(quantities, max_size=12),
    second=st.lists(quantities, max_size=12),
    canceled=st.sets(st.integers(0, 23), max_size=4),
)
def test_exact_against_a_python_reference(
    api: Api, first: list[int], second: list[int], canceled: set[int]
) -> None:
    """Random quantities (up to 10^12: squares beyond int64) at two price versions of one SKU, in
    two hours, some canceled: every per-event aggregation equals its definition over the events
    left, computed in fractions, as the float nearest to it (STD: within 1e-15)."""
    with frozen(NOW):
        sku = unique_sku("x")
        # 12 decimals and 9: pico-dollar prices 1,234,567,891 and 7 (so usd values are ragged)
        api.set_price(sku, "0.001234567891", "2026-01-01T00:00:00Z", description="X")
        api.set_price(sku, "0.000000000007", "2026-11-10T01:00:00Z", description="X")
        prices = (1_234_567_891, 7)
        team_id, headers = api.team_with_key()
        wire, kept = [], []
        for hour, quantities_ in enumerate((first, second)):
            for i, q in enumerate(quantities_):
                event_id = f"e{hour * 12 + i}"
                at = f"2026-11-10T0{hour}:{i:02d}:00Z"
                wire.append(event(team_id, sku, q, at, event_id))
                if hour * 12 + i not in canceled:
                    kept.append((hour, q, prices[hour]))
        if wire:
            assert api.ingest(wire)["accepted"] == len(wire)
        sent = {w["eventId"] for w in wire}
        gone = [f"e{i}" for i in sorted(canceled) if f"e{i}" in sent]
        if gone:
            cancel(api, team_id, *gone)
        asked = [value(name, kind) for name in ("usd", "num_units") for kind in KINDS]
        body = request_body(
            "2026-11-10 00:00:00", "2026-11-10 02:00:00", unit="TIME_UNIT_HOUR", values=asked
        )
        response = post_usage(api, team_id, headers, body)
        assert response.status_code == 200, response.text
        [series] = response.json()["timeSeries"]
        if not kept:  # no usage at all: zeros
            assert all(v == 0 for p in series["dataPoints"] for v in p["values"])
            return
        for hour, point in enumerate(series["dataPoints"]):
            events = [(q, p) for h, q, p in kept if h == hour]
            for spec, got in zip(asked, point["values"], strict=True):
                kind = spec["aggregation"].removeprefix("AGGREGATION_")
                want = reference(kind, spec["name"], events)
                if kind == "STD":
                    assert math.isclose(got, want, rel_tol=1e-15, abs_tol=0), (spec, hour, events)
                else:
                    assert (type(got), got) == (type(want), want), (spec, hour, events)
