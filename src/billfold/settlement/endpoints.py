"""``POST /webhooks/stripe``: Stripe's events, signed; no bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from billfold.kit.audit import ACTOR_SYSTEM
from billfold.kit.errors import BadRequest, ResourceNotFound, ServiceUnavailable
from billfold.kit.http import Steps
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.payments.endpoints import Provider
from billfold.settlement.stripe_events import stripe_event_service, verified_event
from billfold.teams.auth import AppSettings

router = WireRouter()


def stripe_actor(request: Request) -> None:
    """The audit trail's actor (kit/audit.py): Stripe, authenticated by the event's signature."""
    request.state.audit_actor = (ACTOR_SYSTEM, "stripe")


# Not in the OpenAPI document (as /healthz): Stripe calls it, no client of the operator API does,
# and it has no bearer scheme to declare (the signature is its authentication).
@router.post(
    "/webhooks/stripe",
    include_in_schema=False,
    responses=error_responses(BadRequest, ResourceNotFound, ServiceUnavailable),
)
async def stripe_webhook(
    request: Request,
    _actor: Annotated[None, Depends(stripe_actor)],
    steps: Steps,
    provider: Provider,
    settings: AppSettings,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> JSONResponse:
    """A Stripe event. 400 when ``Stripe-Signature`` is missing or does not verify (nothing
    changes); 200 once handled, and for a replay of an event already handled (nothing changes
    again). 503 when Stripe did not answer a lookup: Stripe delivers the event again."""
    if provider.name != "stripe" or not settings.stripe_webhook_secret:
        raise ResourceNotFound(
            "Stripe webhooks are off (BILLFOLD_PAYMENT_PROVIDER is not stripe)",
            code="not_found",
        )
    payload = await request.body()
    event = verified_event(payload, stripe_signature, settings.stripe_webhook_secret)
    outcome = await run_in_threadpool(stripe_event_service.handle, steps, provider, event)
    return JSONResponse(
        {"received": True, "eventId": outcome.event_id, "duplicate": outcome.duplicate}
    )
