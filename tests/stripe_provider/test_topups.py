"""Top-ups through Stripe: a PaymentIntent created, its id committed, then confirmed; once only."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from billfold.ledger.models import LedgerEntry
from billfold.teams.models import Team
from tests.ledger.conftest import balance, entries, session_of, top_up, topups
from tests.stripe_provider.conftest import (
    CHARGE_DECLINED,
    NEEDS_AUTHENTICATION,
    SUCCEEDS,
    StripeApi,
)


def customer_of(api: StripeApi, team_id: str) -> str:
    with session_of(api) as session:
        customer = session.scalars(
            select(Team.stripe_customer_id).where(Team.id == uuid.UUID(team_id))
        ).one()
    assert customer is not None
    return customer


def purchases(api: StripeApi, team_id: str) -> list[LedgerEntry]:
    return [e for e in entries(api, team_id) if e.kind == "purchase"]


def setup(api: StripeApi, number: str = SUCCEEDS) -> tuple[str, dict[str, str], str]:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, number)
    return team_id, headers, customer_of(api, team_id)


def test_a_top_up_is_one_succeeded_payment_intent_and_one_purchase(stripe_api: StripeApi) -> None:
    team_id, headers, customer = setup(stripe_api)
    response = top_up(stripe_api, team_id, headers, 2500, key="buy-1")
    assert response.status_code == 200, response.text
    change = response.json()["change"]
    assert change["topupStatus"] == "SUCCEEDED"
    (intent,) = stripe_api.intents(customer)
    assert intent.status == "succeeded" and intent.amount == 2500
    assert change["paymentProcessor"]["kind"] == "STRIPE"
    assert change["paymentProcessor"]["externalInvoiceId"] == intent.id
    (topup,) = topups(stripe_api, team_id)
    assert intent.metadata.to_dict() == {"billfold_team": team_id, "billfold_topup": str(topup.id)}
    assert [e.credit_cents for e in purchases(stripe_api, team_id)] == [2500]
    # The balance's changes say STRIPE too.
    body = balance(stripe_api, team_id, headers)
    kinds = [c["paymentProcessor"]["kind"] for c in body["changes"] if "paymentProcessor" in c]
    assert "STRIPE" in kinds
    # A replay with the same key charges nothing again.
    again = top_up(stripe_api, team_id, headers, 2500, key="buy-1")
    assert again.status_code == 200 and again.json()["change"] == change
    assert len(stripe_api.intents(customer)) == 1
    assert len(purchases(stripe_api, team_id)) == 1


def test_a_decline_is_402_with_the_decline_code_and_no_credit(stripe_api: StripeApi) -> None:
    team_id, headers, customer = setup(stripe_api, CHARGE_DECLINED)
    response = top_up(stripe_api, team_id, headers, 2500, key="buy-1")
    assert response.status_code == 402, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == "card_declined"
    assert body["change"]["topupStatus"] == "FAILED_TO_CHARGE"
    (intent,) = stripe_api.intents(customer)
    assert intent.status == "requires_payment_method"
    assert purchases(stripe_api, team_id) == []
    (topup,) = topups(stripe_api, team_id)
    assert topup.provider_charge_id == intent.id and topup.failure_code == "card_declined"


def test_authentication_required_stays_pending_202(stripe_api: StripeApi) -> None:
    team_id, headers, customer = setup(stripe_api, NEEDS_AUTHENTICATION)
    response = top_up(stripe_api, team_id, headers, 2500, key="buy-1")
    assert response.status_code == 202, response.text
    assert response.json()["change"]["topupStatus"] == "TO_CHARGE"
    (intent,) = stripe_api.intents(customer)
    assert intent.status == "requires_action"
    assert purchases(stripe_api, team_id) == []
    # Asking again (same key, then the balance) neither charges nor creates another intent.
    again = top_up(stripe_api, team_id, headers, 2500, key="buy-1")
    assert again.status_code == 202
    balance(stripe_api, team_id, headers)
    assert len(stripe_api.intents(customer)) == 1
    (topup,) = topups(stripe_api, team_id)
    assert topup.status == "TO_CHARGE" and topup.provider_charge_id == intent.id


def test_a_refund_goes_back_to_the_payment_intent(stripe_api: StripeApi) -> None:
    team_id, headers, customer = setup(stripe_api)
    response = top_up(stripe_api, team_id, headers, 2500, key="buy-1")
    assert response.status_code == 200, response.text
    invoice_id = response.json()["change"]["invoiceId"]
    refunded = stripe_api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/purchases/{invoice_id}/refund",
        json={"amount": "1000", "reason": "unused", "idempotencyKey": "r1"},
    )
    assert refunded.status_code == 201, refunded.text
    assert refunded.json()["changeOrigin"] == "REFUND"
    assert refunded.json()["amount"] == {"val": "1000"}
    (intent,) = stripe_api.intents(customer)
    at_stripe = [
        r
        for r in stripe_api.stripe.v1.refunds.list(params={"limit": 100}).auto_paging_iter()
        if r.payment_intent == intent.id
    ]
    assert [r.amount for r in at_stripe] == [1000]
    too_much = stripe_api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/purchases/{invoice_id}/refund",
        json={"amount": "1501", "idempotencyKey": "r2"},
    )
    assert too_much.status_code == 400 and too_much.json()["code"] == "refund_exceeds_purchase"
    assert [e.credit_cents for e in entries(stripe_api, team_id) if e.kind == "refund"] == [-1000]


def test_concurrent_retries_of_one_top_up_make_one_charge(stripe_postgres_api: StripeApi) -> None:
    """Eight requests with one Idempotency-Key at once, plus balance reads resolving it: one
    succeeded PaymentIntent, one purchase (a PaymentIntent created by a loser of the race to
    commit its id is never confirmed)."""
    api = stripe_postgres_api
    team_id, headers, customer = setup(api)

    def buy(_: int) -> int:
        return int(top_up(api, team_id, headers, 2500, key="same").status_code)

    def read(_: int) -> int:
        return len(balance(api, team_id, headers)["changes"])

    with ThreadPoolExecutor(max_workers=10) as pool:
        buys = [pool.submit(buy, i) for i in range(8)]
        reads = [pool.submit(read, i) for i in range(4)]
        statuses = [f.result() for f in buys]
        [f.result() for f in reads]
    assert set(statuses) <= {200, 202}, statuses
    top_up(api, team_id, headers, 2500, key="same")  # settles one still pending, if any
    succeeded = [i for i in api.intents(customer) if i.status == "succeeded"]
    assert len(succeeded) == 1 and succeeded[0].amount == 2500
    assert [e.credit_cents for e in purchases(api, team_id)] == [2500]
    (topup,) = topups(api, team_id)
    assert topup.status == "SUCCEEDED" and topup.provider_charge_id == succeeded[0].id
