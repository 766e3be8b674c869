"""Stripe's webhook events: verified, each id processed once, settling what they concern.

What an event says is never trusted as the state: a PaymentIntent event makes Billfold retrieve
the PaymentIntent and settle from what Stripe says of it now, so events delivered out of order
(or late, or twice) settle the same way. An event id is recorded after it was handled; handling is
idempotent, so a crash in between (Stripe then delivers it again) or two deliveries at once change
nothing twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billfold.invoicing.service import invoicing_service
from billfold.kit.clock import utc_now
from billfold.kit.db import transaction
from billfold.kit.errors import BadRequest, ServiceUnavailable
from billfold.payments.models import StripeEvent
from billfold.payments.provider import PaymentProvider, ProviderError, ProviderUnavailable
from billfold.payments.service import payment_method_service
from billfold.teams.models import Team
from billfold.topups.service import topup_service

log = logging.getLogger("billfold.stripe.webhooks")

HANDLED = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "setup_intent.succeeded",
    "payment_method.detached",
    "charge.refunded",
    "charge.dispute.created",
)


@dataclass(frozen=True)
class EventOutcome:
    event_id: str
    duplicate: bool
    outcome: str


def verified_event(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """The event, once ``Stripe-Signature`` proves Stripe sent this very payload (the SDK checks
    the HMAC and the timestamp's tolerance); a 400 otherwise."""
    if not signature:
        raise BadRequest("the Stripe-Signature header is missing", code="invalid_signature")
    # Imported here, not with the app: the SDK costs a serving process ~20 MB of memory, and only
    # a Stripe deployment verifies Stripe's signatures.
    import stripe

    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature, secret)
    except (UnicodeDecodeError, stripe.SignatureVerificationError, ValueError, IndexError):
        raise BadRequest(
            "the Stripe-Signature header does not verify", code="invalid_signature"
        ) from None
    try:
        event = json.loads(text)
    except ValueError:
        raise BadRequest("the event is not JSON", code="invalid_payload") from None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("data"), dict)
        or not isinstance(event["data"].get("object"), dict)
    ):
        raise BadRequest("the event has no id, type or data.object", code="invalid_payload")
    return event


class StripeEventService:
    def handle(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, event: dict[str, Any]
    ) -> EventOutcome:
        event_id, kind = str(event["id"])[:255], str(event["type"])[:100]
        obj: dict[str, Any] = event["data"]["object"]
        with transaction(sessions) as session:
            seen = session.get(StripeEvent, event_id)
            if seen is not None:
                return EventOutcome(event_id, True, seen.outcome)
        try:
            outcome = self._apply(sessions, provider, kind, obj)
        except ProviderUnavailable as exc:
            # Stripe retries an event that is not answered with a 2xx: let it.
            raise ServiceUnavailable(
                f"Stripe did not answer while handling {event_id}; deliver it again ({exc})",
                code="provider_unavailable",
            ) from None
        try:
            with transaction(sessions) as session:
                session.add(
                    StripeEvent(
                        id=event_id,
                        type=kind,
                        object_id=str(obj.get("id", ""))[:255],
                        outcome=outcome[:500],
                        payload=json.dumps(event, sort_keys=True),
                        received_at=utc_now(),
                    )
                )
        except IntegrityError:
            return EventOutcome(event_id, True, outcome)  # a concurrent delivery recorded it
        log.info("stripe event %s (%s): %s", event_id, kind, outcome)
        return EventOutcome(event_id, False, outcome)

    def _apply(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        kind: str,
        obj: dict[str, Any],
    ) -> str:
        object_id = str(obj.get("id", ""))
        if kind.startswith("payment_intent."):
            return self._settle(sessions, provider, object_id)
        if kind == "setup_intent.succeeded":
            return self._setup_succeeded(sessions, provider, obj)
        if kind == "payment_method.detached":
            with transaction(sessions) as session:
                dropped = payment_method_service.forget(session, provider.name, object_id)
            return f"payment method {object_id}: {dropped} local copies dropped"
        if kind == "charge.refunded":
            return (
                f"charge {object_id} of {obj.get('payment_intent')}: refunded "
                f"{obj.get('amount_refunded')} (recorded; refunds are booked by the refund call)"
            )
        if kind == "charge.dispute.created":
            log.warning(
                "DISPUTE on charge %s (%s cents, reason %s): answer it in the Stripe dashboard",
                obj.get("charge"),
                obj.get("amount"),
                obj.get("reason"),
            )
            return f"dispute {object_id} on charge {obj.get('charge')} (recorded)"
        return "ignored"

    @staticmethod
    def _settle(sessions: sessionmaker[Session], provider: PaymentProvider, intent_id: str) -> str:
        if not intent_id.startswith("pi_"):
            return "ignored (not a PaymentIntent)"
        topup = topup_service.settle_charge(sessions, provider, intent_id)
        if topup is not None:
            return f"top-up {topup.id}: {topup.status}"
        invoice = invoicing_service.settle_charge(sessions, provider, intent_id)
        if invoice is not None:
            return f"invoice {invoice.number}: {invoice.status}"
        return f"{intent_id}: nothing pending (settled before, or not Billfold's)"

    @staticmethod
    def _setup_succeeded(
        sessions: sessionmaker[Session], provider: PaymentProvider, obj: dict[str, Any]
    ) -> str:
        customer, method_ref = obj.get("customer"), obj.get("payment_method")
        if not isinstance(customer, str) or not isinstance(method_ref, str):
            return "ignored (no customer or payment method)"
        try:
            card = provider.retrieve_method(method_ref)
        except ProviderError as exc:
            return f"payment method {method_ref}: not retrievable ({exc.code})"
        with transaction(sessions) as session:
            team = session.scalars(
                select(Team).where(Team.stripe_customer_id == customer).with_for_update()
            ).first()
            if team is None:
                return f"customer {customer}: no team"
            method = payment_method_service.adopt(session, provider, team, card)
            return f"team {team.id}: payment method {method.id} ({card.provider_ref})"


stripe_event_service = StripeEventService()
