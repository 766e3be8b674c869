"""Alert settings per team: defaults, round trip, the billing-info e-mail as the fallback, every
bad input a 400 naming the field that changes nothing, an unknown team a 404."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Api
from tests.teams.test_billing_info import GOOD


def _path(team_id: str) -> str:
    return f"/admin/v1/teams/{team_id}/alerts"


# lowCreditCents null (no low-credit alert) is left out, like every unset field (WireRouter)
DEFAULTS = {
    "spendThresholdsPercent": [50, 80, 100],
    "emails": [],
    "effectiveEmails": [],
}


def test_defaults_then_round_trip(api: Api) -> None:
    team_id = api.create_team()
    response = api.admin("GET", _path(team_id))
    assert response.status_code == 200, response.text
    assert response.json() == DEFAULTS
    body = {
        "spendThresholdsPercent": [25, 90, 150],
        "lowCreditCents": "1000",
        "emails": ["Ops@Acme.example", "cfo@acme.example"],
    }
    response = api.admin("PUT", _path(team_id), json=body)
    assert response.status_code == 200, response.text
    expected = {
        "spendThresholdsPercent": [25, 90, 150],
        "lowCreditCents": "1000",
        "emails": ["Ops@acme.example", "cfo@acme.example"],  # domain normalized
        "effectiveEmails": ["Ops@acme.example", "cfo@acme.example"],
    }
    assert response.json() == expected
    assert api.admin("GET", _path(team_id)).json() == expected
    # null and omitted fields take their defaults: the PUT replaces the whole settings
    response = api.admin("PUT", _path(team_id), json={"lowCreditCents": None})
    assert response.status_code == 200, response.text
    assert response.json() == DEFAULTS


def test_no_alert_emails_means_the_billing_info_email(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info", headers=headers, json={"billingInfo": GOOD}
    )
    assert response.status_code == 200, response.text
    got = api.admin("GET", _path(team_id)).json()
    assert got["emails"] == []
    assert got["effectiveEmails"] == ["billing@acme.example"]
    api.admin("PUT", _path(team_id), json={"emails": ["ops@acme.example"]})
    assert api.admin("GET", _path(team_id)).json()["effectiveEmails"] == ["ops@acme.example"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"spendThresholdsPercent": [0]}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": [1001]}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": [80, 50]}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": [50, 50]}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": list(range(1, 12))}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": [50.5]}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": ["50"]}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": [True]}, "spendThresholdsPercent"),
        ({"spendThresholdsPercent": "50"}, "spendThresholdsPercent"),
        ({"lowCreditCents": "-1"}, "lowCreditCents"),
        ({"lowCreditCents": "1.5"}, "lowCreditCents"),
        ({"lowCreditCents": "9223372036854775808"}, "lowCreditCents"),
        ({"lowCreditCents": "ten"}, "lowCreditCents"),
        ({"emails": ["not-an-address"]}, "emails"),
        ({"emails": ["a@b.example", "A@b.example"]}, "emails"),
        ({"emails": [f"u{i}@acme.example" for i in range(11)]}, "emails"),
        ({"emails": "ops@acme.example"}, "emails"),
        ({"emails": [7]}, "emails"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    team_id = api.create_team()
    good = {"spendThresholdsPercent": [10, 20], "lowCreditCents": "5", "emails": ["x@y.example"]}
    assert api.admin("PUT", _path(team_id), json=good).status_code == 200
    before = api.admin("GET", _path(team_id)).json()
    response = api.admin("PUT", _path(team_id), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_argument"
    assert response.json()["field"].startswith(field), response.json()
    assert api.admin("GET", _path(team_id)).json() == before


def test_unknown_team_is_a_404(api: Api) -> None:
    missing = str(uuid.uuid4())
    for method, kwargs in (("GET", {}), ("PUT", {"json": {"emails": []}})):
        response = api.admin(method, _path(missing), **kwargs)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "team_not_found"
    response = api.admin("GET", _path("not-a-uuid"))
    assert response.status_code in (400, 404)
