"""Ingestion's two writers agree, and the aggregates always equal the raw events.

PostgreSQL ingests through ``PostgresWriter`` (one JSONB document per table), SQLite through
``CoreWriter`` (SQLAlchemy Core). Both run behind the same validation and rating code, and here the
same batches go through each on PostgreSQL -- to two sets of teams -- and must give the same
answers (accepted, duplicates, every rejection) and the same stored rows, event for event. The
property tests then check, on both databases, that the six rollup tables and cycle lines sum to
the raw events, rollups by version are the rollups summed over their property dimensions, the
hourly and daily tables the quarter-hour ones summed per UTC hour and day, line amounts are the
one rounding of their exact totals, and a cycle's spend is the sum of its lines.
"""

from __future__ import annotations

import gc
import random
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.cycles.models import BillingCycle, CycleLine
from billfold.kit.clock import frozen
from billfold.kit.money import Pico, parse_usd_price, round_to_cents
from billfold.metering.events import MAX_QUANTITY, dims_key
from billfold.metering.models import (
    ROLLUPS_BY_WIDTH,
    VERSION_ROLLUPS_BY_WIDTH,
    RollupWithDims,
    UsageEvent,
    UsageRollup,
    UsageRollupByVersion,
)
from billfold.metering.service import IngestResult, MeteringService
from billfold.metering.writers import (
    CoreWriter,
    PostgresWriter,
    bucket_number,
    bucket_of,
    bucket_start,
)
from billfold.pricing.models import PriceVersion
from tests.conftest import Api, unique_sku

# Months no other test closes; the clock is frozen inside them.
NOW = datetime(2036, 2, 20, 12, 0, tzinfo=UTC)
START = datetime(2036, 1, 1, tzinfo=UTC)
UNKNOWN_TEAM = "00000000-0000-4000-8000-0000000000ff"

FAST = MeteringService()
GENERIC = MeteringService(postgres_writer=False)

PROPERTY_CHOICES: list[Any] = [
    None,
    {},
    {"apiKeyId": "k1", "model": "grok-4", "clusterName": "us-east-1"},
    {"apiKeyId": "k2", "model": "grok-4"},
    {"model": 1},
    {"model": 1.0},
    {"model": True},
    {"model": "1"},
    {"apiKeyId": "k1", "region": "not groupable", "n": 3.5},
    {"model": "ünïcødé ✓", "clusterName": "eu-west-1"},
    {"model": "x\x00y"},  # not storable: rejected
    {"model": ["a list"]},  # not a string or number: rejected
]
QUANTITIES: list[Any] = [
    *(0, 1, 7, "12", "1200.000", 999_999_937, MAX_QUANTITY, str(MAX_QUANTITY)),
    *(MAX_QUANTITY + 1, str(MAX_QUANTITY + 1), "1.5", -3, True, None),  # rejected
]


_PRICED: dict[str, list[str]] = {}  # per database, priced once (SKUs are global)


def _skus(api: Api) -> list[str]:
    """Three SKUs: one repriced mid-month, one priced only from Jan 10, two sharing a
    description."""
    prepared = _PRICED
    if api.backend not in prepared:
        a, b, c = unique_sku("paths"), unique_sku("paths"), unique_sku("paths")
        api.set_price(a, "0.000003", "2035-01-01T00:00:00Z")
        api.set_price(a, "0.0000041", "2036-01-15T00:00:00Z")
        api.set_price(b, "0.0000007", "2035-01-01T00:00:00Z", description="Same description")
        api.set_price(c, "0.25", "2036-01-10T00:00:00Z", description="Same description")
        prepared[api.backend] = [a, b, c]
    return prepared[api.backend]


def _teams(api: Api, count: int = 3) -> list[str]:
    return [api.create_team(f"paths {i}") for i in range(count)]


def _spec_events(
    specs: list[tuple[Any, ...]], teams: list[str], skus: list[str]
) -> list[dict[str, Any]]:
    """Wire events from abstract specs, for one set of teams (the other path gets another)."""
    events = []
    for team_index, sku_index, quantity, minutes, properties, event_id in specs:
        event: dict[str, Any] = {
            "eventId": event_id,
            "teamId": [*teams, UNKNOWN_TEAM][team_index],
            "sku": [*skus, "no-such-sku"][sku_index],
            "timestamp": (START + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
        }
        if quantity is not None:
            event["quantity"] = quantity
        if properties is not None:
            event["properties"] = properties
        events.append(event)
    return events


def _ingest(api: Api, service: MeteringService, events: list[dict[str, Any]]) -> IngestResult:
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    app_settings: Settings = api.client.app.state.settings  # type: ignore[attr-defined]
    with sessions() as session:
        result = service.ingest(session, app_settings, events)
        session.commit()
    return result


def _outcome(result: IngestResult) -> tuple[int, int, list[tuple[int, str, str]]]:
    return (
        result.accepted,
        result.duplicates,
        [(r.index, r.event_id, r.code) for r in result.rejected],
    )


ROLLUP_TABLES: dict[str, Any] = {
    **{f"rollups_{width}": table for width, table in ROLLUPS_BY_WIDTH.items()},
    **{f"version_rollups_{width}": table for width, table in VERSION_ROLLUPS_BY_WIDTH.items()},
}


def r_dims(row: Any) -> tuple[str, ...]:
    """A rollup's dims key, if its table has one."""
    return (row.dims_key,) if isinstance(row, RollupWithDims) else ()


def _stored(api: Api, teams: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Everything ingestion wrote for these teams, with each team replaced by its position."""
    ids = [uuid.UUID(t) for t in teams]
    position = {team_id: i for i, team_id in enumerate(ids)}
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        events = session.scalars(select(UsageEvent).where(UsageEvent.team_id.in_(ids)))
        lines = session.scalars(select(CycleLine).where(CycleLine.team_id.in_(ids)))
        cycles = session.scalars(select(BillingCycle).where(BillingCycle.team_id.in_(ids)))
        return {
            "events": sorted(
                (
                    position[e.team_id],
                    e.event_id,
                    e.ts,
                    e.quantity,
                    e.price_version_id,
                    e.property_set_id,
                    sorted(e.property_set.properties.items(), key=repr),
                )
                for e in events
            ),
            **{
                name: sorted(
                    (
                        position[r.team_id],
                        r.bucket_start,
                        r.price_version_id,
                        *r_dims(r),
                        r.quantity,
                        r.events,
                    )
                    for r in session.scalars(select(table).where(table.team_id.in_(ids)))
                )
                for name, table in ROLLUP_TABLES.items()
            },
            "lines": sorted(
                (
                    position[c.team_id],
                    c.year,
                    c.month,
                    c.price_version_id,
                    c.cluster_name,
                    c.quantity,
                    c.events,
                    c.amount_cents,
                )
                for c in lines
            ),
            "cycles": sorted((position[c.team_id], c.year, c.month, c.spend_cents) for c in cycles),
        }


def _check_aggregates(api: Api, teams: list[str]) -> None:
    """The rollup tables and lines sum to the raw events (each rollup's dims_key the JSON of its
    events' groupable properties); rollups by version are the rollups summed over their dims, the
    hourly and daily tables the quarter-hour ones summed per UTC hour and day; amounts are
    rounded once; spend = sum of lines."""
    ids = [uuid.UUID(t) for t in teams]
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        prices = dict(session.execute(select(PriceVersion.id, PriceVersion.unit_price_pico)).all())
        raw: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
        per_version: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
        per_line: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
        for e in session.scalars(select(UsageEvent).where(UsageEvent.team_id.in_(ids))):
            minute = e.ts.minute - e.ts.minute % 15
            bucket = e.ts.replace(minute=minute, second=0, microsecond=0)
            dims = {
                p: str(e.property_set.properties[p])
                for p in ("apiKeyId", "model", "clusterName")
                if p in e.property_set.properties
            }
            # the line's cluster: clusterName when it is a string, whether groupable or not
            cluster = e.property_set.properties.get("clusterName")
            cluster = cluster if isinstance(cluster, str) else ""
            for key, sums in (
                ((e.team_id, bucket, e.price_version_id, dims_key(dims)), raw),
                ((e.team_id, bucket, e.price_version_id), per_version),
                ((e.team_id, e.ts.year, e.ts.month, e.price_version_id, cluster), per_line),
            ):
                sums[key][0] += e.quantity
                sums[key][1] += 1
        rollups = {
            (r.team_id, r.bucket_start, r.price_version_id, r.dims_key): [r.quantity, r.events]
            for r in session.scalars(select(UsageRollup).where(UsageRollup.team_id.in_(ids)))
        }
        assert rollups == raw
        by_version = {
            (r.team_id, r.bucket_start, r.price_version_id): [r.quantity, r.events]
            for r in session.scalars(
                select(UsageRollupByVersion).where(UsageRollupByVersion.team_id.in_(ids))
            )
        }
        assert by_version == per_version
        summed: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
        for (team_id, bucket, version_id, _), (quantity, count) in rollups.items():
            summed[(team_id, bucket, version_id)][0] += quantity
            summed[(team_id, bucket, version_id)][1] += count
        assert by_version == summed
        coarser: list[tuple[dict[Any, list[int]], Any, dict[str, int]]] = [
            (quarters, tables[width], start_of)
            for quarters, tables in (
                (rollups, ROLLUPS_BY_WIDTH),
                (by_version, VERSION_ROLLUPS_BY_WIDTH),
            )
            for width, start_of in ((3600, {"minute": 0}), (86_400, {"minute": 0, "hour": 0}))
        ]
        for quarters, table, start_of in coarser:
            per_bucket: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
            for (team_id, bucket, *rest), (quantity, count) in quarters.items():
                key = (team_id, bucket.replace(**start_of), *rest)
                per_bucket[key][0] += quantity
                per_bucket[key][1] += count
            stored = {
                (r.team_id, r.bucket_start, r.price_version_id, *r_dims(r)): [r.quantity, r.events]
                for r in session.scalars(select(table).where(table.team_id.in_(ids)))
            }
            assert stored == per_bucket, table.__tablename__
        spend: dict[tuple[Any, ...], int] = defaultdict(int)
        lines = {}
        for c in session.scalars(select(CycleLine).where(CycleLine.team_id.in_(ids))):
            key = (c.team_id, c.year, c.month, c.price_version_id, c.cluster_name)
            lines[key] = [c.quantity, c.events]
            assert c.amount_cents == round_to_cents(Pico(c.quantity * prices[c.price_version_id]))
            spend[(c.team_id, c.year, c.month)] += c.amount_cents
        assert lines == per_line
        cycles = {
            (c.team_id, c.year, c.month): c.spend_cents
            for c in session.scalars(select(BillingCycle).where(BillingCycle.team_id.in_(ids)))
        }
        assert cycles == spend


def _random_specs(rng: random.Random, count: int, ids: list[str]) -> list[tuple[Any, ...]]:
    return [
        (
            rng.choice([0, 0, 0, 1, 2, 3]),  # 3: an unknown team
            rng.choice([0, 0, 1, 2, 3]),  # 3: an unknown SKU
            rng.choice(QUANTITIES),
            # both months, bucket edges included (minute 14 and 15 of an hour)
            rng.choice([0, 14, 15, 29, 30, 44 * 60 + 59, 44 * 60 + 60, 13 * 1440 + 15])
            + rng.randrange(0, 50) * 1440,
            rng.choice(PROPERTY_CHOICES),
            rng.choice(ids),
        )
        for _ in range(count)
    ]


def test_both_writers_give_the_same_answers_and_rows(postgres_api: Api) -> None:
    api = postgres_api
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert isinstance(FAST.writer(session), PostgresWriter)
        assert isinstance(GENERIC.writer(session), CoreWriter)
    prices = _skus(api)
    fast_teams, generic_teams = _teams(api), _teams(api)
    rng = random.Random(7)
    ids = [f"evt-{i}" for i in range(400)]  # a small pool: repeats within and across batches
    with frozen(NOW):
        for round_ in range(4):
            specs = _random_specs(rng, 300, ids)
            fast = _ingest(api, FAST, _spec_events(specs, fast_teams, prices))
            generic = _ingest(api, GENERIC, _spec_events(specs, generic_teams, prices))
            assert _outcome(fast) == _outcome(generic), f"round {round_}"
            assert fast.accepted > 0 and fast.duplicates > 0 and fast.rejected
        assert _stored(api, fast_teams) == _stored(api, generic_teams)
    _check_aggregates(api, fast_teams)


@st.composite
def spec_batches(draw: st.DrawFn) -> list[list[tuple[Any, ...]]]:
    spec = st.tuples(
        st.integers(0, 3),
        st.integers(0, 3),
        st.one_of(st.integers(0, 10**12), st.sampled_from(QUANTITIES), st.integers(0, 10).map(str)),
        st.integers(0, 50 * 1440 - 1),
        st.sampled_from(PROPERTY_CHOICES),
        st.sampled_from([f"e{i}" for i in range(30)]),
    )
    return draw(st.lists(st.lists(spec, max_size=40), min_size=1, max_size=3))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=spec_batches())
def test_writers_agree_on_any_batches(
    postgres_api: Api, batches: list[list[tuple[Any, ...]]]
) -> None:
    api = postgres_api
    prices = _skus(api)
    fast_teams, generic_teams = _teams(api), _teams(api)
    with frozen(NOW):
        for specs in batches:
            fast = _ingest(api, FAST, _spec_events(specs, fast_teams, prices))
            generic = _ingest(api, GENERIC, _spec_events(specs, generic_teams, prices))
            assert _outcome(fast) == _outcome(generic)
    assert _stored(api, fast_teams) == _stored(api, generic_teams)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=spec_batches())
def test_aggregates_equal_the_raw_events(api: Api, batches: list[list[tuple[Any, ...]]]) -> None:
    prices = _skus(api)
    teams = _teams(api)
    with frozen(NOW):
        for specs in batches:
            response = api.admin(
                "POST",
                "/admin/v1/usage-events",
                json={"events": _spec_events(specs, teams, prices)},
            )
            assert response.status_code == 200, response.text
    _check_aggregates(api, teams)


def test_a_full_batch_through_http(api: Api) -> None:
    """10,000 events (the most a call takes), several teams, both months: every one accepted,
    and the cycle's spend is the rounded cost of the exact totals."""
    prices = _skus(api)
    teams = _teams(api)
    rng = random.Random(11)
    events = [
        {
            "eventId": f"full-{i}",
            "teamId": teams[i % 3],
            "sku": prices[1],
            "quantity": str(rng.randint(1, 100_000)),
            "timestamp": (START + timedelta(seconds=i * 400)).isoformat().replace("+00:00", "Z"),
            "properties": {"apiKeyId": f"k{i % 7}", "model": f"m{i % 2}"},
        }
        for i in range(10_000)
    ]
    with frozen(NOW):
        assert api.ingest(events) == {"accepted": 10_000, "duplicates": 0, "rejected": []}
        again = api.ingest(events[:5000] + events[:10])
    assert again == {"accepted": 0, "duplicates": 5010, "rejected": []}
    _check_aggregates(api, teams)
    price = parse_usd_price("0.0000007")
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        for team in teams:
            for year, month in ((2036, 1), (2036, 2)):
                quantity = sum(
                    int(e["quantity"])
                    for e in events
                    if e["teamId"] == team and e["timestamp"].startswith(f"{year}-{month:02d}")
                )
                cycle = session.get(BillingCycle, (uuid.UUID(team), year, month))
                assert cycle is not None
                assert cycle.spend_cents == round_to_cents(Pico(quantity * price))


def test_unstorable_values_are_rejected_alone(api: Api) -> None:
    """NUL characters (PostgreSQL cannot store them), numbers JSON cannot carry, lone surrogates
    (the CLI's JSON reader lets them through): each such event is rejected, the rest accepted,
    and nothing of the rejected ones is stored -- the same on both databases."""
    prices = _skus(api)
    (team,) = _teams(api, 1)
    base = {"teamId": team, "sku": prices[1], "quantity": "5", "timestamp": "2036-02-01T00:00:00Z"}
    events: list[Any] = [
        {**base, "eventId": "ok-1", "properties": {"model": "fine"}},
        {**base, "eventId": "nul\x00id"},
        {**base, "eventId": "nul-sku", "sku": prices[1] + "\x00"},
        {**base, "eventId": "nul-value", "properties": {"model": "a\x00b"}},
        {**base, "eventId": "nul-key", "properties": {"mo\x00del": "a"}},
        {**base, "eventId": "huge-int", "properties": {"n": 2**70}},
        {**base, "eventId": "nan", "properties": {"n": float("nan")}},
        {**base, "eventId": "infinity", "properties": {"n": float("inf")}},
        {**base, "eventId": "surrogate", "properties": {"model": "\ud800"}},
        {**base, "eventId": "surrogate-id\udfff"},
        {**base, "eventId": "list", "properties": {"model": ["x"]}},
        {**base, "eventId": "long-key", "properties": {"k" * 65: "x"}},
        {**base, "eventId": "ok-2", "properties": {"n": 2**64 - 1, "m": -(2**63), "f": 1.5}},
    ]
    with frozen(NOW):
        result = _ingest(api, FAST, events)
    assert result.accepted == 2 and result.duplicates == 0
    assert {r.index: r.code for r in result.rejected} == {
        1: "invalid_event_id",
        2: "invalid_sku",
        3: "invalid_properties",
        4: "invalid_properties",
        5: "invalid_properties",
        6: "invalid_properties",
        7: "invalid_properties",
        8: "invalid_properties",
        9: "invalid_event_id",
        10: "invalid_properties",
        11: "invalid_properties",
    }
    stored = _stored(api, [team])
    assert [e[1] for e in stored["events"]] == ["ok-1", "ok-2"]
    _check_aggregates(api, [team])


def test_nul_over_http_is_rejected_alone(api: Api) -> None:
    prices = _skus(api)
    (team,) = _teams(api, 1)
    base = {"teamId": team, "sku": prices[1], "quantity": "5", "timestamp": "2036-02-01T00:00:00Z"}
    with frozen(NOW):
        result = api.ingest(
            [
                {**base, "eventId": "a\u0000"},
                {**base, "eventId": "b", "properties": {"model": "\u0000"}},
                {**base, "eventId": "c"},
            ]
        )
    assert result["accepted"] == 1
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [
        (0, "invalid_event_id"),
        (1, "invalid_properties"),
    ]
    assert [e[1] for e in _stored(api, [team])["events"]] == ["c"]


def test_a_stored_event_last_in_key_order_is_a_duplicate_and_the_rest_lands_once(api: Api) -> None:
    """On PostgreSQL the batch is copied first: the stored event, last in key order, fails the
    COPY after every other row was copied; the savepoint is rolled back and the fallback statement
    accepts each of the others once."""
    prices = _skus(api)
    (team,) = _teams(api, 1)

    def event(n: int) -> dict[str, Any]:
        return {
            "eventId": f"late-{n:03d}",
            "teamId": team,
            "sku": prices[0],
            "quantity": str(n + 1),
            "timestamp": (START + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
            "properties": {"apiKeyId": "k1", "model": "grok-4"},
        }

    with frozen(NOW):
        assert api.ingest([event(999)]) == {"accepted": 1, "duplicates": 0, "rejected": []}
        batch = [event(999), *(event(n) for n in range(300))]  # "late-999" sorts last
        assert api.ingest(batch) == {"accepted": 300, "duplicates": 1, "rejected": []}
    stored = _stored(api, [team])
    assert sorted(e[1] for e in stored["events"]) == sorted(e["eventId"] for e in batch)
    _check_aggregates(api, [team])


def test_events_are_written_in_the_order_of_their_key(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer gets a batch in the database's own order of the primary key: the lock order
    that keeps concurrent batches from deadlocking holds only if Python's sort and the key's
    collation agree. Ids that a locale would order differently (case, accents, symbols, digits,
    a 4-byte character), in two teams that share some ids."""
    prices = _skus(api)
    teams = sorted(_teams(api, 2), reverse=True)  # the later team id first in the batch
    ids = ["b", "B", "a", "É", "e", "é", "z", "Z", "_x", "-x", "10", "9", "€", "𝄞", "\uff41", "a b"]
    sent: list[tuple[str, str]] = []
    for writer in (CoreWriter, PostgresWriter):
        original = writer.insert_events

        def spy(self: Any, session: Session, events: Any, now: datetime, _o: Any = original) -> Any:
            sent.extend((e[1], e[0]) for e in events)
            return _o(self, session, events, now)

        monkeypatch.setattr(writer, "insert_events", spy)
    batch = [
        {
            "eventId": event_id,
            "teamId": team,
            "sku": prices[0],
            "quantity": "1",
            "timestamp": (START + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
        }
        for n, event_id in enumerate(ids)
        for team in teams[: 1 + n % 2]
    ]
    with frozen(NOW):
        assert api.ingest(batch)["accepted"] == len(batch)
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        in_key_order = session.execute(
            select(UsageEvent.event_id, UsageEvent.team_id)
            .where(UsageEvent.team_id.in_([uuid.UUID(t) for t in teams]))
            .order_by(UsageEvent.event_id, UsageEvent.team_id)
        ).all()
    assert sent == [(event_id, str(team_id)) for event_id, team_id in in_key_order]


@pytest.mark.postgres_only
def test_a_batch_waiting_on_a_concurrent_one_counts_its_events_as_duplicates(
    postgres_api: Api,
) -> None:
    """Batch B overlaps batch A, which has inserted but not committed: B waits on A's keys, and
    once A commits, exactly the overlap is B's duplicates (and the rest of B is accepted). Their
    events come in opposite orders: both insert in key order, so they cannot deadlock."""
    api = postgres_api
    prices = _skus(api)
    (team,) = _teams(api, 1)
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    app_settings: Settings = api.client.app.state.settings  # type: ignore[attr-defined]

    def batch(numbers: range) -> list[dict[str, Any]]:
        return [
            {
                "eventId": f"race-{n:04d}",
                "teamId": team,
                "sku": prices[0],
                "quantity": str(n),
                "timestamp": (START + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
                "properties": {"apiKeyId": f"k{n % 3}"},
            }
            for n in numbers
        ]

    first, second = batch(range(0, 600)), list(reversed(batch(range(400, 1000))))
    results: dict[str, IngestResult] = {}
    errors: list[BaseException] = []
    second_started = threading.Event()

    def run_second() -> None:
        try:
            with sessions() as session:
                second_started.set()
                results["second"] = FAST.ingest(session, app_settings, second)
                session.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with frozen(NOW):
        session: Session = sessions()
        try:
            results["first"] = FAST.ingest(session, app_settings, first)
            thread = threading.Thread(target=run_second)
            thread.start()
            second_started.wait(5)
            thread.join(0.5)
            assert thread.is_alive(), "the second batch must wait for the first's commit"
            session.commit()
        finally:
            session.close()
        thread.join(30)
    assert not errors, errors
    assert (results["first"].accepted, results["first"].duplicates) == (600, 0)
    assert (results["second"].accepted, results["second"].duplicates) == (400, 200)
    stored = _stored(api, [team])
    assert len(stored["events"]) == 1000
    _check_aggregates(api, [team])


def test_closed_month_events_are_rejected_alone_by_both_writers(postgres_api: Api) -> None:
    api = postgres_api
    sku = unique_sku("closed")
    api.set_price(sku, "0.00001", "2036-06-01T00:00:00Z")
    fast_teams, generic_teams = _teams(api, 2), _teams(api, 2)
    specs = [
        (team, 0, 100 + n, minutes, {"model": "m"}, f"closed-{n}")
        for n, (team, minutes) in enumerate(
            [(0, 10), (1, 20), (0, 40 * 1440), (1, 40 * 1440 + 5), (0, 31 * 1440 - 1)]
        )
    ]
    # Closing a month closes it for every team of the test database: a month no other test uses
    # (the spend-cache tests ingest into January 2037).
    start = datetime(2041, 1, 1, tzinfo=UTC)

    def events(teams: list[str]) -> list[dict[str, Any]]:
        out = _spec_events(specs, teams, [sku])
        for event, (_, _, _, minutes, _, _) in zip(out, specs, strict=True):
            event["timestamp"] = (start + timedelta(minutes=minutes)).isoformat()
        return out

    with frozen(datetime(2041, 2, 20, tzinfo=UTC)):
        response = api.admin(
            "POST", "/admin/v1/billing-cycles/close", json={"year": 2041, "month": 1}
        )
        assert response.status_code == 200, response.text
        fast = _ingest(api, FAST, events(fast_teams))
        generic = _ingest(api, GENERIC, events(generic_teams))
    assert _outcome(fast) == _outcome(generic)
    assert fast.accepted == 2
    assert [(r.index, r.code) for r in fast.rejected] == [
        (0, "cycle_closed"),
        (1, "cycle_closed"),
        (4, "cycle_closed"),
    ]
    assert _stored(api, fast_teams) == _stored(api, generic_teams)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)))
def test_bucket_numbers_are_the_15_minute_buckets(at: datetime) -> None:
    ts = at.replace(tzinfo=UTC)
    assert bucket_start(bucket_number(ts)) == bucket_of(ts)
    assert bucket_number(ts + timedelta(minutes=15)) == bucket_number(ts) + 1


def test_the_collector_is_paused_only_during_a_batch(api: Api) -> None:
    prices = _skus(api)
    (team,) = _teams(api, 1)
    seen: list[bool] = []
    events = [
        {
            "eventId": f"gc-{n}",
            "teamId": team,
            "sku": prices[1],
            "quantity": "1",
            "timestamp": "2036-02-01T00:00:00Z",
        }
        for n in range(3)
    ]

    class Watching(MeteringService):
        def _ingest(self, *args: Any) -> IngestResult:
            seen.append(gc.isenabled())
            return super()._ingest(*args)

    with frozen(NOW):
        assert gc.isenabled()
        _ingest(api, Watching(), events)
        assert seen == [False] and gc.isenabled()
        gc.disable()  # someone else's pause is left alone
        try:
            _ingest(api, Watching(), events)
            assert not gc.isenabled()
        finally:
            gc.enable()
