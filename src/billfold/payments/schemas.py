from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from billfold.kit.schemas import UtcDateTime, WireModel
from billfold.payments.models import PaymentMethod
from billfold.teams.schemas import BillingInfoBody


class CardDetails(WireModel):
    brand: str
    exp_month: str
    exp_year: str
    last4: str


class PaymentMethodOut(WireModel):
    """A payment method on the Billing Management API (spec §6): the upstream fields only (strict
    protobuf-JSON clients reject unknown ones). The default method is the one listed first."""

    payment_method_id: str
    billing_info: BillingInfoBody
    card_details: CardDetails
    payment_type: str = "card"
    added_ts: UtcDateTime


class OperatorPaymentMethodOut(PaymentMethodOut):
    """A payment method on the operator API: the customer's fields plus Billfold's own."""

    is_default: bool


class PaymentMethodList(WireModel):
    payment_methods: list[PaymentMethodOut]


class SetDefaultRequest(WireModel):
    payment_method_id: Annotated[str, StringConstraints(min_length=1, max_length=40)]


class AddCardRequest(WireModel):
    """Either a card number (the sandbox) or a PaymentMethod the provider holds (Stripe)."""

    card_number: Annotated[str, StringConstraints(min_length=12, max_length=23)] | None = None
    provider_payment_method_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_]+$")]
        | None
    ) = None
    exp_month: int | None = Field(default=None, ge=1, le=12)
    exp_year: int | None = Field(default=None, ge=2000, le=2200)
    cvc: Annotated[str, StringConstraints(max_length=4)] = ""
    make_default: bool = True


def method_out(method: PaymentMethod) -> PaymentMethodOut:
    """A method as the customer API lists it (spec §6: no default marker; the default is first)."""
    return PaymentMethodOut(
        payment_method_id=method.id,
        billing_info=BillingInfoBody.model_validate(method.billing_info),
        card_details=CardDetails(
            brand=method.brand,
            exp_month=str(method.exp_month),
            exp_year=str(method.exp_year),
            last4=method.last4,
        ),
        payment_type=method.payment_type,
        added_ts=method.created_at,
    )


def operator_method_out(method: PaymentMethod, default_id: str | None) -> OperatorPaymentMethodOut:
    """A method as the operator API shows it: the customer's fields and ``isDefault``."""
    return OperatorPaymentMethodOut(**dict(method_out(method)), is_default=method.id == default_id)


class SetupOut(WireModel):
    """A SetupIntent for the console's card form (Stripe.js confirms it with the client secret)."""

    client_secret: str
    publishable_key: str
