"""A lone surrogate (JSON can escape one, UTF-8 and the databases cannot) in an event's eventId,
sku, teamId, timestamp, quantity or a property rejects that event alone, over HTTP and in the CLI;
the batch's other events are accepted (docs/api-decisions.md, "Usage events")."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from billfold.cli import app
from billfold.config import get_settings
from billfold.metering import cli as usage_cli
from billfold.metering.models import UsageEvent
from tests.conftest import Api, event, unique_sku
from tests.metering.test_cli_ingest import cli_api, ingest, stored  # noqa: F401 (a fixture)

WHEN = "2026-11-20T10:00:00Z"


def _post(api: Api, path: str, payload: Any) -> Any:
    # json.dumps escapes a lone surrogate as \ud800 (httpx's own encoder cannot send one)
    body = json.dumps(payload)
    assert "\\ud800" in body or "\\udfff" in body
    headers = {**api.operator, "Content-Type": "application/json"}
    return api.admin("POST", path, content=body.encode(), headers=headers)


def _stored(api: Api, team_id: str) -> list[str]:
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return sorted(
            session.scalars(
                select(UsageEvent.event_id).where(UsageEvent.team_id == uuid.UUID(team_id))
            )
        )


def test_a_lone_surrogate_rejects_its_event_alone(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01")
    team_id = api.create_team()
    batch: list[Any] = [
        event(team_id, sku, 1, WHEN, "good-1", model="grok-4"),
        event(team_id, sku, 1, WHEN, "bad\ud800id"),
        event(team_id, sku + "\ud800", 1, WHEN, "bad-sku"),
        event(team_id[:-1] + "\ud800", sku, 1, WHEN, "bad-team"),
        event(team_id, sku, 1, WHEN, "bad-value", model="grok\udfff"),
        {**event(team_id, sku, 1, WHEN, "bad-key"), "properties": {"mo\ud800del": "x"}},
        {**event(team_id, sku, 1, WHEN, "bad-time"), "timestamp": WHEN + "\ud800"},
        {**event(team_id, sku, 1, WHEN, "bad-quantity"), "quantity": "1\ud800"},
        event(team_id, sku, 2, WHEN, "good-2"),
    ]
    response = _post(api, "/admin/v1/usage-events", {"events": batch})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["accepted"], result["duplicates"]) == (2, 0)
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [
        (1, "invalid_event_id"),
        (2, "invalid_sku"),
        (3, "invalid_team_id"),
        (4, "invalid_properties"),
        (5, "invalid_properties"),
        (6, "invalid_timestamp"),
        (7, "invalid_quantity"),
    ]
    assert result["rejected"][0]["eventId"] == "bad\\ud800id"  # escaped: UTF-8 has no surrogates
    assert result["rejected"][1]["eventId"] == "bad-sku"
    assert _stored(api, team_id) == ["good-1", "good-2"]
    # sent again: the good ones are duplicates, the bad ones rejected again, nothing stored
    again = _post(api, "/admin/v1/usage-events", {"events": batch}).json()
    assert (again["accepted"], again["duplicates"], len(again["rejected"])) == (0, 2, 7)
    assert _stored(api, team_id) == ["good-1", "good-2"]


def test_a_body_that_is_not_json_is_still_a_400(api: Api) -> None:
    headers = {**api.operator, "Content-Type": "application/json"}
    for body in (
        b'{"events": [{"eventId": "a\\ud800"}',  # cut short
        b'{"events": [{"eventId": "a\\ud800", "quantity": NaN}]}',  # NaN is not JSON
        b'{"events": [{"eventId": "a\\ud800", "quantity": Infinity}]}',
        b'{"events": [{"eventId": "a\\ud800"}]} trailing',
        b'{"events": [{"eventId": "a\\ud800"}]}'.replace(b"a", b"\xff"),  # not UTF-8
        b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deeper than Python recurses
    ):
        response = api.admin("POST", "/admin/v1/usage-events", content=body, headers=headers)
        assert response.status_code == 400, (body[:60], response.text)
        assert response.json()["code"] == "invalid_json"
        assert response.json()["field"] == "body"


def test_cancel_with_lone_surrogates(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01")
    team_id = api.create_team()
    assert api.ingest([event(team_id, sku, 1, WHEN, "c-1")])["accepted"] == 1
    items = [
        {"teamId": team_id, "eventId": "c-1"},
        {"teamId": team_id, "eventId": "x\ud800"},
        {"teamId": team_id[:-1] + "\ud800", "eventId": "c-1"},
    ]
    response = _post(api, "/admin/v1/usage-events/cancel", {"events": items, "reason": "r"})
    assert response.status_code == 200, response.text
    assert response.json()["canceled"] == 1
    assert [(r["index"], r["code"]) for r in response.json()["rejected"]] == [
        (1, "invalid_event_id"),
        (2, "invalid_team_id"),
    ]


def test_a_cancellation_reason_with_a_lone_surrogate_is_400_and_cancels_nothing(api: Api) -> None:
    # The reason is stored once for the whole call: it cannot be rejected per item.
    sku = unique_sku()
    api.set_price(sku, "0.01")
    team_id = api.create_team()
    assert api.ingest([event(team_id, sku, 1, WHEN, "r-1")])["accepted"] == 1
    items = [{"teamId": team_id, "eventId": "r-1"}]
    response = _post(api, "/admin/v1/usage-events/cancel", {"events": items, "reason": "x\ud800"})
    assert response.status_code == 400, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid_argument", "reason")
    again = _post(api, "/admin/v1/usage-events/cancel", {"events": items, "reason": "ok\udfff"})
    assert again.status_code == 400
    fine = api.admin("POST", "/admin/v1/usage-events/cancel", json={"events": items})
    assert fine.json()["canceled"] == 1  # it was not canceled before


def _surrogate_lines(team_id: str, sku: str) -> list[str]:
    return [
        json.dumps(event(team_id, sku, 1, WHEN, "cli-1")),  # 1
        json.dumps(event(team_id, sku, 1, WHEN, "cli\ud800")),  # 2
        json.dumps(event(team_id, sku, 1, WHEN, "cli-3", model="m\udfff")),  # 3
        json.dumps(event(team_id, sku + "\ud800", 1, WHEN, "cli-4")),  # 4
        '{"eventId": "cli-5\\ud800", "quantity": NaN}',  # 5: not JSON
        json.dumps(event(team_id, sku, 1, WHEN, "cli-6")),  # 6
    ]


EXPECTED = [(2, "invalid_event_id"), (3, "invalid_properties"), (4, "invalid_sku")]


def test_the_cli_rejects_a_lone_surrogate_line_alone(
    cli_api: Api,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    sku = unique_sku()
    cli_api.set_price(sku, "0.01")
    team_id = cli_api.create_team()
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(_surrogate_lines(team_id, sku)) + "\n")
    result = ingest(str(path), code=3)
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (2, 0, 4)
    assert [(r["line"], r["code"]) for r in result["rejections"]] == [
        *EXPECTED,
        (5, "invalid_json"),
    ]
    assert result["rejections"][0]["eventId"] == "cli\\ud800"
    assert [e.event_id for e in stored(cli_api, team_id)] == ["cli-1", "cli-6"]


def test_the_cli_sends_a_lone_surrogate_to_a_server_which_rejects_it_alone(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01")
    team_id = api.create_team()
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(_surrogate_lines(team_id, sku)) + "\n")
    sink = usage_cli.HttpSink("http://testserver", "unused")
    sink.client.close()
    sink.client = api.client  # the app in this process, with the operator's token
    monkeypatch.setitem(api.client.headers, "Authorization", api.operator["Authorization"])
    totals = usage_cli.ImportTotals(keep=10)
    with path.open("rb") as stream:
        usage_cli.ingest_records(
            usage_cli.jsonl_records(stream, lambda _: None), sink, totals, batch_size=10
        )
    assert (totals.accepted, totals.duplicates, totals.rejected) == (2, 0, 4)
    assert [(r.line, r.code) for r in totals.first_rejections] == [*EXPECTED, (5, "invalid_json")]
    assert _stored(api, team_id) == ["cli-1", "cli-6"]


def test_a_body_with_a_lone_surrogate_is_refused_as_deep_nesting_is(api: Api) -> None:
    # The reader that takes lone surrogates refuses what the others refuse (the nesting limit of
    # pydantic-core: 201 levels); within it, the batch is read.
    sku = unique_sku()
    api.set_price(sku, "0.01")
    team_id = api.create_team()
    headers = {**api.operator, "Content-Type": "application/json"}
    for depth, status in ((200, 200), (201, 400), (1100, 400)):
        good = json.dumps(event(team_id, sku, 1, WHEN, f"deep-{depth}"))
        note = "[" * depth + "]" * depth  # with the body's object: depth + 1 levels
        body = f'{{"events": [{good}, {{"eventId": "x\\ud800"}}], "note": {note}}}'
        response = api.admin("POST", "/admin/v1/usage-events", content=body, headers=headers)
        assert response.status_code == status, (depth, response.text)
    assert _stored(api, team_id) == ["deep-200"]


def test_the_cli_cancel_refuses_a_reason_it_cannot_store(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # argv that is not UTF-8 arrives with surrogates (surrogateescape): a usage error, not a crash
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    get_settings.cache_clear()
    sku = unique_sku()
    api.set_price(sku, "0.01")
    team_id = api.create_team()
    try:
        assert api.ingest([event(team_id, sku, 1, WHEN, "argv-1")])["accepted"] == 1
        for reason in ("bad \udcff byte", "nul \x00"):
            refused = CliRunner().invoke(
                app, ["usage", "cancel", team_id, "argv-1", "--reason", reason]
            )
            assert refused.exit_code == 2, refused.output
            assert "--reason" in refused.output
        done = CliRunner().invoke(app, ["usage", "cancel", team_id, "argv-1", "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["canceled"] == 1  # not canceled by the refused calls
    finally:
        get_settings.cache_clear()
