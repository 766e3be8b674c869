"""Usage analytics (billing-api §13) through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from billfold.kit.clock import frozen
from billfold.metering.analytics import reader as analytics
from billfold.metering.schemas import UsageAnalyticsResponse
from tests.conftest import Api, event, unique_sku

# Every test here runs at a fixed "now", so the retention window and the future tolerance of
# ingestion never depend on the day the suite runs.
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

USD = {"name": "usd", "aggregation": "AGGREGATION_SUM"}
UNITS = {"name": "num_units", "aggregation": "AGGREGATION_SUM"}
REQUESTS = {"name": "requests", "aggregation": "AGGREGATION_COUNT"}


@pytest.fixture(autouse=True)
def _frozen_now() -> Iterator[None]:
    with frozen(NOW):
        yield


def request_body(
    start: str,
    end: str,
    *,
    unit: str | int = "TIME_UNIT_DAY",
    tz: str = "Etc/GMT",
    values: list[dict[str, Any]] | None = None,
    group_by: list[str] | None = None,
    filters: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "analyticsRequest": {
            "timeRange": {"startTime": start, "endTime": end, "timezone": tz},
            "timeUnit": unit,
            "values": values if values is not None else [USD],
            "groupBy": group_by if group_by is not None else [],
            "filters": filters if filters is not None else [],
        }
    }


def post_usage(api: Api, team_id: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return api.client.post(f"/v1/billing/teams/{team_id}/usage", json=body, headers=headers)


def record_partitions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The partition kind ("none", "bucket", "local") of every rollup read analytics makes from
    now on, in order: one per read, so a re-read after a straddling partition shows as two."""
    reads: list[str] = []
    read_rollups = analytics.UsageAnalytics._read_rollups

    def recording(*args: Any) -> Any:
        reads.append(args[2].kind)  # (session, query, partition, ...)
        return read_rollups(*args)

    monkeypatch.setattr(analytics.UsageAnalytics, "_read_rollups", staticmethod(recording))
    return reads


def usage(api: Api, team_id: str, headers: dict[str, str], *args: str, **kwargs: Any) -> Any:
    response = post_usage(api, team_id, headers, request_body(*args, **kwargs))
    assert response.status_code == 200, response.text
    body = response.json()
    # the hand-serialized answer has exactly the declared wire shape
    model = UsageAnalyticsResponse.model_validate(body)
    assert model.model_dump(mode="json", by_alias=True) == body
    return body


def points(series: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """timestamp -> values[index] of one series."""
    return {p["timestamp"]: p["values"][index] for p in series["dataPoints"]}


def by_group(body: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(s["group"]): s for s in body["timeSeries"]}


def ingest_all(api: Api, events: list[dict[str, Any]]) -> None:
    result = api.ingest(events)
    assert result["rejected"] == [] and result["accepted"] == len(events), result


@pytest.fixture
def priced(api: Api) -> tuple[str, str]:
    """Two SKUs: $3 per million prompt units and $15 per million completion units."""
    prompt, completion = unique_sku("prompt"), unique_sku("completion")
    api.set_price(prompt, "0.000003", description=f"Chat {prompt}", unit_type="Prompt text tokens")
    api.set_price(
        completion, "0.000015", description=f"Chat {completion}", unit_type="Completion tokens"
    )
    return prompt, completion


def test_daily_usd_by_description_is_dense_and_ordered(api: Api, priced: tuple[str, str]) -> None:
    prompt, completion = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, prompt, 1_000_000, "2026-11-02T10:00:00Z"),  # $3
            event(team_id, prompt, 500_000, "2026-11-02T23:59:59Z"),  # $1.50
            event(team_id, prompt, 250_000, "2026-11-04T00:00:00Z"),  # $0.75
            event(team_id, completion, 1_000_000, "2026-11-03T12:00:00Z"),  # $15
        ],
    )
    body = usage(
        api,
        team_id,
        headers,
        "2026-11-01 00:00:00",
        "2026-11-05 00:00:00",
        values=[USD, UNITS, REQUESTS],
        group_by=["description"],
    )
    assert body["limitReached"] is False
    series = body["timeSeries"]
    # ordered by dollars, most first
    assert [s["group"] for s in series] == [[f"Chat {completion}"], [f"Chat {prompt}"]]
    assert series[1]["groupLabels"] == [f"Chat {prompt}"]
    days = ["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]
    days.append("2026-11-04T00:00:00Z")
    for s in series:
        assert [p["timestamp"] for p in s["dataPoints"]] == days
    assert [p["values"] for p in series[1]["dataPoints"]] == [
        [0.0, 0, 0],
        [4.5, 1_500_000, 2],
        [0.0, 0, 0],
        [0.75, 250_000, 1],
    ]
    assert points(series[0]) == dict(zip(days, [0.0, 0.0, 15.0, 0.0], strict=True))


def test_group_by_nothing_is_one_series_even_without_usage(api: Api) -> None:
    team_id, headers = api.team_with_key()
    body = usage(api, team_id, headers, "2026-11-01 00:00:00", "2026-11-03 00:00:00")
    assert body == {
        "timeSeries": [
            {
                "group": [],
                "groupLabels": [],
                "dataPoints": [
                    {"timestamp": "2026-11-01T00:00:00Z", "values": [0.0]},
                    {"timestamp": "2026-11-02T00:00:00Z", "values": [0.0]},
                ],
            }
        ],
        "limitReached": False,
    }
    # grouped by something and no usage: no groups, so no series
    grouped = usage(
        api, team_id, headers, "2026-11-01 00:00:00", "2026-11-03 00:00:00", group_by=["model"]
    )
    assert grouped == {"timeSeries": [], "limitReached": False}


def test_usd_is_exact_before_the_float(api: Api) -> None:
    # 3 units at $0.1 each, in three events: summed as pico-dollars, 0.30000000000000004 never shows
    sku = unique_sku()
    api.set_price(sku, "0.1")
    team_id, headers = api.team_with_key()
    ingest_all(api, [event(team_id, sku, 1, f"2026-11-10T0{h}:00:00Z") for h in range(3)])
    body = usage(api, team_id, headers, "2026-11-10 00:00:00", "2026-11-11 00:00:00")
    assert body["timeSeries"][0]["dataPoints"][0]["values"] == [0.3]
    # and a price with 12 decimals times a large quantity
    tiny = unique_sku()
    api.set_price(tiny, "0.000000000001")
    ingest_all(api, [event(team_id, tiny, 123_456_789, "2026-11-10T05:00:00Z")])
    body = usage(
        api, team_id, headers, "2026-11-10 00:00:00", "2026-11-11 00:00:00", group_by=["sku"]
    )
    assert points(by_group(body)[(tiny,)]) == {"2026-11-10T00:00:00Z": 0.000123456789}


def test_group_by_properties_and_key_labels(api: Api, priced: tuple[str, str]) -> None:
    prompt, _ = priced
    team_id = api.create_team()
    key = api.create_key(team_id)
    headers = {"Authorization": f"Bearer {key['apiKey']}"}
    other_team = api.create_team()
    foreign_key = api.create_key(other_team)  # another team's key: never labelled here
    unknown = str(uuid.uuid4())
    ingest_all(
        api,
        [
            event(team_id, prompt, 100, "2026-11-10T01:00:00Z", apiKeyId=key["keyId"], model="a"),
            event(team_id, prompt, 200, "2026-11-10T02:00:00Z", apiKeyId=unknown, model="a"),
            event(team_id, prompt, 300, "2026-11-10T03:00:00Z", apiKeyId=foreign_key["keyId"]),
            event(team_id, prompt, 400, "2026-11-10T04:00:00Z", model="b", clusterName="eu-1"),
        ],
    )
    body = usage(
        api,
        team_id,
        headers,
        "2026-11-10 00:00:00",
        "2026-11-11 00:00:00",
        values=[UNITS],
        group_by=["api_key_id", "model"],
    )
    series = by_group(body)
    assert set(series) == {
        (key["keyId"], "a"),
        (unknown, "a"),
        (foreign_key["keyId"], ""),
        ("", "b"),
    }
    assert series[(key["keyId"], "a")]["groupLabels"] == [
        f"{key['name']} ({key['redactedApiKey']})",
        "a",
    ]
    assert series[(unknown, "a")]["groupLabels"] == [unknown, "a"]
    assert series[(foreign_key["keyId"], "")]["groupLabels"] == [foreign_key["keyId"], ""]
    # ordered by dollars: 400 units first
    assert body["timeSeries"][0]["group"] == ["", "b"]

    by_cluster = usage(
        api,
        team_id,
        headers,
        "2026-11-10 00:00:00",
        "2026-11-11 00:00:00",
        values=[UNITS],
        group_by=["cluster_name", "unit_type", "sku"],
    )
    assert {
        tuple(s["group"]): points(s)["2026-11-10T00:00:00Z"] for s in by_cluster["timeSeries"]
    } == {
        ("eu-1", "Prompt text tokens", prompt): 400,
        ("", "Prompt text tokens", prompt): 600,
    }
    # the property's own (camelCase) name is accepted as an alias
    alias = usage(
        api,
        team_id,
        headers,
        "2026-11-10 00:00:00",
        "2026-11-11 00:00:00",
        values=[UNITS],
        group_by=["clusterName"],
    )
    assert {tuple(s["group"]) for s in alias["timeSeries"]} == {("eu-1",), ("",)}


def test_filters(api: Api, priced: tuple[str, str]) -> None:
    prompt, completion = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, prompt, 1, "2026-11-10T01:00:00Z", model="grok-4", clusterName="us-1"),
            event(team_id, prompt, 10, "2026-11-10T01:00:00Z", model="grok-3", clusterName="eu-1"),
            event(team_id, completion, 100, "2026-11-10T01:00:00Z", model="grok-4"),
            event(team_id, completion, 1000, "2026-11-10T01:00:00Z", model="x y OR z"),
            event(team_id, prompt, 10000, "2026-11-10T01:00:00Z", model="7"),
        ],
    )

    def total(*filters: str) -> int:
        body = usage(
            api,
            team_id,
            headers,
            "2026-11-10 00:00:00",
            "2026-11-11 00:00:00",
            values=[UNITS],
            filters=list(filters),
        )
        return int(body["timeSeries"][0]["dataPoints"][0]["values"][0])

    assert total() == 11111
    assert total("model:grok-4") == 101
    assert total("NOT model:grok-4") == 11010
    assert total("model:grok-4 OR model:grok-3") == 111
    assert total("model:grok-4", "cluster_name:us-1") == 1
    assert total("model:grok-4 AND cluster_name:us-1 OR model:grok-3") == 11
    assert total(f"sku:{completion}") == 1100
    assert total(f"description:Chat {prompt}") == 10011
    assert total("unit_type:Completion tokens") == 1100
    assert total('model:"x y OR z"') == 1000
    assert total('cluster_name:""') == 11100  # no cluster at all
    assert total('NOT cluster_name:""') == 11
    # numeric comparisons compare numbers; values that are not numbers never match
    assert total("model:>5") == 10000
    assert total("model:>=7.0") == 10000
    assert total("model:<7") == 0
    assert total("NOT model:<=7") == 1111
    assert total("", "  ") == 11111  # empty filters are no filters


@pytest.mark.parametrize(
    ("body_change", "field", "code"),
    [
        ({"timeRange": {"startTime": "2026-11-02 00:00:00", "endTime": "2026-11-01 00:00:00"}},
         "analyticsRequest.timeRange", "invalid_time_range"),
        ({"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-11-01 00:00:00"}},
         "analyticsRequest.timeRange", "invalid_time_range"),
        ({"timeRange": {"startTime": "2026-11-01", "endTime": "2026-11-02 00:00:00"}},
         "analyticsRequest.timeRange.startTime", "invalid_time"),
        ({"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-11-31 00:00:00"}},
         "analyticsRequest.timeRange.endTime", "invalid_time"),
        ({"timeRange": {"startTime": "2026-11-01T00:00:00Z", "endTime": "2026-11-02 00:00:00"}},
         "analyticsRequest.timeRange.startTime", "invalid_time"),
        ({"timeRange": {"startTime": "0001-11-01 00:00:00", "endTime": "2026-11-02 00:00:00"}},
         "analyticsRequest.timeRange.startTime", "invalid_time"),
        ({"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-11-02 00:00:00",
                        "timezone": "Mars/Olympus_Mons"}},
         "analyticsRequest.timeRange.timezone", "unknown_timezone"),
        ({"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-11-02 00:00:00",
                        "timezone": "../../etc/passwd"}},
         "analyticsRequest.timeRange.timezone", "unknown_timezone"),
        ({"timeUnit": "TIME_UNIT_FORTNIGHT"}, "analyticsRequest.timeUnit", "invalid_time_unit"),
        ({"timeUnit": "TIME_UNIT_INVALID"}, "analyticsRequest.timeUnit", "invalid_time_unit"),
        ({"timeUnit": 0}, "analyticsRequest.timeUnit", "invalid_time_unit"),
        ({"values": []}, "analyticsRequest.values", "invalid_argument"),
        # usd with AGGREGATION_AVG was here: it is served since issue 14
        ({"values": [{"name": "requests", "aggregation": "AGGREGATION_AVG"}]},
         "analyticsRequest.values.0", "unsupported_value"),
        ({"values": [USD, {"name": "requests", "aggregation": "AGGREGATION_MAX"}]},
         "analyticsRequest.values.1", "unsupported_value"),
        ({"values": [{"name": "usd", "aggregation": "AGGREGATION_COUNT_DISTINCT"}]},
         "analyticsRequest.values.0", "unsupported_value"),
        ({"values": [{"name": "colour", "aggregation": "AGGREGATION_COUNT_DISTINCT"}]},
         "analyticsRequest.values.0", "unsupported_value"),
        ({"values": [{"name": "model", "aggregation": "AGGREGATION_SUM"}]},
         "analyticsRequest.values.0", "unsupported_value"),
        ({"values": [{"name": "usd", "aggregation": "AGGREGATION_NONE"}]},
         "analyticsRequest.values.0", "invalid_aggregation"),
        ({"values": [USD, {"name": "usd", "aggregation": 0}]},
         "analyticsRequest.values.1", "invalid_aggregation"),
        ({"values": [{"name": "usd"}]}, "analyticsRequest.values.0", "invalid_aggregation"),
        ({"values": [{"name": "usd", "aggregation": "AGGREGATION_P95"}]},
         "analyticsRequest.values.0", "invalid_aggregation"),
        ({"values": [{"name": "usd", "aggregation": 13}]},
         "analyticsRequest.values.0", "invalid_aggregation"),
        ({"values": [{"name": "usd", "aggregation": "AGGREGATION_MAX"}],
          "timeRange": {"startTime": "2025-01-01 00:00:00", "endTime": "2025-01-02 00:00:00"}},
         "analyticsRequest.values.0", "outside_raw_retention"),
        ({"values": [USD, {"name": "requests", "aggregation": "AGGREGATION_SUM"}]},
         "analyticsRequest.values.1", "unsupported_value"),
        ({"values": [{"name": "tokens", "aggregation": "AGGREGATION_SUM"}]},
         "analyticsRequest.values.0", "unsupported_value"),
        ({"groupBy": ["description", "colour"]}, "analyticsRequest.groupBy.1", "unknown_field"),
        ({"groupBy": ["model", "model"]}, "analyticsRequest.groupBy.1", "invalid_argument"),
        ({"groupBy": ["usd"]}, "analyticsRequest.groupBy.0", "unsupported_field"),
        ({"filters": ["colour:red"]}, "analyticsRequest.filters.0", "unknown_field"),
        ({"filters": ["model:a", "model"]}, "analyticsRequest.filters.1", "invalid_filter"),
        ({"filters": ["model:a OR "]}, "analyticsRequest.filters.0", "invalid_filter"),
        ({"filters": ['model:"open']}, "analyticsRequest.filters.0", "invalid_filter"),
        ({"filters": ["model:>many"]}, "analyticsRequest.filters.0", "invalid_filter"),
        ({"filters": ["usd:>100"]}, "analyticsRequest.filters.0", "unsupported_field"),
        ({"filters": ["num_units:>100"]}, "analyticsRequest.filters.0", "unsupported_field"),
        ({"timeRange": {"startTime": "1990-01-01 00:00:00", "endTime": "2026-11-02 00:00:00"}},
         "analyticsRequest.timeUnit", "too_many_buckets"),
        ({"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-11-02 00:00:00"},
          "timeUnit": "TIME_UNIT_SECOND"},
         "analyticsRequest.timeUnit", "too_many_buckets"),
        ({"timeRange": {"startTime": "2025-01-01 00:00:00", "endTime": "2025-01-02 00:00:00"},
          "timeUnit": "TIME_UNIT_MINUTE"},
         "analyticsRequest.timeUnit", "outside_raw_retention"),
        ({"timeRange": "yesterday"}, "analyticsRequest.timeRange", "invalid_argument"),
        ({"groupBy": "model"}, "analyticsRequest.groupBy", "invalid_argument"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_and_change_nothing(
    api: Api, priced: tuple[str, str], body_change: dict[str, Any], field: str, code: str
) -> None:
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(api, [event(team_id, prompt, 1_000_000, "2026-11-01T10:00:00Z", model="a")])
    before = usage(api, team_id, headers, "2026-11-01 00:00:00", "2026-11-02 00:00:00")
    body = request_body("2026-11-01 00:00:00", "2026-11-02 00:00:00")
    body["analyticsRequest"].update(body_change)
    response = post_usage(api, team_id, headers, body)
    assert response.status_code == 400, response.text[:300]
    error = response.json()
    assert error["code"] == code, error
    assert error["field"] == field, error
    assert error["error"]
    after = usage(api, team_id, headers, "2026-11-01 00:00:00", "2026-11-02 00:00:00")
    assert after == before


def test_malformed_bodies_auth_and_team(api: Api) -> None:
    team_id, headers = api.team_with_key()
    path = f"/v1/billing/teams/{team_id}/usage"
    response = api.client.post(
        path, content=b"{nope", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    response = api.client.post(path, json={}, headers=headers)
    assert response.status_code == 400
    assert response.json()["field"] == "analyticsRequest"
    body = request_body("2026-11-01 00:00:00", "2026-11-02 00:00:00")
    assert api.client.post(path, json=body).status_code == 401
    other_team, other_headers = api.team_with_key()
    assert api.client.post(path, json=body, headers=other_headers).status_code == 403
    write_only = api.create_key(team_id, ["team-token:endpoint:BillingWrite"])
    response = api.client.post(
        path, json=body, headers={"Authorization": f"Bearer {write_only['apiKey']}"}
    )
    assert response.status_code == 403 and response.json()["code"] == "missing_acl"
    response = api.client.post("/v1/billing/teams/not-a-uuid/usage", json=body, headers=headers)
    assert response.status_code in (400, 403)
    assert other_team != team_id


def test_proto_leniencies(api: Api, priced: tuple[str, str]) -> None:
    """Enum numbers, snake_case keys and an empty timezone (proto3's default) are accepted."""
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(api, [event(team_id, prompt, 1_000_000, "2026-11-01T10:00:00Z")])
    body = {
        "analytics_request": {
            "time_range": {"start_time": "2026-11-01 00:00:00", "end_time": "2026-11-02 00:00:00"},
            "time_unit": 3,
            "values": [{"name": "usd", "aggregation": 1}, {"name": "requests", "aggregation": 11}],
            "group_by": [],
        }
    }
    response = post_usage(api, team_id, headers, body)
    assert response.status_code == 200, response.text
    assert response.json()["timeSeries"][0]["dataPoints"] == [
        {"timestamp": "2026-11-01T00:00:00Z", "values": [3.0, 1]}
    ]


def test_day_buckets_in_half_and_three_quarter_hour_zones(
    api: Api, priced: tuple[str, str]
) -> None:
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    # Asia/Kolkata is +5:30: its 2026-11-10 starts at 2026-11-09T18:30Z.
    # Australia/Eucla is +8:45: its 2026-11-10 starts at 2026-11-09T15:15Z.
    ingest_all(
        api,
        [
            event(team_id, prompt, 1, "2026-11-09T15:14:59Z"),
            event(team_id, prompt, 10, "2026-11-09T15:15:00Z"),
            event(team_id, prompt, 100, "2026-11-09T18:29:59Z"),
            event(team_id, prompt, 1000, "2026-11-09T18:30:00Z"),
        ],
    )
    kolkata = usage(
        api,
        team_id,
        headers,
        "2026-11-09 00:00:00",
        "2026-11-11 00:00:00",
        tz="Asia/Kolkata",
        values=[UNITS],
    )
    assert points(kolkata["timeSeries"][0]) == {
        "2026-11-08T18:30:00Z": 111,
        "2026-11-09T18:30:00Z": 1000,
    }
    eucla = usage(
        api,
        team_id,
        headers,
        "2026-11-09 00:00:00",
        "2026-11-11 00:00:00",
        tz="Australia/Eucla",
        values=[UNITS],
    )
    assert points(eucla["timeSeries"][0]) == {
        "2026-11-08T15:15:00Z": 1,
        "2026-11-09T15:15:00Z": 1110,
    }
    hours = usage(
        api,
        team_id,
        headers,
        "2026-11-09 23:00:00",
        "2026-11-10 01:00:00",
        tz="Asia/Kolkata",
        unit="TIME_UNIT_HOUR",
        values=[UNITS],
    )
    assert points(hours["timeSeries"][0]) == {
        "2026-11-09T17:30:00Z": 100,
        "2026-11-09T18:30:00Z": 1000,
    }


def test_new_york_dst_days_are_25_and_23_hours(api: Api, priced: tuple[str, str]) -> None:
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            # fall back, 2026-11-01: the day runs from 04:00Z (EDT) to 05:00Z next day (EST)
            event(team_id, prompt, 1, "2026-11-01T03:59:59Z"),  # Oct 31, 23:59:59 EDT
            event(team_id, prompt, 10, "2026-11-01T04:00:00Z"),  # Nov 1, 00:00 EDT
            event(team_id, prompt, 100, "2026-11-01T05:30:00Z"),  # 01:30 EDT
            event(team_id, prompt, 1000, "2026-11-01T06:30:00Z"),  # 01:30 EST, the repeat
            event(team_id, prompt, 10000, "2026-11-02T04:59:59Z"),  # Nov 1, 23:59:59 EST
            event(team_id, prompt, 100000, "2026-11-02T05:00:00Z"),  # Nov 2, 00:00 EST
            # spring forward, 2026-03-08: from 05:00Z (EST) to 04:00Z next day (EDT)
            event(team_id, prompt, 1, "2026-03-08T04:59:59Z"),  # Mar 7, 23:59:59 EST
            event(team_id, prompt, 10, "2026-03-08T05:00:00Z"),  # Mar 8, 00:00 EST
            event(team_id, prompt, 100, "2026-03-09T03:59:59Z"),  # Mar 8, 23:59:59 EDT
            event(team_id, prompt, 1000, "2026-03-09T04:00:00Z"),  # Mar 9, 00:00 EDT
        ],
    )
    fall = usage(
        api,
        team_id,
        headers,
        "2026-10-31 00:00:00",
        "2026-11-03 00:00:00",
        tz="America/New_York",
        values=[UNITS],
    )
    assert points(fall["timeSeries"][0]) == {
        "2026-10-31T04:00:00Z": 1,
        "2026-11-01T04:00:00Z": 11110,  # 25 hours
        "2026-11-02T05:00:00Z": 100000,
    }
    spring = usage(
        api,
        team_id,
        headers,
        "2026-03-07 00:00:00",
        "2026-03-10 00:00:00",
        tz="America/New_York",
        values=[UNITS],
    )
    assert points(spring["timeSeries"][0]) == {
        "2026-03-07T05:00:00Z": 1,
        "2026-03-08T05:00:00Z": 110,  # 23 hours
        "2026-03-09T04:00:00Z": 1000,
    }
    # hours of the fall-back day: 25 buckets, the repeated 01:00 hour twice (EDT, then EST)
    hours = usage(
        api,
        team_id,
        headers,
        "2026-11-01 00:00:00",
        "2026-11-02 00:00:00",
        tz="America/New_York",
        unit="TIME_UNIT_HOUR",
        values=[UNITS],
    )
    hourly = points(hours["timeSeries"][0])
    assert len(hourly) == 25
    assert list(hourly)[:4] == [
        "2026-11-01T04:00:00Z",
        "2026-11-01T05:00:00Z",
        "2026-11-01T06:00:00Z",
        "2026-11-01T07:00:00Z",
    ]
    assert hourly["2026-11-01T05:00:00Z"] == 100 and hourly["2026-11-01T06:00:00Z"] == 1000
    assert sum(hourly.values()) == 11110
    # and the spring-forward day has 23 hour buckets
    spring_hours = usage(
        api,
        team_id,
        headers,
        "2026-03-08 00:00:00",
        "2026-03-09 00:00:00",
        tz="America/New_York",
        unit="TIME_UNIT_HOUR",
        values=[UNITS],
    )
    assert len(spring_hours["timeSeries"][0]["dataPoints"]) == 23


def test_weeks_months_quarter_hours_and_none(api: Api, priced: tuple[str, str]) -> None:
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, prompt, 1, "2026-10-25T21:59:59Z"),  # Sun Oct 25, 23:59:59 CET
            event(team_id, prompt, 10, "2026-10-25T23:00:00Z"),  # Mon Oct 26, 00:00 CET
            event(team_id, prompt, 100, "2026-10-31T22:59:59Z"),  # Oct 31, 23:59:59 CET
            event(team_id, prompt, 1000, "2026-10-31T23:00:00Z"),  # Nov 1, 00:00 CET
        ],
    )
    weeks = usage(
        api,
        team_id,
        headers,
        "2026-10-21 12:00:00",
        "2026-11-03 00:00:00",
        tz="Europe/Berlin",
        unit="TIME_UNIT_CALENDAR_WEEK",
        values=[UNITS],
    )
    assert points(weeks["timeSeries"][0]) == {
        "2026-10-18T22:00:00Z": 1,  # Mon Oct 19 00:00 CEST: the aligned start of the first week
        "2026-10-25T23:00:00Z": 1110,  # Mon Oct 26 00:00 CET
        "2026-11-01T23:00:00Z": 0,  # Mon Nov 2
    }
    months = usage(
        api,
        team_id,
        headers,
        "2026-10-15 00:00:00",
        "2026-11-15 00:00:00",
        tz="Europe/Berlin",
        unit="TIME_UNIT_MONTH",
        values=[UNITS],
    )
    assert points(months["timeSeries"][0]) == {
        "2026-09-30T22:00:00Z": 111,
        "2026-10-31T23:00:00Z": 1000,
    }
    quarters = usage(
        api,
        team_id,
        headers,
        "2026-10-31 23:40:00",
        "2026-11-01 00:20:00",
        tz="Europe/Berlin",
        unit="TIME_UNIT_QUARTER_HOUR",
        values=[UNITS],
    )
    assert points(quarters["timeSeries"][0]) == {
        "2026-10-31T22:30:00Z": 0,
        "2026-10-31T22:45:00Z": 100,
        "2026-10-31T23:00:00Z": 1000,
        "2026-10-31T23:15:00Z": 0,
    }
    whole = usage(
        api,
        team_id,
        headers,
        "2026-10-01 00:00:00",
        "2026-12-01 00:00:00",
        tz="Europe/Berlin",
        unit="TIME_UNIT_NONE",
        values=[UNITS, REQUESTS],
    )
    assert whole["timeSeries"][0]["dataPoints"] == [
        {"timestamp": "2026-09-30T22:00:00Z", "values": [1111, 4]}
    ]


def test_ranges_widen_to_quarter_hours(api: Api, priced: tuple[str, str]) -> None:
    """Rollups are 15 minutes: start rounds down, end rounds up (documented)."""
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, prompt, 1, "2026-11-10T09:59:59Z"),
            event(team_id, prompt, 10, "2026-11-10T10:01:00Z"),  # before the start, same quarter
            event(team_id, prompt, 100, "2026-11-10T12:00:00Z"),
            event(team_id, prompt, 1000, "2026-11-10T23:59:59.500Z"),  # after an end of 23:59:59
            event(team_id, prompt, 10000, "2026-11-11T00:00:00Z"),
        ],
    )
    body = usage(
        api,
        team_id,
        headers,
        "2026-11-10 10:07:00",
        "2026-11-10 23:59:59",
        values=[UNITS],
    )
    # one partial day, stamped with its aligned start
    assert points(body["timeSeries"][0]) == {"2026-11-10T00:00:00Z": 1110}


def test_minutes_and_seconds_come_exactly_from_raw_events(
    api: Api, priced: tuple[str, str]
) -> None:
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, prompt, 1, "2026-11-10T10:00:30Z", model="a"),
            # SQLite's strftime rounds to the millisecond: these must still floor
            event(team_id, prompt, 10, "2026-11-10T10:00:31.9999Z", model="a"),
            event(team_id, prompt, 100, "2026-11-10T10:01:59.9996Z", model="b"),
            event(team_id, prompt, 1000, "2026-11-10T10:02:00Z", model="a"),
        ],
    )
    minutes = usage(
        api,
        team_id,
        headers,
        "2026-11-10 15:30:31",  # Kolkata: 10:00:31Z; exact, not widened
        "2026-11-10 15:32:00",
        tz="Asia/Kolkata",
        unit="TIME_UNIT_MINUTE",
        values=[UNITS, REQUESTS, USD],
        group_by=["model"],
    )
    series = by_group(minutes)
    assert [p["values"] for p in series[("a",)]["dataPoints"]] == [
        [10, 1, 0.00003],
        [0, 0, 0.0],
    ]
    assert [p["timestamp"] for p in series[("b",)]["dataPoints"]] == [
        "2026-11-10T10:00:00Z",
        "2026-11-10T10:01:00Z",
    ]
    assert points(series[("b",)], 2) == {
        "2026-11-10T10:00:00Z": 0.0,
        "2026-11-10T10:01:00Z": 0.0003,
    }
    seconds = usage(
        api,
        team_id,
        headers,
        "2026-11-10 10:00:30",
        "2026-11-10 10:00:33",
        unit="TIME_UNIT_SECOND",
        values=[UNITS],
        filters=["model:a"],
    )
    assert points(seconds["timeSeries"][0]) == {
        "2026-11-10T10:00:30Z": 1,
        "2026-11-10T10:00:31Z": 10,
        "2026-11-10T10:00:32Z": 0,
    }


def test_number_properties_read_alike_in_every_unit(api: Api, priced: tuple[str, str]) -> None:
    """A property sent as a JSON number keeps its text (str() of the value as sent) whether the
    answer comes from rollups (HOUR) or from raw events and their property sets (MINUTE): on
    PostgreSQL the sets were JSONB, which printed 1e16 back as 10000000000000000, 1.5e300 as 301
    digits and -0.0 as 0.0 (migration 0011)."""
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    at = "2026-11-10T10:00:30Z"
    values = [1e16, 1.5e300, -0.0, 1.0, 2, 0.1, 1e-7, True, 18446744073709551615]
    batch = [event(team_id, prompt, 1 + i, at) for i in range(len(values))]
    for wire, value in zip(batch, values, strict=True):
        wire["properties"] = {"model": value}
    ingest_all(api, batch)
    labels = [str(value) for value in values]

    def hour(unit: str, **query: Any) -> Any:
        start, end = "2026-11-10 10:00:00", "2026-11-10 11:00:00"
        return usage(api, team_id, headers, start, end, unit=unit, values=[UNITS], **query)

    for unit in ("TIME_UNIT_HOUR", "TIME_UNIT_MINUTE"):
        assert set(by_group(hour(unit, group_by=["model"]))) == {(label,) for label in labels}
        for i, label in enumerate(labels):
            filtered = hour(unit, filters=[f'model:"{label}"'])
            total = sum(p["values"][0] for p in filtered["timeSeries"][0]["dataPoints"])
            assert total == 1 + i, (unit, label)


def test_price_versions_rate_their_own_time(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2026-01-01T00:00:00Z", description="Old name")
    api.set_price(sku, "0.02", "2026-11-15T00:00:00Z", description="New name")
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, sku, 100, "2026-11-14T23:59:59Z"),  # $1
            event(team_id, sku, 100, "2026-11-15T00:00:00Z"),  # $2
        ],
    )
    body = usage(
        api,
        team_id,
        headers,
        "2026-11-14 00:00:00",
        "2026-11-16 00:00:00",
        unit="TIME_UNIT_NONE",
        group_by=["sku", "description"],
    )
    assert [(s["group"], s["dataPoints"][0]["values"]) for s in body["timeSeries"]] == [
        ([sku, "New name"], [2.0]),
        ([sku, "Old name"], [1.0]),
    ]


def test_caps_cut_series_and_say_so(
    api: Api, priced: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, prompt, 10 * (i + 1), "2026-11-10T10:00:00Z", model=f"m{i}")
            for i in range(6)
        ],
    )
    monkeypatch.setattr(analytics, "MAX_SERIES", 4)
    body = usage(
        api, team_id, headers, "2026-11-10 00:00:00", "2026-11-11 00:00:00", group_by=["model"]
    )
    assert body["limitReached"] is True
    assert [s["group"] for s in body["timeSeries"]] == [["m5"], ["m4"], ["m3"], ["m2"]]
    # the total number of points is capped too: 24 hourly points x 2 series <= 50
    monkeypatch.setattr(analytics, "MAX_DATA_POINTS", 50)
    hourly = usage(
        api,
        team_id,
        headers,
        "2026-11-10 00:00:00",
        "2026-11-11 00:00:00",
        unit="TIME_UNIT_HOUR",
        group_by=["model"],
    )
    assert hourly["limitReached"] is True and len(hourly["timeSeries"]) == 2
    full = usage(
        api,
        team_id,
        headers,
        "2026-11-10 00:00:00",
        "2026-11-11 00:00:00",
        unit="TIME_UNIT_NONE",
        group_by=["model"],
        filters=["model:m1 OR model:m2"],
    )
    assert full["limitReached"] is False and len(full["timeSeries"]) == 2


def test_transitions_missed_by_sampling_still_give_exact_answers(
    api: Api, priced: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the offset sampling missed a DST change, partitions that straddle two buckets are
    detected and the query is re-read at 15-minute resolution."""
    prompt, _ = priced
    team_id, headers = api.team_with_key()
    ingest_all(
        api,
        [
            event(team_id, prompt, 1, "2026-11-01T03:30:00Z"),  # Oct 31 23:30 EDT
            event(team_id, prompt, 10, "2026-11-01T12:00:00Z"),  # Nov 1
            event(team_id, prompt, 100, "2026-11-02T04:30:00Z"),  # Nov 1 23:30 EST
            event(team_id, prompt, 1000, "2026-11-02T05:30:00Z"),  # Nov 2 00:30 EST
        ],
    )
    reads = record_partitions(monkeypatch)
    expected = {
        "2026-10-31T04:00:00Z": 1,
        "2026-11-01T04:00:00Z": 110,
        "2026-11-02T05:00:00Z": 1000,
    }

    def daily() -> dict[str, Any]:
        body = usage(
            api,
            team_id,
            headers,
            "2026-10-31 00:00:00",
            "2026-11-03 00:00:00",
            tz="America/New_York",
            values=[UNITS],
        )
        return points(body["timeSeries"][0])

    assert daily() == expected
    assert reads == ["local"]  # the transition was found: one read, by local day
    reads.clear()
    # a sampling that sees no transition at all: every row read as EDT
    monkeypatch.setattr(
        analytics, "offset_segments", lambda zone, first, last: [(first, -4 * 3600)]
    )
    assert daily() == expected
    assert reads == ["local", "bucket"]  # missed, detected, re-read by quarter hour


def test_float_conversion_matches_the_exact_decimal(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000000123457")
    team_id, headers = api.team_with_key()
    quantities = [987_654_321, 123_456_789_012, 5]
    ingest_all(api, [event(team_id, sku, q, "2026-11-10T10:00:00Z") for q in quantities])
    body = usage(api, team_id, headers, "2026-11-10 00:00:00", "2026-11-11 00:00:00")
    exact = sum(Decimal(q) * Decimal("0.000000123457") for q in quantities)
    assert body["timeSeries"][0]["dataPoints"][0]["values"] == [float(exact)]
