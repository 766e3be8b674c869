"""HTTP surface of webhook endpoints (operator API only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, Response

from billfold.config import Settings
from billfold.kit.errors import ResourceNotFound
from billfold.kit.http import DbSession, read_only
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.notifications.schemas import (
    CreateEndpointRequest,
    DeliveryList,
    DeliveryOut,
    EndpointList,
    EndpointWithSecret,
    delivery_out,
    endpoint_out,
    endpoint_with_secret,
)
from billfold.notifications.service import wall_clock, webhook_service
from billfold.teams.auth import Operator

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])

BASE = "/admin/v1/webhook-endpoints"


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@admin_router.post(BASE, status_code=201, response_model=EndpointWithSecret)
def create_webhook_endpoint(
    body: CreateEndpointRequest, request: Request, session: DbSession
) -> EndpointWithSecret:
    endpoint = webhook_service.create(
        session, _settings(request), body.url, body.event_types, body.description
    )
    return endpoint_with_secret(endpoint, wall_clock())


@admin_router.get(BASE, response_model=EndpointList)
@read_only
def list_webhook_endpoints(session: DbSession) -> EndpointList:
    now = wall_clock()
    return EndpointList(
        webhook_endpoints=[endpoint_out(e, now) for e in webhook_service.endpoints(session)]
    )


@admin_router.delete(
    BASE + "/{endpoint_id}", status_code=204, responses=error_responses(ResourceNotFound)
)
def delete_webhook_endpoint(endpoint_id: str, session: DbSession) -> Response:
    webhook_service.delete(session, endpoint_id)
    return Response(status_code=204)


@admin_router.post(
    BASE + "/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    responses=error_responses(ResourceNotFound),
)
def rotate_webhook_secret(
    endpoint_id: str, request: Request, session: DbSession
) -> EndpointWithSecret:
    endpoint = webhook_service.rotate_secret(session, _settings(request), endpoint_id)
    return endpoint_with_secret(endpoint, wall_clock())


@admin_router.get(
    BASE + "/{endpoint_id}/deliveries",
    response_model=DeliveryList,
    responses=error_responses(ResourceNotFound),
)
@read_only
def list_webhook_deliveries(
    endpoint_id: str,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryList:
    views = webhook_service.deliveries(session, endpoint_id, limit)
    return DeliveryList(deliveries=[delivery_out(v) for v in views])


@admin_router.post(
    BASE + "/{endpoint_id}/deliveries/{message_id}/retry",
    response_model=DeliveryOut,
    responses=error_responses(ResourceNotFound),
)
def retry_webhook_delivery(endpoint_id: str, message_id: str, session: DbSession) -> DeliveryOut:
    return delivery_out(webhook_service.retry(session, endpoint_id, message_id))
