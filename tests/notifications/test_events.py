"""Events written in the transaction of their cause and delivered to a real loopback receiver:
``invoice.finalized`` / ``invoice.paid`` / ``invoice.payment_failed`` (with the invoice as the
Billing Management API lists it) and ``billing_cycle.closed``, once each, on both databases.

Closing a month closes it for the whole database: this file uses months of 2034 only."""

from __future__ import annotations

import time
from typing import Any

from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, CARD_DECLINED
from tests.conftest import Api, event, frozen_at, unique_sku
from tests.notifications.conftest import Hooks, of_team, verify
from tests.notifications.receiver import Received, receiver

INVOICE_EVENTS = ["invoice.finalized", "invoice.paid", "invoice.payment_failed"]


def close(api: Api, year: int, month: int) -> dict[str, Any]:
    response = api.admin(
        "POST", "/admin/v1/billing-cycles/close", json={"year": year, "month": month}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def listed_invoices(api: Api, team_id: str, headers: dict[str, str]) -> list[Any]:
    response = api.client.get(f"/v1/billing/teams/{team_id}/invoices", headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["invoices"])


def of_cycle(year: int, month: int) -> Any:
    def match(r: Received) -> bool:
        return r.json["type"] == "billing_cycle.closed" and r.json["data"]["billingCycle"] == {
            "year": year,
            "month": month,
        }

    return match


def test_cycle_close_announces_each_invoice_and_the_month_once(api: Api, hooks: Hooks) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2034-01-01T00:00:00Z")
    with receiver() as rx:
        endpoint = hooks.create(rx.url, [*INVOICE_EVENTS, "billing_cycle.closed"])
        with frozen_at("2034-01-20T12:00:00"):
            good, good_headers = api.team_with_key()
            api.add_card(good, CARD_ALWAYS_SUCCEEDS)
            bad, bad_headers = api.team_with_key()
            api.add_card(bad, CARD_DECLINED)
            api.ingest(
                [
                    event(good, sku, 1200, "2034-01-05T10:00:00Z"),
                    event(bad, sku, 300, "2034-01-06T10:00:00Z"),
                ]
            )
        with frozen_at("2034-02-03T00:00:00"):
            first = close(api, 2034, 1)
            again = close(api, 2034, 1)  # idempotent: announces nothing twice
        assert first == again

        good_events = rx.wait(2, of_team(good))
        bad_events = rx.wait(2, of_team(bad))
        (closed,) = rx.wait(1, of_cycle(2034, 1))
        time.sleep(0.7)
        assert len(rx.messages(of_team(good))) == 2
        assert len(rx.messages(of_team(bad))) == 2
        assert len(rx.messages(of_cycle(2034, 1))) == 1

        # the same frozen time for both: they may arrive in either order
        bodies = {b["type"]: b for b in (verify(endpoint["secret"], m) for m in good_events)}
        assert set(bodies) == {"invoice.finalized", "invoice.paid"}
        finalized = bodies["invoice.finalized"]["data"]["invoice"]
        paid = bodies["invoice.paid"]["data"]["invoice"]
        (listed,) = listed_invoices(api, good, good_headers)
        assert paid == listed  # as the Billing Management API lists it
        assert finalized["invoiceId"] == listed["invoiceId"]
        assert finalized["invoiceStatus"] == "PENDING" and finalized["chargerAttempts"] == []
        assert paid["invoiceStatus"] == "PAID"
        assert paid["total"] == "1200"

        bad_bodies = {b["type"]: b for b in (verify(endpoint["secret"], m) for m in bad_events)}
        assert set(bad_bodies) == {"invoice.finalized", "invoice.payment_failed"}
        (bad_listed,) = listed_invoices(api, bad, bad_headers)
        assert bad_bodies["invoice.payment_failed"]["data"]["invoice"] == bad_listed
        assert bad_listed["invoiceStatus"] == "FAILED"

        cycle = verify(endpoint["secret"], closed)
        assert "teamId" not in cycle["data"]
        assert cycle["data"]["totals"]["invoices"] == first["totals"]["invoices"]
        assert cycle["data"]["totals"]["total"] == first["totals"]["total"]
        assert cycle["data"]["closeTime"].startswith("2034-02-03")
