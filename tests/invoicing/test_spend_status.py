"""The spend check for the gateway, and the operator's view of a team's billing state."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billfold.spend.service import spend_service
from tests.conftest import Api, event, unique_sku
from tests.invoicing.conftest import frozen_at, grant, limits, set_soft_limit, spend_status


def test_soft_limit_reached_mid_batch_blocks_at_once(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2030-05-10T12:00:00"):
        assert set_soft_limit(api, headers, team_id, "500").status_code == 200
        assert spend_status(api, team_id) == {
            "allowed": True,
            "reason": "ok",
            "prepaidRemaining": {"val": "0"},
            "postpaidRemaining": {"val": "500"},
            "cycleSpend": {"val": "0"},
            "postpaidSpend": {"val": "0"},
            "effectiveSpendingLimit": {"val": "500"},
        }
        # One batch of ten 60-cent events: the limit is crossed by the ninth.
        batch = [event(team_id, sku, 60, f"2030-05-10T10:{i:02d}:00Z") for i in range(10)]
        assert api.ingest(batch)["accepted"] == 10
        status = spend_status(api, team_id)
        assert status["allowed"] is False
        assert status["reason"] == "spending_limit_reached"
        assert status["postpaidRemaining"] == {"val": "0"}
        assert status["cycleSpend"] == {"val": "600"}
        assert status["postpaidSpend"] == {"val": "600"}
        # Credit added afterwards is spendable: allowed again, on credit.
        grant(api, team_id, 300)
        status = spend_status(api, team_id)
        assert status["allowed"] is True and status["reason"] == "ok"
        assert status["prepaidRemaining"] == {"val": "0"}  # 300 credit paid 300 of the 600
        assert status["postpaidSpend"] == {"val": "300"}
        assert status["postpaidRemaining"] == {"val": "200"}


def test_limit_lowered_below_spend_blocks_at_once(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2030-05-11T12:00:00"):
        api.ingest([event(team_id, sku, 300, "2030-05-11T10:00:00Z")])
        status = spend_status(api, team_id)
        assert status["allowed"] is True and status["postpaidRemaining"] == {"val": "99700"}

        assert set_soft_limit(api, headers, team_id, "200").status_code == 200
        status = spend_status(api, team_id)
        assert (status["allowed"], status["reason"]) == (False, "spending_limit_reached")

        assert set_soft_limit(api, headers, team_id, "1000").status_code == 200
        assert spend_status(api, team_id)["postpaidRemaining"] == {"val": "700"}

        # The operator lowers the hard limit below the spend: blocked at once.
        path = f"/admin/v1/teams/{team_id}/hard-spending-limit"
        assert api.admin("PUT", path, json={"amount": "250"}).status_code == 200
        status = spend_status(api, team_id)
        assert (status["allowed"], status["reason"]) == (False, "spending_limit_reached")
        assert status["effectiveSpendingLimit"] == {"val": "250"}
        assert limits(api, headers, team_id)["softSl"] == {"val": "1000"}
        # The team cannot raise its soft limit above the hard limit meanwhile.
        assert set_soft_limit(api, headers, team_id, "1000").status_code == 400
        assert api.admin("PUT", path, json={"amount": None}).status_code == 200
        assert spend_status(api, team_id)["allowed"] is True


def test_credit_only_team_is_blocked_when_credit_is_gone(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2030-05-12T12:00:00"):
        assert set_soft_limit(api, headers, team_id, "0").status_code == 200
        status = spend_status(api, team_id)
        assert (status["allowed"], status["reason"]) == (False, "prepaid_exhausted")
        grant(api, team_id, 100)
        status = spend_status(api, team_id)
        assert status["allowed"] is True
        assert status["prepaidRemaining"] == {"val": "100"}
        assert status["postpaidRemaining"] == {"val": "0"}
        api.ingest([event(team_id, sku, 60, "2030-05-12T10:00:00Z")])
        assert spend_status(api, team_id)["prepaidRemaining"] == {"val": "40"}
        api.ingest([event(team_id, sku, 60, "2030-05-12T10:01:00Z")])
        status = spend_status(api, team_id)
        assert (status["allowed"], status["reason"]) == (False, "prepaid_exhausted")
        assert status["prepaidRemaining"] == {"val": "0"}
        assert status["cycleSpend"] == {"val": "120"}
        assert status["postpaidSpend"] == {"val": "20"}  # the batch that crossed is billed


def test_spend_status_errors(api: Api) -> None:
    unknown = api.admin("GET", "/admin/v1/teams/00000000-0000-4000-8000-00000000dead/spend-status")
    assert unknown.status_code == 404 and unknown.json()["code"] == "team_not_found"
    bad = api.admin("GET", "/admin/v1/teams/zzz/spend-status")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_uuid"
    team_id, headers = api.team_with_key()
    assert api.client.get(f"/admin/v1/teams/{team_id}/spend-status").status_code == 401
    path = f"/admin/v1/teams/{team_id}/spend-status"
    assert api.client.get(path, headers=headers).status_code == 401


def test_operator_team_view(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2030-05-13T12:00:00"):
        assert set_soft_limit(api, headers, team_id, "5000").status_code == 200
        api.ingest([event(team_id, sku, 250, "2030-05-13T10:00:00Z")])
        grant(api, team_id, 1000)
        response = api.admin("GET", f"/admin/v1/teams/{team_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["teamId"] == team_id and body["name"] == "Acme"
    assert body["createTime"].endswith("Z")
    assert body["billingCycle"] == {"year": 2030, "month": 5}
    assert body["creditLeft"] == {"val": "750"}
    assert body["balance"] == {"val": "-750"}
    assert body["cycleSpend"] == {"val": "250"}
    assert body["cycleCreditUsed"] == {"val": "250"}
    assert body["cyclePostpaid"] == {"val": "0"}
    assert body["spendingLimits"]["effectiveSl"] == {"val": "5000"}
    assert body["spendStatus"]["allowed"] is True
    assert body["billingCountry"] == ""
    assert "defaultPaymentMethodId" not in body
    api.add_card(team_id)
    assert api.admin("GET", f"/admin/v1/teams/{team_id}").json()["defaultPaymentMethodId"]
    missing = api.admin("GET", "/admin/v1/teams/00000000-0000-4000-8000-00000000dead")
    assert missing.status_code == 404


def _service_answer(api: Api, team_id: str) -> dict[str, Any]:
    """The spend check computed the long way (credit_position in a transaction)."""
    from billfold.spend.gateway import spend_status_json

    app: Any = api.client.app
    with app.state.sessionmaker() as session:
        decision = spend_service.spend_status(session, app.state.settings, uuid.UUID(team_id))
        session.commit()
    return dict(orjson.loads(spend_status_json(decision)))


_SKUS: dict[str, str] = {}


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    previous=st.integers(min_value=0, max_value=3000),
    current=st.integers(min_value=0, max_value=3000),
    credit=st.integers(min_value=0, max_value=5000),
    soft=st.none() | st.integers(min_value=0, max_value=4000),
)
def test_one_statement_check_agrees_with_the_credit_position(
    api: Api, previous: int, current: int, credit: int, soft: int | None
) -> None:
    if api.backend not in _SKUS:
        _SKUS[api.backend] = unique_sku("agree")
        api.set_price(_SKUS[api.backend], "0.01", "2030-01-01T00:00:00Z")
    sku = _SKUS[api.backend]
    team_id, headers = api.team_with_key()
    with frozen_at("2030-06-03T12:00:00"):
        events = []
        if previous:
            events.append(event(team_id, sku, previous, "2030-05-30T10:00:00Z"))
        if current:
            events.append(event(team_id, sku, current, "2030-06-02T10:00:00Z"))
        if events:
            api.ingest(events)
        if credit:
            grant(api, team_id, credit)
        if soft is not None:
            assert set_soft_limit(api, headers, team_id, soft).status_code == 200
        assert spend_status(api, team_id) == _service_answer(api, team_id)


def test_due_credit_expiry_is_booked_before_the_check(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    assert set_soft_limit(api, headers, team_id, "0").status_code == 200
    with frozen_at("2030-05-14T12:00:00"):
        response = api.admin(
            "POST",
            f"/admin/v1/teams/{team_id}/credits",
            json={"amount": "1000", "reason": "promo", "expiresAt": "2030-05-20T00:00:00Z"},
        )
        assert response.status_code == 201, response.text
        api.ingest([event(team_id, sku, 300, "2030-05-14T10:00:00Z")])
        assert spend_status(api, team_id)["prepaidRemaining"] == {"val": "700"}
    with frozen_at("2030-05-21T00:00:00"):
        status = spend_status(api, team_id)
        assert status == _service_answer(api, team_id)
        assert int(status["prepaidRemaining"]["val"]) < 700
        assert (status["allowed"], status["reason"]) == (False, "prepaid_exhausted")
        assert spend_status(api, team_id) == status  # booked once; now the one-statement path


def test_spend_check_with_a_generated_operator_token(api: Api) -> None:
    from billfold.app import create_app
    from billfold.config import Settings
    from billfold.teams.service import OperatorTokenService
    from tests.conftest import TestClient  # type: ignore[attr-defined]

    team_id = api.create_team()
    app = create_app(Settings(database_url=api.url, admin_token=None))
    with TestClient(app) as client:
        with app.state.sessionmaker() as session:
            token = OperatorTokenService(None).generate(session)
            session.commit()
        path = f"/admin/v1/teams/{team_id}/spend-status"
        ok = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["allowed"] is True
        wrong = client.get(path, headers={"Authorization": "Bearer bfop_wrong"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_operator_token"
        assert client.get(path).status_code == 401


def test_inline_and_thread_pool_paths_agree(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:

    engine = api.client.app.state.engine  # type: ignore[attr-defined]
    assert spend_service.reads_inline(engine) is (api.backend == "postgresql")
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2030-05-15T12:00:00"):
        api.ingest([event(team_id, sku, 123, "2030-05-15T10:00:00Z")])
        grant(api, team_id, 100)
        assert set_soft_limit(api, headers, team_id, "50").status_code == 200
        inline = spend_status(api, team_id)
        monkeypatch.setattr(type(spend_service), "reads_inline", lambda self, engine: False)
        assert spend_status(api, team_id) == inline == _service_answer(api, team_id)
        missing = api.admin(
            "GET", "/admin/v1/teams/00000000-0000-4000-8000-00000000dead/spend-status"
        )
        assert missing.status_code == 404
    assert inline["postpaidSpend"] == {"val": "23"} and inline["postpaidRemaining"] == {"val": "27"}


def test_every_operator_route_of_the_domain_wants_the_operator_token(api: Api) -> None:
    from billfold.invoicing.endpoints import admin_router
    from billfold.spend.endpoints import admin_router as spend_admin_router
    from billfold.spend.endpoints import gateway_router

    team_id, headers = api.team_with_key()
    routes = [*admin_router.routes, *spend_admin_router.routes, *gateway_router.routes]
    assert len(routes) == 5  # team, hard limit, close, charge; spend-status (gateway)
    for route in routes:
        path = route.path.replace("{team_id}", team_id).replace("{invoice_id}", "inv_x")  # type: ignore[attr-defined]
        for method in route.methods:  # type: ignore[attr-defined]
            for auth in ({}, headers, {"Authorization": "Bearer wrong"}):
                response = api.client.request(method, path, headers=auth, json={})
                assert response.status_code == 401, (method, path, auth, response.text)
