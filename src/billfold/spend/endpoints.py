"""HTTP surface of spending: the limits (customers, operator) and the spend check (operator)."""

from __future__ import annotations

import uuid

from fastapi import Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from billfold.kit.errors import (
    ResourceNotFound,
    ServiceUnavailable,
    Unauthorized,
)
from billfold.kit.http import (
    DbSession,
    credentials_accepted,
    credentials_failed,
    parse_uuid,
    screened_bearer,
)
from billfold.kit.money import Cents
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter, cent
from billfold.spend.gateway import spend_answer, spend_status_json
from billfold.spend.schemas import (
    SetHardLimitRequest,
    SetSoftLimitRequest,
    SetSoftLimitResponse,
    SpendingLimitsResponse,
    SpendStatusOut,
    limits_out,
)
from billfold.spend.service import spend_service
from billfold.teams.auth import AppSettings, BillingRead, BillingWrite, Operator
from billfold.teams.service import OperatorTokenService

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])
# The spend check's router, included ahead of every other route (app.py): FastAPI tries
# routes in order, and each one tried first costs every check a few us.
gateway_router = WireRouter()

# The spend check is the one route on the platform's hot path, and it is built for that
# (spend/gateway.py has the whole story):
# * most checks never reach this route: GatewayMiddleware answers them before FastAPI's routing,
#   from the process's cache of answers or with one read. This route answers the rest -- a
#   generated operator token, SQLite, errors, a grant expiry to book -- the same way;
# * it does not go through admin_router, whose dependency chain (the request session, the settings,
#   the operator check) costs five hops to worker threads and a transaction per call. This router
#   has no dependency; the route checks the operator token itself (require_operator): the
#   operator token only, never a management key;
# * the read is one prepared statement, one round trip, on connections of its own that are never
#   pinged (spend/reader.py); on PostgreSQL it runs on the event loop: the indexed statement
#   (~65 us) costs less than the hop to a worker thread and back. Anything that can wait -- a
#   SQLite read (the write lock), booking a due credit expiry (the account lock) -- runs in the
#   thread pool as usual.


@billing_router.get(
    "/v1/billing/teams/{team_id}/postpaid/spending-limits",
    response_model=SpendingLimitsResponse,
)
def get_spending_limits(
    scope: BillingRead, session: DbSession, settings: AppSettings
) -> SpendingLimitsResponse:
    limits = spend_service.limits(session, settings, scope.team_id)
    return SpendingLimitsResponse(spending_limits=limits_out(limits))


@billing_router.post(
    "/v1/billing/teams/{team_id}/postpaid/spending-limits",
    response_model=SetSoftLimitResponse,
)
def set_spending_limit(
    body: SetSoftLimitRequest, scope: BillingWrite, session: DbSession, settings: AppSettings
) -> SetSoftLimitResponse:
    soft = spend_service.set_soft_limit(
        session, settings, scope.team_id, Cents(body.desired_soft_spending_limit.val)
    )
    return SetSoftLimitResponse(this_bp_soft_spending_limit=cent(soft))


# Bound to no engine, so it can run no query: OperatorTokenService.check compares a configured
# token in memory and never touches its session (were that to change, this would fail loudly).
# Creating and closing a session per check cost ~20-40 us of CPU.
_NO_DATABASE = Session()


def require_operator(request: Request) -> None:
    """teams.auth.operator without the request's transaction: a configured token is compared in
    memory, without a session; a generated one is looked up in a short session of its own."""
    token = screened_bearer(request)  # rate limits: before any database work
    state = request.app.state
    tokens = OperatorTokenService(state.settings.admin_token)
    if tokens.configured:
        ok = tokens.check(_NO_DATABASE, token)
    else:
        with state.sessionmaker() as session:
            ok = tokens.check(session, token)
    if not ok:
        credentials_failed(request)
        raise Unauthorized("unknown operator token", code="invalid_operator_token")
    credentials_accepted(request, token, "spend_check", token)


def checked_spend_answer(request: Request) -> tuple[uuid.UUID, bytes | None]:
    require_operator(request)
    team_id = parse_uuid(request.path_params["team_id"])
    return team_id, spend_answer(request.app.state, team_id)


# The team id is read from the matched path, not declared as a parameter: FastAPI's validation of
# a declared one costs more than the rest of the route's plumbing (openapi_extra documents it).
@gateway_router.get(
    "/admin/v1/teams/{team_id}/spend-status",
    response_model=SpendStatusOut,
    tags=["operator"],
    # The token is checked by checked_spend_answer, not by a dependency: declared here.
    responses=error_responses(ResourceNotFound, ServiceUnavailable),
    openapi_extra={
        "security": [{"operatorToken": []}],
        "parameters": [
            {
                "name": "team_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "title": "Team Id"},
            }
        ],
    },
)
async def spend_status(request: Request) -> Response:
    state = request.app.state
    if spend_service.reads_inline(state.engine):
        team_id, body = checked_spend_answer(request)
    else:
        team_id, body = await run_in_threadpool(checked_spend_answer, request)
    if body is None:
        decision = await run_in_threadpool(
            spend_service.spend_status_booking_expiry,
            state.sessionmaker,
            state.settings,
            team_id,
        )
        body = spend_status_json(decision)
        if state.spend_checks is not None:
            state.spend_checks.count(body, cached=False)
    return Response(body, media_type="application/json")


@admin_router.put(
    "/admin/v1/teams/{team_id}/hard-spending-limit",
    response_model=SpendingLimitsResponse,
    responses=error_responses(ResourceNotFound),
)
def set_hard_spending_limit(
    team_id: str, body: SetHardLimitRequest, session: DbSession, settings: AppSettings
) -> SpendingLimitsResponse:
    amount = None if body.amount is None else Cents(body.amount)
    limits = spend_service.set_hard_limit(session, settings, parse_uuid(team_id), amount)
    return SpendingLimitsResponse(spending_limits=limits_out(limits))
