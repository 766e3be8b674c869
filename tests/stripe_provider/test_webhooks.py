"""``POST /webhooks/stripe``: signed with the SDK's own helper; replays and out-of-order events."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import stripe

from billfold.payments.models import StripeEvent
from tests.ledger.conftest import session_of, top_up, topups
from tests.stripe_provider.conftest import NEEDS_AUTHENTICATION, WEBHOOK_SECRET, StripeApi
from tests.stripe_provider.test_topups import purchases, setup


def post_event(
    api: StripeApi,
    kind: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    secret: str = WEBHOOK_SECRET,
    signature: str | None = "sign",
) -> httpx.Response:
    payload = json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": kind,
            "data": {"object": obj},
        }
    )
    headers = {"Content-Type": "application/json"}
    if signature == "sign":
        headers["Stripe-Signature"] = stripe.WebhookSignature.generate_signature_header(
            payload, secret
        )
    elif signature is not None:
        headers["Stripe-Signature"] = signature
    return api.client.post("/webhooks/stripe", content=payload, headers=headers)


def authenticate(api: StripeApi, intent_id: str, success: bool) -> None:
    """The customer passes (or fails) 3-D Secure, as localstripe lets a test say."""
    intent = api.stripe.v1.payment_intents.retrieve(intent_id)
    response = httpx.post(
        f"{api.stripe_base}/v1/payment_intents/{intent_id}/_authenticate",
        data={"client_secret": intent.client_secret, "success": str(success).lower()},
        headers={"Authorization": "Bearer sk_test_billfold"},
    )
    assert response.status_code == 200, response.text


def pending_top_up(api: StripeApi) -> tuple[str, dict[str, str], str]:
    team_id, headers, _ = setup(api, NEEDS_AUTHENTICATION)
    response = top_up(api, team_id, headers, 2500, key="3ds")
    assert response.status_code == 202, response.text
    (topup,) = topups(api, team_id)
    return team_id, headers, topup.provider_charge_id


def recorded(api: StripeApi, event_id: str) -> StripeEvent | None:
    with session_of(api) as session:
        return session.get(StripeEvent, event_id)


@pytest.mark.parametrize(
    ("signature", "secret"),
    [
        (None, WEBHOOK_SECRET),
        ("t=1,v1=deadbeef", WEBHOOK_SECRET),
        ("sign", "whsec_other"),
        ("x", WEBHOOK_SECRET),
    ],
)
def test_a_bad_or_missing_signature_is_400_and_changes_nothing(
    stripe_api: StripeApi, signature: str | None, secret: str
) -> None:
    team_id, _, intent_id = pending_top_up(stripe_api)
    authenticate(stripe_api, intent_id, True)
    event_id = f"evt_{uuid.uuid4().hex}"
    response = post_event(
        stripe_api,
        "payment_intent.succeeded",
        {"id": intent_id},
        event_id=event_id,
        secret=secret,
        signature=signature,
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_signature"
    assert [t.status for t in topups(stripe_api, team_id)] == ["TO_CHARGE"]
    assert purchases(stripe_api, team_id) == []
    assert recorded(stripe_api, event_id) is None


def test_succeeded_settles_once_replays_and_late_failures_change_nothing(
    stripe_api: StripeApi,
) -> None:
    team_id, _, intent_id = pending_top_up(stripe_api)
    authenticate(stripe_api, intent_id, True)
    first = post_event(
        stripe_api, "payment_intent.succeeded", {"id": intent_id}, event_id="evt_a" + team_id[:8]
    )
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    assert [t.status for t in topups(stripe_api, team_id)] == ["SUCCEEDED"]
    assert [e.credit_cents for e in purchases(stripe_api, team_id)] == [2500]
    replay = post_event(
        stripe_api, "payment_intent.succeeded", {"id": intent_id}, event_id="evt_a" + team_id[:8]
    )
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    # An older failure delivered late: Stripe's PaymentIntent says succeeded, nothing moves.
    late = post_event(
        stripe_api,
        "payment_intent.payment_failed",
        {"id": intent_id, "status": "requires_payment_method"},
    )
    assert late.status_code == 200, late.text
    assert [t.status for t in topups(stripe_api, team_id)] == ["SUCCEEDED"]
    assert [e.credit_cents for e in purchases(stripe_api, team_id)] == [2500]


def test_failed_authentication_settles_failed_to_charge(stripe_api: StripeApi) -> None:
    team_id, _, intent_id = pending_top_up(stripe_api)
    authenticate(stripe_api, intent_id, False)
    # Out of order: a "succeeded" event naming the intent first changes nothing wrong either:
    # the PaymentIntent itself is asked.
    response = post_event(stripe_api, "payment_intent.succeeded", {"id": intent_id})
    assert response.status_code == 200, response.text
    (topup,) = topups(stripe_api, team_id)
    assert topup.status == "FAILED_TO_CHARGE"
    assert topup.failure_code == "payment_intent_authentication_failure"
    assert purchases(stripe_api, team_id) == []


def test_setup_intent_succeeded_attaches_and_detached_forgets(stripe_api: StripeApi) -> None:
    team_id, headers, customer = setup(stripe_api)
    method_id = stripe_api.payment_method()
    stripe_api.stripe.v1.payment_methods.attach(method_id, params={"customer": customer})
    obj = {"id": "seti_x", "customer": customer, "payment_method": method_id, "status": "succeeded"}
    event_id = f"evt_{uuid.uuid4().hex}"
    assert (
        post_event(stripe_api, "setup_intent.succeeded", obj, event_id=event_id).status_code == 200
    )
    assert post_event(stripe_api, "setup_intent.succeeded", obj, event_id=event_id).json()[
        "duplicate"
    ]
    listing = stripe_api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers)
    methods = listing.json()["paymentMethods"]
    assert len(methods) == 2  # the first card (default, listed first) and the new one
    detached = post_event(stripe_api, "payment_method.detached", {"id": method_id})
    assert detached.status_code == 200
    listing = stripe_api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers)
    assert len(listing.json()["paymentMethods"]) == 1


def test_disputes_and_refunds_are_recorded(stripe_api: StripeApi) -> None:
    event_id = f"evt_{uuid.uuid4().hex}"
    dispute = {"id": "dp_1", "charge": "ch_1", "amount": 2500, "reason": "fraudulent"}
    response = post_event(stripe_api, "charge.dispute.created", dispute, event_id=event_id)
    assert response.status_code == 200, response.text
    row = recorded(stripe_api, event_id)
    assert row is not None and row.type == "charge.dispute.created" and row.object_id == "dp_1"
    assert json.loads(row.payload)["data"]["object"] == dispute
    refund_id = f"evt_{uuid.uuid4().hex}"
    refunded = {"id": "ch_1", "payment_intent": "pi_1", "amount_refunded": 100}
    assert (
        post_event(stripe_api, "charge.refunded", refunded, event_id=refund_id).status_code == 200
    )
    assert recorded(stripe_api, refund_id) is not None


def test_the_sandbox_has_no_stripe_webhook(api: Any) -> None:
    response = api.client.post("/webhooks/stripe", content=b"{}")
    assert response.status_code == 404
