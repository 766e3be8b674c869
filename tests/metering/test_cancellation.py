"""Canceling usage events (``POST /admin/v1/usage-events/cancel``), on SQLite and PostgreSQL.

These tests live in 2044 (the clock frozen there), a time no other test uses: one of them closes a
month, which closes it for every team.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from typer.testing import CliRunner

from billfold.cli import app
from billfold.config import Settings, get_settings
from billfold.cycles.models import BillingCycle, CycleLine
from billfold.kit.clock import frozen
from billfold.metering.cancellation import cancellation_service
from billfold.metering.models import UsageCancellation, UsageEvent
from billfold.metering.service import metering_service
from tests.conftest import Api, event, unique_sku
from tests.metering.test_analytics import request_body
from tests.metering.test_rebuild import _rollup_rows

NOW = datetime(2044, 5, 20, 12, 0, tzinfo=UTC)
PRICE = "0.01"  # $0.01 a unit: 100 units are $1


def _cancel(api: Api, items: list[Any], reason: str = "refund") -> dict[str, Any]:
    # json.dumps escapes a lone surrogate (which httpx's own encoder cannot send)
    body = json.dumps({"events": items, "reason": reason})
    headers = {**api.operator, "Content-Type": "application/json"}
    response = api.admin("POST", "/admin/v1/usage-events/cancel", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _items(team_id: str, *event_ids: str) -> list[dict[str, str]]:
    return [{"teamId": team_id, "eventId": e} for e in event_ids]


def _usage(api: Api, team_id: str, headers: dict[str, str], unit: str) -> dict[str, float]:
    """usd by model over May 10-11, summed over the buckets."""
    body = request_body("2044-05-10 00:00:00", "2044-05-12 00:00:00", unit=unit, group_by=["model"])
    response = api.client.post(f"/v1/billing/teams/{team_id}/usage", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return {
        s["group"][0]: round(sum(p["values"][0] for p in s["dataPoints"]), 6)
        for s in response.json()["timeSeries"]
    }


def _billing(api: Api, team_id: str, headers: dict[str, str]) -> tuple[str, str, list[Any]]:
    preview = api.client.get(
        f"/v1/billing/teams/{team_id}/postpaid/invoice/preview", headers=headers
    ).json()["coreInvoice"]
    status = api.admin("GET", f"/admin/v1/teams/{team_id}/spend-status").json()
    lines = sorted((line["numUnits"], line["amount"]) for line in preview["lines"])
    return preview["amountBeforeVat"], status["cycleSpend"]["val"], lines


def _events(team_id: str, sku: str) -> list[dict[str, Any]]:
    return [
        event(team_id, sku, 100, "2044-05-10T10:00:00Z", "a", model="m1"),
        event(team_id, sku, 250, "2044-05-10T10:07:00Z", "b", model="m1"),
        event(team_id, sku, 1000, "2044-05-10T23:59:59.9Z", "c", model="m2"),
        event(team_id, sku, 2000, "2044-05-11T00:00:00Z", "d", model="m2"),
        event(team_id, sku, 3, "2044-05-11T08:00:00Z", "e", model="m1"),
    ]


def test_canceled_events_stop_counting_everywhere(api: Api) -> None:
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
        team_id, headers = api.team_with_key()
        twin_id, twin_headers = api.team_with_key()
        events = _events(team_id, sku)
        assert api.ingest(events)["accepted"] == 5
        # the twin team gets only the events that will be left: what the first must look like
        kept = [e for e in _events(twin_id, sku) if e["eventId"] not in ("b", "c")]
        assert api.ingest(kept)["accepted"] == 3
        assert _usage(api, team_id, headers, "TIME_UNIT_DAY") == {"m2": 30.0, "m1": 3.53}
        assert _billing(api, team_id, headers)[:2] == ("3353", "3353")

        result = _cancel(api, _items(team_id, "b", "c"), reason="failed requests")
        assert result == {"canceled": 2, "alreadyCanceled": 0, "rejected": []}

        for unit in ("TIME_UNIT_DAY", "TIME_UNIT_HOUR", "TIME_UNIT_MINUTE"):
            assert _usage(api, team_id, headers, unit) == {"m2": 20.0, "m1": 1.03}, unit
        assert _billing(api, team_id, headers) == _billing(api, twin_id, twin_headers)
        assert _billing(api, team_id, headers)[:2] == ("2103", "2103")
        assert _rollup_rows(api, team_id) == _rollup_rows(api, twin_id)

        # the ids stay used, and canceling again changes nothing
        again = api.ingest([e for e in events if e["eventId"] == "b"])
        assert (again["accepted"], again["duplicates"]) == (0, 1)
        repeat = _cancel(api, _items(team_id, "b", "c", "c"))
        assert repeat == {"canceled": 0, "alreadyCanceled": 3, "rejected": []}
        assert _billing(api, team_id, headers)[:2] == ("2103", "2103")

        with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            records = session.scalars(
                select(UsageCancellation).where(UsageCancellation.team_id == uuid.UUID(team_id))
            ).all()
            assert sorted((r.event_id, r.quantity, r.reason) for r in records) == [
                ("b", 250, "failed requests"),
                ("c", 1000, "failed requests"),
            ]


def test_each_item_is_answered_alone(api: Api) -> None:
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
        team_id, headers = api.team_with_key()
        other_id = api.create_team()
        assert api.ingest(_events(team_id, sku))["accepted"] == 5
        before = _billing(api, team_id, headers)
        result = _cancel(
            api,
            [
                "not an object",
                {"teamId": "nope", "eventId": "a"},
                {"teamId": team_id, "eventId": ""},
                {"teamId": team_id, "eventId": "no-such-event"},
                {"teamId": other_id, "eventId": "a"},  # another team's id space
                {"teamId": team_id, "eventId": "e"},
            ],
        )
        assert result["canceled"] == 1 and result["alreadyCanceled"] == 0
        assert [(r["index"], r["code"]) for r in result["rejected"]] == [
            (0, "invalid_event"),
            (1, "invalid_team_id"),
            (2, "invalid_event_id"),
            (3, "not_found"),
            (4, "not_found"),
        ]
        assert _billing(api, team_id, headers)[:2] == (str(int(before[0]) - 3), "3350")

        for body, field in (
            ({"events": "a"}, "events"),
            ({"events": [], "reason": "x" * 501}, "reason"),
            ({}, "events"),
        ):
            response = api.admin("POST", "/admin/v1/usage-events/cancel", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["field"] == field
        too_many = {"events": _items(team_id, *(f"x{i}" for i in range(10_001)))}
        response = api.admin("POST", "/admin/v1/usage-events/cancel", json=too_many)
        assert response.status_code == 400 and response.json()["code"] == "batch_too_large"
        assert _billing(api, team_id, headers)[:2] == (str(int(before[0]) - 3), "3350")


def test_repeats_and_unstorable_ids_get_answers_of_their_own(api: Api) -> None:
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
        team_id = api.create_team()
        assert api.ingest(_events(team_id, sku))["accepted"] == 5
        result = _cancel(api, _items(team_id, "zz", "a", "zz", "a", "\ud800x"))
        assert (result["canceled"], result["alreadyCanceled"]) == (1, 1)
        assert [(r["index"], r["code"]) for r in result["rejected"]] == [
            (0, "not_found"),
            (2, "not_found"),
            (4, "invalid_event_id"),  # a lone surrogate: no database can store it
        ]


def test_an_event_canceled_compacted_sent_again_can_be_canceled_again(api: Api) -> None:
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
        team_id = api.create_team()
        events = _events(team_id, sku)
        assert api.ingest(events)["accepted"] == 5
        assert _cancel(api, _items(team_id, "a"))["canceled"] == 1
        with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            # what compaction does once the event is past the retention window
            session.execute(delete(UsageEvent).where(UsageEvent.event_id == "a"))
            session.commit()
        assert api.ingest(events[:1])["accepted"] == 1  # its id is free again
        assert _cancel(api, _items(team_id, "a"))["canceled"] == 1
        with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            records = session.scalars(
                select(UsageCancellation.event_id).where(
                    UsageCancellation.team_id == uuid.UUID(team_id)
                )
            ).all()
        assert records == ["a", "a"]


def test_usage_counted_by_a_booked_credit_expiry_is_not_canceled(api: Api) -> None:
    """Canceling usage that an expired grant's booked expiry counted would hand the expired
    credit back: refused. Usage the expiry did not count (ingested after it) is canceled."""
    sku = unique_sku()
    with frozen(datetime(2044, 5, 1, tzinfo=UTC)):
        api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
        team_id, headers = api.team_with_key()
        grant = {"amount": "1000", "reason": "promo", "expiresAt": "2044-05-15T00:00:00Z"}
        response = api.admin("POST", f"/admin/v1/teams/{team_id}/credits", json=grant)
        assert response.status_code == 201, response.text
    with frozen(datetime(2044, 5, 12, tzinfo=UTC)):
        assert (
            api.ingest([event(team_id, sku, 80_000, "2044-05-10T10:00:00Z", "a")])["accepted"] == 1
        )
    with frozen(NOW):
        # reading the position books the expiry (the grant was used up: nothing left to expire)
        assert api.admin("GET", f"/admin/v1/teams/{team_id}/spend-status").status_code == 200
    with frozen(NOW + timedelta(minutes=1)):
        late = event(team_id, sku, 100, "2044-05-11T10:00:00Z", "late")
        assert api.ingest([late])["accepted"] == 1
        balance = f"/v1/billing/teams/{team_id}/prepaid/balance"
        before = api.client.get(balance, headers=headers).json()["total"]
        result = _cancel(api, _items(team_id, "a", "late"))
        assert result["canceled"] == 1
        assert [(r["eventId"], r["code"]) for r in result["rejected"]] == [("a", "credit_expired")]
        assert api.client.get(balance, headers=headers).json()["total"] == before


def test_a_closed_cycle_is_not_changed(api: Api) -> None:
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
        team_id = api.create_team()
        april = event(team_id, sku, 100, "2044-04-10T10:00:00Z", "april")
        assert (
            api.ingest([april, event(team_id, sku, 7, "2044-05-10T10:00:00Z", "may")])["accepted"]
            == 2
        )
        closed = api.admin(
            "POST", "/admin/v1/billing-cycles/close", json={"year": 2044, "month": 4}
        )
        assert closed.status_code == 200, closed.text
        result = _cancel(api, _items(team_id, "april", "may"))
        assert result["canceled"] == 1
        assert [(r["eventId"], r["code"]) for r in result["rejected"]] == [
            ("april", "cycle_closed")
        ]
        with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            spend = dict(
                session.execute(
                    select(BillingCycle.month, BillingCycle.spend_cents).where(
                        BillingCycle.team_id == uuid.UUID(team_id)
                    )
                ).all()
            )
        assert spend == {4: 100}  # May had no usage left: no cycle, as if never used


def test_a_day_whose_raw_events_are_gone_is_not_recomputed(api: Api) -> None:
    sku = unique_sku()
    with frozen(NOW):
        api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
        team_id, headers = api.team_with_key()
        assert api.ingest(_events(team_id, sku))["accepted"] == 5
        with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            session.execute(delete(UsageEvent).where(UsageEvent.event_id == "a"))
            session.commit()
        before = _billing(api, team_id, headers)
        result = _cancel(api, _items(team_id, "b", "d"))
        assert result["canceled"] == 1  # d, on May 11
        assert [(r["eventId"], r["code"]) for r in result["rejected"]] == [
            ("b", "raw_events_incomplete")
        ]
        assert _billing(api, team_id, headers)[:2] == (
            str(int(before[0]) - 2000),
            str(int(before[1]) - 2000),
        )


def test_cli_cancel(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    get_settings.cache_clear()
    sku = unique_sku()
    try:
        with frozen(NOW):
            api.set_price(sku, PRICE, "2044-01-01T00:00:00Z")
            team_id = api.create_team()
            assert api.ingest(_events(team_id, sku))["accepted"] == 5
            runner = CliRunner()
            done = runner.invoke(
                app, ["usage", "cancel", team_id, "a", "zz", "--reason", "test", "--json"]
            )
            assert done.exit_code == 3, done.output
            report = json.loads(done.stdout)
            assert report["canceled"] == 1 and report["rejected"][0]["code"] == "not_found"
            again = runner.invoke(app, ["usage", "cancel", team_id, "a"])
            assert again.exit_code == 0 and "1 canceled before" in again.output
    finally:
        get_settings.cache_clear()


# --- invariants ---------------------------------------------------------------------------------

_PRICED: dict[str, list[str]] = {}


def _skus(api: Api) -> list[str]:
    """Two SKUs, one repriced mid-May."""
    if api.backend not in _PRICED:
        a, b = unique_sku("cancel"), unique_sku("cancel")
        api.set_price(a, "0.0000031", "2044-01-01T00:00:00Z")
        api.set_price(a, "0.0000047", "2044-05-11T06:00:00Z")
        api.set_price(b, "0.013", "2044-01-01T00:00:00Z")
        _PRICED[api.backend] = [a, b]
    return _PRICED[api.backend]


def _aggregates(api: Api, team_id: str) -> dict[str, Any]:
    tid = uuid.UUID(team_id)
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        lines = sorted(
            (c.month, c.price_version_id, c.quantity, c.events, c.amount_cents)
            for c in session.scalars(select(CycleLine).where(CycleLine.team_id == tid))
        )
        spend = session.scalar(
            select(BillingCycle.spend_cents).where(
                BillingCycle.team_id == tid, BillingCycle.month == 5
            )
        )
    return {**_rollup_rows(api, team_id), "lines": lines, "spend": spend or 0}


SPECS = st.lists(
    st.tuples(
        st.integers(0, 3 * 86_400 * 10**6 - 1),  # microseconds after 2044-05-10 00:00
        st.integers(0, 10**7),
        st.integers(0, 1),  # which SKU
        st.sampled_from([{}, {"model": "m1"}, {"model": "m2", "region": "eu"}, {"region": 1.5}]),
        st.booleans(),  # canceled?
    ),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=SPECS, regroup=st.booleans())
def test_canceling_is_as_if_the_events_never_came(
    api: Api, specs: list[tuple[int, int, int, dict[str, Any], bool]], regroup: bool
) -> None:
    """Usage ingested, some of it canceled (with the groupable properties changed in between, or
    not), leaves every rollup table, every cycle line and the cycle's spend as they are for a
    team that was sent only the events left."""
    after = "apiKeyId,model,clusterName,region" if regroup else "apiKeyId,model,clusterName"
    with frozen(NOW):
        skus = _skus(api)
        canceled, direct = api.create_team(), api.create_team()
        start = datetime(2044, 5, 10, tzinfo=UTC)

        def events(team_id: str, *, all_of_them: bool) -> list[dict[str, Any]]:
            return [
                {
                    "eventId": f"e{i}",
                    "teamId": team_id,
                    "sku": skus[sku],
                    "quantity": quantity,
                    "timestamp": (start + timedelta(microseconds=offset)).isoformat(),
                    "properties": properties,
                }
                for i, (offset, quantity, sku, properties, cancel) in enumerate(specs)
                if all_of_them or not cancel
            ]

        sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
        for team_id, groupable, everything in ((canceled, None, True), (direct, after, False)):
            batch = events(team_id, all_of_them=everything)
            ingest_settings = Settings(
                database_url=api.url, **({"groupable_properties": groupable} if groupable else {})
            )
            with sessions() as session:
                result = metering_service.ingest(session, ingest_settings, batch)
                session.commit()
            assert result.accepted == len(batch), result.rejected
        gone = [{"teamId": canceled, "eventId": f"e{i}"} for i, s in enumerate(specs) if s[4]]
        with sessions() as session:
            done = cancellation_service.cancel(
                session, Settings(database_url=api.url, groupable_properties=after), gone, "t"
            )
            session.commit()
        assert (done.canceled, done.rejected) == (len(gone), [])
        ours, theirs = _aggregates(api, canceled), _aggregates(api, direct)
        if regroup:
            # Only the days it touched were recomputed with the new setting (the others wait
            # for billfold usage rebuild-rollups); billing's tables are exact everywhere.
            touched = {(start + timedelta(microseconds=s[0])).date() for s in specs if s[4]}
            for name in [n for n in ours if n.startswith("rollups ")]:
                ours[name] = [row for row in ours[name] if row[0].date() in touched]
                theirs[name] = [row for row in theirs[name] if row[0].date() in touched]
        assert ours == theirs


def test_cancel_beside_concurrent_ingestion(postgres_api: Api) -> None:
    """PostgreSQL: cancellations and ingestion batches of the same team and month at once
    neither deadlock nor lose an update: at the end the team looks as if it had been sent only
    the events that were not canceled."""
    api = postgres_api
    with frozen(NOW):
        skus = _skus(api)
        team_id, twin_id = api.create_team(), api.create_team()
        start = datetime(2044, 5, 10, tzinfo=UTC)

        def batch(team: str, n: int) -> list[dict[str, Any]]:
            return [
                event(
                    team,
                    skus[i % 2],
                    1000 + i,
                    (start + timedelta(minutes=7 * (n * 50 + i))).isoformat(),
                    f"b{n}-{i}",
                    model=f"m{i % 3}",
                )
                for i in range(50)
            ]

        first = [e for n in range(4) for e in batch(team_id, n)]
        assert api.ingest(first)["accepted"] == 200
        doomed = [e["eventId"] for e in first if int(e["eventId"].split("-")[1]) % 3 == 0]
        errors: list[BaseException] = []

        def run(work: Any) -> None:
            try:
                work()
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(lambda n=n: api.ingest(batch(team_id, n)),))
            for n in range(4, 10)
        ] + [
            threading.Thread(
                target=run, args=(lambda part=part: _cancel(api, _items(team_id, *part)),)
            )
            for part in (doomed[: len(doomed) // 2], doomed[len(doomed) // 2 :])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        left = [e for n in range(10) for e in batch(twin_id, n) if e["eventId"] not in set(doomed)]
        assert api.ingest(left)["accepted"] == len(left)
        assert _aggregates(api, team_id) == _aggregates(api, twin_id)
