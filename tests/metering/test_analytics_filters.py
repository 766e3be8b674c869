"""Usage analytics filters (billing-api §13): every malformed shape is a 400 ``invalid_filter``
naming the filter (``analyticsRequest.filters.<i>``), never a filter silently different from the
one meant; the well-formed edge shapes filter exactly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from billfold.config import Settings
from billfold.kit.clock import frozen
from billfold.kit.errors import InvalidField
from billfold.metering.analytics.fields import available_fields
from billfold.metering.analytics.filters import parse_filter
from tests.conftest import Api, event, unique_sku

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
UNITS = {"name": "num_units", "aggregation": "AGGREGATION_SUM"}
FIELDS = available_fields(Settings(database_url="sqlite://", admin_token="x"))

# (filter, what is wrong): each must be refused, whatever it is combined with.
MALFORMED = [
    ("model:a OR", "no condition after 'OR'"),
    ("model:a OR ", "no condition after 'OR'"),
    ("OR model:a", "no condition before 'OR'"),
    (" OR model:a", "no condition before 'OR'"),
    ("model:a OR  OR model:b", "no condition between 'OR' and 'OR'"),
    ("model:a OR OR model:b", "no condition between 'OR' and 'OR'"),
    ("model:a AND", "no condition after 'AND'"),
    ("AND model:a", "no condition before 'AND'"),
    ("model:a AND OR model:b", "no condition between 'AND' and 'OR'"),
    ("model:a OR AND model:b", "no condition between 'OR' and 'AND'"),
    ("OR", "no condition before 'OR'"),
    ("AND", "no condition before 'AND'"),
    ("model:a\tOR\t", "no condition after 'OR'"),
    ("NOT", "NOT needs a condition"),
    ("NOT ", "NOT needs a condition"),
    ("model:a AND NOT", "NOT needs a condition"),
    ("NOT OR model:a", "NOT needs a condition"),
    ("NOT NOT model:a", "is not a condition"),
    ("model", "is not a condition"),
    ("model a", "is not a condition"),
    ("mo del:a", "is not a condition"),
    ('"model":a', "is not a condition"),
    (":a", "has no field"),
    ("  :a", "has no field"),
    ("NOT :a", "has no field"),
    ("model:", "has no value"),
    ("model:   ", "has no value"),
    ("model: OR model:b", "has no value"),
    ("NOT model:", "has no value"),
    ("model:>", "needs a number"),
    ("model:>=", "needs a number"),
    ("model:>abc", "needs a number"),
    ("model:<=1.2.3", "needs a number"),
    ("model:>NaN", "needs a number"),
    ("model:>Infinity", "needs a number"),
    ("model:>1_000", "needs a number"),
    ("model:>0x10", "needs a number"),
    ('model:>"abc"', "needs a number"),
    ("model:=a", "operator"),
    ("model:==a", "operator"),
    ("model:!=a", "operator"),
    ("model:!a", "operator"),
    ('model:"open', "unterminated quote"),
    ('model:a"b', "unterminated quote"),
    ('model:a"b"', "a quote inside the value"),
    ('model:"a"b', "bad quoting"),
    ('model:"a" "b"', "bad quoting"),
    ('model:"a\\"', "unterminated quote"),
    # numbers whose exponent Decimal cannot hold (beyond about 10^18 either way)
    ("model:>1e999999999999999999999", "needs a number"),
    ("model:<=-1E-999999999999999999999", "needs a number"),
]


def check(text: str) -> Any:
    return parse_filter(text, FIELDS, "analyticsRequest.filters.3")


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_malformed_filters_are_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidField) as raised:
        check(text)
    error = raised.value
    assert error.code == "invalid_filter"
    assert error.extra == {"field": "analyticsRequest.filters.3"}
    assert reason in error.message, error.message


def shape(text: str) -> list[list[tuple[str, str, str, bool]]]:
    return [
        [(c.field.name, c.op, c.operand, c.negated) for c in alternative]
        for alternative in check(text)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:a", [[("model", "=", "a", False)]]),
        ("  model : a  ", [[("model", "=", "a", False)]]),
        ('model:""', [[("model", "=", "", False)]]),
        ('NOT model:""', [[("model", "=", "", True)]]),
        ("model:a OR model:b", [[("model", "=", "a", False)], [("model", "=", "b", False)]]),
        ("model:a\tOR\nmodel:b", [[("model", "=", "a", False)], [("model", "=", "b", False)]]),
        (
            "model:a AND NOT cluster_name:x OR sku:s",
            [
                [("model", "=", "a", False), ("cluster_name", "=", "x", True)],
                [("sku", "=", "s", False)],
            ],
        ),
        # keywords count only as whole upper-case words outside quotes
        ("model:ORACLE", [[("model", "=", "ORACLE", False)]]),
        ("model:a ORACLE", [[("model", "=", "a ORACLE", False)]]),
        ("model:a or b", [[("model", "=", "a or b", False)]]),
        (
            "model:ANDROID AND sku:NOTE",
            [[("model", "=", "ANDROID", False), ("sku", "=", "NOTE", False)]],
        ),
        ('model:"x OR y"', [[("model", "=", "x OR y", False)]]),
        (
            'model:"a OR" OR model:b',
            [[("model", "=", "a OR", False)], [("model", "=", "b", False)]],
        ),
        ('model:"say \\"hi\\""', [[("model", "=", 'say "hi"', False)]]),
        ('model:"back\\\\slash"', [[("model", "=", "back\\slash", False)]]),
        ('model:"=a"', [[("model", "=", "=a", False)]]),
        ("description:Chat grok-4", [[("description", "=", "Chat grok-4", False)]]),
        ("model:a:b", [[("model", "=", "a:b", False)]]),
        ("model:>= -1.5", [[("model", ">=", "-1.5", False)]]),
        ("model:<1e3", [[("model", "<", "1e3", False)]]),
        ('model:>"5"', [[("model", ">", "5", False)]]),
        ("clusterName:x", [[("clusterName", "=", "x", False)]]),  # the property's own name
        ("", []),
        ("   ", []),
    ],
)  # fmt: skip
def test_well_formed_filters(text: str, expected: list[list[tuple[str, str, str, bool]]]) -> None:
    assert shape(text) == expected


# --- through HTTP, on both databases -------------------------------------------------------------


@pytest.fixture(autouse=True)
def _frozen_now() -> Iterator[None]:
    with frozen(NOW):
        yield


def body(*filters: str) -> dict[str, Any]:
    return {
        "analyticsRequest": {
            "timeRange": {
                "startTime": "2026-11-10 00:00:00",
                "endTime": "2026-11-11 00:00:00",
                "timezone": "UTC",
            },
            "timeUnit": "TIME_UNIT_NONE",
            "values": [UNITS],
            "groupBy": [],
            "filters": list(filters),
        }
    }


@pytest.fixture
def team(api: Api) -> tuple[str, dict[str, str]]:
    sku = unique_sku()
    api.set_price(sku, "0.000003")
    team_id, headers = api.team_with_key()
    at = "2026-11-10T01:00:00Z"
    result = api.ingest(
        [
            event(team_id, sku, 1, at, model="a", clusterName="us-1"),
            event(team_id, sku, 10, at, model="b"),
            event(team_id, sku, 100, at, model="a OR b"),
            event(team_id, sku, 1000, at, model="7"),
            event(team_id, sku, 10000, at, model="1_000"),
            event(team_id, sku, 100000, at, model="NaN"),
            event(team_id, sku, 1000000, at),
            # a number too big for a comparison: never satisfies one (and is no 500)
            event(team_id, sku, 10000000, at, model="1e999999999999999999999"),
        ]
    )
    assert result["accepted"] == 8, result
    return team_id, headers


def total(api: Api, team: tuple[str, dict[str, str]], *filters: str) -> int:
    team_id, headers = team
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/usage", json=body(*filters), headers=headers
    )
    assert response.status_code == 200, response.text
    return int(response.json()["timeSeries"][0]["dataPoints"][0]["values"][0])


def test_edge_shapes_filter_exactly(api: Api, team: tuple[str, dict[str, str]]) -> None:
    assert total(api, team) == 11111111
    assert total(api, team, "model:a") == 1
    assert total(api, team, 'model:"a OR b"') == 100
    assert total(api, team, "model:a OR model:b") == 11
    assert total(api, team, 'model:"a OR b" OR model:a') == 101
    assert total(api, team, 'model:""') == 1000000  # events without a model
    assert total(api, team, 'NOT model:""') == 10111111
    assert total(api, team, 'cluster_name:"" AND model:a') == 0
    # numbers are plain decimals: "1_000" and "NaN" are not numbers, so they never compare,
    # nor does "1e999999999999999999999", whose exponent Decimal cannot hold
    assert total(api, team, "model:>5") == 1000
    assert total(api, team, "model:>=7.0 OR model:<=-1") == 1000
    assert total(api, team, "NOT model:>5") == 11110111
    assert total(api, team, "model:1e999999999999999999999") == 10000000


@pytest.mark.parametrize(("text", "reason"), MALFORMED[::3])
def test_malformed_filter_is_a_400_naming_it_and_changes_nothing(
    api: Api, team: tuple[str, dict[str, str]], text: str, reason: str
) -> None:
    team_id, headers = team
    before = total(api, team, "model:a OR model:b")
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/usage",
        json=body("model:a", "", text),
        headers=headers,
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_filter"
    assert error["field"] == "analyticsRequest.filters.2"
    assert error["error"].startswith("analyticsRequest.filters.2: ")
    assert reason in error["error"]
    assert total(api, team, "model:a OR model:b") == before


def test_unknown_and_unsupported_fields_are_named_too(
    api: Api, team: tuple[str, dict[str, str]]
) -> None:
    team_id, headers = team
    for text, code in (("colour:red", "unknown_field"), ("usd:>1", "unsupported_field")):
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/usage", json=body("model:a", text), headers=headers
        )
        assert response.status_code == 400
        assert response.json()["code"] == code
        assert response.json()["field"] == "analyticsRequest.filters.1"


def test_at_most_a_thousand_conditions_in_all(api: Api, team: tuple[str, dict[str, str]]) -> None:
    team_id, headers = team
    url = f"/v1/billing/teams/{team_id}/usage"
    many = " OR ".join(["model:a"] + [f"model:m{i}" for i in range(998)])  # 999 conditions
    response = api.client.post(url, json=body("NOT model:b", many), headers=headers)
    assert response.status_code == 200, response.text  # exactly 1,000
    assert response.json()["timeSeries"][0]["dataPoints"][0]["values"] == [1]
    for filters in (
        ("NOT model:b", many + " OR model:z"),
        ("NOT model:b AND model:a", many),
        ("", many + " OR " + " OR ".join(["model:z"] * 100_000)),
    ):
        response = api.client.post(url, json=body(*filters), headers=headers)
        assert response.status_code == 400, response.text[:200]
        error = response.json()
        assert error["code"] == "too_many_conditions"
        assert error["field"] == "analyticsRequest.filters.1"


def test_a_lone_surrogate_in_a_filter_is_quoted_back_in_the_400(
    api: Api, team: tuple[str, dict[str, str]]
) -> None:
    # JSON can escape a lone surrogate, which UTF-8 cannot encode: the error quotes the value
    # with repr(), which escapes it (it was a 500 when one message put it in as it was)
    team_id, headers = team
    for text, reason in (("model:=\\ud800", "operator"), ('model:\\ud800\\"', "quote")):
        raw = orjson.dumps(body("model:a", "FILTER")).replace(b"FILTER", text.encode())
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/usage",
            content=raw,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["code"] == "invalid_filter"
        assert error["field"] == "analyticsRequest.filters.1"
        assert reason in error["error"]
        assert "\\ud800" in error["error"]  # escaped by repr()
        assert "\ud800" not in error["error"]
