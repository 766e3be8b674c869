"""Cycle close: one invoice per team and month, numbered without gaps, charged once.

Each test closes months no other test uses (closing is global to a database).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from billfold.cycles.models import ClosedPeriod
from billfold.invoicing.models import Invoice
from billfold.payments.sandbox import SandboxProvider
from tests.conftest import Api, event, unique_sku
from tests.invoicing.conftest import (
    close,
    frozen_at,
    grant,
    invoices,
    preview,
    spend_entries,
    spend_status,
    use_settings,
)


def _number(invoice_number: str) -> int:
    return int(invoice_number.removeprefix("BF-"))


def _team_with_usage(
    api: Api, sku: str, cents: int, ts: str, card: str | None = "4242424242424242"
) -> tuple[str, dict[str, str]]:
    """A team with a card and ``cents`` of usage at $0.01 per unit."""
    team_id, headers = api.team_with_key()
    if card:
        api.add_card(team_id, card)
    assert api.ingest([event(team_id, sku, cents, ts)])["accepted"] == 1
    return team_id, headers


def test_close_twice_one_invoice_one_charge_gapless(api: Api, sandbox: SandboxProvider) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2031-01-20T12:00:00"):
        a, a_headers = _team_with_usage(api, sku, 1500, "2031-01-05T10:00:00Z")
        grant(api, a, 500)  # pays part
        b, _ = _team_with_usage(api, sku, 300, "2031-01-06T10:00:00Z")  # no credit
        c, c_headers = _team_with_usage(api, sku, 700, "2031-01-07T10:00:00Z")
        grant(api, c, 10_000)  # pays all
        api.create_team("no usage")

    charged_before = sandbox.total_charged()
    with frozen_at("2031-02-03T00:00:00"):
        first = close(api, 2031, 1)
        second = close(api, 2031, 1)
        a_preview = preview(api, a_headers, a)
        c_preview = preview(api, c_headers, c)
        c_status = spend_status(api, c)

    assert first == second  # the second run finalized and charged nothing
    assert (first["year"], first["month"]) == (2031, 1)
    by_team = {i["teamId"]: i for i in first["invoices"]}
    assert set(by_team) == {a, b, c}
    numbers = sorted(_number(i["invoiceNumber"]) for i in first["invoices"])
    assert numbers == list(range(numbers[0], numbers[0] + 3))  # gapless

    assert by_team[a] | {"invoiceId": "", "invoiceNumber": "", "teamId": ""} == {
        "teamId": "",
        "invoiceId": "",
        "invoiceNumber": "",
        "invoiceStatus": "PAID",
        "usage": "1500",
        "creditsApplied": "500",
        "subtotal": "1000",
        "tax": "0",
        "total": "1000",
    }
    assert by_team[b]["invoiceStatus"] == "PAID" and by_team[b]["total"] == "300"
    assert by_team[c]["invoiceStatus"] == "WILL_NEVER_BE_CHARGED"
    assert (by_team[c]["creditsApplied"], by_team[c]["total"]) == ("700", "0")
    totals = first["totals"]
    assert totals["invoices"] == 3
    assert (totals["usage"], totals["creditsApplied"], totals["total"]) == ("2500", "1200", "1300")
    assert (totals["paid"], totals["failed"], totals["pending"]) == ("1300", "0", "0")
    assert totals["byStatus"] == {"PAID": 2, "WILL_NEVER_BE_CHARGED": 1}

    # Charged exactly once per invoice, with the invoice id as the idempotency key.
    assert sandbox.total_charged() - charged_before == 1300
    charge = sandbox.find_charge(by_team[a]["invoiceId"])
    assert charge is not None and charge.amount == 1000
    assert sandbox.find_charge(by_team[c]["invoiceId"]) is None

    # The credit-paid share became an immutable SPEND entry, once.
    [a_spend] = spend_entries(api, a)
    assert (a_spend.credit_cents, a_spend.idempotency_key) == (-500, "spend:2031-01")
    assert a_spend.invoice_id == by_team[a]["invoiceId"]
    assert [e.credit_cents for e in spend_entries(api, c)] == [-700]
    assert spend_entries(api, b) == []

    # The closed cycle is gone from the position; credit left is unchanged by the close.
    assert a_preview["coreInvoice"]["prepaidCredits"] == {"val": "0"}
    assert c_preview["coreInvoice"]["prepaidCredits"] == {"val": "-9300"}
    assert c_preview["billingCycle"] == {"year": 2031, "month": 2}
    assert c_status["prepaidRemaining"] == {"val": "9300"}

    [invoice] = invoices(api, a_headers, a)
    assert invoice["invoiceStatus"] == "PAID"
    assert invoice["chargerAttempts"] == [
        {
            "ticket": 0,
            "successful": True,
            "paymentMethodId": invoice["chargerAttempts"][0]["paymentMethodId"],
        }
    ]
    assert invoice["chargerAttempts"][0]["paymentMethodId"].startswith("pm_")
    assert invoice["monthly"]["prepaidTokensToSpend"] == {"val": "500"}
    lines_total = sum(int(line["amount"]) for line in invoice["lines"])
    assert lines_total - int(invoice["monthly"]["prepaidTokensToSpend"]["val"]) == int(
        invoice["subtotal"]
    )
    assert int(invoice["total"]) == int(invoice["subtotal"]) + int(invoice["tax"])


def test_current_or_future_month_is_refused(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2031-02-10T00:00:00"):
        team_id, _ = _team_with_usage(api, sku, 10, "2031-02-09T00:00:00Z")
        for year, month in ((2031, 2), (2031, 3), (2040, 1)):
            response = api.admin(
                "POST", "/admin/v1/billing-cycles/close", json={"year": year, "month": month}
            )
            assert response.status_code == 400
            assert response.json()["code"] == "cycle_not_ended"
        # nothing was closed: the month still takes usage
        assert api.ingest([event(team_id, sku, 1, "2031-02-09T01:00:00Z")])["accepted"] == 1
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert session.get(ClosedPeriod, (2031, 2)) is None
        assert session.get(ClosedPeriod, (2031, 3)) is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"year": 2031},
        {"month": 1},
        {"year": 2031, "month": 13},
        {"year": 2031, "month": 0},
        {"year": "x", "month": 1},
        {"year": 1999, "month": 1},
        {"year": 2031, "month": 1.5},
    ],
)
def test_bad_close_requests(api: Api, body: dict[str, Any]) -> None:
    response = api.admin("POST", "/admin/v1/billing-cycles/close", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_argument"
    unauthorized = api.client.post(
        "/admin/v1/billing-cycles/close", json={"year": 2020, "month": 1}
    )
    assert unauthorized.status_code == 401


def test_declined_cards_and_missing_method_then_retry(api: Api, sandbox: SandboxProvider) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2031-03-15T12:00:00"):
        declined, d_headers = _team_with_usage(
            api, sku, 400, "2031-03-01T00:00:00Z", card="4000000000000002"
        )
        poor, _ = _team_with_usage(api, sku, 500, "2031-03-02T00:00:00Z", card="4000000000009995")
        cardless, _ = _team_with_usage(api, sku, 600, "2031-03-03T00:00:00Z", card=None)

    with frozen_at("2031-04-01T06:00:00"):
        summary = close(api, 2031, 3)
        again = close(api, 2031, 3)
    assert summary == again
    by_team = {i["teamId"]: i for i in summary["invoices"]}
    assert {i["invoiceStatus"] for i in by_team.values()} == {"FAILED"}
    assert summary["totals"]["failed"] == "1500" and summary["totals"]["paid"] == "0"

    [d_invoice] = invoices(api, d_headers, declined)
    [attempt] = d_invoice["chargerAttempts"]
    assert attempt["ticket"] == 0 and attempt["successful"] is False
    assert attempt["paymentMethodId"].startswith("pm_")
    # The customer API sends the upstream fields only; why it failed is the operator's to see.
    assert set(attempt) == {"ticket", "successful", "paymentMethodId"}

    poor_invoice = api.admin("POST", f"/admin/v1/invoices/{by_team[poor]['invoiceId']}/charge")
    assert poor_invoice.status_code == 200  # retried once more: declined again, recorded
    attempts = poor_invoice.json()["chargerAttempts"]
    assert [(a["ticket"], a["successful"], a["failureCode"]) for a in attempts] == [
        (0, False, "insufficient_funds"),
        (1, False, "insufficient_funds"),
    ]
    assert all(a["failureMessage"] for a in attempts)

    cardless_id = by_team[cardless]["invoiceId"]
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        stored = session.get(Invoice, cardless_id)
        assert stored is not None
        assert stored.charge_attempts[0]["failureCode"] == "no_default_payment_method"
        assert stored.charge_attempts[0]["paymentMethodId"] == ""

    # A working card, then the operator retries: paid on a new attempt, charged once.
    api.add_card(declined, "4242424242424242")
    before = sandbox.total_charged()
    with frozen_at("2031-04-02T06:00:00"):
        retried = api.admin("POST", f"/admin/v1/invoices/{d_invoice['invoiceId']}/charge")
    assert retried.status_code == 200
    body = retried.json()
    assert body["invoiceStatus"] == "PAID"
    assert [(a["ticket"], a["successful"]) for a in body["chargerAttempts"]] == [
        (0, False),
        (1, True),
    ]
    assert body["chargerAttempts"][0]["failureCode"] == "card_declined"
    assert "failureCode" not in body["chargerAttempts"][1]
    assert "failureMessage" not in body["chargerAttempts"][1]
    [listed] = invoices(api, d_headers, declined)  # the customer's view of the same invoice
    assert [set(a) for a in listed["chargerAttempts"]] == [
        {"ticket", "successful", "paymentMethodId"}
    ] * 2
    assert sandbox.total_charged() - before == 400
    paid_again = api.admin("POST", f"/admin/v1/invoices/{d_invoice['invoiceId']}/charge")
    assert paid_again.status_code == 409 and paid_again.json()["code"] == "invoice_not_chargeable"
    assert sandbox.total_charged() - before == 400
    missing = api.admin("POST", "/admin/v1/invoices/inv_nope/charge")
    assert missing.status_code == 404


def test_charge_timeout_is_resolved_by_the_next_run(api: Api, sandbox: SandboxProvider) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2031-04-15T12:00:00"):
        team_id, headers = _team_with_usage(
            api, sku, 800, "2031-04-01T00:00:00Z", card="4000000000000119"
        )
    before = sandbox.total_charged()
    with frozen_at("2031-05-01T06:00:00"):
        first = close(api, 2031, 4)
        assert first["invoices"][0]["invoiceStatus"] == "PENDING"  # the answer was lost
        assert invoices(api, headers, team_id)[0]["chargerAttempts"] == []
        second = close(api, 2031, 4)
    assert second["invoices"][0]["invoiceStatus"] == "PAID"
    [invoice] = invoices(api, headers, team_id)
    assert [(a["ticket"], a["successful"]) for a in invoice["chargerAttempts"]] == [(0, True)]
    assert sandbox.total_charged() - before == 800  # charged once


def test_late_event_for_a_closed_month_is_rejected(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2031-05-20T12:00:00"):
        team_id, headers = _team_with_usage(api, sku, 100, "2031-05-10T00:00:00Z")
    with frozen_at("2031-06-01T10:00:00"):
        close(api, 2031, 5)
        result = api.ingest(
            [
                event(team_id, sku, 50, "2031-05-31T23:59:59Z", "late"),
                event(team_id, sku, 50, "2031-06-01T09:00:00Z", "june"),
            ]
        )
        assert result["accepted"] == 1
        assert [(r["eventId"], r["code"]) for r in result["rejected"]] == [("late", "cycle_closed")]
        [invoice] = invoices(
            api, headers, team_id, **{"billingCycle.year": 2031, "billingCycle.month": 5}
        )
        assert invoice["total"] == "100"
        assert preview(api, headers, team_id)["coreInvoice"]["amountBeforeVat"] == "50"
        # a price version inside the closed month is refused too
        response = api.admin(
            "PUT",
            f"/admin/v1/prices/{sku}",
            json={
                "description": "x",
                "unitType": "y",
                "unitPrice": "1",
                "effectiveFrom": "2031-05-30T00:00:00Z",
            },
        )
        assert response.status_code == 409 and response.json()["code"] == "cycle_closed"


def test_vat_on_the_invoice_by_billing_country(
    api: Api, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProvider
) -> None:
    from tests.invoicing.conftest import set_country

    use_settings(api, monkeypatch, vat_rates="DE=19")
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2031-10-20T12:00:00"):
        de, de_headers = _team_with_usage(api, sku, 250, "2031-10-02T00:00:00Z")
        set_country(api, de_headers, de, "DE")
        grant(api, de, 200)
        us, us_headers = _team_with_usage(api, sku, 250, "2031-10-02T00:00:00Z")
        set_country(api, us_headers, us, "US")
        expected_preview = preview(api, de_headers, de)["coreInvoice"]
    with frozen_at("2031-11-02T00:00:00"):
        close(api, 2031, 10)
    [de_invoice] = invoices(api, de_headers, de)
    assert (de_invoice["subtotal"], de_invoice["tax"], de_invoice["total"]) == ("50", "10", "60")
    assert de_invoice["tax"] == expected_preview["vatCost"]  # preview and invoice agree
    assert de_invoice["subtotal"] == str(
        int(expected_preview["amountBeforeVat"])
        - abs(int(expected_preview["prepaidCreditsUsed"]["val"]))
    )
    assert sandbox.find_charge(de_invoice["invoiceId"]).amount == 60  # type: ignore[union-attr]
    [us_invoice] = invoices(api, us_headers, us)
    assert (us_invoice["subtotal"], us_invoice["tax"], us_invoice["total"]) == ("250", "0", "250")


def test_finalized_invoices_cannot_change(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2031-11-10T12:00:00"):
        team_id, headers = _team_with_usage(api, sku, 100, "2031-11-02T00:00:00Z", card=None)
    with frozen_at("2031-12-01T06:00:00"):
        close(api, 2031, 11)
    [invoice] = invoices(api, headers, team_id)
    engine = api.client.app.state.engine  # type: ignore[attr-defined]
    for statement in (
        "UPDATE invoices SET total_cents = 1 WHERE id = :id",
        "UPDATE invoice_lines SET amount_cents = 1 WHERE invoice_id = :id",
        "DELETE FROM invoice_lines WHERE invoice_id = :id",
        "DELETE FROM invoices WHERE id = :id",
    ):
        with pytest.raises((DBAPIError, IntegrityError)), engine.begin() as conn:
            conn.execute(text(statement), {"id": invoice["invoiceId"]})
    # the payment side may move
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE invoices SET status = 'FAILED' WHERE id = :id"),
            {"id": invoice["invoiceId"]},
        )
    assert invoices(api, headers, team_id)[0]["total"] == "100"


@pytest.mark.postgres_only
def test_concurrent_closes_and_ingestion(postgres_api: Api) -> None:
    """Two closes race each other and a stream of late batches: every event is either invoiced
    or rejected as cycle_closed, each team gets one invoice, and each is charged once."""
    api = postgres_api
    sandbox: SandboxProvider = api.client.app.state.payment_provider  # type: ignore[attr-defined]
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    with frozen_at("2032-02-28T23:00:00"):
        teams = [_team_with_usage(api, sku, 100, "2032-02-28T22:00:00Z")[0] for _ in range(4)]
    accepted: list[int] = []
    summaries: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def ingest_late() -> None:
        try:
            for i in range(30):
                batch = [event(t, sku, 1, "2032-02-29T23:59:00Z") for t in teams]
                accepted.append(api.ingest(batch)["accepted"])
                if i == 5:
                    start.set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            start.set()

    def run_close() -> None:
        try:
            start.wait(10)
            summaries.append(close(api, 2032, 2))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    start = threading.Event()
    before = sandbox.total_charged()
    with frozen_at("2032-03-01T00:10:00"):
        threads = [threading.Thread(target=f) for f in (ingest_late, run_close, run_close)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        final = close(api, 2032, 2)
    assert not errors, errors
    late = sum(accepted)
    invoiced = {i["teamId"]: int(i["usage"]) for i in final["invoices"]}
    assert set(invoiced) == set(teams)
    assert sum(invoiced.values()) == 4 * 100 + late  # nothing lost, nothing counted after close
    assert late % 4 == 0 and late < 4 * 30  # some batches were rejected whole
    assert sandbox.total_charged() - before == sum(invoiced.values())
    numbers = sorted(_number(i["invoiceNumber"]) for i in final["invoices"])
    assert numbers == list(range(numbers[0], numbers[0] + 4))
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        count = len(
            list(
                session.scalars(
                    select(Invoice.id).where(
                        Invoice.cycle_year == 2032,
                        Invoice.cycle_month == 2,
                        Invoice.team_id.in_([uuid.UUID(t) for t in teams]),
                    )
                )
            )
        )
    assert count == 4
