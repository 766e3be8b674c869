"""Rate limits (kit/ratelimit.py): 429 with Retry-After, budgets per caller from the settings, bad
credentials charged to the address, the spend check and ingestion on budgets of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from billfold.app import create_app
from billfold.config import Settings
from tests.conftest import OPERATOR_TOKEN, Api, event, unique_sku

Limited = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgres"])
def limited(request: pytest.FixtureRequest) -> Iterator[Limited]:
    """An app of its own with the given budgets (per minute), on each database in turn."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    stack: list[Any] = []

    def make(**budgets: Any) -> Api:
        settings = Settings(
            database_url=url,
            admin_token=OPERATOR_TOKEN,
            rate_limit=budgets.pop("enabled", True),
            **{f"rate_limit_{name}": value for name, value in budgets.items()},
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        stack.append(client)
        client.__enter__()
        return Api(client, request.param, url)

    yield make
    for client in stack:
        client.__exit__(None, None, None)


def assert_limited(response: Any) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate_limited"
    assert response.json()["error"]
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1


def limits_of(api: Api, team_id: str, headers: dict[str, str]) -> Any:
    return api.client.get(f"/v1/billing/teams/{team_id}/postpaid/spending-limits", headers=headers)


def test_a_management_key_past_its_budget_gets_429_and_nothing_changes(limited: Limited) -> None:
    api = limited(key_per_minute=3)
    team_id, headers = api.team_with_key()
    for _ in range(3):
        assert limits_of(api, team_id, headers).status_code == 200
    before = api.admin("GET", f"/admin/v1/teams/{team_id}").json()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        headers=headers,
        json={"desiredSoftSpendingLimit": {"val": "1234"}},
    )
    assert_limited(response)
    assert api.admin("GET", f"/admin/v1/teams/{team_id}").json() == before
    # Another key of the same team has its own budget.
    other = {"Authorization": f"Bearer {api.create_key(team_id)['apiKey']}"}
    assert limits_of(api, team_id, other).status_code == 200


def test_a_flood_of_bad_keys_from_one_address_does_not_throttle_a_good_key(
    limited: Limited,
) -> None:
    api = limited(bad_auth_per_minute=5)
    team_id, good = api.team_with_key()
    fresh_pair = api.team_with_key()  # a good key this process has not seen yet
    assert limits_of(api, team_id, good).status_code == 200
    statuses = [
        limits_of(api, team_id, {"Authorization": f"Bearer xai-bad-{n}"}).status_code
        for n in range(20)
    ]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    assert_limited(limits_of(api, team_id, {"Authorization": "Bearer xai-bad"}))
    assert_limited(limits_of(api, team_id, {}))  # no credentials at all: also screened
    # The good key keeps working from the flooding address, within its own budget ...
    for _ in range(5):
        assert limits_of(api, team_id, good).status_code == 200
    # ... and the operator token, which authenticated before.
    assert api.admin("GET", f"/admin/v1/teams/{team_id}").status_code == 200
    # A good key this process has not seen authenticate waits, from that address only
    # (documented): it cannot be told from a bad one without the database.
    fresh_team, fresh = fresh_pair
    assert_limited(limits_of(api, fresh_team, fresh))
    other = Api(
        TestClient(api.client.app, client=("10.9.8.7", 1234), raise_server_exceptions=False),
        api.backend,
        api.url,
    )
    assert limits_of(other, fresh_team, fresh).status_code == 200
    assert limits_of(other, team_id, {"Authorization": "Bearer xai-bad"}).status_code == 401


def test_the_spend_check_and_ingestion_have_budgets_of_their_own(limited: Limited) -> None:
    api = limited(operator_per_minute=8, spend_check_per_minute=3, ingest_per_minute=100)
    team_id = api.create_team()
    sku = unique_sku()
    api.set_price(sku, "1")  # budget: 2 of 8 so far
    while api.admin("GET", f"/admin/v1/teams/{team_id}").status_code == 200:
        pass
    assert_limited(api.admin("GET", f"/admin/v1/teams/{team_id}"))
    # A dashboard spent the operator budget: the gateway's checks and ingestion go on.
    check = f"/admin/v1/teams/{team_id}/spend-status"
    for _ in range(3):
        assert api.admin("GET", check).status_code == 200
    assert_limited(api.admin("GET", check))
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    result = api.ingest([event(team_id, sku, 1, now)])
    assert result["accepted"] == 1, result


def test_the_off_switch_turns_every_budget_off(limited: Limited) -> None:
    api = limited(
        enabled=False,
        key_per_minute=1,
        operator_per_minute=1,
        spend_check_per_minute=1,
        bad_auth_per_minute=1,
    )
    team_id, headers = api.team_with_key()
    for _ in range(3):
        assert limits_of(api, team_id, headers).status_code == 200
        assert api.admin("GET", f"/admin/v1/teams/{team_id}/spend-status").status_code == 200
        assert limits_of(api, team_id, {"Authorization": "Bearer xai-bad"}).status_code == 401
    assert limits_of(api, team_id, headers).status_code == 200
