"""PostgreSQL: many concurrent top-ups (some retried with the same key), grants and usage batches
on one team; afterwards money and ledger agree exactly."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from billfold.invoicing.models import Invoice
from tests.conftest import Api, event, unique_sku
from tests.ledger.conftest import (
    assert_consistent,
    assert_posted_and_live,
    balance,
    charges,
    entries,
    grant,
    posted_sum,
    session_of,
    top_up,
    topups,
)

pytestmark = pytest.mark.postgres_only


def test_concurrent_topups_grants_and_usage(postgres_api: Api) -> None:
    api = postgres_api
    rng = random.Random(4)
    sku = unique_sku()
    api.set_price(sku, "0.000001")
    team_id, headers = api.team_with_key()
    api.add_card(team_id)

    # 100 top-up requests: 60 keys, 25 retries of some of them (same body), 15 without a key.
    keyed = [(f"key-{i}", rng.randrange(500, 5000)) for i in range(60)]
    requests: list[tuple[str, Any]] = [("topup", k) for k in keyed]
    requests += [("topup", rng.choice(keyed)) for _ in range(25)]
    requests += [("topup", (None, rng.randrange(500, 5000))) for _ in range(15)]
    requests += [("grant", (f"g-{i}", 100 * (i + 1))) for i in range(5)]
    now = datetime.now(UTC).replace(microsecond=0)
    requests += [("usage", i) for i in range(10)]
    rng.shuffle(requests)

    def run(request: tuple[str, Any]) -> tuple[str, Any, int, Any]:
        kind, arg = request
        if kind == "topup":
            key, cents = arg
            response = top_up(api, team_id, headers, cents, key=key)
            return kind, arg, response.status_code, response.json()
        if kind == "grant":
            key, cents = arg
            response = grant(api, team_id, cents, key=key)
            return kind, arg, response.status_code, response.json()
        batch = [
            event(team_id, sku, 10_000 * (arg + 1), now.isoformat().replace("+00:00", "Z"))
            for _ in range(50)
        ]
        return kind, arg, 200, api.ingest(batch)

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(run, requests))

    by_key: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for kind, arg, status, body in results:
        if kind == "topup":
            assert status in (200, 202), body  # 202: a keyless call met a pending purchase
            if arg[0] is not None:
                assert status == 200, body
                by_key[arg[0]].append((status, body))
        elif kind == "grant":
            assert status == 201, body
    # Every answer for one key is the same change: charged once.
    for answers in by_key.values():
        assert len({repr(body) for _, body in answers}) == 1

    listing = balance(api, team_id, headers)  # also resolves anything left pending
    rows = topups(api, team_id)
    assert all(t.status == "SUCCEEDED" for t in rows)
    assert len([t for t in rows if t.idempotency_key is not None]) == len(by_key) == 60
    assert len([t for t in rows if t.idempotency_key is None]) <= 15

    made = charges(api, team_id)
    ledger = entries(api, team_id)
    purchases = [e for e in ledger if e.kind == "purchase"]
    grants = [e for e in ledger if e.kind == "grant"]
    # No charge without an entry, no entry without a charge, each exactly once.
    assert all(c.status == "succeeded" for c in made)
    assert sorted(c.idempotency_key for c in made) == sorted(str(t.id) for t in rows)
    assert sorted(str(e.topup_id) for e in purchases) == sorted(str(t.id) for t in rows)
    assert {str(e.topup_id): e.credit_cents for e in purchases} == {
        c.idempotency_key: c.amount for c in made
    }
    charged = sum(c.amount for c in made)
    granted = sum(e.credit_cents for e in grants)
    assert granted == 1500
    posted = assert_consistent(api, team_id)
    assert posted == charged + granted

    with session_of(api) as session:
        receipts = session.scalar(
            select(func.count()).where(
                Invoice.team_id == uuid.UUID(team_id), Invoice.kind == "prepaid"
            )
        )
    assert receipts == len(rows)

    # The balance is the posted ledger: the usage of the open cycle is not in it.
    assert int(listing["total"]["val"]) == -posted
    assert posted_sum(listing) == int(listing["total"]["val"])
    # Usage drew on the credit, live (the preview): 10 batches of 50 events, 10,000 x (i + 1)
    # units each.
    spend = sum(round(50 * 10_000 * (i + 1) / 10_000) for i in range(10))  # cents at $1e-6/unit
    assert_posted_and_live(api, team_id, headers, posted=posted, left=posted - min(spend, posted))
