"""``billfold usage rebuild-rollups``: the rollups with properties recomputed from raw events after
the groupable properties changed, on SQLite and PostgreSQL.

These tests live in 2042-2043 (the clock frozen there), a time no other test uses: the command
works on every team, and its range depends on the clock.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from billfold.app import create_app
from billfold.cli import app
from billfold.config import Settings, get_settings
from billfold.kit.clock import frozen
from billfold.metering import rebuild
from billfold.metering.models import (
    ROLLUPS_BY_WIDTH,
    VERSION_ROLLUPS_BY_WIDTH,
    UsageEvent,
)
from billfold.metering.service import metering_service
from tests.conftest import OPERATOR_TOKEN, Api, event, unique_sku
from tests.metering.test_analytics import request_body

NOW = datetime(2043, 3, 10, 12, 0, tzinfo=UTC)
DEFAULT = "apiKeyId,model,clusterName"
WITH_REGION = "apiKeyId,model,clusterName,region"
REGIONS = ["eu", "us", "ap"]
SPLIT = {"ap": 165.0, "us": 155.0, "eu": 145.0}  # $3 + $6 + ... + $30, and so on
DAYS = 10


def _events(team_id: str, sku: str) -> list[dict[str, Any]]:
    """$1, $2, ... $30 of usage over ten UTC days (two in February) in three regions, which the
    default setting does not keep in rollups."""
    events = []
    for i in range(30):
        at = datetime(2043, 2, 27, 23, 50, tzinfo=UTC) + timedelta(hours=7 * i)
        events.append(
            event(
                team_id,
                sku,
                100 * (i + 1),
                at.isoformat().replace("+00:00", "Z"),
                model="grok-4",
                region=REGIONS[i % 3],
            )
        )
    return events


@pytest.fixture
def regrouped(api: Api) -> Iterator[TestClient]:
    """The same database served by an app that groups by region too (as after the operator
    changed BILLFOLD_GROUPABLE_PROPERTIES and restarted)."""
    app_settings = Settings(
        database_url=api.url, admin_token=OPERATOR_TOKEN, groupable_properties=WITH_REGION
    )
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def cli_settings(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    monkeypatch.setenv("BILLFOLD_GROUPABLE_PROPERTIES", WITH_REGION)
    get_settings.cache_clear()
    yield api
    get_settings.cache_clear()


def _by_region(client: TestClient, team_id: str, headers: dict[str, str]) -> dict[str, float]:
    body = request_body(
        "2043-02-01 00:00:00", "2043-03-11 00:00:00", unit="TIME_UNIT_NONE", group_by=["region"]
    )
    response = client.post(f"/v1/billing/teams/{team_id}/usage", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return {
        series["group"][0]: series["dataPoints"][0]["values"][0]
        for series in response.json()["timeSeries"]
    }


def _rollup_rows(api: Api, team_id: str) -> dict[str, list[tuple[Any, ...]]]:
    tid = uuid.UUID(team_id)
    tables = {
        **{f"rollups {w}": t for w, t in ROLLUPS_BY_WIDTH.items()},
        **{f"by version {w}": t for w, t in VERSION_ROLLUPS_BY_WIDTH.items()},
    }
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return {
            name: sorted(
                (
                    r.bucket_start,
                    r.price_version_id,
                    getattr(r, "dims_key", ""),
                    r.quantity,
                    r.events,
                )
                for r in session.scalars(select(table).where(table.team_id == tid))
            )
            for name, table in tables.items()
        }


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, ["usage", "rebuild-rollups", *args, "--json"])


def test_rebuild_makes_old_usage_groupable_by_a_new_property(
    cli_settings: Api, regrouped: TestClient
) -> None:
    api = cli_settings
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, "0.01", "2043-01-01T00:00:00Z")
        team_id, headers = api.team_with_key()
        other_id = api.create_team()
        assert api.ingest(_events(team_id, sku))["accepted"] == 30
        assert api.ingest(_events(other_id, sku))["accepted"] == 30
        before = _rollup_rows(api, team_id)
        # Ingested under the default setting: the app that groups by region finds none.
        assert _by_region(regrouped, team_id, headers) == {"": 465.0}

        checked = _run("--team", team_id, "--check")
        assert checked.exit_code == 3, checked.output
        report = json.loads(checked.stdout)
        assert report["check"] is True and report["teamDays"] == DAYS
        assert report["changedTeamDays"] == DAYS and report["changedRows"] > 0
        assert report["notAddingUp"] == []
        assert _rollup_rows(api, team_id) == before  # --check writes nothing

        done = _run("--team", team_id)
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["changedRows"] == report["changedRows"]
        # 100 * (1 + 4 + ... + 28) units of $0.01 in eu, and so on
        assert _by_region(regrouped, team_id, headers) == SPLIT
        after = _rollup_rows(api, team_id)
        # Billing's tables are untouched; the rows with properties now hold the region.
        for width in ROLLUPS_BY_WIDTH:
            assert after[f"by version {width}"] == before[f"by version {width}"]
            assert all('"region":' in row[2] for row in after[f"rollups {width}"])
        # The other team was not asked for: unchanged, and a check says so.
        assert _by_region(regrouped, other_id, api.create_key_headers(other_id)) == {"": 465.0}

        again = _run("--team", team_id, "--check")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["changedRows"] == 0

        everyone = _run()
        assert everyone.exit_code == 0, everyone.output
        assert json.loads(everyone.stdout)["changedTeamDays"] == DAYS  # the other team's days
        assert _by_region(regrouped, other_id, api.create_key_headers(other_id)) == SPLIT


def test_rebuild_leaves_days_whose_events_do_not_add_up(cli_settings: Api) -> None:
    """Raw events missing (compacted under a shorter window, deleted by hand): rebuilding from
    them would drop usage from analytics, so that team-day is reported and kept as it is."""
    api = cli_settings
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, "0.01", "2043-01-01T00:00:00Z")
        team_id = api.create_team()
        events = _events(team_id, sku)
        assert api.ingest(events)["accepted"] == 30
        with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            session.execute(delete(UsageEvent).where(UsageEvent.event_id == events[0]["eventId"]))
            session.commit()
        before = _rollup_rows(api, team_id)

        done = _run("--team", team_id)
        assert done.exit_code == 3, done.output
        report = json.loads(done.stdout)
        assert report["notAddingUp"] == [{"teamId": team_id, "day": "2043-02-27", "rows": 3}]
        assert report["changedTeamDays"] == DAYS - 1  # the nine others were rebuilt
        after = _rollup_rows(api, team_id)
        first_day = datetime(2043, 2, 28, tzinfo=UTC)
        for name, rows in after.items():
            kept = [row for row in rows if row[0] < first_day]
            assert kept == [row for row in before[name] if row[0] < first_day], name
            assert kept  # the day still has its usage

        table = CliRunner().invoke(app, ["usage", "rebuild-rollups", "--team", team_id])
        assert table.exit_code == 3
        assert f"left as it is: team {team_id}, 2043-02-27" in " ".join(table.output.split())


def test_rebuild_refuses_days_before_the_raw_events(cli_settings: Api) -> None:
    with frozen(NOW):
        # 400 days and one of grace before 2043-03-10 12:00: 2042-02-02 12:00
        assert rebuild.first_rebuildable_day(get_settings(), NOW) == date(2042, 2, 3)
        early = CliRunner().invoke(app, ["usage", "rebuild-rollups", "--from", "2042-02-02"])
        assert early.exit_code == 2
        message = " ".join(early.output.split())
        assert "outside_raw_retention" in message and "before 2042-02-03" in message
        as_json = _run("--from", "2042-02-02")
        assert as_json.exit_code == 2
        assert json.loads(as_json.stdout)["code"] == "outside_raw_retention"
        empty = CliRunner().invoke(
            app, ["usage", "rebuild-rollups", "--from", "2043-03-01", "--to", "2043-03-01"]
        )
        assert empty.exit_code == 2 and "invalid_range" in empty.output
        bad = CliRunner().invoke(app, ["usage", "rebuild-rollups", "--from", "March 1"])
        assert bad.exit_code == 2 and "is not a date" in bad.output
        nobody = CliRunner().invoke(app, ["usage", "rebuild-rollups", "--team", "nobody"])
        assert nobody.exit_code == 2 and "is not a UUID" in nobody.output
        missing = CliRunner().invoke(app, ["usage", "rebuild-rollups", "--team", str(uuid.uuid4())])
        assert missing.exit_code == 2 and "team_not_found" in missing.output


def _ingest(api: Api, groupable: str, events: list[dict[str, Any]]) -> None:
    """Ingest through the service with a groupable setting of its own."""
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    with sessions() as session:
        result = metering_service.ingest(
            session, Settings(database_url=api.url, groupable_properties=groupable), events
        )
        session.commit()
    assert result.accepted == len(events), result.rejected


def _rebuild_team(api: Api, groupable: str, team_id: str) -> list[rebuild.DayResult]:
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    rebuild_settings = Settings(database_url=api.url, groupable_properties=groupable)
    tid = uuid.UUID(team_id)
    results = []
    with sessions() as session:
        days = rebuild.days_with_usage(session, tid, date(2043, 1, 1), date(2043, 4, 1))
    for day in days:
        with sessions() as session:
            results.append(rebuild.rebuild_day(session, rebuild_settings, tid, day, write=True))
            session.commit()
    return results


_PRICED: dict[str, str] = {}


def _sku(api: Api) -> str:
    if api.backend not in _PRICED:
        _PRICED[api.backend] = unique_sku("rebuild")
        api.set_price(_PRICED[api.backend], "0.0000031", "2043-01-01T00:00:00Z")
    return _PRICED[api.backend]


PROPERTY_NAMES = ["apiKeyId", "model", "region", "tier"]
GROUPABLE = st.lists(st.sampled_from(PROPERTY_NAMES), unique=True).map(",".join)
MICROSECONDS = st.one_of(
    st.integers(0, 3 * 86_400 * 10**6 - 1),  # any time of three days from 2043-03-01 00:00
    st.builds(  # or just before a quarter hour (SQLite's strftime rounds to the millisecond)
        lambda quarter, before: quarter * 900 * 10**6 - before,
        st.integers(1, 3 * 96 - 1),
        st.sampled_from([1, 400, 500, 999_999]),
    ),
)
EVENT_SPECS = st.lists(
    st.tuples(
        MICROSECONDS,
        st.integers(0, 10**9),
        st.dictionaries(
            st.sampled_from(PROPERTY_NAMES),
            st.sampled_from(["a", "b", "ü ✓", 1, 2.5, 1e16, True, -0.0]),
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(before=GROUPABLE, after=GROUPABLE, specs=EVENT_SPECS)
def test_rebuilt_rollups_are_what_ingestion_would_have_written(
    api: Api, before: str, after: str, specs: list[tuple[int, int, dict[str, Any]]]
) -> None:
    """Usage ingested with one groupable setting, then rebuilt with another, has the rollup rows
    (every table, every row) of the same usage ingested with the other setting."""
    with frozen(NOW):
        sku = _sku(api)
        rebuilt, direct = api.create_team(), api.create_team()
        start = datetime(2043, 3, 1, tzinfo=UTC)

        def events(team_id: str) -> list[dict[str, Any]]:
            return [
                {
                    "eventId": f"e{i}",
                    "teamId": team_id,
                    "sku": sku,
                    "quantity": quantity,
                    "timestamp": (start + timedelta(microseconds=offset)).isoformat(),
                    "properties": properties,
                }
                for i, (offset, quantity, properties) in enumerate(specs)
            ]

        _ingest(api, before, events(rebuilt))
        _ingest(api, after, events(direct))
        results = _rebuild_team(api, after, rebuilt)
        assert results and not any(r.version_mismatches for r in results)
        assert _rollup_rows(api, rebuilt) == _rollup_rows(api, direct)
        # and a second rebuild finds nothing to change
        assert not any(r.changed_rows for r in _rebuild_team(api, after, rebuilt))


def test_rebuild_waits_for_a_batch_in_flight(postgres_api: Api) -> None:
    """A team-day's rebuild takes its month's lock exclusively: it waits for an ingestion batch
    of that month that has not committed, and then counts its events."""
    api = postgres_api
    with frozen(NOW):
        sku = _sku(api)
        team_id = api.create_team()
        tid = uuid.UUID(team_id)
        events = _events(team_id, sku)
        day_of = {e["eventId"]: e["timestamp"][:10] for e in events}
        _ingest(api, DEFAULT, events[:20])
        sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
        batch: Session = sessions()
        metering_service.ingest(batch, Settings(database_url=api.url), events[20:])
        day = date.fromisoformat(day_of[events[25]["eventId"]])

        regroup = Settings(database_url=api.url, groupable_properties=WITH_REGION)
        with sessions() as session:  # a check takes no lock: it neither waits nor sees the batch
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            checked = rebuild.rebuild_day(session, regroup, tid, day, write=False)
            assert (checked.stored_rows, checked.rebuilt_rows, checked.version_mismatches) == (
                0,
                0,
                0,
            )

        results: list[rebuild.DayResult] = []

        def run() -> None:
            with sessions() as session:
                results.append(rebuild.rebuild_day(session, regroup, tid, day, write=True))
                session.commit()

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()  # waiting for the batch's month lock
        batch.commit()
        batch.close()
        worker.join(10)
        assert not worker.is_alive()
        (result,) = results
        assert result.version_mismatches == 0 and result.changed_rows > 0
        on_day = sum(1 for e in events if day_of[e["eventId"]] == day.isoformat())
        daily = [r for r in _rollup_rows(api, team_id)["rollups 86400"] if r[0].date() == day]
        assert sum(r[4] for r in daily) == on_day  # the batch's events are in the rebuilt rows
        assert all('"region":' in r[2] for r in daily)
