"""Operator team endpoints."""

from __future__ import annotations

import uuid

from tests.conftest import Api


def test_create_team_with_explicit_id_then_conflict(api: Api) -> None:
    team_id = str(uuid.uuid4())
    created = api.admin("POST", "/admin/v1/teams", json={"name": "Explicit", "teamId": team_id})
    assert created.status_code == 201
    body = created.json()
    assert body["teamId"] == team_id and body["name"] == "Explicit"
    assert body["createTime"].endswith("Z")
    again = api.admin("POST", "/admin/v1/teams", json={"name": "Again", "teamId": team_id})
    assert again.status_code == 409
    assert again.json()["code"] == "team_exists"


def test_create_team_validates(api: Api) -> None:
    for body, field in (
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "teamId": "nope"}, "teamId"),
    ):
        response = api.admin("POST", "/admin/v1/teams", json=body)
        assert response.status_code == 400, body
        assert response.json()["field"] == field


def test_list_teams_paginates(api: Api) -> None:
    created = {api.create_team(f"page-{i}") for i in range(3)}
    seen: set[str] = set()
    token = ""
    pages = 0
    while True:
        response = api.admin("GET", "/admin/v1/teams", params={"pageSize": 2, "pageToken": token})
        assert response.status_code == 200
        body = response.json()
        assert len(body["teams"]) <= 2
        seen |= {t["teamId"] for t in body["teams"]}
        pages += 1
        token = body["nextPageToken"]
        if not token:
            break
    assert created <= seen and pages >= 2
    assert api.admin("GET", "/admin/v1/teams", params={"pageToken": "zzz"}).status_code == 400
    assert api.admin("GET", "/admin/v1/teams", params={"pageSize": 0}).status_code == 400
