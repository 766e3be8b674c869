"""Credentials before input (kit.http.WireRoute): a request with a wrong key or token is answered
401/403 whatever its body, on every endpoint that takes one; only right credentials get to hear
that the body is malformed (400), and a rejected request changes nothing. Endpoints are found
through the OpenAPI document, so one added later is covered without a test of its own."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import FastAPI

from tests.conftest import Api, unique_sku

ACL_READ = "team-token:endpoint:BillingRead"
# Customer POSTs that only read (BillingRead): a read-only key gets past authorization.
READ_POSTS = {"/v1/billing/teams/{team_id}/usage"}
# Routes that read their body themselves (no requestBody in the OpenAPI document).
RAW_BODIES = {("POST", "/admin/v1/usage-events")}

MALFORMED = [
    b"{",
    b'{"name": "x",}',
    b"\xff\xfe\x00",  # not UTF-8
    b"[" * 100_000,  # nested beyond any parser's recursion
    b"[]",  # JSON, but not an object
    b'{"billingInfo": 7, "amount": "x", "events": 1}',  # JSON, wrong fields
]
NOT_JSON = MALFORMED[:4]


def operations(api: Api) -> list[tuple[str, str, bool]]:
    """(method, path template, takes a body) of every operation that can change something."""
    app: FastAPI = api.client.app  # type: ignore[assignment]
    found = []
    for path, ops in app.openapi()["paths"].items():
        for method, operation in ops.items():
            if method.upper() in ("GET", "HEAD"):
                continue
            body = "requestBody" in operation or (method.upper(), path) in RAW_BODIES
            found.append((method.upper(), path, body))
    return found


class Team:
    """A team with every kind of key a test needs, and a snapshot of what it can see."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.id, self.headers = api.team_with_key()
        read_only = api.create_key(self.id, [ACL_READ])
        self.read_only = {"Authorization": f"Bearer {read_only['apiKey']}"}
        revoked = api.create_key(self.id)
        response = api.admin("DELETE", f"/admin/v1/management-keys/{revoked['keyId']}")
        assert response.status_code == 204
        self.revoked = {"Authorization": f"Bearer {revoked['apiKey']}"}
        self.sku = unique_sku()

    def url(self, path: str) -> str:
        values = {"team_id": self.id, "sku": self.sku, "key_id": str(uuid.uuid4())}
        return re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m.group(1), "inv_x"), path)

    def snapshot(self) -> dict[str, Any]:
        api, base = self.api, f"/v1/billing/teams/{self.id}"
        seen: dict[str, Any] = {}
        for part in (
            "billing-info",
            "payment-method",
            "postpaid/spending-limits",
            "postpaid/invoice/preview",
            "prepaid/balance",
            "invoices",
        ):
            seen[part] = api.client.get(f"{base}/{part}", headers=self.headers).json()
        seen["team"] = api.admin("GET", f"/admin/v1/teams/{self.id}").json()
        seen["keys"] = api.admin("GET", f"/admin/v1/teams/{self.id}/management-keys").json()
        seen["prices"] = api.admin("GET", "/admin/v1/prices").json()
        seen["teams"] = all_team_ids(api)
        return seen


def all_team_ids(api: Api) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = api.admin("GET", "/admin/v1/teams", params={"pageSize": 1000, "pageToken": token})
        assert page.status_code == 200, page.text
        ids += [t["teamId"] for t in page.json()["teams"]]
        token = page.json()["nextPageToken"]
        if not token:
            return ids


def wrong_credentials(team: Team, other: Team, path: str) -> list[tuple[dict[str, str], int, str]]:
    common = [
        ({}, 401, "missing_credentials"),
        ({"Authorization": "Basic abc"}, 401, "missing_credentials"),
        ({"Authorization": "Bearer "}, 401, "missing_credentials"),
    ]
    if path.startswith("/admin/"):
        return [
            *common,
            ({"Authorization": "Bearer not-the-operator-token"}, 401, "invalid_operator_token"),
            (team.headers, 401, "invalid_operator_token"),  # a management key is never one
        ]
    wrong = [
        *common,
        ({"Authorization": "Bearer xai-unknown"}, 401, "invalid_api_key"),
        (team.revoked, 401, "invalid_api_key"),
        (team.api.operator, 401, "invalid_api_key"),  # the operator token is never a key
        (other.headers, 403, "wrong_team"),
    ]
    if path not in READ_POSTS:
        wrong.append((team.read_only, 403, "missing_acl"))
    return wrong


def test_the_endpoints_with_bodies_are_found(api: Api) -> None:
    with_body = {(m, p) for m, p, body in operations(api) if body}
    assert len(with_body) >= 13
    assert ("POST", "/v1/billing/teams/{team_id}/billing-info") in with_body
    assert ("POST", "/admin/v1/teams") in with_body
    assert ("POST", "/admin/v1/usage-events") in with_body


def test_wrong_credentials_win_over_any_body_on_every_endpoint(api: Api) -> None:
    team, other = Team(api), Team(api)
    before = team.snapshot()
    for method, path, _ in operations(api):
        for headers, status, code in wrong_credentials(team, other, path):
            for content in MALFORMED:
                response = api.client.request(
                    method, team.url(path), content=content, headers=headers
                )
                assert response.status_code == status, (method, path, headers, content[:20])
                assert response.json()["code"] == code, (method, path, response.text)
                assert response.json()["error"]
    assert team.snapshot() == before


def test_right_credentials_then_hear_that_the_body_is_not_json(api: Api) -> None:
    team = Team(api)
    before = team.snapshot()
    for method, path, body in operations(api):
        if not body:
            continue
        headers = api.operator if path.startswith("/admin/") else team.headers
        for content in NOT_JSON:
            for content_type in ("application/json", "text/plain"):
                response = api.client.request(
                    method,
                    team.url(path),
                    content=content,
                    headers={**headers, "Content-Type": content_type},
                )
                assert response.status_code == 400, (method, path, content[:20], response.text)
                assert response.json() == {
                    "code": "invalid_json",
                    "error": "request body is not valid JSON",
                    "field": "body",
                }, (method, path)
    assert team.snapshot() == before


def test_a_key_on_a_team_path_that_is_not_a_uuid_is_checked_first(api: Api) -> None:
    team = Team(api)
    path = "/v1/billing/teams/not-a-uuid/billing-info"
    response = api.client.post(path, content=b"{", headers={"Authorization": "Bearer xai-x"})
    assert response.status_code == 401
    response = api.client.post(path, content=b"{", headers=team.read_only)
    assert response.status_code == 403
    response = api.client.post(path, content=b"{", headers=team.headers)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_uuid"
