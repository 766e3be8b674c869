"""Compaction of raw usage events past the retention window, on SQLite and PostgreSQL.

The test databases are shared by the whole session, and compaction works on every team: so these
tests live in 2020-2021 (the clock frozen there), far older than any other test's usage.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from billfold.app import create_app
from billfold.cli import app
from billfold.config import Settings, get_settings
from billfold.cycles.models import BillingCycle, CycleLine
from billfold.kit.clock import frozen
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.metering import retention, scheduler
from billfold.metering.models import UsageEvent, UsageRollup, UsageRollupByVersion
from billfold.migrate import upgrade
from tests.conftest import OPERATOR_TOKEN, Api, event, unique_sku
from tests.metering.test_analytics import post_usage, request_body

INGESTED_AT = datetime(2021, 5, 1, tzinfo=UTC)
# Events at these times; with a 400-day window and one day of grace, compaction at COMPACT_AT
# deletes what is older than 2020-06-25 00:00.
COMPACT_AT = datetime(2021, 7, 31, tzinfo=UTC)
OLD = ["2020-06-01T10:00:00Z", "2020-06-20T10:00:00Z", "2020-06-24T23:59:59Z"]
IN_GRACE = "2020-06-25T12:00:00Z"  # past the window, within the day of grace: kept
RECENT = ["2021-01-15T10:00:00Z", "2021-04-30T10:00:00Z"]


def _events(team_id: str, sku: str) -> list[dict[str, Any]]:
    times = [*OLD, IN_GRACE, *RECENT]
    return [event(team_id, sku, 1000 * (i + 1), ts, f"r{i}") for i, ts in enumerate(times)]


def _snapshot(api: Api, team_id: str) -> tuple[Any, ...]:
    tid = uuid.UUID(team_id)
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        events = sorted(
            session.scalars(select(UsageEvent.event_id).where(UsageEvent.team_id == tid))
        )
        rollups = sorted(
            (r.bucket_start, r.quantity, r.events)
            for r in session.scalars(select(UsageRollup).where(UsageRollup.team_id == tid))
        ) + sorted(
            ("by version", r.bucket_start, r.quantity, r.events)
            for r in session.scalars(
                select(UsageRollupByVersion).where(UsageRollupByVersion.team_id == tid)
            )
        )
        lines = sorted(
            (c.year, c.month, c.quantity, c.amount_cents)
            for c in session.scalars(select(CycleLine).where(CycleLine.team_id == tid))
        )
        cycles = sorted(
            (c.year, c.month, c.spend_cents)
            for c in session.scalars(select(BillingCycle).where(BillingCycle.team_id == tid))
        )
    return events, rollups, lines, cycles


@pytest.fixture
def old_usage(api: Api) -> Iterator[tuple[str, dict[str, str], str]]:
    sku = unique_sku()
    with frozen(INGESTED_AT):
        api.set_price(sku, "0.001", "2020-01-01T00:00:00Z")
        team_id, headers = api.team_with_key()
        result = api.ingest(_events(team_id, sku))
        assert result["accepted"] == 6, result
    yield team_id, headers, sku


def test_compact_deletes_only_raw_events_past_the_window(
    api: Api, old_usage: tuple[str, dict[str, str], str]
) -> None:
    team_id, headers, sku = old_usage
    events, rollups, lines, cycles = _snapshot(api, team_id)
    with frozen(COMPACT_AT):
        daily_before = post_usage(
            api, team_id, headers, request_body("2020-06-01 00:00:00", "2021-05-01 00:00:00")
        ).json()

    settings = Settings(database_url=api.url)
    assert retention.cutoff(settings, COMPACT_AT) == datetime(2020, 6, 25, tzinfo=UTC)
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    done = retention.compact_all(sessions, settings, COMPACT_AT, batch_size=2)
    assert done.deleted >= 3  # other teams' events of that age (none exist) would count too

    after_events, after_rollups, after_lines, after_cycles = _snapshot(api, team_id)
    assert after_events == ["r3", "r4", "r5"]
    assert events == ["r0", "r1", "r2", "r3", "r4", "r5"]
    # what billing and analytics read is untouched
    assert (after_rollups, after_lines, after_cycles) == (rollups, lines, cycles)
    with frozen(COMPACT_AT):
        daily_after = post_usage(
            api, team_id, headers, request_body("2020-06-01 00:00:00", "2021-05-01 00:00:00")
        ).json()
        assert daily_after == daily_before
        # a compacted event can never come back as new: it is older than the window
        again = api.ingest(_events(team_id, sku)[:1])
        assert again["accepted"] == 0
        assert again["rejected"][0]["code"] == "timestamp_too_old"
        # and minute analytics, answered from raw events, refuse that old range
        minutes = post_usage(
            api,
            team_id,
            headers,
            request_body("2020-06-01 10:00:00", "2020-06-01 11:00:00", unit="TIME_UNIT_MINUTE"),
        )
        assert minutes.status_code == 400
        assert minutes.json()["code"] == "outside_raw_retention"

    # running it again finds nothing more to delete for this team
    retention.compact_all(sessions, settings, COMPACT_AT)
    assert _snapshot(api, team_id)[0] == ["r3", "r4", "r5"]


def test_compact_batch_is_bounded(api: Api, old_usage: tuple[str, dict[str, str], str]) -> None:
    team_id, _, _ = old_usage
    older_than = datetime(2020, 6, 25, tzinfo=UTC)
    counts = []
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        for _ in range(3):
            counts.append(retention.compact_batch(session, uuid.UUID(team_id), older_than, 2))
            session.commit()
    assert counts == [2, 1, 0]


@pytest.fixture(params=["sqlite", "postgres"])
def cli_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    api: Api = request.getfixturevalue(f"{request.param}_api")
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    monkeypatch.setenv("BILLFOLD_USAGE_RETENTION_DAYS", "400")
    get_settings.cache_clear()
    yield api
    get_settings.cache_clear()


def test_cli_compact(cli_env: Api) -> None:
    api = cli_env
    sku = unique_sku()
    with frozen(INGESTED_AT):
        api.set_price(sku, "0.001", "2020-01-01T00:00:00Z")
        team_id = api.create_team()
        assert api.ingest(_events(team_id, sku))["accepted"] == 6
    runner = CliRunner()
    with frozen(COMPACT_AT):
        dry = runner.invoke(app, ["usage", "compact", "--dry-run", "--json"])
        assert dry.exit_code == 0, dry.output
        counted = json.loads(dry.stdout)
        assert counted["dryRun"] is True and counted["deleted"] >= 3
        assert counted["cutoff"].startswith("2020-06-25T00:00:00")
        assert _snapshot(api, team_id)[0] == ["r0", "r1", "r2", "r3", "r4", "r5"]

        real = runner.invoke(app, ["usage", "compact", "--batch-size", "2", "--json"])
        assert real.exit_code == 0, real.output
        assert json.loads(real.stdout)["deleted"] == counted["deleted"]
        assert _snapshot(api, team_id)[0] == ["r3", "r4", "r5"]

        table = runner.invoke(app, ["usage", "compact"])
        assert table.exit_code == 0 and "deleted 0 raw usage events" in table.output


def test_window_boundaries_match_ingestion() -> None:
    """Compaction never deletes what ingestion would still accept."""
    settings = Settings(usage_retention_days=30)
    now = datetime(2021, 3, 1, tzinfo=UTC)
    oldest_accepted = now - timedelta(days=settings.usage_retention_days)
    assert retention.cutoff(settings, now) < oldest_accepted
    assert oldest_accepted - retention.cutoff(settings, now) == retention.GRACE


def test_auto_compaction_runs_in_the_server(tmp_path: Path) -> None:
    """BILLFOLD_AUTO_COMPACT_EVENTS=true: the serving process compacts on its own (a database of
    its own: compaction works on every team)."""
    url = f"sqlite:///{tmp_path / 'compact.db'}"
    engine = make_engine(url)
    upgrade(engine)
    app_settings = Settings(database_url=url, admin_token=OPERATOR_TOKEN, auto_compact_events=True)
    app = create_app(app_settings, engine=engine)
    app.state.auto_compact_interval = 0.05
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    sku = unique_sku()
    sessions = make_sessionmaker(engine)

    def stored() -> list[str]:
        with sessions() as session:
            return sorted(session.scalars(select(UsageEvent.event_id)))

    with frozen(INGESTED_AT), TestClient(app) as client:
        price = {"description": "d", "unitType": "u", "unitPrice": "0.001"}
        price["effectiveFrom"] = "2020-01-01T00:00:00Z"
        assert client.put(f"/admin/v1/prices/{sku}", headers=operator, json=price).is_success
        team = client.post("/admin/v1/teams", headers=operator, json={"name": "c"}).json()
        events = _events(team["teamId"], sku)
        body = {"events": events}
        assert client.post("/admin/v1/usage-events", headers=operator, json=body).json() == {
            "accepted": 6,
            "duplicates": 0,
            "rejected": [],
        }
        time.sleep(0.2)  # rounds ran: nothing is old enough yet
        assert stored() == ["r0", "r1", "r2", "r3", "r4", "r5"]
        with frozen(COMPACT_AT):
            deadline = time.monotonic() + 10
            while stored() != ["r3", "r4", "r5"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stored() == ["r3", "r4", "r5"]


def test_auto_compaction_runs_in_one_process_at_a_time(postgres_api: Api) -> None:
    """PostgreSQL: a process that finds another compacting skips its round, and the lock is
    released after a round."""
    api = postgres_api
    sku = unique_sku()
    with frozen(INGESTED_AT):
        api.set_price(sku, "0.001", "2020-01-01T00:00:00Z")
        team_id = api.create_team()
        assert api.ingest(_events(team_id, sku))["accepted"] == 6
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    settings = Settings(database_url=api.url)
    # Transaction-level, as the scheduler's own (a session lock would not hold through
    # PgBouncer in transaction mode, where the suite also runs: `pytest --pgbouncer`).
    lock = text("SELECT pg_try_advisory_xact_lock(:space, :key)")
    engine = sessions.kw["bind"]
    with frozen(COMPACT_AT):
        with engine.connect() as other:
            assert other.execute(lock, scheduler._LOCK).scalar() is True
            assert scheduler.compact_now(sessions, settings) is None
            assert _snapshot(api, team_id)[0] == ["r0", "r1", "r2", "r3", "r4", "r5"]
            other.rollback()
        done = scheduler.compact_now(sessions, settings)
        assert done is not None and done.deleted >= 3
        assert _snapshot(api, team_id)[0] == ["r3", "r4", "r5"]
        with engine.connect() as other:  # released, not left with a pooled connection
            held = text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = :space AND objid = :key AND objsubid = 2"
            )
            assert other.execute(held, scheduler._LOCK).scalar() == 0


def test_compaction_stops_between_batches(
    api: Api, old_usage: tuple[str, dict[str, str], str]
) -> None:
    """The automatic compaction's round ends when the server stops (the event is set): no more
    batches."""
    team_id, _, _ = old_usage
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    stop = threading.Event()
    stop.set()
    done = retention.compact_all(sessions, Settings(database_url=api.url), COMPACT_AT, stop=stop)
    assert done.deleted == 0
    assert _snapshot(api, team_id)[0] == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert retention.compact_team(sessions, uuid.UUID(team_id), done.cutoff, 2) == 3
