"""Request ids (X-Request-Id) and JSON logs (kit/logs.py): one object a line, the request id in
it, and never a key, a token or a card number."""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.logs import JsonFormatter
from tests.conftest import OPERATOR_TOKEN, Api
from tests.served import start_serve, wait_healthy

GENERATED = re.compile(r"[0-9a-f]{24}")


@pytest.fixture(params=["sqlite", "postgres"])
def json_api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """An app of its own with JSON logs, on each database in turn."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    settings = Settings(database_url=url, admin_token=OPERATOR_TOKEN, log_format="json")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, request.param, url)


def test_every_response_carries_the_request_id(json_api: Api) -> None:
    api = json_api
    team_id = api.create_team()
    given = {"X-Request-Id": "req-1.2:3_x"}
    answers = [
        api.client.get(f"/admin/v1/teams/{team_id}", headers={**api.operator, **given}),
        api.client.get(
            f"/admin/v1/teams/{team_id}/spend-status", headers={**api.operator, **given}
        ),
        api.client.get(
            f"/admin/v1/teams/{team_id}", headers={"Authorization": "Bearer no", **given}
        ),
        api.client.get("/no/such/route", headers=given),
        api.client.get("/healthz", headers=given),
    ]
    assert [a.status_code for a in answers] == [200, 200, 401, 404, 200]
    assert all(a.headers["x-request-id"] == "req-1.2:3_x" for a in answers)
    # None sent, or one not in the safe charset or too long: a generated one instead.
    for sent in (None, "bad id with spaces", "x" * 129, "a/b;c", "<x>"):
        headers = dict(api.operator) | ({"X-Request-Id": sent} if sent is not None else {})
        answer = api.client.get(f"/admin/v1/teams/{team_id}/spend-status", headers=headers)
        assert answer.status_code == 200
        assert GENERATED.fullmatch(answer.headers["x-request-id"]), answer.headers
    first = api.client.get("/healthz").headers["x-request-id"]
    assert first != api.client.get("/healthz").headers["x-request-id"]


def test_access_logs_are_json_with_the_request_id(
    json_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api = json_api
    team_id, headers = api.team_with_key()
    caplog.set_level(logging.INFO, logger="billfold.access")
    caplog.clear()
    path = f"/v1/billing/teams/{team_id}/postpaid/spending-limits"
    assert api.client.get(path, headers={**headers, "X-Request-Id": "abc-123"}).status_code == 200
    check = f"/admin/v1/teams/{team_id}/spend-status"
    api.client.get(check, headers={**api.operator, "X-Request-Id": "chk-9"})
    api.client.get(path, headers={"Authorization": "Bearer xai-nope", "X-Request-Id": "bad-1"})
    lines = [
        json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "billfold.access"
    ]
    by_id = {line["request_id"]: line for line in lines}
    good = by_id["abc-123"]
    assert good["method"] == "GET"
    assert good["route"] == "/v1/billing/teams/{team_id}/postpaid/spending-limits"
    assert good["status"] == 200
    assert good["team_id"] == team_id
    assert isinstance(good["duration_ms"], float) and good["duration_ms"] >= 0
    assert good["level"] == "info" and good["time"].endswith("+00:00")
    assert by_id["chk-9"]["route"] == "/admin/v1/teams/{team_id}/spend-status"
    assert by_id["chk-9"]["status"] == 200 and by_id["chk-9"]["team_id"] == team_id
    assert by_id["bad-1"]["status"] == 401


def _secrets_absent(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:6]}...) was logged"


def test_no_secret_in_any_log_record(json_api: Api, caplog: pytest.LogCaptureFixture) -> None:
    api = json_api
    caplog.set_level(logging.DEBUG)
    team_id, headers = api.team_with_key()
    key = headers["Authorization"].removeprefix("Bearer ")
    card = "4242424242424242"
    api.add_card(team_id, card)
    api.client.get(f"/v1/billing/teams/{team_id}/postpaid/spending-limits", headers=headers)
    api.client.get(f"/admin/v1/teams/{team_id}/spend-status", headers=api.operator)
    api.client.get(f"/admin/v1/teams/{team_id}?token={OPERATOR_TOKEN}", headers=api.operator)
    api.client.get("/admin/v1/teams", headers={"Authorization": f"Bearer {key}"})  # wrong kind
    formatter = JsonFormatter()
    # Everything the server side logged (httpx's lines are the test client's own).
    records = [r for r in caplog.records if not r.name.startswith("httpx")]
    text = "\n".join(formatter.format(r) + repr(r.__dict__) for r in records)
    assert "billfold.access" in text
    _secrets_absent(text, [OPERATOR_TOKEN, key, card])


def test_a_served_process_logs_json_lines_without_secrets(
    postgres_url: str, tmp_path: Path
) -> None:
    token = "served-operator-token-5f1c"
    process, base = start_serve(
        postgres_url, 1, tmp_path, ADMIN_TOKEN=token, LOG_FORMAT="json", LOG_LEVEL="info"
    )
    try:
        wait_healthy(base, process)
        operator = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base) as http:
            team_id = http.post("/admin/v1/teams", json={"name": "L"}, headers=operator).json()[
                "teamId"
            ]
            key = http.post(
                f"/admin/v1/teams/{team_id}/management-keys", json={"name": "k"}, headers=operator
            ).json()["apiKey"]
            http.get(
                f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
                headers={"Authorization": f"Bearer {key}", "X-Request-Id": "served-1"},
            )
            http.get(f"/admin/v1/teams/{team_id}/spend-status", headers=operator)
            http.get("/admin/v1/teams", headers={"Authorization": "Bearer xai-wrong"})
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    lines = [line for line in output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r.get("request_id") == "served-1" and r.get("status") == 200 for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)
    _secrets_absent(output, [token, key])
