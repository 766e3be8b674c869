"""HTTP surface of prepaid purchases: the balance and the top-up (customers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Response

from billfold.kit.errors import (
    BadRequest,
    Conflict,
    PaymentFailed,
    ResourceNotFound,
    ServiceUnavailable,
)
from billfold.kit.http import REPLAYED_HEADER, Steps, parse_uuid
from billfold.kit.money import Cents
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.ledger.schemas import (
    FAILED_TO_CHARGE,
    TO_CHARGE,
    Change,
    PrepaidBalance,
)
from billfold.ledger.service import entry_change
from billfold.payments.endpoints import Provider
from billfold.teams.auth import AppSettings, BillingRead, BillingWrite, Operator
from billfold.topups.refunds import refund_service
from billfold.topups.schemas import RefundRequest, TopUpRequest, TopUpResponse
from billfold.topups.service import topup_service

# Each route repeats ``response_model_exclude_none=True``: WireRouter's default does not reach
# routes added through the decorators (they pass the flag explicitly as False).
billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


@billing_router.get(
    "/v1/billing/teams/{team_id}/prepaid/balance",
    response_model=PrepaidBalance,
)
def get_prepaid_balance(scope: BillingRead, steps: Steps, provider: Provider) -> PrepaidBalance:
    # Settles the team's pending top-ups first, asking the provider: in steps (kit.http.Steps).
    return topup_service.balance(steps, provider, scope.team_id)


@billing_router.post(
    "/v1/billing/teams/{team_id}/prepaid/top-up",
    response_model=TopUpResponse,
    responses={
        202: {"model": TopUpResponse},
        **error_responses(PaymentFailed, Conflict),
    },
)
def top_up(
    body: TopUpRequest,
    scope: BillingWrite,
    steps: Steps,
    provider: Provider,
    settings: AppSettings,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> TopUpResponse:
    """200 charged; 402 declined (the body carries the FAILED_TO_CHARGE change); 202 the change is
    still pending (TO_CHARGE): the provider did not answer, or -- without a key -- another purchase
    of the team is pending and is returned instead of charging again."""
    outcome = topup_service.top_up(
        steps, provider, settings, scope.team_id, Cents(body.amount.val), idempotency_key
    )
    # The replay header answers a replayed Idempotency-Key; without a key, the pending purchase
    # returned instead of a new charge (the upstream rule) is not a replay of this caller's request.
    headers = {REPLAYED_HEADER: "true"} if outcome.replayed and idempotency_key else {}
    if outcome.status == FAILED_TO_CHARGE:
        error = PaymentFailed(
            outcome.failure_message or "the card was declined",
            code=outcome.failure_code or "card_declined",
            change=outcome.change.wire(),
        )
        error.headers = headers or None
        raise error
    response.status_code = 202 if outcome.status == TO_CHARGE else 200
    response.headers.update(headers)
    return TopUpResponse(change=outcome.change)


@admin_router.post(
    "/admin/v1/teams/{team_id}/purchases/{invoice_id}/refund",
    status_code=201,
    response_model=Change,
    responses=error_responses(BadRequest, ResourceNotFound, Conflict, ServiceUnavailable),
)
def refund_purchase(
    team_id: str,
    invoice_id: str,
    body: RefundRequest,
    steps: Steps,
    provider: Provider,
    response: Response,
) -> Change:
    """Refund a paid purchase (its receipt invoice) to the card and book a ``REFUND`` change of
    ``+amount`` (credit taken back). More than is left of the purchase, or than the team's credit
    left: 400. A repeated ``idempotencyKey`` returns the first refund (200) and changes nothing."""
    team = parse_uuid(team_id)
    entry, created = refund_service.refund(
        steps, provider, team, invoice_id, body.amount, body.reason, body.idempotency_key
    )
    if not created:
        response.status_code = 200
        response.headers[REPLAYED_HEADER] = "true"
    return entry_change(entry)
