"""A cent object whose ``val`` is null is a 400 naming ``<field>.val``, on every endpoint that
takes one, and changes nothing (docs/api-decisions.md, "A null cent value")."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api
from tests.invoicing.conftest import limits, set_soft_limit
from tests.ledger.conftest import assert_nothing_happened, balance

NULL_VALS: list[Any] = [
    {"val": None},
    {"val": None, "other": None},  # an unknown field beside it changes nothing
]


@pytest.mark.parametrize("cent", NULL_VALS)
def test_a_null_soft_limit_is_400_and_changes_nothing(api: Api, cent: Any) -> None:
    team_id, headers = api.team_with_key()
    assert set_soft_limit(api, headers, team_id, "700").status_code == 200
    before = limits(api, headers, team_id)
    assert before["softSl"] == {"val": "700"}
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        headers=headers,
        json={"desiredSoftSpendingLimit": cent},
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_argument"
    assert error["field"] == "desiredSoftSpendingLimit.val"
    assert "null" in error["error"]
    assert limits(api, headers, team_id) == before  # not 0: the team is not blocked


def test_a_soft_limit_without_val_is_still_zero(api: Api) -> None:
    # proto3 JSON leaves a zero val out: {} is how a generated client sends 0.
    team_id, headers = api.team_with_key()
    assert set_soft_limit(api, headers, team_id, "700").status_code == 200
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        headers=headers,
        json={"desiredSoftSpendingLimit": {}},
    )
    assert response.status_code == 200, response.text
    assert limits(api, headers, team_id)["softSl"] == {"val": "0"}


@pytest.mark.parametrize("cent", NULL_VALS)
def test_a_null_top_up_amount_is_400_and_changes_nothing(api: Api, cent: Any) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/prepaid/top-up", headers=headers, json={"amount": cent}
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_argument"
    assert error["field"] == "amount.val"
    assert "null" in error["error"]
    assert_nothing_happened(api, team_id)
    assert balance(api, team_id, headers)["changes"] == []
