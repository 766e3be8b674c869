"""Billing info: the spec's shape, validation naming the field, nothing changed on a 400."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api

GOOD: dict[str, Any] = {
    "name": "Acme Inc.",
    "address": {
        "line1": "1 Main St",
        "line2": "Suite 2",
        "city": "Springfield",
        "country": "us",
        "postalCode": "12345",
        "state": "IL",
    },
    "email": "billing@acme.example",
    "taxIdType": "us_ein",
    "taxNumber": "12-3456789",
}


def _path(team_id: str) -> str:
    return f"/v1/billing/teams/{team_id}/billing-info"


def test_unset_billing_info_is_the_object_with_empty_strings(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.get(_path(team_id), headers=headers)
    assert response.status_code == 200
    assert response.json() == {
        "billingInfo": {
            "name": "",
            "address": {
                "line1": "",
                "line2": "",
                "city": "",
                "country": "",
                "postalCode": "",
                "state": "",
            },
            "email": "",
            "taxIdType": "",
            "taxNumber": "",
        }
    }


def test_set_then_get_round_trips_and_replaces_whole_object(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.post(_path(team_id), headers=headers, json={"billingInfo": GOOD})
    assert response.status_code == 200, response.text
    assert response.json() == {}
    got = api.client.get(_path(team_id), headers=headers).json()["billingInfo"]
    assert got["address"]["country"] == "US"  # normalized
    assert got["name"] == "Acme Inc." and got["taxIdType"] == "us_ein"
    smaller = {"name": "Acme", "email": "a@acme.example", "address": {"country": "DE"}}
    assert (
        api.client.post(_path(team_id), headers=headers, json={"billingInfo": smaller}).status_code
        == 200
    )
    got = api.client.get(_path(team_id), headers=headers).json()["billingInfo"]
    assert got["address"] == {
        "line1": "",
        "line2": "",
        "city": "",
        "country": "DE",
        "postalCode": "",
        "state": "",
    }
    assert got["taxIdType"] == "" and got["taxNumber"] == ""


def _with(path: str, value: Any) -> dict[str, Any]:
    body = {**GOOD, "address": dict(GOOD["address"])}
    target: dict[str, Any] = body
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return body


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("name", "", "billingInfo.name"),
        ("name", _DELETE, "billingInfo.name"),
        ("name", "x" * 201, "billingInfo.name"),
        ("email", "not-an-email", "billingInfo.email"),
        ("email", _DELETE, "billingInfo.email"),
        ("address.country", "XX", "billingInfo.address.country"),
        ("address.country", "USA", "billingInfo.address.country"),
        ("address.country", "", "billingInfo.address.country"),
        ("address.line1", "y" * 10_000, "billingInfo.address.line1"),
        ("address.postalCode", "9" * 21, "billingInfo.address.postalCode"),
        ("taxIdType", "made_up", "billingInfo.taxIdType"),
        ("taxNumber", "", "billingInfo.taxNumber"),
        ("name", 12, "billingInfo.name"),
    ],
)
def test_bad_field_is_400_naming_it_and_changes_nothing(
    api: Api, path: str, value: Any, field: str
) -> None:
    team_id, headers = api.team_with_key()
    assert (
        api.client.post(_path(team_id), headers=headers, json={"billingInfo": GOOD}).status_code
        == 200
    )
    before = api.client.get(_path(team_id), headers=headers).json()
    response = api.client.post(
        _path(team_id), headers=headers, json={"billingInfo": _with(path, value)}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert body["field"] == field
    assert field in body["error"]
    assert api.client.get(_path(team_id), headers=headers).json() == before


def test_malformed_json_is_400(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.post(
        _path(team_id),
        headers={**headers, "Content-Type": "application/json"},
        content=b'{"billingInfo": {"name": ',
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"
    missing = api.client.post(_path(team_id), headers=headers, json={})
    assert missing.status_code == 400
    assert missing.json()["field"] == "billingInfo"
