"""The payment provider interface.

It is shaped after Stripe's API so that a Stripe adapter is a thin translation:

* ``create_customer``      ~ ``POST /v1/customers``
* ``setup_card``           ~ a confirmed SetupIntent / ``POST /v1/payment_methods`` + attach
* ``list_cards``           ~ ``GET /v1/customers/{id}/payment_methods?type=card``
* ``charge``               ~ ``POST /v1/payment_intents`` (confirm=true, off_session=true) with an
                             ``Idempotency-Key`` header; the key is Billfold's ledger entry id
* ``find_charge``          ~ ``GET /v1/payment_intents/search`` by ``metadata['billfold_ref']``,
                             used to resolve a charge whose answer was lost (timeout)
* ``refund``               ~ ``POST /v1/refunds`` with an idempotency key
* ``find_refund``          ~ ``GET /v1/refunds?payment_intent=`` (the one whose metadata names it)

A provider that holds its own cards (Stripe) never sees a raw number: ``accepts_raw_cards`` is
False, ``setup_card`` is refused, and methods made client-side are attached with ``attach_method``.
Its charges are two-step (``two_step``): ``create_charge`` makes the PaymentIntent and returns its
id, which the caller commits on its pending record before ``confirm_charge``; a retry finds the
stored id with ``retrieve_charge`` and never creates a second one.

Amounts are integer cents. A provider raises :class:`ProviderUnavailable` when it cannot tell
whether an operation happened (timeout, network): callers keep their state pending and resolve it
later with ``find_charge``; they never charge again blindly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from billfold.kit.money import Cents


class ProviderError(Exception):
    """The provider refused the request (bad card data and the like); safe to report as 4xx.
    ``declined``: the card itself was declined (Stripe's card errors), a 402 rather than a 400."""

    def __init__(self, message: str, code: str, *, declined: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.declined = declined


class ProviderUnavailable(Exception):
    """The provider did not answer; the outcome of the operation is unknown."""


@dataclass(frozen=True)
class CardInput:
    number: str
    exp_month: int
    exp_year: int
    cvc: str = ""


@dataclass(frozen=True)
class ProviderCard:
    provider_ref: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class ChargeStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    PENDING = "pending"  # Stripe's requires_action / processing: settled later (webhook, reconcile)


@dataclass(frozen=True)
class ChargeResult:
    status: ChargeStatus
    charge_id: str
    amount: Cents
    failure_code: str = ""
    failure_message: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # the provider's record of the charge

    @property
    def succeeded(self) -> bool:
        return self.status is ChargeStatus.SUCCEEDED

    @property
    def pending(self) -> bool:
        return self.status is ChargeStatus.PENDING


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    charge_id: str
    amount: Cents


class PaymentProvider(Protocol):
    name: str
    accepts_raw_cards: bool
    two_step: bool

    def create_customer(self, reference: str, email: str) -> str: ...

    def setup_card(self, customer_ref: str, card: CardInput) -> ProviderCard: ...

    def list_cards(self, customer_ref: str) -> list[ProviderCard]: ...

    def charge(
        self,
        customer_ref: str,
        payment_method_ref: str,
        amount: Cents,
        *,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult: ...

    def find_charge(self, idempotency_key: str) -> ChargeResult | None: ...

    def refund(
        self,
        charge_id: str,
        amount: Cents,
        *,
        idempotency_key: str,
        metadata: dict[str, str] | None = None,
    ) -> RefundResult: ...

    def find_refund(self, charge_id: str, idempotency_key: str) -> RefundResult | None:
        """The refund of ``charge_id`` made with ``idempotency_key`` (Billfold's refund id), or
        None: how a refund left pending by a crash is found without refunding again."""
        ...

    def attach_method(self, customer_ref: str, method_ref: str) -> ProviderCard: ...

    def create_charge(
        self,
        customer_ref: str,
        payment_method_ref: str,
        amount: Cents,
        *,
        idempotency_key: str,
        description: str,
        metadata: dict[str, str],
    ) -> str: ...

    def confirm_charge(self, charge_id: str) -> ChargeResult: ...

    def retrieve_charge(self, charge_id: str) -> ChargeResult: ...

    def retrieve_method(self, method_ref: str) -> ProviderCard: ...

    def create_setup(self, customer_ref: str, *, metadata: dict[str, str]) -> str: ...
