"""Stripe behind the :class:`~billfold.payments.provider.PaymentProvider` interface.

Built on the official SDK (``stripe.StripeClient``); no hand-written Stripe HTTP. A team is one
Stripe Customer; cards are PaymentMethods made client-side (Stripe.js) and attached here, so a raw
card number never reaches Billfold. Charges are PaymentIntents in two steps (``create_charge``,
then ``confirm_charge``), ``off_session`` with the customer's default method, Billfold's record id
as ``Idempotency-Key`` and in ``metadata``: the caller commits the PaymentIntent's id between the
two steps, so a crash anywhere never charges twice (Stripe forgets idempotency keys after 24
hours; the stored id does not).

Errors: a card error is a :class:`ProviderError` carrying Stripe's decline code; a network error,
a rate limit, Stripe's own 5xx or a bad key is :class:`ProviderUnavailable` (the outcome is unknown
or nothing happened: callers keep their record pending and retry later with the stored id).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import stripe
from stripe.params import (
    CustomerCreateParams,
    PaymentIntentListParams,
    SetupIntentCreateParams,
)

from billfold.kit.money import Cents
from billfold.payments.provider import (
    CardInput,
    ChargeResult,
    ChargeStatus,
    ProviderCard,
    ProviderError,
    ProviderUnavailable,
    RefundResult,
)

log = logging.getLogger("billfold.payments.stripe")

# PaymentIntent statuses that are neither paid nor failed yet: the charge stays pending.
_PENDING = {"requires_action", "processing", "requires_confirmation", "requires_capture"}


class StripeProvider:
    name = "stripe"
    accepts_raw_cards = False
    two_step = True

    def __init__(
        self, secret_key: str, *, publishable_key: str | None = None, api_base: str | None = None
    ) -> None:
        options: dict[str, Any] = {"max_network_retries": 2}
        if api_base:
            options["base_addresses"] = {"api": api_base.rstrip("/")}
        self.client = stripe.StripeClient(secret_key, **options)
        self.publishable_key = publishable_key or ""

    # -- customers and cards -------------------------------------------------------------------

    def create_customer(self, reference: str, email: str) -> str:
        with _translated():
            params: CustomerCreateParams = {"metadata": {"billfold_team": reference}}
            if email:
                params["email"] = email
            customer = self.client.v1.customers.create(
                params=params, options={"idempotency_key": f"customer:{reference}"}
            )
        return str(customer.id)

    def setup_card(self, customer_ref: str, card: CardInput) -> ProviderCard:
        raise ProviderError(
            "raw card numbers never touch Billfold with Stripe: attach a PaymentMethod made "
            "client-side (providerPaymentMethodId)",
            "raw_card_number_refused",
        )

    def attach_method(self, customer_ref: str, method_ref: str) -> ProviderCard:
        with _translated():
            method = self.client.v1.payment_methods.attach(
                method_ref, params={"customer": customer_ref}
            )
        return _card(method)

    def list_cards(self, customer_ref: str) -> list[ProviderCard]:
        with _translated():
            methods = self.client.v1.payment_methods.list(
                params={"customer": customer_ref, "type": "card"}
            )
        return [_card(m) for m in methods.data]

    def retrieve_method(self, method_ref: str) -> ProviderCard:
        with _translated():
            return _card(self.client.v1.payment_methods.retrieve(method_ref))

    def create_setup(self, customer_ref: str, *, metadata: dict[str, str]) -> str:
        """A SetupIntent (usage ``off_session``) for a card form; its client secret."""
        with _translated():
            params: SetupIntentCreateParams = {
                "customer": customer_ref,
                "usage": "off_session",
                "metadata": dict(metadata),
            }
            intent = self.client.v1.setup_intents.create(params=params)
        return str(intent.client_secret)

    # -- charges -------------------------------------------------------------------------------

    def create_charge(
        self,
        customer_ref: str,
        payment_method_ref: str,
        amount: Cents,
        *,
        idempotency_key: str,
        description: str,
        metadata: dict[str, str],
    ) -> str:
        """Step one: the PaymentIntent, not confirmed yet; its id."""
        if amount <= 0:
            raise ProviderError("amount must be positive", "invalid_amount")
        with _translated():
            intent = self.client.v1.payment_intents.create(
                params={
                    "amount": int(amount),
                    "currency": "usd",
                    "customer": customer_ref,
                    "payment_method": payment_method_ref,
                    "description": description,
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            )
        return str(intent.id)

    def confirm_charge(self, charge_id: str) -> ChargeResult:
        """Step two: confirm off-session. A PaymentIntent already past confirmation (a retry after
        a crash) is answered as it stands, never confirmed again."""
        current = self.retrieve_charge(charge_id)
        if not current.pending or current.failure_code != "requires_confirmation":
            return current
        try:
            with _translated():
                intent = self.client.v1.payment_intents.confirm(
                    charge_id, params={"off_session": True}
                )
        except ProviderError:
            # A decline: the PaymentIntent says which, and what it is now.
            return self.retrieve_charge(charge_id)
        return _result(intent)

    def retrieve_charge(self, charge_id: str) -> ChargeResult:
        with _translated():
            intent = self.client.v1.payment_intents.retrieve(charge_id)
        return _result(intent)

    def succeeded_charges(self, *, since: int | None = None) -> Iterator[ChargeResult]:
        """Every succeeded PaymentIntent (created at or after ``since``, a Unix time), with its
        metadata: what the reconciliation check holds the ledger against."""
        with _translated():
            params: PaymentIntentListParams = {"limit": 100}
            if since is not None:
                params["created"] = {"gte": since}
            for intent in self.client.v1.payment_intents.list(params=params).auto_paging_iter():
                if intent.status == "succeeded":
                    yield ChargeResult(
                        ChargeStatus.SUCCEEDED,
                        str(intent.id),
                        Cents(int(intent.amount)),
                        metadata=dict(intent.metadata.to_dict()) if intent.metadata else {},
                    )

    def charge(
        self,
        customer_ref: str,
        payment_method_ref: str,
        amount: Cents,
        *,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        """One-step charges are not made with Stripe (see ``two_step``): the caller must commit
        the PaymentIntent's id between creating and confirming it."""
        raise ProviderError("Stripe charges are two-step (create_charge, then confirm)", "two_step")

    def find_charge(self, idempotency_key: str) -> ChargeResult | None:
        """Stripe charges are found by their stored PaymentIntent id (``retrieve_charge``)."""
        return None

    def refund(
        self,
        charge_id: str,
        amount: Cents,
        *,
        idempotency_key: str,
        metadata: dict[str, str] | None = None,
    ) -> RefundResult:
        with _translated():
            refund = self.client.v1.refunds.create(
                params={
                    "payment_intent": charge_id,
                    "amount": int(amount),
                    "metadata": {"billfold_refund": idempotency_key, **(metadata or {})},
                },
                options={"idempotency_key": idempotency_key},
            )
        return RefundResult(str(refund.id), charge_id, Cents(int(refund.amount)))

    def find_refund(self, charge_id: str, idempotency_key: str) -> RefundResult | None:
        """The refund of the PaymentIntent whose metadata names ``idempotency_key`` (Billfold's
        refund id): Stripe forgets idempotency keys after 24 hours, the metadata stays."""
        with _translated():
            refunds = self.client.v1.refunds.list(
                params={"payment_intent": charge_id, "limit": 100}
            ).auto_paging_iter()
            for refund in refunds:
                named = dict(refund.metadata.to_dict()) if refund.metadata else {}
                if named.get("billfold_refund") == idempotency_key:
                    return RefundResult(str(refund.id), charge_id, Cents(int(refund.amount)))
        return None


def _card(method: Any) -> ProviderCard:
    card = method.card
    return ProviderCard(
        provider_ref=str(method.id),
        brand=str(card.brand),
        last4=str(card.last4),
        exp_month=int(card.exp_month),
        exp_year=int(card.exp_year),
    )


def _result(intent: Any) -> ChargeResult:
    status = str(intent.status)
    amount = Cents(int(intent.amount))
    if status == "succeeded":
        return ChargeResult(ChargeStatus.SUCCEEDED, str(intent.id), amount)
    error = intent.to_dict().get("last_payment_error") or {}
    code = str(error.get("decline_code") or error.get("code") or "")
    message = str(error.get("message") or "")
    if status in _PENDING:
        # failure_code of a pending charge says what it waits for.
        return ChargeResult(ChargeStatus.PENDING, str(intent.id), amount, status, message)
    if status == "requires_payment_method" and not error:
        # Created but never tried (no method when made): still waiting for confirmation.
        return ChargeResult(ChargeStatus.PENDING, str(intent.id), amount, "requires_confirmation")
    return ChargeResult(
        ChargeStatus.DECLINED,
        str(intent.id),
        amount,
        code or ("canceled" if status == "canceled" else "card_declined"),
        message or f"the card was declined ({code or status})",
    )


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Stripe's exceptions as the provider interface's."""
    try:
        yield
    except stripe.StripeError as exc:
        if isinstance(exc, stripe.CardError):
            error = exc.error
            code = (error.decline_code if error else None) or exc.code or "card_declined"
            message = exc.user_message or str(exc)
            raise ProviderError(f"{message} ({code})", code, declined=True) from exc
        if isinstance(exc, stripe.InvalidRequestError) and (exc.http_status or 500) < 500:
            raise ProviderError(
                str(exc.user_message or exc), exc.code or "invalid_request"
            ) from exc
        if isinstance(exc, stripe.AuthenticationError):
            log.error("Stripe refused the secret key: %s", exc)
        raise ProviderUnavailable(f"Stripe did not answer usefully: {exc}") from exc
