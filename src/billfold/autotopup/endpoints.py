"""Auto top-up settings per team (operator API)."""

from __future__ import annotations

from billfold.autotopup.schemas import (
    AutoTopupOut,
    AutoTopupRequest,
    auto_topup_config,
    auto_topup_out,
)
from billfold.autotopup.service import auto_topup_service
from billfold.kit.errors import BadRequest, ResourceNotFound
from billfold.kit.http import DbSession, parse_uuid, read_only
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.teams.auth import Operator

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


@admin_router.get(
    "/admin/v1/teams/{team_id}/auto-top-up",
    response_model=AutoTopupOut,
    responses=error_responses(ResourceNotFound),
)
@read_only
def get_auto_topup(team_id: str, session: DbSession) -> AutoTopupOut:
    """The team's auto top-up settings (off, with no figures, when never set)."""
    return auto_topup_out(auto_topup_service.get(session, parse_uuid(team_id)))


@admin_router.put(
    "/admin/v1/teams/{team_id}/auto-top-up",
    response_model=AutoTopupOut,
    responses=error_responses(BadRequest, ResourceNotFound),
)
def put_auto_topup(team_id: str, body: AutoTopupRequest, session: DbSession) -> AutoTopupOut:
    """Replace the team's auto top-up settings. On needs a default payment method (else 400);
    turning it on again clears the failures in a row."""
    view = auto_topup_service.set(session, parse_uuid(team_id), auto_topup_config(body))
    return auto_topup_out(view)
