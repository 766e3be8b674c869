"""``enqueue``: write an event into the caller's transaction (a plain insert, no I/O)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy.orm import Session

from billfold.kit.clock import utc_now
from billfold.outbox.models import OutboxMessage


def new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def enqueue(
    session: Session, type: str, team_id: uuid.UUID | None, data: dict[str, Any]
) -> OutboxMessage:
    """Add the event ``type`` with ``data`` to the session: it is committed (or rolled back) with
    the change that causes it, so it is never lost and never announces what did not happen.
    ``data`` must be JSON (amounts as cent strings); ``teamId`` is added when a team is given."""
    if team_id is not None:
        data = {"teamId": str(team_id), **data}
    message = OutboxMessage(
        id=new_message_id(), type=type, team_id=team_id, data=data, created_at=utc_now()
    )
    session.add(message)
    return message
