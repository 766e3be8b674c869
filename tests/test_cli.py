"""The ``billfold`` command, in-process (CliRunner) and as a real server process."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from billfold.cli import app
from billfold.config import get_settings
from tests.served import start_serve, wait_healthy


@pytest.fixture(params=["sqlite", "postgres"])
def cli_db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", url)
    monkeypatch.delenv("BILLFOLD_ADMIN_TOKEN", raising=False)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_team_and_key_lifecycle(cli_db: str) -> None:
    team = json.loads(run("team", "create", "CLI team", "--json"))
    assert team["name"] == "CLI team"
    assert team["teamId"] in run("team", "list")
    key = json.loads(run("key", "create", team["teamId"], "--name", "ci", "--json"))
    assert key["apiKey"].startswith("xai-")
    listed = json.loads(run("key", "list", team["teamId"], "--json"))
    assert [k["keyId"] for k in listed] == [key["keyId"]]
    assert key["apiKey"] not in json.dumps(listed)
    run("key", "revoke", key["keyId"])
    assert json.loads(run("key", "list", team["teamId"], "--json"))[0]["revoked"] is True
    table = run("key", "list", team["teamId"])
    assert "ci" in table


def test_cli_errors_are_clean(cli_db: str) -> None:
    result = CliRunner().invoke(app, ["key", "create", "00000000-0000-4000-8000-000000000001"])
    assert result.exit_code == 1
    assert "team_not_found" in result.output
    bad = CliRunner().invoke(app, ["key", "create", "not-a-uuid"])
    assert bad.exit_code != 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_serve_real_http(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``billfold serve`` migrates, prints a generated operator token once, and serves."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'served.db'}"
        workers = "1"
    else:
        url = request.getfixturevalue("postgres_url")
        workers = "2"
    # A fresh token store for this run: the PostgreSQL database is shared by the test session.
    token_setting = {"ADMIN_TOKEN": "served-operator-token"} if backend == "postgres" else {}
    process, base = start_serve(url, int(workers), tmp_path, **token_setting)
    try:
        if backend == "sqlite":
            assert process.stdout is not None
            line = process.stdout.readline()
            while "Operator token" not in line:
                line = process.stdout.readline()
                assert line, "no operator token printed"
            match = re.search(r"(bfop_\S+)", line)
            assert match
            token = match.group(1)
        else:
            token = "served-operator-token"
        wait_healthy(base, process)
        operator = {"Authorization": f"Bearer {token}"}
        team = httpx.post(base + "/admin/v1/teams", json={"name": "served"}, headers=operator)
        assert team.status_code == 201, team.text
        team_id = team.json()["teamId"]
        key = httpx.post(
            base + f"/admin/v1/teams/{team_id}/management-keys",
            json={"name": "k"},
            headers=operator,
        ).json()["apiKey"]
        for _ in range(4):  # several requests, so both workers answer on PostgreSQL
            validation = httpx.get(
                base + "/auth/management-keys/validation",
                headers={"Authorization": f"Bearer {key}"},
            )
            assert validation.status_code == 200
            assert validation.json()["teamId"] == team_id
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_demo_sets_up_a_working_team_and_is_rerunnable(cli_db: str) -> None:
    first = run("demo", "--no-serve")
    second = run("demo", "--no-serve")
    key = re.search(r"management key\s+(\S+)", second)
    team = re.search(r"demo team id\s+(\S+)", first)
    assert key and team
    from billfold.app import create_app
    from billfold.config import Settings

    with TestClient(create_app(Settings(database_url=cli_db))) as client:
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        validation = client.get("/auth/management-keys/validation", headers=headers)
        assert validation.json()["teamId"] == team.group(1)
        methods = client.get(f"/v1/billing/teams/{team.group(1)}/payment-method", headers=headers)
        assert methods.json()["paymentMethods"][0]["cardDetails"]["last4"] == "4242"
