"""Spending limits (§9, §10) and the operator's hard limit."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api
from tests.invoicing.conftest import limits, set_soft_limit

READ_ONLY = ["team-token:endpoint:BillingRead"]


def test_defaults_then_soft_limit(api: Api) -> None:
    team_id, headers = api.team_with_key()
    assert limits(api, headers, team_id) == {
        "hardSlAuto": {"val": "100000"},
        "effectiveHardSl": {"val": "100000"},
        "softSl": {"val": "0"},
        "effectiveSl": {"val": "100000"},
    }  # hardSlOverride left out while unset
    response = set_soft_limit(api, headers, team_id, "20000")
    assert response.status_code == 200
    assert response.json() == {"thisBpSoftSpendingLimit": {"val": "20000"}}
    assert limits(api, headers, team_id)["softSl"] == {"val": "20000"}
    assert limits(api, headers, team_id)["effectiveSl"] == {"val": "20000"}
    # A bare number is accepted too; 0 means credit only.
    assert set_soft_limit(api, headers, team_id, 0).json() == {
        "thisBpSoftSpendingLimit": {"val": "0"}
    }
    assert limits(api, headers, team_id)["effectiveSl"] == {"val": "0"}
    # The whole hard limit is allowed.
    assert set_soft_limit(api, headers, team_id, "100000").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"desiredSoftSpendingLimit": {"val": "-1"}},
        {"desiredSoftSpendingLimit": {"val": -5}},
        {"desiredSoftSpendingLimit": {"val": "12.50"}},
        {"desiredSoftSpendingLimit": {"val": 12.5}},
        {"desiredSoftSpendingLimit": {"val": "abc"}},
        {"desiredSoftSpendingLimit": {"val": ""}},
        {"desiredSoftSpendingLimit": "500"},
        {},
        {"desiredSoftSpendingLimit": {"val": "100001"}},  # above effectiveHardSl
        {"desiredSoftSpendingLimit": {"val": str(2**63)}},
    ],
)
def test_bad_soft_limits_are_400_and_change_nothing(api: Api, body: dict[str, Any]) -> None:
    team_id, headers = api.team_with_key()
    assert set_soft_limit(api, headers, team_id, "700").status_code == 200
    before = limits(api, headers, team_id)
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits", headers=headers, json=body
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] in ("invalid_argument", "above_hard_limit")
    assert error["field"].startswith("desiredSoftSpendingLimit")
    assert limits(api, headers, team_id) == before


def test_soft_limit_above_hard_limit_is_refused(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.admin(
        "PUT", f"/admin/v1/teams/{team_id}/hard-spending-limit", json={"amount": "5000"}
    )
    assert response.status_code == 200
    refused = set_soft_limit(api, headers, team_id, "5001")
    assert refused.status_code == 400
    assert refused.json()["code"] == "above_hard_limit"
    assert refused.json()["field"] == "desiredSoftSpendingLimit.val"
    assert limits(api, headers, team_id)["softSl"] == {"val": "0"}
    assert set_soft_limit(api, headers, team_id, "5000").status_code == 200


def test_soft_limit_needs_write_acl_and_own_team(api: Api) -> None:
    team_id, read_only = api.team_with_key(READ_ONLY)
    assert set_soft_limit(api, read_only, team_id, "10").status_code == 403
    assert limits(api, read_only, team_id)["softSl"] == {"val": "0"}  # reading is fine
    _other_id, other = api.team_with_key()
    assert set_soft_limit(api, other, team_id, "10").status_code == 403
    response = api.client.get(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits", headers=other
    )
    assert response.status_code == 403
    assert (
        api.client.get(f"/v1/billing/teams/{team_id}/postpaid/spending-limits").status_code == 401
    )


def test_operator_hard_limit(api: Api) -> None:
    team_id, headers = api.team_with_key()
    path = f"/admin/v1/teams/{team_id}/hard-spending-limit"
    assert set_soft_limit(api, headers, team_id, "30000").status_code == 200

    response = api.admin("PUT", path, json={"amount": "100000"})
    assert response.status_code == 200
    assert response.json() == {
        "spendingLimits": {
            "hardSlOverride": {"val": "100000"},
            "hardSlAuto": {"val": "100000"},
            "effectiveHardSl": {"val": "100000"},
            "softSl": {"val": "30000"},
            "effectiveSl": {"val": "30000"},
        }
    }
    # Lowered below the team's soft limit: the soft limit is kept, the effective one is the min.
    lowered = api.admin("PUT", path, json={"amount": 20000}).json()["spendingLimits"]
    assert lowered["softSl"] == {"val": "30000"}
    assert lowered["effectiveHardSl"] == {"val": "20000"}
    assert lowered["effectiveSl"] == {"val": "20000"}
    assert limits(api, headers, team_id) == lowered
    # Removed: back to the default, and the team's soft limit applies again.
    cleared = api.admin("PUT", path, json={"amount": None}).json()["spendingLimits"]
    assert "hardSlOverride" not in cleared
    assert cleared["effectiveHardSl"] == {"val": "100000"}
    assert cleared["effectiveSl"] == {"val": "30000"}
    # A hard limit of 0 is allowed (credit only for this team).
    assert api.admin("PUT", path, json={"amount": "0"}).json()["spendingLimits"]["effectiveSl"] == {
        "val": "0"
    }


@pytest.mark.parametrize(
    "body",
    [{}, {"amount": "-1"}, {"amount": "1.5"}, {"amount": "x"}, {"amount": 2.5}, {"amount": {}}],
)
def test_bad_hard_limits_are_400_and_change_nothing(api: Api, body: dict[str, Any]) -> None:
    team_id, headers = api.team_with_key()
    path = f"/admin/v1/teams/{team_id}/hard-spending-limit"
    assert api.admin("PUT", path, json={"amount": "4000"}).status_code == 200
    before = limits(api, headers, team_id)
    response = api.admin("PUT", path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "amount"
    assert limits(api, headers, team_id) == before


def test_hard_limit_unknown_team_bad_uuid_and_auth(api: Api) -> None:
    unknown = "00000000-0000-4000-8000-00000000beef"
    path = f"/admin/v1/teams/{unknown}/hard-spending-limit"
    response = api.admin("PUT", path, json={"amount": "1"})
    assert response.status_code == 404 and response.json()["code"] == "team_not_found"
    bad = api.admin("PUT", "/admin/v1/teams/nope/hard-spending-limit", json={"amount": "1"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_uuid"
    team_id, headers = api.team_with_key()
    key_instead = api.client.put(
        f"/admin/v1/teams/{team_id}/hard-spending-limit", headers=headers, json={"amount": "1"}
    )
    assert key_instead.status_code == 401
    assert "hardSlOverride" not in limits(api, headers, team_id)


def test_default_hard_limit_setting(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.invoicing.conftest import use_settings

    use_settings(api, monkeypatch, default_hard_limit_cents=2500)
    team_id, headers = api.team_with_key()
    got = limits(api, headers, team_id)
    assert got["hardSlAuto"] == got["effectiveHardSl"] == got["effectiveSl"] == {"val": "2500"}
    assert set_soft_limit(api, headers, team_id, "2501").status_code == 400


def test_proto3_zero_soft_limit_means_zero(api: Api) -> None:
    # {"val": null} is a 400 instead (tests/kit/test_cent_input.py).
    team_id, headers = api.team_with_key()
    for body in ({"desiredSoftSpendingLimit": {}},):
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/postpaid/spending-limits", headers=headers, json=body
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"thisBpSoftSpendingLimit": {"val": "0"}}
