"""The wire of the audit trail."""

from __future__ import annotations

from billfold.audit.service import Cursor
from billfold.kit.audit import AuditEvent
from billfold.kit.schemas import UtcDateTime, WireModel


class AuditEventOut(WireModel):
    event_id: str
    time: UtcDateTime
    actor_kind: str
    actor_id: str
    team_id: str | None = None
    action: str
    targets: dict[str, str]
    request_id: str | None = None
    status: int | None = None


class AuditEventList(WireModel):
    events: list[AuditEventOut]
    next_page_token: str = ""


def audit_event_out(event: AuditEvent) -> AuditEventOut:
    return AuditEventOut(
        event_id=event.id,
        time=event.at,
        actor_kind=event.actor_kind,
        actor_id=event.actor_id,
        team_id=str(event.team_id) if event.team_id is not None else None,
        action=event.action,
        targets={k: str(v) for k, v in event.targets.items()},
        request_id=event.request_id,
        status=event.status,
    )


def audit_page_out(events: list[AuditEvent], page_size: int) -> AuditEventList:
    """One page, read one past ``page_size``: that extra event says another page follows."""
    page = events[:page_size]
    more = len(events) > page_size
    return AuditEventList(
        events=[audit_event_out(e) for e in page],
        next_page_token=Cursor(page[-1].at, page[-1].id).token() if more else "",
    )
