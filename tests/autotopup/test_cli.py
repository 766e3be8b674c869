"""``billfold auto-top-up set | show | charge``: the operator API's answers, from the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from billfold.cli import app
from billfold.config import get_settings
from tests.conftest import Api


@pytest.fixture
def cli_api(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    get_settings.cache_clear()
    yield api
    get_settings.cache_clear()


def auto(*args: str) -> list[str]:
    return ["auto-top-up", *args, "--json"]


def test_set_show_and_charge(cli_api: Api) -> None:
    api = cli_api
    team_id, _ = api.team_with_key()
    runner = CliRunner()
    no_card = runner.invoke(
        app,
        auto("set", team_id, "--threshold", "1000", "--amount", "5000", "--monthly-limit", "20000"),
    )
    assert no_card.exit_code == 1 and "no_default_payment_method" in no_card.output
    api.add_card(team_id)
    both = runner.invoke(
        app,
        auto("set", team_id, "--threshold", "1000", "--amount", "5000", "--target", "9000"),
    )
    assert both.exit_code == 1 and "invalid_argument" in both.output
    done = runner.invoke(
        app,
        auto("set", team_id, "--threshold", "1000", "--target", "9000", "--monthly-limit", "20000"),
    )
    assert done.exit_code == 0, done.output
    shown = runner.invoke(app, ["auto-top-up", "show", team_id, "--json"])
    assert shown.exit_code == 0, shown.output
    wire = api.admin("GET", f"/admin/v1/teams/{team_id}/auto-top-up").json()
    assert json.loads(shown.output) == json.loads(done.output) == wire
    assert wire["targetCents"] == "9000" and wire["enabled"] is True
    off = runner.invoke(app, ["auto-top-up", "set", team_id, "--disabled", "--json"])
    assert off.exit_code == 0 and json.loads(off.output)["enabled"] is False
    charged = runner.invoke(app, ["auto-top-up", "charge", "--json"])
    assert charged.exit_code == 0, charged.output
    assert isinstance(json.loads(charged.output), list)
