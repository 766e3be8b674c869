"""Cycle-close charges through Stripe: one PaymentIntent per attempt, found again on reruns."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from billfold.invoicing.models import Invoice
from tests.conftest import event, frozen_at, unique_sku
from tests.invoicing.conftest import close
from tests.ledger.conftest import session_of
from tests.stripe_provider.conftest import (
    CHARGE_DECLINED,
    NEEDS_AUTHENTICATION,
    SUCCEEDS,
    StripeApi,
)
from tests.stripe_provider.test_topups import customer_of


def _invoice(api: StripeApi, team_id: str) -> Invoice:
    with session_of(api) as session:
        (invoice,) = session.scalars(
            select(Invoice).where(Invoice.team_id == uuid.UUID(team_id), Invoice.kind == "monthly")
        ).all()
        return invoice


def test_close_charges_each_invoice_once_through_stripe(stripe_api: StripeApi) -> None:
    sku = unique_sku()
    stripe_api.set_price(sku, "0.01", "2069-01-01T00:00:00Z")
    teams = {}
    with frozen_at("2070-01-20T12:00:00"):
        for number, cents in (
            (SUCCEEDS, 1500),
            (CHARGE_DECLINED, 700),
            (NEEDS_AUTHENTICATION, 300),
        ):
            team_id, _ = stripe_api.team_with_key()
            stripe_api.add_card(team_id, number)
            assert (
                stripe_api.ingest([event(team_id, sku, cents, "2070-01-05T10:00:00Z")])["accepted"]
                == 1
            )
            teams[number] = team_id
    with frozen_at("2070-02-03T00:00:00"):
        first = close(stripe_api, 2070, 1)
        second = close(stripe_api, 2070, 1)
    assert first == second

    paid = _invoice(stripe_api, teams[SUCCEEDS])
    (intent,) = stripe_api.intents(customer_of(stripe_api, teams[SUCCEEDS]))
    assert paid.status == "PAID" and intent.status == "succeeded" and intent.amount == 1500
    assert paid.provider_charge_id == intent.id
    assert paid.charge_attempts[0]["chargeId"] == intent.id
    assert intent.metadata.to_dict() == {
        "billfold_team": teams[SUCCEEDS],
        "billfold_invoice": paid.id,
    }

    failed = _invoice(stripe_api, teams[CHARGE_DECLINED])
    (declined,) = stripe_api.intents(customer_of(stripe_api, teams[CHARGE_DECLINED]))
    assert failed.status == "FAILED" and declined.status == "requires_payment_method"
    assert [a["failureCode"] for a in failed.charge_attempts] == ["card_declined"]
    assert failed.provider_charge_id is None  # a retry is a new attempt

    pending = _invoice(stripe_api, teams[NEEDS_AUTHENTICATION])
    (waiting,) = stripe_api.intents(customer_of(stripe_api, teams[NEEDS_AUTHENTICATION]))
    assert pending.status == "PENDING" and waiting.status == "requires_action"
    assert pending.provider_charge_id == waiting.id and pending.charge_attempts == []


def test_a_pending_invoice_is_settled_by_the_webhook(stripe_api: StripeApi) -> None:
    from tests.stripe_provider.test_webhooks import authenticate, post_event

    sku = unique_sku()
    stripe_api.set_price(sku, "0.01", "2070-06-01T00:00:00Z")
    with frozen_at("2071-01-20T12:00:00"):
        team_id, _ = stripe_api.team_with_key()
        stripe_api.add_card(team_id, NEEDS_AUTHENTICATION)
        accepted = stripe_api.ingest([event(team_id, sku, 900, "2071-01-05T10:00:00Z")])
        assert accepted["accepted"] == 1
    with frozen_at("2071-02-03T00:00:00"):
        close(stripe_api, 2071, 1)
    pending = _invoice(stripe_api, team_id)
    assert pending.status == "PENDING" and pending.provider_charge_id is not None
    authenticate(stripe_api, pending.provider_charge_id, True)
    response = post_event(
        stripe_api, "payment_intent.succeeded", {"id": pending.provider_charge_id}
    )
    assert response.status_code == 200, response.text
    paid = _invoice(stripe_api, team_id)
    assert paid.status == "PAID"
    assert [(a["successful"], a["chargeId"]) for a in paid.charge_attempts] == [
        (True, pending.provider_charge_id)
    ]
    (intent,) = stripe_api.intents(customer_of(stripe_api, team_id))
    assert intent.status == "succeeded"
