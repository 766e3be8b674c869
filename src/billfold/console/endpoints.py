"""The console's operator route: one-time sign-in links (operator-api.md, "Console links")."""

from __future__ import annotations

from billfold.console.schemas import ConsoleLinkOut, ConsoleLinkRequest, link_out
from billfold.console.service import console_service
from billfold.kit.errors import ResourceNotFound
from billfold.kit.http import DbSession, parse_uuid
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.teams.auth import Operator

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


@admin_router.post(
    "/admin/v1/teams/{team_id}/console-links",
    status_code=201,
    response_model=ConsoleLinkOut,
    responses=error_responses(ResourceNotFound),
)
def create_console_link(
    team_id: str, body: ConsoleLinkRequest, session: DbSession
) -> ConsoleLinkOut:
    """A one-time sign-in link to the team's console: the token is stored hashed, expires after
    ``ttlMinutes`` (1 to 10080, default 60) and works once."""
    return link_out(console_service.issue_link(session, parse_uuid(team_id), body.ttl_minutes))
