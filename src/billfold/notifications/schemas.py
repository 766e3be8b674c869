"""The wire of the webhook endpoints' admin API (operator-api.md, "Notifications")."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from billfold.kit.schemas import UtcDateTime, WireModel
from billfold.notifications.models import WebhookAttempt, WebhookEndpoint
from billfold.notifications.service import DeliveryView, next_attempt_time


class CreateEndpointRequest(WireModel):
    url: str
    event_types: list[str] = Field(default_factory=lambda: ["*"])
    description: str = ""


class EndpointOut(WireModel):
    refuse_nul = False

    id: str
    url: str
    event_types: list[str]
    description: str
    create_time: UtcDateTime
    previous_secret_expire_time: UtcDateTime | None = None


class EndpointWithSecret(EndpointOut):
    """As created or rotated: the secret is shown this once."""

    secret: str


class EndpointList(WireModel):
    webhook_endpoints: list[EndpointOut]


class AttemptOut(WireModel):
    refuse_nul = False

    attempt: int
    status_code: int | None = None
    error: str | None = None
    response_body: str
    duration_ms: int
    time: UtcDateTime


class DeliveryOut(WireModel):
    refuse_nul = False

    id: str
    type: str
    state: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_time: UtcDateTime | None = None
    create_time: UtcDateTime
    attempt_log: list[AttemptOut]


class DeliveryList(WireModel):
    deliveries: list[DeliveryOut]


def endpoint_out(endpoint: WebhookEndpoint, now: datetime) -> EndpointOut:
    grace = endpoint.previous_secret_expires_at
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        event_types=endpoint.event_types,
        description=endpoint.description,
        create_time=endpoint.created_at,
        previous_secret_expire_time=grace if grace is not None and grace > now else None,
    )


def endpoint_with_secret(endpoint: WebhookEndpoint, now: datetime) -> EndpointWithSecret:
    return EndpointWithSecret(**dict(endpoint_out(endpoint, now)), secret=endpoint.secret)


def attempt_out(attempt: WebhookAttempt) -> AttemptOut:
    return AttemptOut(
        attempt=attempt.attempt,
        status_code=attempt.status_code,
        error=attempt.error,
        response_body=attempt.response_body,
        duration_ms=attempt.duration_ms,
        time=attempt.created_at,
    )


def delivery_out(view: DeliveryView) -> DeliveryOut:
    return DeliveryOut(
        id=view.message.id,
        type=view.message.type,
        state=view.delivery.state,
        attempts=view.delivery.attempts,
        last_status_code=view.delivery.last_status_code,
        last_error=view.delivery.last_error,
        next_attempt_time=next_attempt_time(view.delivery),
        create_time=view.message.created_at,
        attempt_log=[attempt_out(a) for a in view.attempts],
    )
