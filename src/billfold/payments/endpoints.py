"""HTTP surface of payment methods (customer listing/default; operator adds sandbox cards)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from billfold.kit.errors import ResourceNotFound
from billfold.kit.http import DbSession, parse_uuid, read_only
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.payments.provider import CardInput, PaymentProvider
from billfold.payments.schemas import (
    AddCardRequest,
    OperatorPaymentMethodOut,
    PaymentMethodList,
    SetDefaultRequest,
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
    responses=error_responses(ResourceNotFound),
)
def add_payment_method(
    team_id: str, body: AddCardRequest, session: DbSession, provider: Provider
) -> OperatorPaymentMethodOut:
    team = team_service.get(session, parse_uuid(team_id), for_update=True)
    card = CardInput(body.card_number, body.exp_month, body.exp_year, body.cvc)
    method = payment_method_service.add_card(
        session, provider, team, card, make_default=body.make_default
    )
    return operator_method_out(method, team.default_payment_method_id)
