"""HTTP surface of payment methods (customer listing/default; operator adds sandbox cards)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from billfold.kit.errors import (
    BadRequest,
    InvalidField,
    PaymentFailed,
    ResourceNotFound,
    ServiceUnavailable,
)
from billfold.kit.http import DbSession, parse_uuid, read_only
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.payments.provider import CardInput, PaymentProvider
from billfold.payments.schemas import (
    AddCardRequest,
    OperatorPaymentMethodOut,
    PaymentMethodList,
    SetDefaultRequest,
    SetupOut,
    method_out,
    operator_method_out,
)
from billfold.payments.service import payment_method_service
from billfold.teams.auth import BillingRead, BillingWrite, Operator
from billfold.teams.schemas import Empty
from billfold.teams.service import team_service

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


def get_provider(request: Request) -> PaymentProvider:
    provider: PaymentProvider = request.app.state.payment_provider
    return provider


Provider = Annotated[PaymentProvider, Depends(get_provider)]


@billing_router.get("/v1/billing/teams/{team_id}/payment-method", response_model=PaymentMethodList)
@read_only
def list_payment_methods(scope: BillingRead, session: DbSession) -> PaymentMethodList:
    team = team_service.get(session, scope.team_id)
    methods = payment_method_service.list(session, team)
    return PaymentMethodList(payment_methods=[method_out(m) for m in methods])


@billing_router.post(
    "/v1/billing/teams/{team_id}/payment-method/default",
    response_model=Empty,
    responses=error_responses(ResourceNotFound),
)
def set_default_payment_method(
    body: SetDefaultRequest, scope: BillingWrite, session: DbSession
) -> Empty:
    payment_method_service.set_default(session, scope.team_id, body.payment_method_id)
    return Empty()


@admin_router.post(
    "/admin/v1/teams/{team_id}/payment-methods",
    status_code=201,
    response_model=OperatorPaymentMethodOut,
    responses=error_responses(ResourceNotFound, PaymentFailed, ServiceUnavailable),
)
def add_payment_method(
    team_id: str, body: AddCardRequest, session: DbSession, provider: Provider
) -> OperatorPaymentMethodOut:
    """A card number with the sandbox; ``providerPaymentMethodId`` (made client-side by Stripe.js)
    with Stripe, which refuses raw numbers (400 ``raw_card_number_refused``). A card the provider
    declines on attach: 402 ``card_declined``, the decline code in the message."""
    if body.card_number is not None and not provider.accepts_raw_cards:
        raise BadRequest(
            "raw card numbers never touch Billfold with this payment provider: attach a "
            "PaymentMethod made client-side (providerPaymentMethodId)",
            code="raw_card_number_refused",
            field="cardNumber",
        )
    if (body.card_number is None) == (body.provider_payment_method_id is None):
        field = "providerPaymentMethodId" if not provider.accepts_raw_cards else "cardNumber"
        raise InvalidField(field, "give exactly one of cardNumber and providerPaymentMethodId")
    team_uuid = parse_uuid(team_id)
    if body.provider_payment_method_id is not None:
        team = team_service.get(session, team_uuid, for_update=True)
        method = payment_method_service.attach(
            session, provider, team, body.provider_payment_method_id, make_default=body.make_default
        )
        return operator_method_out(method, team.default_payment_method_id)
    assert body.card_number is not None
    if body.exp_month is None:
        raise InvalidField("expMonth", "is required with cardNumber")
    if body.exp_year is None:
        raise InvalidField("expYear", "is required with cardNumber")
    team = team_service.get(session, team_uuid, for_update=True)
    card = CardInput(body.card_number, body.exp_month, body.exp_year, body.cvc)
    method = payment_method_service.add_card(
        session, provider, team, card, make_default=body.make_default
    )
    return operator_method_out(method, team.default_payment_method_id)


@admin_router.post(
    "/admin/v1/teams/{team_id}/payment-methods/setup",
    status_code=201,
    response_model=SetupOut,
    responses=error_responses(BadRequest, ResourceNotFound, ServiceUnavailable),
)
def setup_payment_method(team_id: str, session: DbSession, provider: Provider) -> SetupOut:
    """A SetupIntent (usage ``off_session``) for a card form: its ``clientSecret`` and the
    ``publishableKey`` Stripe.js needs. When the customer completes it, Stripe's
    ``setup_intent.succeeded`` webhook adds the card. Each call makes a new SetupIntent (nothing
    is charged; an unused one simply expires). With the sandbox: 400 ``setup_unsupported``."""
    team = team_service.get(session, parse_uuid(team_id), for_update=True)
    secret = payment_method_service.setup(session, provider, team)
    return SetupOut(client_secret=secret, publishable_key=getattr(provider, "publishable_key", ""))
