"""Usage ingestion: exactly once, each bad event rejected alone, rated and accrued."""

from __future__ import annotations

from sqlalchemy import func, select

from billfold.invoicing.models import BillingCycle
from billfold.metering.models import CycleLine, UsageEvent, UsageRollup
from tests.conftest import Api, event, unique_sku


def _cycle_spend(api: Api, team_id: str, year: int, month: int) -> int:
    import uuid

    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        cycle = session.get(BillingCycle, (uuid.UUID(team_id), year, month))
        return 0 if cycle is None else cycle.spend_cents


def test_batch_with_good_bad_and_duplicate_events(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000003")
    team_id = api.create_team()
    good = event(team_id, sku, 1_000_000, "2026-11-20T10:00:00Z", "e1", model="grok-4")
    batch = [
        good,
        event(team_id, "no-such-sku", 1, "2026-11-20T10:00:00Z", "e2"),
        event("00000000-0000-4000-8000-000000000000", sku, 1, "2026-11-20T10:00:00Z", "e3"),
        {**event(team_id, sku, 1, "2026-11-20T10:00:00Z", "e4"), "timestamp": "not a time"},
        {**event(team_id, sku, 1, "2026-11-20T10:00:00Z", "e5"), "quantity": "1.5"},
        {**event(team_id, sku, 1, "2026-11-20T10:00:00Z", "e6"), "quantity": "-3"},
        {
            **event(team_id, sku, 1, "2026-11-20T10:00:00Z", "e7"),
            "timestamp": "2026-11-20T10:00:00",
        },
        "not an object",
        good,  # the same event twice in one batch
        event(team_id, sku, 2_000_000, "2026-11-20T10:05:00Z", "e8"),
    ]
    result = api.ingest(batch)
    assert result["accepted"] == 2
    assert result["duplicates"] == 1
    codes = {r["index"]: r["code"] for r in result["rejected"]}
    assert codes == {
        1: "unknown_sku",
        2: "unknown_team",
        3: "invalid_timestamp",
        4: "invalid_quantity",
        5: "invalid_quantity",
        6: "invalid_timestamp",
        7: "invalid_event",
    }
    assert all(r["error"] for r in result["rejected"])
    assert result["rejected"][0]["eventId"] == "e2"
    # 3,000,000 units at $0.000003 = $9.00
    assert _cycle_spend(api, team_id, 2026, 11) == 900

    retry = api.ingest([good, event(team_id, sku, 2_000_000, "2026-11-20T10:05:00Z", "e8")])
    assert retry == {"accepted": 0, "duplicates": 2, "rejected": []}
    assert _cycle_spend(api, team_id, 2026, 11) == 900


def test_rollups_and_lines_match_events(api: Api) -> None:
    import uuid

    sku = unique_sku()
    api.set_price(sku, "0.0000007")
    team_id = api.create_team()
    events = [
        event(
            team_id, sku, q, f"2026-11-0{1 + q % 5}T0{q % 10}:{q % 60:02d}:00Z", model=f"m{q % 3}"
        )
        for q in range(1, 200)
    ]
    assert api.ingest(events)["accepted"] == len(events)
    tid = uuid.UUID(team_id)
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        raw = session.scalar(select(func.sum(UsageEvent.quantity)).where(UsageEvent.team_id == tid))
        rolled = session.scalar(
            select(func.sum(UsageRollup.quantity)).where(UsageRollup.team_id == tid)
        )
        line = session.scalars(select(CycleLine).where(CycleLine.team_id == tid)).one()
    total = sum(range(1, 200))
    assert raw == rolled == line.quantity == total
    # the line amount is rounded once from the exact total: 19900 * $0.0000007 = $0.01393 -> 1 cent
    assert line.amount_cents == 1


def test_price_change_mid_month_rates_by_event_time(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2026-01-01T00:00:00Z")
    api.set_price(sku, "0.02", "2026-11-15T00:00:00Z")
    team_id = api.create_team()
    result = api.ingest(
        [
            event(team_id, sku, 100, "2026-11-14T23:59:59Z"),  # $1.00 at the old price
            event(team_id, sku, 100, "2026-11-15T00:00:00Z"),  # $2.00 at the new price
        ]
    )
    assert result["accepted"] == 2
    assert _cycle_spend(api, team_id, 2026, 11) == 300


def test_empty_and_oversized_batches(api: Api) -> None:
    assert api.ingest([]) == {"accepted": 0, "duplicates": 0, "rejected": []}
    response = api.admin("POST", "/admin/v1/usage-events", json={"events": [{}] * 10_001})
    assert response.status_code == 400
    assert response.json()["code"] == "batch_too_large"
    response = api.admin("POST", "/admin/v1/usage-events", json={"nope": []})
    assert response.status_code == 400 and response.json()["field"] == "events"
    response = api.admin(
        "POST",
        "/admin/v1/usage-events",
        content=b"{not json",
        headers={**api.operator, "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"


def test_an_event_id_is_unique_per_team_not_globally(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01")
    first, second = api.create_team(), api.create_team()
    batch = [
        event(first, sku, 100, "2026-11-20T10:00:00Z", "shared-id"),
        event(second, sku, 200, "2026-11-20T10:00:00Z", "shared-id"),
        event(second, sku, 300, "2026-11-20T10:00:00Z", "shared-id"),  # a repeat: second's
    ]
    assert api.ingest(batch) == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert _cycle_spend(api, first, 2026, 11) == 100
    assert _cycle_spend(api, second, 2026, 11) == 200  # the first occurrence counts
