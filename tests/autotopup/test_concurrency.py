"""PostgreSQL: concurrent ingestion batches and negative adjustments (threads, each request on its
own pooled connection) keep taking one team's credit below its auto top-up threshold while two
chargers settle the top-ups they enqueue: never two pending, never more than the monthly limit
succeeded, no write failed. (Batches of one team also queue on their cycle's row; adjustments
queue on the credit account instead, so batch and adjustment decide at the same time, and only
the settings-row lock orders them.)"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from billfold.autotopup.charger import charge_due
from billfold.config import Settings
from billfold.ledger.schemas import AUTO_PURCHASE, SUCCEEDED, TO_CHARGE
from billfold.topups.models import Topup
from tests.autotopup.conftest import auto_topups, enable, get_settings, settled
from tests.conftest import Api, event, frozen_at, unique_sku
from tests.ledger.conftest import charges, grant, session_of

pytestmark = pytest.mark.postgres_only

LIMIT = 5500
AMOUNT = 1000


def test_the_monthly_limit_holds_under_concurrent_batches(postgres_api: Api) -> None:
    api = postgres_api
    team_id, _ = api.team_with_key()
    api.add_card(team_id)
    # Enough credit that every batch lowers it (usage beyond credit would be postpaid, and a
    # batch that finds no credit left lowers nothing): each of them races to enqueue.
    assert grant(api, team_id, 20_000).status_code == 201
    sku = unique_sku()
    api.set_price(sku, "0.01", "2064-01-01T00:00:00Z")
    team = uuid.UUID(team_id)
    state = api.client.app.state  # type: ignore[attr-defined]
    settings: Settings = state.settings
    stop = threading.Event()
    seen_pending: list[int] = []
    seen_succeeded: list[int] = []

    def watch() -> None:
        """Samples what is committed: pending auto top-ups and the month's succeeded sum."""
        while not stop.is_set():
            with session_of(api) as session:
                rows = session.execute(
                    select(Topup.status, func.count(), func.sum(Topup.amount_cents))
                    .where(Topup.team_id == team, Topup.origin == AUTO_PURCHASE)
                    .group_by(Topup.status)
                ).all()
            by_status = {status: (count, int(total or 0)) for status, count, total in rows}
            seen_pending.append(by_status.get(TO_CHARGE, (0, 0))[0])
            seen_succeeded.append(by_status.get(SUCCEEDED, (0, 0))[1])
            time.sleep(0.01)

    def charger() -> None:
        """A second serving process's charger, racing the app's own."""
        while not stop.is_set():
            charge_due(
                state.sessionmaker, state.read_sessionmaker, state.payment_provider, settings
            )
            time.sleep(0.02)

    def write(n: int) -> int:
        if n % 4 == 3:  # a negative adjustment: the ledger's lock, not the cycle's
            return int(grant(api, team_id, -50, reason="adjustment").status_code)
        return batch(n)

    def batch(n: int) -> int:
        response = api.admin(
            "POST",
            "/admin/v1/usage-events",
            json={"events": [event(team_id, sku, 150, "2064-05-10T11:00:00Z")]},
        )
        return response.status_code

    with frozen_at("2064-05-10T12:00:00"):
        enable(
            api,
            team_id,
            thresholdCents="100000000",  # always below: every lowering batch may enqueue
            amountCents=str(AMOUNT),
            monthlyLimitCents=str(LIMIT),
        )
        helpers = [threading.Thread(target=watch), threading.Thread(target=charger)]
        for thread in helpers:
            thread.start()
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(write, range(128)))
        finally:
            stop.set()
            for thread in helpers:
                thread.join()
        assert statuses == [201 if n % 4 == 3 else 200 for n in range(128)]  # none failed
        assert seen_pending and max(seen_pending) <= 1
        assert max(seen_succeeded) <= LIMIT

        # Then batches one by one until the cap is reached (if the racing ones did not reach it):
        # exactly the limit, the last one the remainder, and nothing more.
        for _ in range(10):
            settled(api, team_id, len(auto_topups(api, team_id)))
            if get_settings(api, team_id)["monthToDateCents"] == str(LIMIT):
                break
            assert batch(0) == 200
        found = settled(api, team_id, len(auto_topups(api, team_id)))
        succeeded = [t for t in found if t.status == SUCCEEDED]
        assert sum(t.amount_cents for t in succeeded) == LIMIT
        assert sorted(t.amount_cents for t in succeeded) == [500] + [AMOUNT] * 5
        # Charged once each, under its own id.
        keys = sorted(c.idempotency_key for c in charges(api, team_id))
        assert keys == sorted(str(t.id) for t in found)
        assert batch(0) == 200
        assert len(auto_topups(api, team_id)) == len(found)  # the limit is reached: no more
