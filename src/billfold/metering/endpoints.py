"""HTTP surface of metering: the operator's ingestion and the customer's usage analytics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from fastapi import Depends, Request
from fastapi.responses import Response
from pydantic_core import from_json
from starlette.concurrency import run_in_threadpool

from billfold.kit.errors import BadRequest, Conflict
from billfold.kit.http import DbSession, ReplicaSession, read_only
from billfold.kit.openapi import error_responses, request_body
from billfold.kit.ratelimit import budget
from billfold.kit.schemas import WireRouter
from billfold.metering.analytics.query import parse_query
from billfold.metering.analytics.reader import usage_analytics
from billfold.metering.cancellation import cancellation_service
from billfold.metering.events import json_keeping_lone_surrogates
from billfold.metering.schemas import (
    CancelRequest,
    CancelResponse,
    IngestResponse,
    UsageAnalyticsRequest,
    UsageAnalyticsResponse,
    UsageEventBatch,
    WireBatch,
    analytics_json,
    cancel_out,
    ingest_out,
)
from billfold.metering.service import cyclic_gc_paused, metering_service
from billfold.teams.auth import AppSettings, BillingRead, Operator

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


_PARSE_INLINE_BYTES = 64 * 1024  # ~250 events: parsed in well under a millisecond


async def ingest_slot(request: Request) -> AsyncIterator[None]:
    """One of the process's few ingestion slots, taken before the body is read.

    A batch in flight holds its body, its parsed events and its rows (~15 MB for 10,000 events);
    bounding the batches a process works on at once bounds its memory, whatever the number of
    clients (BILLFOLD_INGEST_CONCURRENCY; more would not be faster: the work is CPU and database
    bound). Waiting callers queue here, before reading their bodies.
    """
    slots: asyncio.Semaphore | None = getattr(request.app.state, "ingest_slots", None)
    if slots is None:  # created on first use, on the loop that serves the app
        slots = request.app.state.ingest_slots = asyncio.Semaphore(
            request.app.state.settings.ingest_concurrency
        )
    async with slots:
        yield


async def event_batch(
    request: Request, _: Annotated[None, Depends(ingest_slot, scope="function")]
) -> list[Any]:
    """The ``events`` array of the body: :class:`WireEvent` objects when every event has the
    expected JSON types (the usual batch), else plain JSON values, which the service checks one
    by one (so one malformed event is rejected alone, with its index).

    Neither way builds a pydantic model per event. The plain parser is pydantic-core's (jiter),
    which builds Python objects directly (orjson first builds a document of its own: 4x the
    memory of its result for a 10,000-event body).
    """
    body = await request.body()  # its size is capped by kit.limits.BodySizeLimit
    try:
        if len(body) < _PARSE_INLINE_BYTES:
            return decode_event_batch(body)
        # Decoding a 10,000-event body takes 5-10 ms: on the event loop, every spend check of
        # this process would wait that long; in a thread, the loop gets the GIL back at every
        # switch interval.
        return await run_in_threadpool(decode_event_batch, body)
    except ValueError:
        raise BadRequest(
            "request body is not valid JSON", code="invalid_json", field="body"
        ) from None


def decode_event_batch(body: bytes) -> list[Any]:
    # The collector paused as for the rest of the batch (metering.service.cyclic_gc_paused): a
    # batch's properties are 10,000 new dicts, which made collections start here, in the thread
    # pool, before the service pauses it.
    with cyclic_gc_paused():
        return _decode_event_batch(body)


def _decode_event_batch(body: bytes) -> list[Any]:
    try:
        return _BATCH.decode(body).events
    # Malformed JSON, a value of another type, a field it does not know, or nesting deeper than
    # msgspec recurses: the plain parser looks closer (and says 400 for what is not JSON).
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        payload = from_json(body, allow_inf_nan=False)  # raises ValueError when not JSON
    except ValueError as exc:
        if not str(exc).startswith(_SURROGATE_ERRORS):
            raise
        payload = _lenient_json(body)
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list):
        raise BadRequest(
            "events: must be an array of events", code="invalid_argument", field="events"
        )
    return events


# pydantic-core's errors for an escaped lone surrogate (a high one not followed by a low one, or
# a low one alone)
_SURROGATE_ERRORS = ("unexpected end of hex escape", "lone leading surrogate")
_MAX_DEPTH = 201  # the deepest nesting pydantic-core reads


def _lenient_json(body: bytes) -> Any:
    """The body read by :func:`json_keeping_lone_surrogates`, only for a body both fast parsers
    refused for an escaped lone surrogate: the usual batch never comes here. Otherwise it
    refuses what pydantic-core refuses: ``NaN`` and ``Infinity``, invalid UTF-8, nesting deeper
    than 201 levels."""
    try:
        payload = json_keeping_lone_surrogates(body)
    except RecursionError:  # nesting deeper than the interpreter recurses
        raise ValueError("the JSON nests too deep") from None
    if _too_deep(payload, _MAX_DEPTH):
        raise ValueError("the JSON nests too deep")
    return payload


def _too_deep(value: Any, levels: int) -> bool:
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    return levels <= 0 or any(_too_deep(child, levels - 1) for child in children)


_BATCH = msgspec.json.Decoder(WireBatch)


@admin_router.post(
    "/admin/v1/usage-events",
    response_model=IngestResponse,
    openapi_extra=request_body(UsageEventBatch),  # the body is read by event_batch, not FastAPI
)
@budget("ingest")  # the operator token's own ingestion budget: never throttled by a dashboard
def ingest_usage(
    events: Annotated[list[Any], Depends(event_batch)],
    session: DbSession,
    settings: AppSettings,
) -> IngestResponse:
    return ingest_out(metering_service.ingest(session, settings, events))


@admin_router.post(
    "/admin/v1/usage-events/cancel",
    response_model=CancelResponse,
    responses=error_responses(Conflict),
)
def cancel_usage(body: CancelRequest, session: DbSession, settings: AppSettings) -> CancelResponse:
    """Cancel usage events of open billing cycles (metering/cancellation.py)."""
    return cancel_out(cancellation_service.cancel(session, settings, body.events, body.reason))


@billing_router.post(
    "/v1/billing/teams/{team_id}/usage",
    response_model=None,
    responses={200: {"model": UsageAnalyticsResponse}},
)
@read_only
def usage_analytics_endpoint(
    body: UsageAnalyticsRequest,
    scope: BillingRead,
    session: ReplicaSession,
    settings: AppSettings,
) -> Response:
    """Analytics over the team's rated usage (billing-api §13), read on the read replica when
    one is configured (``BILLFOLD_READ_DATABASE_URL``): they may lag the primary by its replay
    delay; the key and the team are checked on the primary."""
    query = parse_query(body.analytics_request, settings, scope.team_id)
    result = usage_analytics.run(session, settings, query)
    return Response(analytics_json(result), media_type="application/json")
