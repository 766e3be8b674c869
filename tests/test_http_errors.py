"""The error model: every 4xx/5xx answers {"code", "error"}; 422 is never used."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.http import DbSession
from billfold.payments.sandbox import SandboxProvider
from tests.conftest import Api


def test_unknown_route_and_wrong_method(api: Api) -> None:
    response = api.client.get("/v1/billing/nothing-here")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    response = api.client.delete("/healthz")
    assert response.status_code == 405
    assert set(response.json()) >= {"code", "error"}


def test_healthz(api: Api) -> None:
    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_healthz_without_a_database_is_503(tmp_path: Path) -> None:
    sandbox = SandboxProvider.for_database(f"sqlite:///{tmp_path / 'ok.db'}")
    sandbox.install()
    unreachable = f"sqlite:///{tmp_path / 'no-such-dir' / 'billfold.db'}"
    app = create_app(Settings(database_url=unreachable, admin_token="t"), provider=sandbox)
    with TestClient(app) as client:
        for _ in range(2):  # the probe, then its answer reused
            response = client.get("/healthz")
            assert response.status_code == 503
            assert response.json() == {"code": "unavailable", "error": "database unreachable"}
    sandbox.engine.dispose()


def test_unexpected_error_is_a_json_500_and_rolls_back(api: Api) -> None:
    app: FastAPI = api.client.app  # type: ignore[assignment]
    from sqlalchemy import select

    from billfold.teams.models import Team
    from billfold.teams.service import team_service

    marker = f"boom-{api.backend}"

    def explode(session: DbSession) -> None:
        team_service.create(session, marker)
        session.flush()
        raise RuntimeError("bug")

    path = f"/test-explode-{api.backend}"
    app.add_api_route(path, explode, methods=["POST"])
    try:
        response = api.client.post(path)
    finally:  # the app is shared: other tests walk its routes
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != path]
        app.openapi_schema = None
    assert response.status_code == 500
    assert response.json()["code"] == "internal"
    with app.state.sessionmaker() as session:
        assert session.scalars(select(Team).where(Team.name == marker)).first() is None


def test_non_json_body_is_400(api: Api) -> None:
    response = api.admin(
        "POST",
        "/admin/v1/teams",
        headers={**api.operator, "Content-Type": "text/plain"},
        content=b"name=x",
    )
    assert response.status_code == 400


def test_oversized_body_is_413(api: Api) -> None:
    from billfold.kit.limits import MAX_BODY_BYTES

    team_id, headers = api.team_with_key()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info",
        headers={**headers, "Content-Type": "application/json"},
        content=b" " * (MAX_BODY_BYTES + 1),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_unset_optional_fields_are_left_out_not_null(api: Api) -> None:
    from billfold.kit.schemas import WireModel, WireRouter

    class Thing(WireModel):
        name: str
        maybe: str | None = None

    router = WireRouter()

    @router.get(f"/test-optional-{api.backend}", response_model=Thing)
    def thing() -> Thing:
        return Thing(name="x")

    api.client.app.include_router(router)  # type: ignore[attr-defined]
    assert api.client.get(f"/test-optional-{api.backend}").json() == {"name": "x"}


def test_no_credentials_is_401_even_with_a_malformed_body(api: Api) -> None:
    team_id = api.create_team()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 401
    response = api.client.post("/admin/v1/teams", content=b"{")
    assert response.status_code == 401


def test_json_is_read_whatever_the_content_type(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        headers={**headers, "Content-Type": "text/plain;charset=UTF-8"},
        content=b'{"desiredSoftSpendingLimit": {"val": "1000"}}',
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"thisBpSoftSpendingLimit": {"val": "1000"}}


def test_proto3_json_zero_and_null_are_defaults(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        headers=headers,
        json={"desiredSoftSpendingLimit": {}},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"thisBpSoftSpendingLimit": {"val": "0"}}
    info = {
        "name": "Acme",
        "email": "a@acme.example",
        "address": {"country": "DE", "line2": None},
        "taxIdType": None,
    }
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info", headers=headers, json={"billingInfo": info}
    )
    assert response.status_code == 200, response.text


def test_nul_characters_are_400_and_change_nothing(api: Api) -> None:
    team_id, headers = api.team_with_key()
    for path, body, field in (
        (
            f"/v1/billing/teams/{team_id}/billing-info",
            {
                "billingInfo": {
                    "name": "A\x00",
                    "email": "a@b.example",
                    "address": {"country": "US"},
                }
            },
            "billingInfo.name",
        ),
        (
            f"/v1/billing/teams/{team_id}/payment-method/default",
            {"paymentMethodId": "pm_\x00"},
            "paymentMethodId",
        ),
    ):
        response = api.client.post(path, headers=headers, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
    response = api.admin("POST", "/admin/v1/teams", json={"name": "x\x00"})
    assert response.status_code == 400
    info = api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers).json()
    assert info["billingInfo"]["name"] == ""


def test_times_out_of_range_are_400(api: Api) -> None:
    from tests.conftest import unique_sku

    body = {"description": "d", "unitType": "u", "unitPrice": "1"}
    for when in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        response = api.admin(
            "PUT", f"/admin/v1/prices/{unique_sku()}", json={**body, "effectiveFrom": when}
        )
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "effectiveFrom"
    team_id, headers = api.team_with_key()
    response = api.client.get(
        f"/v1/billing/teams/{team_id}/invoices",
        headers=headers,
        params={"since.year": "99999999999999999999", "since.month": "1"},
    )
    assert response.status_code == 400
