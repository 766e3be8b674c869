"""The rollup tables analytics chooses from, on SQLite and PostgreSQL: ``usage_rollups_by_version``
(the rollups without property dimensions) and the hourly and daily twins of both.

* Analytics reads the tables by version for every query that needs no event property, and the
  ones with properties otherwise; whole UTC hours and days come from the coarser tables when
  every bucket starts on one. The answer must not depend on which it reads. Here the same random
  queries (zones with :30 and :45 offsets and DST, every rollup unit, unaligned ranges, groupBy
  and filters on price attributes and properties) run through five code paths on the same random
  data -- by version or with properties, with all widths, hours, or quarter hours only -- and
  must give identical results; on PostgreSQL also with local days and hours partitioned by epoch
  seconds instead of ``date_bin`` (the expression for servers before 14).
  (tests/metering/test_analytics_properties.py checks the default path against a brute force over
  the events; tests/metering/test_ingest_paths.py that the tables equal the rollups summed.)
* Migrations 0006 and 0008 backfill them from the finer rollups: the backfilled rows equal what
  ingestion wrote.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, make_url, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.kit.clock import frozen
from billfold.kit.db import make_engine
from billfold.metering.analytics import buckets
from billfold.metering.analytics import raw as analytics_raw
from billfold.metering.analytics.query import AnalyticsResult, parse_query
from billfold.metering.analytics.reader import UsageAnalytics
from billfold.metering.models import (
    UsageRollup,
    UsageRollupByVersion,
    UsageRollupDaily,
    UsageRollupDailyByVersion,
    UsageRollupHourly,
    UsageRollupHourlyByVersion,
)
from billfold.metering.schemas import AnalyticsRequest
from billfold.migrate import upgrade
from tests.conftest import Api, _make_api, _postgres_admin_engine, downgrade, event, unique_sku
from tests.metering.test_analytics import NOW, post_usage, record_partitions, request_body

BY_VERSION = UsageAnalytics()
BY_DIMS = UsageAnalytics(version_rollups=False)
BY_VERSION_HOURS = UsageAnalytics(widths=(900, 3600))
BY_VERSION_QUARTERS = UsageAnalytics(widths=(900,))
BY_DIMS_QUARTERS = UsageAnalytics(version_rollups=False, widths=(900,))
# The tables each may read: without property fields, and with them (the coarser ones only when
# the query allows).
_VERSIONS = {"usage_rollups_by_version", "usage_rollups_hourly_by_version"}
_DIMS = {"usage_rollups", "usage_rollups_hourly"}
_DAILY_VERSIONS = {*_VERSIONS, "usage_rollups_daily_by_version"}
_DAILY_DIMS = {*_DIMS, "usage_rollups_daily"}
READS = {
    "by version": (BY_VERSION, _DAILY_VERSIONS, _DAILY_DIMS),
    "by dims": (BY_DIMS, _DAILY_DIMS, _DAILY_DIMS),
    "by version, hours": (BY_VERSION_HOURS, _VERSIONS, _DIMS),
    "by version, quarters": (BY_VERSION_QUARTERS, {"usage_rollups_by_version"}, {"usage_rollups"}),
    "by dims, quarters": (BY_DIMS_QUARTERS, {"usage_rollups"}, {"usage_rollups"}),
}

WINDOW_START = datetime(2026, 10, 20, tzinfo=UTC)  # over Berlin's, New York's and St John's DST
WINDOW = timedelta(days=20)
ZONES = [
    "Etc/GMT",
    "America/New_York",
    "America/St_Johns",  # -3:30, with DST
    "Asia/Kolkata",  # +5:30
    "Asia/Kathmandu",  # +5:45
    "Australia/Eucla",  # +8:45
    "Australia/Lord_Howe",  # a half-hour DST shift
    "Europe/Berlin",
]
UNITS = [
    "TIME_UNIT_MONTH",
    "TIME_UNIT_CALENDAR_WEEK",
    "TIME_UNIT_DAY",
    "TIME_UNIT_HOUR",
    "TIME_UNIT_QUARTER_HOUR",
    "TIME_UNIT_NONE",
]
VALUES = [
    {"name": "usd", "aggregation": "AGGREGATION_SUM"},
    {"name": "num_units", "aggregation": "AGGREGATION_SUM"},
    {"name": "requests", "aggregation": "AGGREGATION_COUNT"},
]
PRICE_FIELDS = ["description", "unit_type", "sku"]
FIELDS = [*PRICE_FIELDS, "model", "api_key_id"]


@dataclass(frozen=True)
class Catalogue:
    skus: list[str]
    descriptions: list[str]


@pytest.fixture
def catalogue(api: Api) -> Catalogue:
    """Three SKUs: two sharing a unit type, one repriced (new description) mid-window."""
    skus = [unique_sku("byv") for _ in range(3)]
    api.set_price(skus[0], "0.000003", "2026-01-01T00:00:00Z", f"Chat {skus[0]}", "Text tokens")
    api.set_price(skus[1], "0.000015", "2026-01-01T00:00:00Z", f"Chat {skus[1]}", "Text tokens")
    api.set_price(skus[2], "0.02", "2026-01-01T00:00:00Z", f"Image {skus[2]}", "Images")
    api.set_price(skus[2], "0.035", "2026-11-01T06:00:00Z", f"Image {skus[2]} v2", "Images")
    return Catalogue(skus, [f"Chat {skus[0]}", f"Chat {skus[1]}", f"Image {skus[2]} v2"])


def filter_texts(c: Catalogue) -> list[str]:
    return [
        "unit_type:Text tokens",
        "NOT unit_type:Images",
        f"sku:{c.skus[0]} OR sku:{c.skus[2]}",
        f"description:{c.descriptions[2]}",
        f'NOT description:"{c.descriptions[1]}" AND NOT sku:{c.skus[0]}',
        "model:m1 OR model:7",
        "NOT api_key_id:k1 AND NOT model:True",
    ]


@dataclass(frozen=True)
class Usage:
    sku: int
    quantity: int
    second: int  # after WINDOW_START
    key: str | None
    model: str | int | float | bool | None


usages = st.builds(
    Usage,
    sku=st.integers(0, 2),
    quantity=st.one_of(st.integers(0, 1000), st.integers(0, 10**12)),
    # mostly in a few buckets (so several property combinations share one), some anywhere
    second=st.one_of(
        st.sampled_from([0, 60, 899, 900, 3600 * 30 + 5, 86_400 * 12 + 1]),
        st.integers(0, int(WINDOW.total_seconds()) - 1),
    ),
    key=st.sampled_from([None, "k1", "k2", "clé-ü"]),
    model=st.sampled_from([None, "m1", "m2", 7, 2.5, True]),
)


@dataclass(frozen=True)
class Query:
    zone: str
    unit: str
    start: int  # seconds after WINDOW_START - 1 day, a local wall time
    length: int
    group_by: tuple[str, ...]
    values: tuple[int, ...]
    filters: tuple[int, ...]


@st.composite
def queries(draw: st.DrawFn) -> Query:
    unit = draw(st.sampled_from(UNITS))
    longest = {
        "TIME_UNIT_HOUR": timedelta(days=4),
        "TIME_UNIT_QUARTER_HOUR": timedelta(days=1),
    }.get(unit, WINDOW + timedelta(days=2))
    return Query(
        zone=draw(st.sampled_from(ZONES)),
        unit=unit,
        start=draw(st.integers(0, int((WINDOW + timedelta(days=1)).total_seconds()))),
        length=draw(st.integers(1, int(longest.total_seconds()))),
        group_by=tuple(draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3))),
        values=tuple(draw(st.lists(st.integers(0, 2), unique=True, min_size=1, max_size=3))),
        filters=tuple(draw(st.lists(st.integers(0, 6), unique=True, max_size=2))),
    )


@contextmanager
def statements_on(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.lower())

    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)


def tables_read(statements: list[str]) -> set[str]:
    """The rollup tables the statements name."""
    return {name for statement in statements for name in re.findall(r"usage_rollups\w*", statement)}


def run_all(
    api: Api, session: Session, team_id: str, body: dict[str, Any]
) -> dict[str, AnalyticsResult]:
    """The query through each code path of READS; checks which tables each one read (which
    tables a query reads is checked exactly by
    test_whole_hours_and_days_come_from_coarser_tables)."""
    app_settings: Settings = api.client.app.state.settings  # type: ignore[attr-defined]
    query = parse_query(
        AnalyticsRequest.model_validate(body["analyticsRequest"]),
        app_settings,
        uuid.UUID(team_id),
    )
    engine = api.client.app.state.engine  # type: ignore[attr-defined]
    answers = {}
    with_properties = any(field.kind == "property" for field in query.fields)
    for name, (reader, allowed, allowed_with_properties) in READS.items():
        with statements_on(engine) as seen:
            answers[name] = reader.run(session, app_settings, query)
        assert tables_read(seen) <= (allowed_with_properties if with_properties else allowed), name
    if api.backend == "postgresql":
        with (
            statements_on(engine) as seen,
            mock.patch.object(analytics_raw, "_has_date_bin", lambda session: False),
        ):
            assert BY_VERSION.run(session, app_settings, query) == answers["by version"]
        assert not [s for s in seen if "date_bin" in s]
    return answers


def wire_events(team_id: str, c: Catalogue, events: list[Usage]) -> list[dict[str, Any]]:
    wire = []
    for i, usage in enumerate(events):
        properties = {}
        if usage.key is not None:
            properties["apiKeyId"] = usage.key
        if usage.model is not None:
            properties["model"] = usage.model
        at = WINDOW_START + timedelta(seconds=usage.second)
        wire.append(
            {
                "eventId": f"e{i}",
                "teamId": team_id,
                "sku": c.skus[usage.sku],
                "quantity": str(usage.quantity),
                "timestamp": at.isoformat(),
                "properties": properties,
            }
        )
    return wire


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(usages, max_size=40), asked=st.lists(queries(), min_size=1, max_size=4))
def test_every_table_gives_identical_answers(
    api: Api, catalogue: Catalogue, events: list[Usage], asked: list[Query]
) -> None:
    filters = filter_texts(catalogue)
    with frozen(NOW):
        team_id = api.create_team()
        result = api.ingest(wire_events(team_id, catalogue, events))
        assert result["accepted"] == len(events), result
        with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            for query in asked:
                local_start = (WINDOW_START - timedelta(days=1)).replace(tzinfo=None) + timedelta(
                    seconds=query.start
                )
                local_end = local_start + timedelta(seconds=query.length)
                body = request_body(
                    local_start.strftime("%Y-%m-%d %H:%M:%S"),
                    local_end.strftime("%Y-%m-%d %H:%M:%S"),
                    unit=query.unit,
                    tz=query.zone,
                    values=[VALUES[i] for i in query.values],
                    group_by=list(query.group_by),
                    filters=[filters[i] for i in query.filters],
                )
                zone = ZoneInfo(query.zone)
                if local_end.replace(tzinfo=zone) <= local_start.replace(tzinfo=zone):
                    continue  # empty once the zone's gap is applied: a 400 either way
                answers = run_all(api, session, team_id, body)
                for name, answer in answers.items():
                    assert answer == answers["by version"], (name, query)


def test_the_endpoint_reads_the_table_the_query_needs(
    api: Api, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through HTTP: a query by price attributes reads only ``usage_rollups_by_version``, one that
    groups or filters by a property only ``usage_rollups`` -- with the same totals, also in a
    zone whose offset is 5:45 (day buckets are unions of whole 15-minute rollup buckets), each in
    one read by local day (partitions aligned to Kathmandu's midnight, none straddling two
    days)."""
    reads = record_partitions(monkeypatch)
    with frozen(NOW):
        team_id, headers = api.team_with_key()
        # 18:10-18:15 UTC: 23:55 to 00:00 in Kathmandu, on both sides of local midnight
        events = [
            event(
                team_id,
                catalogue.skus[i % 2],
                1000 + i,
                f"2026-11-0{1 + i % 4}T18:1{i % 6}:00Z",
                apiKeyId=f"k{i % 5}",
                model=f"m{i % 2}",
            )
            for i in range(40)
        ]
        assert api.ingest(events)["accepted"] == 40
        engine = api.client.app.state.engine  # type: ignore[attr-defined]
        answers = {}
        for name, group_by, filters in [
            ("description", ["description"], []),
            ("none", [], []),
            ("sku filter", ["unit_type"], [f"NOT sku:{catalogue.skus[2]}"]),
            ("model", ["model"], []),
            ("model filter", ["description"], ["model:m0 OR model:m1"]),
        ]:
            body = request_body(
                "2026-11-01 00:00:00",
                "2026-11-06 00:00:00",
                tz="Asia/Kathmandu",
                group_by=group_by,
                filters=filters,
                values=[VALUES[1], VALUES[2]],
            )
            reads.clear()
            with statements_on(engine) as seen:
                response = post_usage(api, team_id, headers, body)
            assert response.status_code == 200, response.text
            answers[name] = response.json()
            expected = "usage_rollups" if "model" in name else "usage_rollups_by_version"
            assert tables_read(seen) == {expected}, name
            assert reads == ["local"], name
            if api.backend == "postgresql":
                assert any("date_bin" in s for s in seen), name

    def daily_totals(answer: dict[str, Any]) -> dict[str, list[int]]:
        totals: dict[str, list[int]] = {}
        for series in answer["timeSeries"]:
            for point in series["dataPoints"]:
                cell = totals.setdefault(point["timestamp"], [0, 0])
                cell[0] += point["values"][0]
                cell[1] += point["values"][1]
        return totals

    # local days start at 18:15 UTC; an event belongs to the local day of its local time
    zone = ZoneInfo("Asia/Kathmandu")
    days = ["2026-10-31", "2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    expected = {f"{day}T18:15:00Z": [0, 0] for day in days}
    for e in events:
        local = datetime.fromisoformat(e["timestamp"]).astimezone(zone).date()
        start = datetime(local.year, local.month, local.day, tzinfo=zone).astimezone(UTC)
        cell = expected[start.strftime("%Y-%m-%dT%H:%M:%SZ")]
        cell[0] += int(e["quantity"])
        cell[1] += 1
    for name, answer in answers.items():
        assert daily_totals(answer) == expected, name


def test_whole_hours_and_days_come_from_coarser_tables(
    api: Api, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through HTTP: in UTC, the whole days of a range of days or months are read from the daily
    tables; in zones with whole-hour offsets (New York across its DST change too), whole hours
    from the hourly tables; the ragged ends from the finer ones, all in one read without a
    re-read. A :45 zone, quarter-hour buckets and a range shorter than an hour read the
    quarter-hour tables only. Totals per bucket equal the events summed by hand."""
    reads = record_partitions(monkeypatch)
    with frozen(NOW):
        team_id, headers = api.team_with_key()
        # every 37 minutes from Oct 31 to Nov 3 (New York leaves DST on Nov 1 at 06:00 UTC),
        # so every hour and most quarter hours hold usage, the ragged ends included
        first = datetime(2026, 10, 31, 0, 3, tzinfo=UTC)
        events = [
            event(
                team_id,
                catalogue.skus[i % 3],
                1 + i,
                (first + timedelta(minutes=37 * i)).isoformat(),
                model=f"m{i % 2}",
            )
            for i in range(3 * 24 * 60 // 37)
        ]
        assert api.ingest(events)["accepted"] == len(events)
        engine = api.client.app.state.engine  # type: ignore[attr-defined]
        hourly = {"usage_rollups_hourly_by_version", "usage_rollups_by_version"}
        hourly_dims = {"usage_rollups_hourly", "usage_rollups"}
        daily = {"usage_rollups_daily_by_version"}
        for zone, unit, start, end, group_by, tables in [
            # ragged: 00:20 -> 00:15 (quarter hours to 01:00, hours to midnight, then days);
            # 23:50 -> 00:00
            (
                "Etc/GMT",
                "TIME_UNIT_DAY",
                "2026-10-31 00:20:00",
                "2026-11-02 23:50:00",
                [],
                {*daily, *hourly},
            ),
            ("Etc/GMT", "TIME_UNIT_DAY", "2026-10-31 00:00:00", "2026-11-03 00:00:00", [], daily),
            (
                "Etc/GMT",
                "TIME_UNIT_CALENDAR_WEEK",
                "2026-10-31 00:00:00",
                "2026-11-02 18:00:00",
                ["model"],
                {"usage_rollups_daily", "usage_rollups_hourly"},
            ),
            ("Etc/GMT", "TIME_UNIT_HOUR", "2026-10-31 05:50:00", "2026-11-01 02:10:00", [], hourly),
            ("Etc/GMT", "TIME_UNIT_NONE", "2026-10-31 05:50:00", "2026-11-01 02:10:00", [], hourly),
            (
                "Etc/GMT",
                "TIME_UNIT_NONE",
                "2026-10-31 05:50:00",
                "2026-11-02 02:10:00",
                [],
                {*daily, *hourly},
            ),
            ("UTC", "TIME_UNIT_MONTH", "2026-10-31 00:00:00", "2026-11-03 00:00:00", [], daily),
            (
                "America/New_York",
                "TIME_UNIT_DAY",
                "2026-10-31 00:00:00",
                "2026-11-02 12:30:00",
                ["model"],
                hourly_dims,
            ),
            (
                "America/New_York",
                "TIME_UNIT_HOUR",
                "2026-11-01 00:10:00",  # 04:10 UTC: the quarter hour from 04:00, a whole hour
                "2026-11-01 03:00:00",
                ["description"],
                {"usage_rollups_hourly_by_version"},
            ),
            (
                "Asia/Kathmandu",
                "TIME_UNIT_DAY",
                "2026-10-31 06:00:00",
                "2026-11-02 00:00:00",
                [],
                {"usage_rollups_by_version"},
            ),
            (
                "Etc/GMT",
                "TIME_UNIT_QUARTER_HOUR",
                "2026-10-31 05:50:00",
                "2026-10-31 09:00:00",
                [],
                {"usage_rollups_by_version"},
            ),
            (
                "Etc/GMT",
                "TIME_UNIT_DAY",
                "2026-10-31 05:20:00",
                "2026-10-31 06:10:00",
                [],
                {"usage_rollups_by_version"},
            ),
        ]:
            body = request_body(
                start, end, unit=unit, tz=zone, group_by=group_by, values=[VALUES[1], VALUES[2]]
            )
            reads.clear()
            with statements_on(engine) as seen:
                response = post_usage(api, team_id, headers, body)
            assert response.status_code == 200, response.text
            case = (zone, unit, start)
            # the summing statement's tables (two index probes of the quarter-hour table find
            # the span of the data first)
            assert tables_read([s for s in seen if "sum(" in s]) == tables, case
            assert reads == [
                "none"
                if unit == "TIME_UNIT_NONE"
                else "bucket"
                if unit == "TIME_UNIT_QUARTER_HOUR"
                else "local"
            ], case
            # by hand: the range widened to quarter hours, each event in the bucket that starts
            # last at or before it
            tz = ZoneInfo(zone)
            low = buckets.floor_to(datetime.fromisoformat(start).replace(tzinfo=tz), 900)
            high = buckets.ceil_to(datetime.fromisoformat(end).replace(tzinfo=tz), 900)
            answer = response.json()
            stamps = [p["timestamp"] for p in answer["timeSeries"][0]["dataPoints"]]
            starts = [datetime.fromisoformat(stamp) for stamp in stamps]
            expected = {stamp: [0, 0] for stamp in stamps}
            for e in events:
                at = datetime.fromisoformat(e["timestamp"])
                if low <= at < high:
                    bucket = max(i for i, s in enumerate(starts) if s <= at or i == 0)
                    expected[stamps[bucket]][0] += int(e["quantity"])
                    expected[stamps[bucket]][1] += 1
            totals = {stamp: [0, 0] for stamp in stamps}
            for series in answer["timeSeries"]:
                for point in series["dataPoints"]:
                    totals[point["timestamp"]][0] += point["values"][0]
                    totals[point["timestamp"]][1] += point["values"][1]
            assert totals == expected, case


# --- migrations 0006 and 0008 -------------------------------------------------------------------


BACKFILLED = (
    UsageRollupByVersion,
    UsageRollupHourly,
    UsageRollupHourlyByVersion,
    UsageRollupDaily,
    UsageRollupDailyByVersion,
)


def rows_of(engine: Engine, table: type[Any]) -> list[tuple[Any, ...]]:
    columns = [column.name for column in table.__table__.columns]
    with Session(engine) as session:
        return sorted(
            tuple(getattr(row, name) for name in columns) for row in session.scalars(select(table))
        )


def stored_times(engine: Engine, table: type[Any]) -> list[str]:
    """The tables' times as the database holds them, as text."""
    with engine.connect() as connection:
        return sorted(
            connection.execute(
                text(f"SELECT CAST(bucket_start AS TEXT) FROM {table.__tablename__}")
            ).scalars()
        )


def summed_rollups(engine: Engine) -> list[tuple[Any, ...]]:
    r = UsageRollup
    with Session(engine) as session:
        rows = session.execute(
            select(
                r.team_id,
                r.bucket_start,
                r.price_version_id,
                func.sum(r.quantity),
                func.sum(r.events),
            ).group_by(r.team_id, r.bucket_start, r.price_version_id)
        ).all()
    return sorted((t, b, v, int(q), int(n)) for t, b, v, q, n in rows)


def test_migration_backfills_what_ingestion_writes(fresh_url: str) -> None:
    if not fresh_url.startswith("sqlite"):
        # A server whose TimeZone is not UTC, and not a whole number of hours from it: the
        # backfill must still sum per UTC hour. (The database's default, not a startup option:
        # PgBouncer refuses those, and `pytest --pgbouncer` runs this through it.)
        admin = _postgres_admin_engine()
        try:
            with admin.connect() as connection:
                name = make_url(fresh_url).database
                connection.execute(text(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Kolkata'"))
        finally:
            admin.dispose()
    engine = make_engine(fresh_url)
    try:
        upgrade(engine)
        backend = "sqlite" if fresh_url.startswith("sqlite") else "postgresql"
        with frozen(NOW):
            for api in _make_api(fresh_url, backend):
                skus = [unique_sku("mig"), unique_sku("mig")]
                api.set_price(skus[0], "0.000003", "2026-01-01T00:00:00Z")
                api.set_price(skus[1], "0.02", "2026-01-01T00:00:00Z")
                api.set_price(skus[1], "0.03", "2026-11-10T00:00:00Z")
                teams = [api.create_team(), api.create_team()]
                batch = [
                    event(
                        teams[i % 2],
                        skus[i % 3 % 2],
                        i * 1_000_003 % 10**12,
                        # (several quarter hours of one hour share events: i // 120)
                        f"2026-11-{1 + i % 20:02d}T{i % 24:02d}:"
                        f"{(i * 7 + i // 120 * 17) % 60:02d}:00Z",
                        model=f"m{i % 4}",
                        apiKeyId=f"k{i % 3}",
                    )
                    for i in range(600)
                ]
                assert api.ingest(batch)["accepted"] == 600
                again = [*batch[:100], event(teams[0], skus[0], 5, "2026-11-03T00:00:00Z")]
                assert api.ingest(again)["accepted"] == 1
        written = {table: rows_of(engine, table) for table in BACKFILLED}
        as_stored = {table: stored_times(engine, table) for table in BACKFILLED}
        assert written[UsageRollupByVersion] == summed_rollups(engine)
        assert len(written[UsageRollupByVersion]) < len(batch)  # buckets really are shared
        # hours really are shared (the sums themselves are checked in test_ingest_paths.py)
        assert len(written[UsageRollupHourlyByVersion]) < len(written[UsageRollupByVersion])
        assert len(written[UsageRollupDailyByVersion]) < len(written[UsageRollupHourlyByVersion])

        downgrade(engine, "0005")
        with engine.connect() as connection:
            for table in BACKFILLED:
                assert connection.dialect.has_table(connection, table.__tablename__) is False
        upgrade(engine)
        for table in BACKFILLED:
            assert rows_of(engine, table) == written[table], table.__tablename__
            # the same stored text too (SQLite keeps times as text: a backfilled hour written in
            # another format would not meet the rows ingestion writes into it)
            assert stored_times(engine, table) == as_stored[table], table.__tablename__
        # ingestion after the backfill adds to the backfilled rows, it does not write twins
        with frozen(NOW):
            for api in _make_api(fresh_url, backend):
                late = event(
                    teams[0], skus[0], 7, "2026-11-03T00:40:00Z", model="m0", apiKeyId="k0"
                )
                assert api.ingest([late])["accepted"] == 1
        for table in BACKFILLED:
            rows = rows_of(engine, table)
            keys = [row[:-2] for row in rows]  # all but quantity and events
            assert len(set(keys)) == len(keys), table.__tablename__
            added = sum(row[-2] for row in rows) - sum(row[-2] for row in written[table])
            assert added == 7, table.__tablename__
        assert len(rows_of(engine, UsageRollupHourlyByVersion)) == len(
            written[UsageRollupHourlyByVersion]
        )  # 2026-11-03 00:00 UTC held usage of that version already: no new hourly row
    finally:
        engine.dispose()
