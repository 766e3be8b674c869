"""Partitioned usage storage on PostgreSQL (migration 0023, docs/scale.md): exactly once at the
partition edges, partitions created at ingestion, retention by dropping months, the migration.

Years 2071 and 2072 are this file's (the clock frozen there); retention runs on a database of its
own (it drops months of every team)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from billfold.config import Settings
from billfold.kit.clock import frozen
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.metering import partitions, retention
from billfold.metering.models import UsageEvent, UsageRollupByVersion
from billfold.migrate import upgrade
from tests.conftest import Api, downgrade, event, unique_sku

pytestmark = pytest.mark.postgres_only

NOW = datetime(2071, 2, 25, 12, 0, tzinfo=UTC)


def _setup(api: Api) -> tuple[str, str]:
    sku = unique_sku("part")
    api.set_price(sku, "0.001", "2070-01-01T00:00:00Z")
    return api.create_team(), sku


def _stored(api: Api, team_id: str) -> list[tuple[str, datetime, str]]:
    """(event id, ts, the partition holding it) of a team's events."""
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        rows = session.execute(
            text(
                "SELECT event_id, ts, tableoid::regclass::text FROM usage_events"
                " WHERE team_id = :t ORDER BY ts, event_id"
            ),
            {"t": uuid.UUID(team_id)},
        )
        return [(event_id, ts, table) for event_id, ts, table in rows]


def _counted(api: Api, team_id: str) -> int:
    """Events the rollups by version count for the team (what billing reads)."""
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return int(
            session.scalar(
                select(func.coalesce(func.sum(UsageRollupByVersion.events), 0)).where(
                    UsageRollupByVersion.team_id == uuid.UUID(team_id)
                )
            )
            or 0
        )


def _outcome(result: dict[str, Any]) -> tuple[int, int]:
    assert result["rejected"] == [], result
    return result["accepted"], result["duplicates"]


def test_the_last_second_of_a_month_and_the_first_of_the_next(postgres_api: Api) -> None:
    api = postgres_api
    with frozen(NOW):
        team_id, sku = _setup(api)
        last = event(team_id, sku, 1, "2071-01-31T23:59:59.999999Z", "edge")
        assert _outcome(api.ingest([last])) == (1, 0)
        assert _outcome(api.ingest([last])) == (0, 1)  # the same retry
        # re-stamped on retry, now in the next month (and partition): still the same event
        restamped = event(team_id, sku, 1, "2071-02-01T00:00:00Z", "edge")
        assert _outcome(api.ingest([restamped])) == (0, 1)
        # and the other way round: first seen in February, resent with January's last second
        first = event(team_id, sku, 1, "2071-02-01T00:00:00Z", "edge-2")
        assert _outcome(api.ingest([first])) == (1, 0)
        back = event(team_id, sku, 1, "2071-01-31T23:59:59Z", "edge-2")
        assert _outcome(api.ingest([back])) == (0, 1)
        # a new id at the first instant of February lands in February
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-02-01T00:00:00Z")])) == (1, 0)
    stored = _stored(api, team_id)
    assert [(e, table) for e, _, table in stored[:2]] == [
        ("edge", "usage_events_p207101"),
        ("edge-2", "usage_events_p207102"),
    ]
    assert stored[2][2] == "usage_events_p207102"
    assert len(stored) == 3 and _counted(api, team_id) == 3


def test_the_same_id_in_two_months(postgres_api: Api) -> None:
    """The documented rule (docs/scale.md): one event per id within a month, and across a month
    boundary when the timestamps are less than a day apart; further apart in another month, the
    id names another event."""
    api = postgres_api
    with frozen(NOW):
        team_id, sku = _setup(api)
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-01-05T10:00:00Z", "x")])) == (1, 0)
        # the same month, another timestamp: the same event
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-01-28T10:00:00Z", "x")])) == (0, 1)
        # another month, far from the stored one: another event
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-02-10T10:00:00Z", "x")])) == (1, 0)
        # now both months hold "x": a resend into either is a duplicate
        again = [
            event(team_id, sku, 1, "2071-01-20T10:00:00Z", "x"),
            event(team_id, sku, 1, "2071-02-20T10:00:00Z", "x"),
        ]
        assert _outcome(api.ingest(again[:1])) == (0, 1)
        assert _outcome(api.ingest(again[1:])) == (0, 1)
        # 23 hours apart across the boundary: the same event
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-01-31T01:00:00Z", "y")])) == (1, 0)
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-02-01T00:00:00Z", "y")])) == (0, 1)
        # 25 hours apart: the resend's own shadow key (it is within a day of its month's
        # start) still finds it; 49 hours apart, neither is within a day: another event
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-01-30T23:00:00Z", "z")])) == (1, 0)
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-02-01T00:00:00Z", "z")])) == (0, 1)
        assert _outcome(api.ingest([event(team_id, sku, 1, "2071-02-02T00:00:00Z", "z")])) == (1, 0)
    ids = [e for e, _, _ in _stored(api, team_id)]
    assert sorted(ids) == ["x", "x", "y", "z", "z"]
    assert _counted(api, team_id) == 5


def test_key_months_at_the_edges() -> None:
    day = timedelta(days=1)
    feb = datetime(2072, 2, 1, tzinfo=UTC)
    assert partitions.key_months(feb) == ((2072, 2), (2072, 1))
    assert partitions.key_months(feb + day - timedelta(microseconds=1)) == ((2072, 2), (2072, 1))
    assert partitions.key_months(feb + day) == ((2072, 2),)
    assert partitions.key_months(feb - timedelta(microseconds=1)) == ((2072, 1), (2072, 2))
    assert partitions.key_months(feb - day) == ((2072, 1),)
    assert partitions.key_months(datetime(2072, 12, 31, 12, tzinfo=UTC)) == ((2072, 12), (2073, 1))
    assert partitions.key_months(datetime(2072, 1, 1, 1, tzinfo=UTC)) == ((2072, 1), (2071, 12))
    assert partitions.RESEND_SPAN <= retention.GRACE


def test_concurrent_batches_across_a_month_boundary_count_each_event_once(
    postgres_api: Api,
) -> None:
    """Batches sending the same ids at the same moment, half of them re-stamped into the next
    month: each id is accepted by exactly one batch."""
    api = postgres_api
    with frozen(NOW):
        team_id, sku = _setup(api)
        for round_ in range(3):
            ids = [f"c{round_}-{i}" for i in range(300)]
            stamps = ["2071-01-31T23:59:30Z", "2071-02-01T00:00:10Z"]
            batches = [
                [event(team_id, sku, 1, stamps[(n + i) % 2], id_) for i, id_ in enumerate(ids)]
                for n in range(6)
            ]
            with ThreadPoolExecutor(len(batches)) as pool:
                results = list(pool.map(api.ingest, batches))
            assert sum(r["accepted"] for r in results) == len(ids), results
            assert sum(r["duplicates"] for r in results) == len(ids) * (len(batches) - 1)
    assert len(_stored(api, team_id)) == 900
    assert _counted(api, team_id) == 900


def test_a_month_without_partitions_is_created_at_ingestion(postgres_api: Api) -> None:
    api = postgres_api
    # a month no migration nor loop made: far from today, 2072 is this file's
    month = (2072, 7)
    with frozen(datetime(2072, 8, 1, 0, 10, tzinfo=UTC)):
        team_id, sku = _setup(api)
        assert _outcome(api.ingest([event(team_id, sku, 5, "2072-07-31T23:30:00Z", "new")])) == (
            1,
            0,
        )
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        connection = session.connection()
        # the month, and the next one for the shadow key
        assert partitions.missing_partitions(connection, [month, (2072, 8)]) == []
        keys = connection.execute(
            text("SELECT tableoid::regclass::text FROM usage_event_keys WHERE id_digest = :d"),
            {"d": uuid.UUID(bytes=partitions.id_digest(uuid.UUID(team_id).bytes, "new"))},
        )
        assert sorted(k for (k,) in keys) == [
            "usage_event_keys_p207207",
            "usage_event_keys_p207208",
        ]
    assert _stored(api, team_id)[0][2] == "usage_events_p207207"


def test_retention_drops_whole_months_and_ids_of_dropped_months(
    fresh_postgres_url: str,
) -> None:
    """Months wholly past the window are dropped (events and keys, no DELETE); the month that is
    only partly past stays; a dropped event sent again is too old, and its id with a timestamp
    inside the window is a new event (the rule of docs/scale.md)."""
    engine = make_engine(fresh_postgres_url)
    try:
        upgrade(engine)
        from tests.conftest import _make_api

        for api in _make_api(fresh_postgres_url, "postgresql"):
            with frozen(datetime(2071, 3, 10, tzinfo=UTC)):
                team_id, sku = _setup(api)
                batch = [
                    event(team_id, sku, 1, f"2071-03-0{day}T10:00:00Z", f"m{day}")
                    for day in range(1, 8)
                ] + [event(team_id, sku, 1, "2071-04-01T00:30:00Z", "april")]
            with frozen(datetime(2071, 4, 2, tzinfo=UTC)):
                assert _outcome(api.ingest(batch)) == (8, 0)
            settings = Settings(database_url=fresh_postgres_url)  # the app's window: 400 days
            sessions = make_sessionmaker(engine)
            # March is wholly past the window and its grace only from here
            late = datetime(2071, 4, 1, tzinfo=UTC) + timedelta(days=401)
            assert retention.cutoff(settings, late) == datetime(2071, 4, 1, tzinfo=UTC)
            early = retention.compact_all(sessions, settings, late - timedelta(hours=12))
            assert (2071, 3) not in early.months
            assert len(_stored(api, team_id)) == 8
            done = retention.compact_all(sessions, settings, late)
            assert (2071, 3) in done.months
            assert [e for e, _, _ in _stored(api, team_id)] == ["april"]
            with engine.connect() as connection:
                assert partitions.missing_partitions(connection, [(2071, 3)]) == [(2071, 3)]
                keys = connection.execute(
                    text("SELECT id_digest, month FROM usage_event_keys ORDER BY 1, 2")
                ).all()
            # April's event and its shadow in March: the shadow left with March
            april = uuid.UUID(bytes=partitions.id_digest(uuid.UUID(team_id).bytes, "april"))
            assert [(k[0], k[1].month) for k in keys] == [(april, 4)]
            assert _counted(api, team_id) == 8  # billing keeps every rollup
            with frozen(late):
                old = api.ingest([batch[0]])
                assert old["rejected"][0]["code"] == "timestamp_too_old"
                reused = event(team_id, sku, 1, "2072-04-20T10:00:00Z", "m1")
                assert _outcome(api.ingest([reused])) == (1, 0)
    finally:
        engine.dispose()


def test_retention_of_a_month_is_quick_whatever_its_rows(fresh_postgres_url: str) -> None:
    """Dropping a month of 200,000 events (straight into its partitions) takes well under a
    second (the issue's bar: a month of 10M events in < 1 s; the bench measures that)."""
    engine = make_engine(fresh_postgres_url)
    try:
        upgrade(engine)
        partitions.create_months(engine, [(2072, 1), (2072, 2)])
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO usage_events (team_id, event_id, ts, quantity, price_version_id,"
                    " property_set_id, ingested_at)"
                    " SELECT '00000000-0000-4000-8000-000000000001', 'e' || n,"
                    " '2072-01-01'::timestamptz + n * interval '10 seconds', 1, 1,"
                    " '00000000-0000-4000-8000-000000000002', now()"
                    " FROM generate_series(1, 200000) n"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO usage_event_keys (id_digest, month, ts)"
                    " SELECT md5(uuid_send(team_id) || convert_to(event_id, 'UTF8'))::uuid,"
                    " '2072-01-01', ts FROM usage_events"
                )
            )
            connection.execute(text("ANALYZE usage_events_p207201"))
        started = datetime.now(UTC)
        dropped, rows = partitions.drop_months_before(engine, datetime(2072, 2, 1, tzinfo=UTC))
        took = datetime.now(UTC) - started
        assert (2072, 1) in dropped and (2072, 2) not in dropped
        assert 150_000 < rows < 250_000  # PostgreSQL's estimate
        assert took < timedelta(seconds=1), took
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(UsageEvent)).scalar() == 0
    finally:
        engine.dispose()


def test_migration_0023_keeps_every_event_and_its_key(fresh_postgres_url: str) -> None:
    """Events stored before 0023 keep their exactly-once after it (shadow keys at the edges
    included), rollups keep their rows, and downgrade copies everything back."""
    engine = make_engine(fresh_postgres_url)
    try:
        upgrade(engine, "0018")
        team = uuid.uuid4()
        # "b" in characters UTF-8 writes in 2 and 4 bytes: the SQL digest must be Python's
        rows = [("a", "2072-03-31 23:30Z"), ("bé𝄞", "2072-03-15Z"), ("c", "2072-05-01 00:10Z")]
        with engine.begin() as connection:
            for event_id, ts in rows:
                connection.execute(
                    text(
                        "INSERT INTO usage_events (team_id, event_id, ts, quantity,"
                        " price_version_id, property_set_id, ingested_at)"
                        " VALUES (:t, :e, :ts, 1, 1, :p, now())"
                    ),
                    {"t": team, "e": event_id, "ts": ts, "p": uuid.uuid4()},
                )
        upgrade(engine)
        with engine.connect() as connection:
            digests = {
                uuid.UUID(bytes=partitions.id_digest(team.bytes, e)): e for e in ("a", "bé𝄞", "c")
            }
            keys = connection.execute(
                text("SELECT id_digest, month::text FROM usage_event_keys")
            ).all()
            assert sorted((digests[k[0]], k[1]) for k in keys) == [
                ("a", "2072-03-01"),
                ("a", "2072-04-01"),
                ("bé𝄞", "2072-03-01"),
                ("c", "2072-04-01"),
                ("c", "2072-05-01"),
            ]
            placed = connection.execute(
                text("SELECT event_id, tableoid::regclass::text FROM usage_events ORDER BY 1")
            ).all()
            assert [tuple(p) for p in placed] == [
                ("a", "usage_events_p207203"),
                ("bé𝄞", "usage_events_p207203"),
                ("c", "usage_events_p207205"),
            ]
        downgrade(engine, "0018")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM usage_events")).scalar() == 3
            assert (
                connection.execute(text("SELECT to_regclass('usage_event_keys')")).scalar() is None
            )
        upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM usage_event_keys")).scalar() == 5
    finally:
        engine.dispose()
