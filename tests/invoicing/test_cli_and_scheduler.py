"""``billfold limit`` / ``billfold cycle close``, and the automatic close of the scheduler."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billfold.app import create_app
from billfold.cli import app as cli_app
from billfold.config import Settings, get_settings
from billfold.cycles.models import ClosedPeriod
from billfold.invoicing.models import Invoice
from billfold.invoicing.scheduler import due_months, latest_due_month
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.migrate import upgrade
from tests.conftest import OPERATOR_TOKEN, Api, TestClient, event, unique_sku  # type: ignore[attr-defined]
from tests.invoicing.conftest import at, frozen_at, limits


@pytest.fixture
def cli_env(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The CLI pointed at the test database the ``api`` fixture serves."""
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    monkeypatch.delenv("BILLFOLD_ADMIN_TOKEN", raising=False)
    get_settings.cache_clear()
    yield api
    get_settings.cache_clear()


def run(*args: str, exit_code: int = 0) -> str:
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == exit_code, result.output
    return result.output


def test_limit_commands(cli_env: Api) -> None:
    api = cli_env
    team_id, headers = api.team_with_key()
    shown = json.loads(run("limit", "show", team_id, "--json"))
    assert shown == limits(api, headers, team_id)
    set_ = json.loads(run("limit", "hard", team_id, "--amount", "5000", "--json"))
    assert set_["hardSlOverride"] == {"val": "5000"} and set_["effectiveSl"] == {"val": "5000"}
    assert limits(api, headers, team_id) == set_
    assert "5000" in run("limit", "show", team_id)
    cleared = json.loads(run("limit", "hard", team_id, "--clear", "--json"))
    assert "hardSlOverride" not in cleared
    run("limit", "hard", team_id, exit_code=2)  # neither
    run("limit", "hard", team_id, "--amount", "1", "--clear", exit_code=2)  # both
    run("limit", "hard", team_id, "--amount", "-1", exit_code=2)
    assert "hardSlOverride" not in limits(api, headers, team_id)
    missing = run("limit", "show", "00000000-0000-4000-8000-00000000dead", exit_code=1)
    assert "team_not_found" in missing


def test_cycle_close_command(cli_env: Api) -> None:
    api = cli_env
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, _headers = api.team_with_key()
    api.add_card(team_id)
    with frozen_at("2033-05-10T00:00:00"):
        api.ingest([event(team_id, sku, 42, "2033-05-09T00:00:00Z")])
        refused = run("cycle", "close", "--year", "2033", "--month", "5", exit_code=1)
        assert "cycle_not_ended" in refused
    with frozen_at("2033-06-03T00:00:00"):
        summary = json.loads(run("cycle", "close", "--year", "2033", "--month", "5", "--json"))
        again = json.loads(run("cycle", "close", "--year", "2033", "--month", "5", "--json"))
        table = run("cycle", "close", "--year", "2033", "--month", "5")
    assert summary == again
    [invoice] = summary["invoices"]
    assert (invoice["teamId"], invoice["invoiceStatus"], invoice["total"]) == (
        team_id,
        "PAID",
        "42",
    )
    assert invoice["invoiceNumber"] in table and "2033-05: 1 invoices" in table
    run("cycle", "close", "--year", "2033", "--month", "13", exit_code=2)


def test_latest_due_month() -> None:
    assert latest_due_month(at("2033-03-01T23:59:59"), 24) == (2033, 1)
    assert latest_due_month(at("2033-03-02T00:00:00"), 24) == (2033, 2)
    assert latest_due_month(at("2033-01-01T00:00:00"), 0) == (2032, 12)
    assert latest_due_month(at("2033-01-15T00:00:00"), 24 * 40) == (2032, 11)


def _wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_auto_close_after_the_grace_period(tmp_path: Path) -> None:
    """A database of its own: the scheduler closes every due month of the database it serves."""
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    engine = make_engine(url)
    upgrade(engine)
    settings = Settings(
        database_url=url, admin_token=OPERATOR_TOKEN, auto_close_cycles=True, close_grace_hours=24
    )
    app = create_app(settings, engine=engine)
    app.state.auto_close_interval = 0.05
    sessions = make_sessionmaker(engine)

    def closed(year: int, month: int) -> bool:
        with sessions() as session:
            return session.get(ClosedPeriod, (year, month)) is not None

    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    sku = unique_sku()
    with frozen_at("2033-02-20T00:00:00"), TestClient(app) as client:
        _wait_for(lambda: closed(2033, 1))  # the latest due month, even without usage
        team = client.post("/admin/v1/teams", headers=operator, json={"name": "auto"}).json()
        client.put(
            f"/admin/v1/prices/{sku}",
            headers=operator,
            json={
                "description": "d",
                "unitType": "u",
                "unitPrice": "0.01",
                "effectiveFrom": "2033-02-01T00:00:00Z",  # January is closed
            },
        )
        events = [event(team["teamId"], sku, 10, "2033-02-19T00:00:00Z")]
        assert (
            client.post("/admin/v1/usage-events", headers=operator, json={"events": events}).json()[
                "accepted"
            ]
            == 1
        )
        with frozen_at("2033-03-01T12:00:00"):  # February ended 12 hours ago: in the grace
            time.sleep(0.3)
            assert not closed(2033, 2)
        with frozen_at("2033-03-02T00:00:01"):
            _wait_for(lambda: closed(2033, 2))

            def invoices() -> int:
                # a session per poll: on SQLite a session's first statement takes the write lock
                # (BEGIN IMMEDIATE) until it ends, which would hold the scheduler's close back
                with sessions() as session:
                    return session.query(Invoice).count()

            _wait_for(lambda: invoices() == 1)
            with sessions() as session:
                assert due_months(session, at("2033-03-02T00:00:01"), 24) == []
    engine.dispose()
