"""The ``billfold`` command, in-process (CliRunner) and as a real server process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from billfold.cli import app
from billfold.config import get_settings
from tests.served import free_port, start_serve, wait_healthy


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


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def demo_values(output: str) -> dict[str, str]:
    """The demo's printed credentials (``None`` when it could not show one)."""
    found = {}
    for label in ("demo team id", "management key", "operator token"):
        match = re.search(rf"{label}\s+(\S+)", output)
        assert match, output
        found[label] = match.group(1)
    return found


@pytest.fixture
def fresh_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A database of its own, so the demo's first run is a first run (no operator token yet)."""
    url = f"sqlite:///{tmp_path / 'billfold.db'}"
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", url)
    monkeypatch.delenv("BILLFOLD_ADMIN_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield url, tmp_path / "billfold.db-demo.json"
    get_settings.cache_clear()


def test_demo_run_twice_reuses_its_key_and_token(fresh_sqlite: tuple[str, Path]) -> None:
    url, credentials = fresh_sqlite
    first = demo_values(run("demo", "--no-serve"))
    assert credentials.stat().st_mode & 0o777 == 0o600
    saved = json.loads(credentials.read_text())
    assert saved["managementKey"] == first["management key"]
    assert saved["operatorToken"] == first["operator token"]
    second = demo_values(run("demo", "--no-serve"))
    assert second == first  # the first run's key and token still are the ones

    from billfold.app import create_app
    from billfold.config import Settings

    team = first["demo team id"]
    with TestClient(create_app(Settings(database_url=url))) as client:
        operator = {"Authorization": f"Bearer {first['operator token']}"}
        keys = client.get(f"/admin/v1/teams/{team}/management-keys", headers=operator)
        assert keys.status_code == 200, keys.text  # the first token was not replaced
        assert [k["name"] for k in keys.json()["keys"]] == ["demo"]  # no second demo key
        headers = {"Authorization": f"Bearer {first['management key']}"}
        assert client.get("/auth/management-keys/validation", headers=headers).status_code == 200
        # The demo's usage is in the current month, so the README's examples have data.
        preview = client.get(f"/v1/billing/teams/{team}/postpaid/invoice/preview", headers=headers)
        assert int(preview.json()["coreInvoice"]["amountBeforeVat"]) > 0

    # The plaintext gone: nothing new is issued nor rotated, and the output says what to do.
    credentials.unlink()
    third = run("demo", "--no-serve")
    assert "billfold key create" in third and "billfold operator-token rotate" in third
    assert first["management key"] not in third
    with TestClient(create_app(Settings(database_url=url))) as client:
        operator = {"Authorization": f"Bearer {first['operator token']}"}
        keys = client.get(f"/admin/v1/teams/{team}/management-keys", headers=operator)
        assert keys.status_code == 200, keys.text
        assert len(keys.json()["keys"]) == 1


def test_demo_sets_up_a_working_team_and_is_rerunnable(
    cli_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # PostgreSQL: the credentials file goes to the working directory
    first = json.loads(run("demo", "--no-serve", "--json"))
    second = json.loads(run("demo", "--no-serve", "--json"))
    assert second.get("managementKey") == first.get("managementKey")
    assert second.get("operatorToken") == first.get("operatorToken")
    assert any(line.startswith("export KEY=") for line in first["shell"])
    key = first.get("managementKey")
    if key is None:  # a demo key from an earlier test of this session, its plaintext elsewhere
        assert "billfold key create" in " ".join(first["notes"])
        return
    team = first["teamId"]
    from billfold.app import create_app
    from billfold.config import Settings

    with TestClient(create_app(Settings(database_url=cli_db))) as client:
        headers = {"Authorization": f"Bearer {key}"}
        validation = client.get("/auth/management-keys/validation", headers=headers)
        assert validation.json()["teamId"] == team
        methods = client.get(f"/v1/billing/teams/{team}/payment-method", headers=headers)
        assert methods.json()["paymentMethods"][0]["cardDetails"]["last4"] == "4242"


RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


def test_operator_commands_show_what_the_api_shows(cli_db: str) -> None:
    """team show, spend-status, card add, invoices list/show, billing-info show: in --json, the
    very objects the API answers."""
    from billfold.app import create_app
    from billfold.config import Settings

    team = json.loads(run("team", "create", "CLI billing", "--json"))["teamId"]
    key = json.loads(run("key", "create", team, "--json"))["apiKey"]
    card = json.loads(
        run(
            "card",
            "add",
            team,
            "--number",
            "4242424242424242",
            "--exp-month",
            "12",
            "--exp-year",
            "2035",
            "--json",
        )
    )
    assert card["cardDetails"]["last4"] == "4242"
    assert RFC3339_Z.match(card["addedTs"])
    declined = invoke(
        "card",
        "add",
        team,
        "--number",
        "4242424242424241",
        "--exp-month",
        "1",
        "--exp-year",
        "2035",
        "--json",
    )
    assert declined.exit_code == 1
    assert json.loads(declined.stdout)["code"] == "incorrect_number"

    operator = {"Authorization": "Bearer cli-operator"}
    headers = {"Authorization": f"Bearer {key}"}
    settings = Settings(database_url=cli_db, admin_token="cli-operator")
    with TestClient(create_app(settings)) as client:
        topup = client.post(
            f"/v1/billing/teams/{team}/prepaid/top-up",
            json={"amount": {"val": "700"}},
            headers=headers,
        )
        assert topup.status_code == 200, topup.text
        methods = client.get(f"/v1/billing/teams/{team}/payment-method", headers=headers).json()
        invoices = client.get(f"/v1/billing/teams/{team}/invoices", headers=headers).json()
        info = client.get(f"/v1/billing/teams/{team}/billing-info", headers=headers).json()
        status = client.get(f"/admin/v1/teams/{team}/spend-status", headers=operator).json()
        state = client.get(f"/admin/v1/teams/{team}", headers=operator).json()

    assert methods["paymentMethods"][0]["paymentMethodId"] == card["paymentMethodId"]
    listed = json.loads(run("invoices", "list", team, "--json"))
    assert listed == invoices["invoices"] and len(listed) == 1
    assert RFC3339_Z.match(listed[0]["createTime"])
    invoice_id = listed[0]["invoiceId"]
    assert json.loads(run("invoices", "show", invoice_id, "--json")) == listed[0]
    assert invoice_id in run("invoices", "list", team)
    assert json.loads(run("invoices", "list", team, "--since", "2000-01", "--json")) == listed
    assert json.loads(run("invoices", "list", team, "--since", "9999-12", "--json")) == []
    assert json.loads(run("billing-info", "show", team, "--json")) == info
    assert json.loads(run("spend-status", team, "--json")) == status
    shown = json.loads(run("team", "show", team, "--json"))
    assert shown == state
    assert shown["creditLeft"] == {"val": "700"}
    assert "creditLeft" in run("team", "show", team)
    assert "prepaidRemaining" in run("spend-status", team)


def test_cli_errors_in_json_mode(cli_db: str) -> None:
    before = run("team", "list", "--json")
    for name in ("", "   "):
        refused = invoke("team", "create", name, "--json")
        assert refused.exit_code == 2
        assert json.loads(refused.stdout) == {
            "code": "invalid_argument",
            "error": "a team needs a name; an empty one is refused, as by the API",
            "field": "NAME",
        }
        plain = invoke("team", "create", name)
        assert plain.exit_code == 2
        assert "needs a name" in plain.output
    assert run("team", "list", "--json") == before  # nothing was created

    missing = "00000000-0000-4000-8000-00000000beef"
    for args in (
        ["team", "show", missing],
        ["spend-status", missing],
        ["billing-info", "show", missing],
        ["invoices", "list", missing],
        [
            "card",
            "add",
            missing,
            "--number",
            "4242424242424242",
            "--exp-month",
            "1",
            "--exp-year",
            "2035",
        ],
    ):
        result = invoke(*args, "--json")
        assert result.exit_code == 1, (args, result.output)
        assert json.loads(result.stdout)["code"] == "team_not_found", args
    unknown = invoke("invoices", "show", "inv_nope", "--json")
    assert unknown.exit_code == 1
    assert json.loads(unknown.stdout)["code"] == "invoice_not_found"
    bad = invoke("team", "show", "not-a-uuid", "--json")
    assert bad.exit_code == 2
    assert json.loads(bad.stdout)["field"] == "TEAM_ID"
    month = invoke("invoices", "list", missing, "--since", "2026-13", "--json")
    assert month.exit_code == 2
    assert json.loads(month.stdout)["field"] == "--since"
    expiry = invoke(
        "card",
        "add",
        missing,
        "--number",
        "4242424242424242",
        "--exp-month",
        "13",
        "--exp-year",
        "2035",
        "--json",
    )
    assert expiry.exit_code == 2
    assert json.loads(expiry.stdout)["field"] == "--exp-month"


README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_examples_run_against_the_demo(tmp_path: Path) -> None:
    """Every curl command of the README's two API sections, as written, with the variables the
    demo prints, answers 2xx against a served demo database, whatever today's date is."""
    url = f"sqlite:///{tmp_path / 'billfold.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env["BILLFOLD_DATABASE_URL"] = url
    port = free_port()
    setup = subprocess.run(
        [sys.executable, "-m", "billfold", "demo", "--no-serve", "--json", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    demo = json.loads(setup.stdout)
    text = README.read_text()
    sections = text[text.index("## The Billing Management API") : text.index("## The `billfold`")]
    blocks = re.findall(r"```sh\n(.*?)```", sections, re.S)
    assert len(blocks) == 2
    script = "\n".join(blocks).replace("<keyId>", "$KEYID")
    script = "\n".join(line for line in script.splitlines() if "<invoiceId>" not in line)
    assert "<" not in script.replace("<<", "")
    process = subprocess.Popen(
        [sys.executable, "-m", "billfold", "serve", "--port", str(port)],
        env=env | {"BILLFOLD_LOG_LEVEL": "warning"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = demo["baseUrl"]
        wait_healthy(base, process)
        operator = {"Authorization": f"Bearer {demo['operatorToken']}"}
        spare = httpx.post(
            f"{base}/admin/v1/teams/{demo['teamId']}/management-keys",
            json={"name": "spare"},
            headers=operator,
        )
        assert spare.status_code == 201, spare.text
        prelude = "\n".join(
            [
                "set -euo pipefail",
                # every call must answer 2xx; its body is kept for the checks below
                'curl() { command curl --fail-with-body --show-error "$@"; echo; }',
                *demo["shell"],
                f"KEYID={spare.json()['keyId']}",
            ]
        )
        result = subprocess.run(
            ["bash", "-c", prelude + "\n" + script],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert '"accepted":1' in result.stdout
        assert '"canceled":1' in result.stdout
        # the analytics example finds the demo's usage (with a groupBy, only groups with usage)
        assert '"timeSeries":[{"group":["Chat grok-4-0709"]' in result.stdout
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_command_takes_json() -> None:
    import typer.main

    def leaves(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        children = getattr(command, "commands", None)
        if children is None:
            yield path, command
            return
        for name, child in children.items():
            yield from leaves(child, f"{path} {name}".strip())

    commands = dict(leaves(typer.main.get_command(app), ""))
    assert {"team show", "spend-status", "card add", "invoices list", "billing-info show"} <= set(
        commands
    )
    without = [
        path
        for path, command in commands.items()
        if "--json" not in [opt for param in command.params for opt in getattr(param, "opts", [])]
    ]
    assert without == []
