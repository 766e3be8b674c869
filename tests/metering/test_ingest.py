"""Usage ingestion: exactly once, each bad event rejected alone, rated and accrued."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import func, select

from billfold.cycles.models import BillingCycle, CycleLine
from billfold.metering.models import UsageEvent, UsageRollup
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


def test_at_most_10_to_the_12_units_per_event(api: Api) -> None:
    """10^12 units is the most one event may carry, in every form a quantity may take; one more
    is rejected with the event alone, and nothing of it is stored."""
    import uuid

    limit = 10**12
    sku = unique_sku()
    api.set_price(sku, "0.000000000001")  # 1 picodollar a unit
    team_id = api.create_team()
    at = "2026-11-20T10:00:00Z"
    accepted = [
        event(team_id, sku, limit, at, "int") | {"quantity": limit},
        event(team_id, sku, limit, at, "text"),
        event(team_id, sku, limit, at, "decimal text") | {"quantity": f"{limit}.000"},
        event(team_id, sku, limit, at, "float") | {"quantity": float(limit)},
    ]
    too_big = [
        event(team_id, sku, limit + 1, at, "int+1") | {"quantity": limit + 1},
        event(team_id, sku, limit + 1, at, "text+1"),
        event(team_id, sku, limit + 1, at, "decimal text+1") | {"quantity": f"{limit + 1}.0"},
        event(team_id, sku, limit + 1, at, "float+1") | {"quantity": float(limit + 1)},
        event(team_id, sku, 10**15, at, "the old limit"),
        # more digits than Python's int() converts (4,300): rejected alone, not a failed batch
        event(team_id, sku, "9" * 5000, at, "5,000 digits"),
        event(team_id, sku, 1, at, "5,000 digits.0") | {"quantity": "9" * 5000 + ".0"},
    ]
    leading_zeros = [event(team_id, sku, "0" * 5000 + "7", at, "7 after 5,000 zeros")]
    result = api.ingest(accepted + too_big + leading_zeros)
    assert result["accepted"] == 5
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [
        (i, "invalid_quantity") for i in range(4, 11)
    ]
    assert all("1000000000000 units" in r["error"] for r in result["rejected"])
    tid = uuid.UUID(team_id)
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        stored = set(session.scalars(select(UsageEvent.event_id).where(UsageEvent.team_id == tid)))
        line = session.scalars(select(CycleLine).where(CycleLine.team_id == tid)).one()
    assert stored == {"int", "text", "decimal text", "float", "7 after 5,000 zeros"}
    assert (line.quantity, line.events, line.amount_cents) == (4 * limit + 7, 5, 400)


def test_a_full_batch_of_maximal_events_in_one_bucket(api: Api) -> None:
    """10,000 events of 10^12 units in one 15-minute bucket: 10^16 units, summed exactly in the
    rollups, the rollups by version, the cycle line and the spend (no 64-bit overflow)."""
    import uuid

    from billfold.metering.models import UsageRollupByVersion

    sku = unique_sku()
    api.set_price(sku, "0.000000000001")
    team_id = api.create_team()
    events = [
        event(team_id, sku, 10**12, f"2026-11-21T08:{i % 15:02d}:{i % 60:02d}Z", f"max-{i}")
        for i in range(10_000)
    ]
    assert api.ingest(events) == {"accepted": 10_000, "duplicates": 0, "rejected": []}
    tid = uuid.UUID(team_id)
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        rolled = session.scalar(
            select(func.sum(UsageRollup.quantity)).where(UsageRollup.team_id == tid)
        )
        by_version = session.scalars(
            select(UsageRollupByVersion).where(UsageRollupByVersion.team_id == tid)
        ).one()
        line = session.scalars(select(CycleLine).where(CycleLine.team_id == tid)).one()
    assert rolled == by_version.quantity == line.quantity == 10**16
    assert by_version.events == line.events == 10_000
    assert line.amount_cents == _cycle_spend(api, team_id, 2026, 11) == 1_000_000  # $10,000


def test_extreme_events_are_rejected_alone(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "1000000")  # the largest unit price: $1,000,000 per unit
    team_id = api.create_team()
    result = api.ingest(
        [
            event(team_id, sku, 1, "2026-11-20T10:00:00Z", "ok"),
            event(team_id, sku, 10**12, "2026-11-20T10:00:00Z", "too-costly"),
            event(team_id, sku, 1, "0001-01-01T00:00:00+01:00", "year-1"),
            event(team_id, sku, 1, "9999-12-31T23:59:59-01:00", "year-9999"),
        ]
    )
    assert result["accepted"] == 1
    codes = {r["eventId"]: r["code"] for r in result["rejected"]}
    assert codes == {
        "too-costly": "amount_too_large",
        "year-1": "invalid_timestamp",
        "year-9999": "invalid_timestamp",
    }
    assert _cycle_spend(api, team_id, 2026, 11) == 100_000_000


def test_groupable_values_too_long_together_are_rejected_alone(api: Api) -> None:
    """Rollups key each combination of groupable values by their JSON (at most 1,000 characters).
    Each value may hold 200 characters, but JSON escapes some (a quote takes two): the default
    three groupable properties full of quotes take 1,200+ together. Such an event is rejected
    alone, naming the limit; on PostgreSQL it used to fail its whole batch with a 500."""
    sku = unique_sku()
    api.set_price(sku, "0.000001")
    team_id = api.create_team()
    names = ["apiKeyId", "model", "clusterName"]
    result = api.ingest(
        [
            event(team_id, sku, 1, "2026-11-20T10:00:00Z", "ok", **{n: "v" * 200 for n in names}),
            event(
                team_id, sku, 1, "2026-11-20T10:00:00Z", "too-long", **{n: '"' * 200 for n in names}
            ),
            event(team_id, sku, 1, "2026-11-20T10:00:00Z", "not-groupable", other='"' * 200),
        ]
    )
    assert result["accepted"] == 2, result
    [rejected] = result["rejected"]
    assert (rejected["eventId"], rejected["code"]) == ("too-long", "invalid_properties")
    assert "1000" in rejected["error"].replace(",", "")


def test_properties_are_an_object_or_null(api: Api) -> None:
    """Absent, null and {} mean no properties; another falsy value is not an object (it was
    taken for "no properties")."""
    sku = unique_sku()
    api.set_price(sku, "0.000001")
    team_id = api.create_team()
    values: list[Any] = [None, {}, False, "", 0, [], "x"]
    batch = [event(team_id, sku, 1, "2026-11-20T10:00:00Z", f"p{i}") for i in range(len(values))]
    for wire, value in zip(batch, values, strict=True):
        wire["properties"] = value
    del batch[0]["properties"]  # absent, rather than null
    batch.append(event(team_id, sku, 1, "2026-11-20T10:00:00Z", "null"))
    batch[-1]["properties"] = None
    result = api.ingest(batch)
    assert result["accepted"] == 3, result
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [
        (i, "invalid_properties") for i in range(2, 7)
    ]


def test_groupable_values_of_four_byte_characters_are_rejected_alone(api: Api) -> None:
    """PostgreSQL refuses a B-tree entry over 2,704 bytes: 600 characters of 4 bytes each in
    the rollups' key pass the 1,000-character limit but not the 2,000-byte one."""
    sku = unique_sku()
    api.set_price(sku, "0.000001")
    team_id = api.create_team()
    wide = "\U00020000" * 200  # CJK Extension B: 4 bytes each in UTF-8
    names = ["apiKeyId", "model", "clusterName"]
    result = api.ingest(
        [
            event(team_id, sku, 1, "2026-11-20T10:00:00Z", "ok", apiKeyId=wide),
            event(team_id, sku, 1, "2026-11-20T10:00:00Z", "too-wide", **{n: wide for n in names}),
        ]
    )
    assert result["accepted"] == 1, result
    [rejected] = result["rejected"]
    assert (rejected["eventId"], rejected["code"]) == ("too-wide", "invalid_properties")


def _body_with(api: Api, team_id: str, sku: str, raw_event_tail: bytes) -> Any:
    """A one-event batch whose event object ends with ``raw_event_tail`` (raw JSON bytes)."""
    good = event(team_id, sku, 1, "2026-11-20T10:00:00Z")
    head = orjson.dumps({"events": [good]})[: -len(b"}]}")]
    return api.admin(
        "POST",
        "/admin/v1/usage-events",
        content=head + raw_event_tail + b"}]}",
        headers={**api.operator, "Content-Type": "application/json"},
    )


def test_a_body_is_json_or_not_whatever_its_events_look_like(api: Api) -> None:
    """Well-typed batches are decoded by a faster parser than the others; both must refuse the
    same bodies: invalid UTF-8 or absurd nesting in a field Billfold does not read is still not
    JSON it accepts (400, nothing stored), and an unknown well-formed field is ignored."""
    sku = unique_sku()
    api.set_price(sku, "0.000001")
    team_id = api.create_team()
    deep = b"[" * 1100 + b"]" * 1100
    for tail in (b',"note":"\xff"', b',"note":' + deep, b',"note":' + b"[" * 300 + b"]" * 300):
        response = _body_with(api, team_id, sku, tail)
        assert response.status_code == 400, (tail[:20], response.text)
        assert response.json()["code"] == "invalid_json"
    nested = b'{"x":' + deep + b',"events":[]}'
    response = api.admin(
        "POST",
        "/admin/v1/usage-events",
        content=nested,
        headers={**api.operator, "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    ok = _body_with(api, team_id, sku, b',"note":"fine"')
    assert ok.status_code == 200 and ok.json()["accepted"] == 1, ok.text
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        stored = session.scalar(
            select(func.count())
            .select_from(UsageEvent)
            .where(UsageEvent.team_id == uuid.UUID(team_id))
        )
    assert stored == 1  # the refused bodies stored nothing
