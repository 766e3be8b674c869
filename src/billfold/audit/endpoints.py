"""``GET /admin/v1/audit-events``: the audit trail, for the operator."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from billfold.audit.schemas import AuditEventList, audit_page_out
from billfold.audit.service import Cursor, audit_service
from billfold.kit.http import DbSession, parse_uuid, read_only
from billfold.kit.schemas import AwareUtc, WireRouter
from billfold.teams.auth import Operator

billing_router = WireRouter()  # none: the trail is the operator's
admin_router = WireRouter(dependencies=[Operator])


@admin_router.get("/admin/v1/audit-events", response_model=AuditEventList)
@read_only
def list_audit_events(
    session: DbSession,
    team_id: Annotated[str | None, Query(alias="teamId")] = None,
    since: Annotated[AwareUtc | None, Query()] = None,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 100,
    page_token: Annotated[str, Query(alias="pageToken")] = "",
) -> AuditEventList:
    """Recorded writes, oldest first from ``since`` (inclusive; RFC 3339), of one team with
    ``teamId``; ``nextPageToken`` continues. Polling with the last page's token follows the
    trail as it grows."""
    team = parse_uuid(team_id, "teamId") if team_id is not None else None
    after = Cursor.parse(page_token) if page_token else None
    events = audit_service.list(
        session, team_id=team, since=since, after=after, limit=page_size + 1
    )
    return audit_page_out(events, page_size)
