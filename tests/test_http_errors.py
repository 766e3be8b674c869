"""The error model: every 4xx/5xx answers {"code", "error"}; 422 is never used."""

from __future__ import annotations

from fastapi import FastAPI

from billfold.kit.http import DbSession
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

    app.add_api_route(f"/test-explode-{api.backend}", explode, methods=["POST"])
    response = api.client.post(f"/test-explode-{api.backend}")
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
