"""``billfold usage ingest``: files of events, streamed in batches, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload
from typer.testing import CliRunner

from billfold.cli import app
from billfold.config import get_settings
from billfold.kit.clock import frozen
from billfold.metering import importing as usage_cli
from billfold.metering.models import UsageEvent
from billfold.metering.service import IngestResult
from tests.conftest import Api, event, unique_sku
from tests.served import free_port, start_serve, wait_healthy

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def cli_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The CLI pointed at the same database as the ``Api`` (which sets up teams and prices)."""
    api: Api = request.getfixturevalue(f"{request.param}_api")
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    monkeypatch.delenv("BILLFOLD_ADMIN_TOKEN", raising=False)
    get_settings.cache_clear()
    with frozen(NOW):
        yield api
    get_settings.cache_clear()


def ingest(*args: str, code: int = 0) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["usage", "ingest", *args, "--json"])
    assert result.exit_code == code, result.output
    return dict(json.loads(result.stdout))


def stored(api: Api, team_id: str) -> list[UsageEvent]:
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return list(
            session.scalars(
                select(UsageEvent)
                .options(selectinload(UsageEvent.property_set))
                .where(UsageEvent.team_id == uuid.UUID(team_id))
                .order_by(UsageEvent.event_id)
            )
        )


def test_jsonl_file_with_bad_lines_and_a_rerun(cli_api: Api, tmp_path: Path) -> None:
    sku = unique_sku()
    cli_api.set_price(sku, "0.000003")
    team_id = cli_api.create_team()
    lines = [
        json.dumps(event(team_id, sku, 1000, "2026-11-20T10:00:00Z", "a", model="m1")),  # 1
        "",  # 2: blank, skipped
        "{not json",  # 3
        json.dumps(event(team_id, "no-such-sku", 1, "2026-11-20T10:00:00Z", "b")),  # 4
        json.dumps(event(team_id, sku, 2000, "2026-11-20T10:01:00Z", "c")),  # 5
        "[1, 2]",  # 6: JSON, but not an event
        json.dumps(event(team_id, sku, 1000, "2026-11-20T10:00:00Z", "a", model="m1")),  # 7: dup
        json.dumps(event(team_id, sku, 3000, "2026-11-20T10:02:00Z", "d")),  # 8
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    first = ingest(str(path), "--batch-size", "2", code=3)
    assert first["lines"] == 7
    assert (first["accepted"], first["duplicates"], first["rejected"]) == (3, 1, 3)
    assert [(r["line"], r["code"]) for r in first["rejections"]] == [
        (3, "invalid_json"),
        (4, "unknown_sku"),
        (6, "invalid_event"),
    ]
    assert first["rejections"][1]["eventId"] == "b"
    events = stored(cli_api, team_id)
    assert [(e.event_id, e.quantity, e.property_set.properties) for e in events] == [
        ("a", 1000, {"model": "m1"}),
        ("c", 2000, {}),
        ("d", 3000, {}),
    ]

    again = ingest(str(path), "--batch-size", "5000", code=3)
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 4, 3)
    assert len(stored(cli_api, team_id)) == 3


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def awkward_lines(team_id: str, sku: str, when: str) -> list[str]:
    """Lines the reader must reject alone, in both modes: JSON nested deeper than the server
    reads a body (which stopped an import sent with --url), and a property integer beyond 64 bits
    (which orjson read as a float, so the CLI accepted what the API rejects)."""
    deep_properties = event(team_id, sku, 1, when, "deep-1")
    deep_properties["properties"] = nested(300)
    return [
        json.dumps(deep_properties),
        json.dumps(event(team_id, sku, 1, when, "deep-2", model=nested(40))),
        json.dumps(event(team_id, sku, 1, when, "big-int")).replace(
            '"properties": {}', '"properties": {"n": 18446744073709551616}'
        ),
        json.dumps(event(team_id, sku, 1, when, "max-int")).replace(
            '"properties": {}', '"properties": {"n": 18446744073709551615}'
        ),
        # read as infinity: no writer gives it back as it was (json.dumps writes Infinity, which
        # made the server refuse the batch alongside a big integer; orjson writes null)
        json.dumps(event(team_id, sku, 1, when, "huge-float")).replace(
            '"properties": {}', '"properties": 1e400'
        ),
    ]


def test_deep_and_big_lines_are_rejected_alone(cli_api: Api, tmp_path: Path) -> None:
    sku = unique_sku()
    cli_api.set_price(sku, "0.000003")
    team_id = cli_api.create_team()
    path = tmp_path / "events.jsonl"
    lines = awkward_lines(team_id, sku, "2026-11-20T10:00:00Z")
    path.write_text("\n".join(lines) + "\n")
    result = ingest(str(path), code=3)
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (1, 0, 4)
    assert [(r["line"], r["code"]) for r in result["rejections"]] == [
        (1, "invalid_json"),
        (2, "invalid_json"),
        (3, "invalid_properties"),
        (5, "invalid_json"),
    ]
    assert "deeper than 32 levels" in result["rejections"][0]["error"]
    assert "64 bits" in result["rejections"][2]["error"]
    assert "range of a float" in result["rejections"][3]["error"]
    assert [e.event_id for e in stored(cli_api, team_id)] == ["max-int"]


def test_csv_file_with_property_columns(cli_api: Api, tmp_path: Path) -> None:
    sku = unique_sku()
    cli_api.set_price(sku, "0.000003")
    team_id = cli_api.create_team()
    rows = [
        "\ufeffeventId,teamId,sku,quantity,timestamp,apiKeyId,model,properties",  # 1 (a BOM)
        f"e1,{team_id},{sku},10,2026-11-20T10:00:00Z,k1,grok-4,",  # 2
        f'e2,{team_id},{sku},20,2026-11-20T10:00:00Z,,"grok, the 4th","{{""clusterName"": ""eu-1""}}"',  # 3  # noqa: E501
        f'e3,{team_id},{sku},30,2026-11-20T10:00:00Z,k2,"two',  # 4: a quoted cell over 2 lines
        'lines","{""model"": ""ignored"", ""tier"": 2}"',  # 5 (the column wins over properties)
        f"e4,{team_id},{sku},40",  # 6: too few fields
        f"e5,{team_id},{sku},1.5,2026-11-20T10:00:00Z,,,",  # 7: a bad quantity
        f"e6,{team_id},{sku},60,2026-11-20T10:00:00Z,,,not json",  # 8
        "",  # 9: blank
        f"e7,{team_id},{sku},70,2026-11-20T10:00:00Z,,m\udcff,",  # 10: not UTF-8
        f"e8,{team_id},{sku},80,2026-11-20T10:00:00Z,,,",  # 11
    ]
    path = tmp_path / "events.csv"
    path.write_bytes("\n".join(rows).encode("utf-8", "surrogateescape") + b"\n")

    result = ingest(str(path), code=3)
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (4, 0, 4)
    assert [(r["line"], r["code"]) for r in result["rejections"]] == [
        (6, "invalid_csv"),
        (7, "invalid_quantity"),
        (8, "invalid_properties"),
        (10, "invalid_utf8"),
    ]
    assert {e.event_id: e.property_set.properties for e in stored(cli_api, team_id)} == {
        "e1": {"apiKeyId": "k1", "model": "grok-4"},
        "e2": {"model": "grok, the 4th", "clusterName": "eu-1"},
        "e3": {"apiKeyId": "k2", "model": "two\nlines", "tier": 2},
        "e8": {},
    }


def test_csv_header_without_required_columns_stops_before_anything(
    cli_api: Api, tmp_path: Path
) -> None:
    sku = unique_sku()
    cli_api.set_price(sku, "0.000003")
    team_id = cli_api.create_team()
    path = tmp_path / "events.csv"
    path.write_text(f"eventId,teamId,sku,quantity\ne1,{team_id},{sku},1\n")
    result = ingest(str(path), code=1)
    assert "timestamp" in result["stopped"]
    assert result["accepted"] == 0
    # a column without a name (a trailing comma) would have made a property named ""
    path.write_text(
        f"eventId,teamId,sku,quantity,timestamp,\ne1,{team_id},{sku},1,2026-11-20T10:00:00Z,x\n"
    )
    result = ingest(str(path), code=1)
    assert "column 6 of the CSV header has no name" in result["stopped"]
    assert stored(cli_api, team_id) == []


def test_usage_errors(cli_api: Api, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["usage", "ingest", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 1 and "cannot read" in missing.output
    unknown = tmp_path / "events.txt"
    unknown.write_text("")
    assert runner.invoke(app, ["usage", "ingest", str(unknown)]).exit_code == 2
    assert runner.invoke(app, ["usage", "ingest", str(unknown), "--format", "xml"]).exit_code == 2
    empty = runner.invoke(app, ["usage", "ingest", str(unknown), "--format", "csv", "--json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout)["lines"] == 0
    too_big = runner.invoke(app, ["usage", "ingest", str(unknown), "--batch-size", "10001"])
    assert too_big.exit_code == 2
    no_token = runner.invoke(app, ["usage", "ingest", str(unknown), "--url", "http://x"])
    assert no_token.exit_code == 2


def test_overlong_lines_are_rejected_without_being_held(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    big = '{"eventId": "' + "x" * (usage_cli.MAX_LINE_BYTES + 10) + '"}'
    path.write_text(big + "\n" + '{"eventId": "ok"}\n')
    seen: list[list[Any]] = []

    def sink(events: list[Any]) -> IngestResult:
        seen.append(list(events))
        return IngestResult(accepted=len(events))

    with path.open("rb") as stream:
        totals = usage_cli.ingest_records(
            usage_cli.jsonl_records(stream, lambda n: None),
            sink,
            usage_cli.ImportTotals(keep=5),
            batch_size=10,
        )
    assert seen == [[{"eventId": "ok"}]]
    assert [(r.line, r.code) for r in totals.first_rejections] == [(1, "line_too_long")]


def test_first_rejections_are_the_lowest_lines() -> None:
    totals = usage_cli.ImportTotals(keep=3)
    for line in (50, 7, 90, 3, 60, 4):
        totals.reject(usage_cli.LineRejection(line, "", "x", "y"))
    assert [r.line for r in totals.first_rejections] == [3, 4, 7]
    assert totals.rejected == 6


def _write_events(path: Path, count: int, team_id: str, sku: str, fmt: str) -> None:
    with path.open("w") as out:
        if fmt == "csv":
            out.write("eventId,teamId,sku,quantity,timestamp,model\n")
        for i in range(count):
            quantity, model, when = i % 1000, f"m{i % 7}", "2026-11-20T10:00:00Z"
            if fmt == "csv":
                out.write(f"evt-{i:08d},{team_id},{sku},{quantity},{when},{model}\n")
            else:
                wire = event(team_id, sku, quantity, when, f"evt-{i:08d}", model=model)
                out.write(json.dumps(wire) + "\n")


def _peak_bytes(path: Path, fmt: str, sink: usage_cli.Sink) -> tuple[int, int]:
    reader = usage_cli.jsonl_records if fmt == "jsonl" else usage_cli.csv_records
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            totals = usage_cli.ingest_records(
                reader(stream, lambda n: None),
                sink,
                usage_cli.ImportTotals(keep=20),
                batch_size=1000,
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, totals.lines


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_memory_does_not_grow_with_the_file(tmp_path: Path, fmt: str) -> None:
    """The streaming reader and batcher hold one batch, whatever the file's size."""
    team_id, sku = str(uuid.uuid4()), "sku-memory"
    counted = 0

    def sink(events: list[Any]) -> IngestResult:
        nonlocal counted
        counted += len(events)
        return IngestResult(accepted=len(events))

    small, large = tmp_path / f"small.{fmt}", tmp_path / f"large.{fmt}"
    _write_events(small, 10_000, team_id, sku, fmt)
    _write_events(large, 50_000, team_id, sku, fmt)
    peak_small, lines_small = _peak_bytes(small, fmt, sink)
    peak_large, lines_large = _peak_bytes(large, fmt, sink)
    assert (lines_small, lines_large, counted) == (10_000, 50_000, 60_000)
    assert large.stat().st_size > 4 * small.stat().st_size
    assert peak_large < peak_small * 1.25 + 256 * 1024, (peak_small, peak_large)
    assert peak_large < 4 * 1024 * 1024  # about one batch of 1,000 events


def test_memory_into_the_database_is_bounded_too(
    sqlite_api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", sqlite_api.url)
    get_settings.cache_clear()
    sku = unique_sku()
    sqlite_api.set_price(sku, "0.000003")
    team_id = sqlite_api.create_team()
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    _write_events(small, 2_000, team_id, sku, "jsonl")
    _write_events(large, 8_000, team_id, sku, "jsonl")
    sink = usage_cli.DirectSink(get_settings())
    try:
        with frozen(NOW):
            _peak_bytes(small, "jsonl", sink)  # warms caches (compiled statements) first
            peak_small, _ = _peak_bytes(small, "jsonl", sink)  # all duplicates now
            peak_large, lines = _peak_bytes(large, "jsonl", sink)
    finally:
        sink.close()
        get_settings.cache_clear()
    assert lines == 8_000
    assert len(stored(sqlite_api, team_id)) == 8_000
    assert peak_large < peak_small * 1.5 + 1024 * 1024, (peak_small, peak_large)


def test_ingest_through_a_running_server(tmp_path: Path) -> None:
    """--url posts each batch to /admin/v1/usage-events of a real ``billfold serve``."""
    process, base = start_serve(
        f"sqlite:///{tmp_path / 'served.db'}", 1, tmp_path, ADMIN_TOKEN="cli-ingest-token"
    )
    try:
        wait_healthy(base, process)
        operator = {"Authorization": "Bearer cli-ingest-token"}
        team_id = httpx.post(base + "/admin/v1/teams", json={"name": "t"}, headers=operator).json()[
            "teamId"
        ]
        sku = unique_sku()
        httpx.put(
            base + f"/admin/v1/prices/{sku}",
            json={
                "description": "d",
                "unitType": "u",
                "unitPrice": "0.01",
                "effectiveFrom": "2020-01-01T00:00:00Z",
            },
            headers=operator,
        ).raise_for_status()
        # the server runs on the real clock: events from yesterday
        when = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        path = tmp_path / "events.jsonl"
        path.write_text(
            "".join(json.dumps(event(team_id, sku, 5, when, f"e{i}")) + "\n" for i in range(7))
            + "oops\n"
            + "".join(line + "\n" for line in awkward_lines(team_id, sku, when))
        )
        args = [str(path), "--url", base, "--token", "cli-ingest-token", "--batch-size", "3"]
        result = ingest(*args, code=3)
        assert (result["accepted"], result["duplicates"], result["rejected"]) == (8, 0, 5)
        assert [(r["line"], r["code"]) for r in result["rejections"]] == [
            (8, "invalid_json"),
            (9, "invalid_json"),
            (10, "invalid_json"),
            (11, "invalid_properties"),
            (13, "invalid_json"),
        ]
        again = ingest(*args, code=3)
        assert (again["accepted"], again["duplicates"]) == (0, 8)
        wrong = ingest(str(path), "--url", base, "--token", "wrong", code=1)
        assert "401" in wrong["stopped"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_unreachable_server_stops_after_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_cli, "HTTP_ATTEMPTS", 2)
    monkeypatch.setattr(usage_cli, "HTTP_BACKOFF_SECONDS", 0.01)
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"eventId": "x"}) + "\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = ingest(str(path), "--url", url, "--token", "t", code=1)
    assert "cannot reach" in result["stopped"]
    assert result["accepted"] == 0


def test_event_counts_after_big_batches(cli_api: Api, tmp_path: Path) -> None:
    sku = unique_sku()
    cli_api.set_price(sku, "0.000003")
    team_id = cli_api.create_team()
    path = tmp_path / "events.csv"
    _write_events(path, 2_500, team_id, sku, "csv")
    result = ingest(str(path), "--batch-size", "1000")
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (2_500, 0, 0)
    with cli_api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        total = session.scalar(
            select(func.sum(UsageEvent.quantity)).where(UsageEvent.team_id == uuid.UUID(team_id))
        )
    assert total == sum(i % 1000 for i in range(2_500))
