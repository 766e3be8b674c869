"""Concurrent ingestion on PostgreSQL: the same events sent by several clients at the same moment
are counted exactly once (in rollups, rollups by version and lines alike), and the cycle's spend is
the cost of the unique events."""

from __future__ import annotations

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from billfold.cycles.models import BillingCycle, CycleLine
from billfold.kit.clock import frozen
from billfold.kit.money import Pico, parse_usd_price, round_to_cents
from billfold.metering import service as metering
from billfold.metering.models import UsageEvent, UsageRollup, UsageRollupByVersion
from tests.conftest import Api, event, unique_sku

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
THREADS = 8

pytestmark = pytest.mark.postgres_only
ROUNDS = 3


def test_overlapping_batches_at_the_same_moment_count_each_event_once(
    postgres_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = postgres_api
    # count batches in flight at once, to know the requests really overlapped
    in_flight, most = 0, 0
    lock = threading.Lock()
    ingest = metering.MeteringService.ingest

    def counting(self: metering.MeteringService, *args: Any) -> Any:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            return ingest(self, *args)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(metering.MeteringService, "ingest", counting)
    skus = {unique_sku("cc"): "0.0000031", unique_sku("cc"): "0.000017"}
    for sku, price in skus.items():
        api.set_price(sku, price)
    team_id = api.create_team()
    names = list(skus)
    pool = [
        event(
            team_id,
            names[i % 2],
            1_000 + 37 * i,
            f"2026-11-{10 + i % 5:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            f"evt-{i}",
            model=f"m{i % 3}",
        )
        for i in range(400)
    ]
    rng = random.Random(7)
    # every thread sends batches drawn from the same pool, so the same ids race each other
    plans = [[rng.sample(pool, 150) for _ in range(ROUNDS)] for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def send(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        results = []
        for batch in batches:
            barrier.wait(timeout=60)  # all threads post this round at the same moment
            response = api.admin("POST", "/admin/v1/usage-events", json={"events": batch})
            assert response.status_code == 200, response.text
            results.append(response.json())
        return results

    with frozen(NOW), ThreadPoolExecutor(THREADS) as executor:
        futures = [executor.submit(send, plan) for plan in plans]
        answers = []
        for future in futures:
            try:
                answers.extend(future.result(timeout=300))
            except BaseException as exc:  # collect, so one failure does not hang the others
                errors.append(exc)
    assert not errors, errors
    assert most > 1

    sent = {e["eventId"] for plan in plans for batch in plan for e in batch}
    assert all(a["rejected"] == [] for a in answers)
    assert sum(a["accepted"] for a in answers) == len(sent)
    assert sum(a["duplicates"] for a in answers) == THREADS * ROUNDS * 150 - len(sent)

    unique = [e for e in pool if e["eventId"] in sent]
    tid = uuid.UUID(team_id)
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        stored = session.scalar(select(func.count()).where(UsageEvent.team_id == tid))
        rolled_quantity, rolled_events = session.execute(
            select(func.sum(UsageRollup.quantity), func.sum(UsageRollup.events)).where(
                UsageRollup.team_id == tid
            )
        ).one()
        by_version = session.execute(
            select(
                UsageRollupByVersion.bucket_start,
                UsageRollupByVersion.price_version_id,
                UsageRollupByVersion.quantity,
                UsageRollupByVersion.events,
            ).where(UsageRollupByVersion.team_id == tid)
        ).all()
        summed_rollups = session.execute(
            select(
                UsageRollup.bucket_start,
                UsageRollup.price_version_id,
                func.sum(UsageRollup.quantity),
                func.sum(UsageRollup.events),
            )
            .where(UsageRollup.team_id == tid)
            .group_by(UsageRollup.bucket_start, UsageRollup.price_version_id)
        ).all()
        lines = list(session.scalars(select(CycleLine).where(CycleLine.team_id == tid)))
        cycle = session.get(BillingCycle, (tid, 2026, 11))
    assert stored == len(sent)
    assert (rolled_quantity, rolled_events) == (
        sum(int(e["quantity"]) for e in unique),
        len(unique),
    )
    # the rollups by version, written by the same racing batches, are the rollups summed
    assert {(b, v): (q, n) for b, v, q, n in by_version} == {
        (b, v): (int(q), int(n)) for b, v, q, n in summed_rollups
    }
    # spend = sum over lines (one per SKU) of the line's exact cost rounded once
    expected_lines = {}
    for sku, price in skus.items():
        quantity = sum(int(e["quantity"]) for e in unique if e["sku"] == sku)
        expected_lines[quantity] = round_to_cents(Pico(quantity * parse_usd_price(price)))
    assert {line.quantity: line.amount_cents for line in lines} == expected_lines
    assert cycle is not None and cycle.spend_cents == sum(expected_lines.values())
    # and the same figure, the slow way
    exact = sum(Decimal(e["quantity"]) * Decimal(skus[e["sku"]]) for e in unique)
    assert abs(Decimal(cycle.spend_cents) - exact * 100) <= len(skus) * Decimal("0.5")
