"""Management keys and the operator token, through HTTP on both databases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Api

READ = "team-token:endpoint:BillingRead"
WRITE = "team-token:endpoint:BillingWrite"


def test_validation_describes_the_calling_key(api: Api) -> None:
    team_id = api.create_team("Validation")
    key = api.create_key(team_id)
    response = api.client.get(
        "/auth/management-keys/validation", headers={"Authorization": f"Bearer {key['apiKey']}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["teamId"] == team_id
    assert body["scopeId"] == team_id
    assert body["scope"] == "SCOPE_TEAM"
    assert body["apiKeyId"] == key["keyId"]
    assert body["acls"] == [READ, WRITE]
    assert body["redactedApiKey"] == f"xai-...{key['apiKey'][-4:]}"
    assert body["ownerUserId"] == ""
    assert body["createTime"].endswith("Z")
    assert key["apiKey"] not in response.text
    assert "ipRanges" not in body and None not in body.values()


def test_keys_are_random_prefixed_and_stored_only_as_hash(api: Api) -> None:
    team_id = api.create_team()
    first, second = api.create_key(team_id), api.create_key(team_id)
    assert first["apiKey"].startswith("xai-") and second["apiKey"] != first["apiKey"]
    assert len(first["apiKey"]) >= 4 + 43  # 32 random bytes, base64url
    listing = api.admin("GET", f"/admin/v1/teams/{team_id}/management-keys").json()
    assert {k["keyId"] for k in listing["keys"]} == {first["keyId"], second["keyId"]}
    assert first["apiKey"] not in str(listing)
    from sqlalchemy import text

    from billfold.kit.db import make_engine

    engine = make_engine(api.url)
    with engine.connect() as connection:
        stored = [tuple(r) for r in connection.execute(text("SELECT * FROM management_keys"))]
    engine.dispose()
    assert not any(first["apiKey"] in str(row) for row in stored)


def test_missing_unknown_and_malformed_keys_are_401(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer xai-nope"}, {"Authorization": "Basic abc"}):
        response = api.client.get("/auth/management-keys/validation", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] in ("missing_credentials", "invalid_api_key")
        assert response.json()["error"]


def test_revoked_key_stops_working_at_once(api: Api) -> None:
    team_id = api.create_team()
    key = api.create_key(team_id)
    headers = {"Authorization": f"Bearer {key['apiKey']}"}
    assert (
        api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers).status_code
        == 200
    )
    assert api.admin("DELETE", f"/admin/v1/management-keys/{key['keyId']}").status_code == 204
    response = api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"
    # revoking twice is harmless; an unknown key id is a 404
    assert api.admin("DELETE", f"/admin/v1/management-keys/{key['keyId']}").status_code == 204
    assert api.admin("DELETE", f"/admin/v1/management-keys/{uuid.uuid4()}").status_code == 404


def test_key_of_team_a_cannot_read_or_write_team_b(api: Api) -> None:
    team_a, headers_a = api.team_with_key()
    team_b = api.create_team("B")
    before = api.client.get(
        f"/v1/billing/teams/{team_b}/billing-info", headers=api.create_key_headers(team_b)
    ).json()
    read = api.client.get(f"/v1/billing/teams/{team_b}/billing-info", headers=headers_a)
    assert read.status_code == 403 and read.json()["code"] == "wrong_team"
    write = api.client.post(
        f"/v1/billing/teams/{team_b}/billing-info",
        headers=headers_a,
        json={
            "billingInfo": {"name": "Evil", "email": "e@example.com", "address": {"country": "US"}}
        },
    )
    assert write.status_code == 403
    assert "Evil" not in write.text
    after = api.client.get(
        f"/v1/billing/teams/{team_b}/billing-info", headers=api.create_key_headers(team_b)
    ).json()
    assert before == after
    # a team that does not exist looks the same as another team's: 403, no hint
    missing = api.client.get(f"/v1/billing/teams/{uuid.uuid4()}/billing-info", headers=headers_a)
    assert missing.status_code == 403
    assert team_a not in missing.text


def test_read_only_key_cannot_write(api: Api) -> None:
    team_id, headers = api.team_with_key(acls=[READ])
    assert (
        api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers).status_code
        == 200
    )
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info",
        headers=headers,
        json={"billingInfo": {"name": "X", "email": "x@example.com", "address": {"country": "US"}}},
    )
    assert response.status_code == 403
    assert response.json()["code"] == "missing_acl"
    info = api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers).json()
    assert info["billingInfo"]["name"] == ""


def test_write_only_key_cannot_read(api: Api) -> None:
    team_id, headers = api.team_with_key(acls=[WRITE])
    response = api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers)
    assert response.status_code == 403


def test_team_id_that_is_not_a_uuid_is_400(api: Api) -> None:
    _, headers = api.team_with_key()
    response = api.client.get("/v1/billing/teams/not-a-uuid/billing-info", headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_uuid"
    assert "invalid uuid" in response.json()["error"]


def test_unknown_acl_is_400_and_creates_nothing(api: Api) -> None:
    team_id = api.create_team()
    response = api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/management-keys",
        json={"name": "x", "acls": [READ, "team-token:endpoint:Everything"]},
    )
    assert response.status_code == 400
    assert response.json()["field"] == "acls.1"
    assert api.admin("GET", f"/admin/v1/teams/{team_id}/management-keys").json()["keys"] == []


@pytest.mark.parametrize("acls", [None, []], ids=["null", "empty"])
def test_null_or_empty_acls_are_400_and_create_nothing(api: Api, acls: Any) -> None:
    # Left out, acls is both (operator-api.md); null or [] is not read as that default.
    team_id = api.create_team()
    response = api.admin(
        "POST", f"/admin/v1/teams/{team_id}/management-keys", json={"name": "x", "acls": acls}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_argument"
    assert response.json()["field"] == "acls"
    assert "leave acls out" in response.json()["error"]
    assert api.admin("GET", f"/admin/v1/teams/{team_id}/management-keys").json()["keys"] == []
    left_out = api.admin("POST", f"/admin/v1/teams/{team_id}/management-keys", json={"name": "x"})
    assert left_out.status_code == 201, left_out.text
    assert left_out.json()["acls"] == [READ, WRITE]


def test_key_for_unknown_team_is_404(api: Api) -> None:
    response = api.admin(
        "POST", f"/admin/v1/teams/{uuid.uuid4()}/management-keys", json={"name": "x"}
    )
    assert response.status_code == 404
    assert response.json()["code"] == "team_not_found"


def test_operator_token_and_management_keys_never_cross(api: Api) -> None:
    team_id, headers = api.team_with_key()
    assert api.client.get("/admin/v1/teams", headers=headers).status_code == 401
    response = api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=api.operator)
    assert response.status_code == 401
    assert api.client.get("/admin/v1/teams").status_code == 401
    wrong = api.client.get("/admin/v1/teams", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_operator_token"
