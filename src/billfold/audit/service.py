"""Listing the audit trail: oldest first from ``since``, a page at a time."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from billfold.kit.audit import AuditEvent
from billfold.kit.errors import InvalidField


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last row's ``(at, id)``, the table's own order."""

    at: datetime
    id: str

    def token(self) -> str:
        raw = f"{self.at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, event_id = raw.split("|", 1)
            parsed = datetime.fromisoformat(at)
            if parsed.tzinfo is None or not event_id.startswith("aud_"):
                raise ValueError(raw)
        except ValueError:  # also binascii.Error and UnicodeDecodeError
            raise InvalidField("pageToken", "is not a token this API issued") from None
        return cls(parsed, event_id)


class AuditService:
    def list(
        self,
        session: Session,
        *,
        team_id: uuid.UUID | None,
        since: datetime | None,
        after: Cursor | None,
        limit: int,
    ) -> list[AuditEvent]:
        """Up to ``limit`` events in the order they were recorded (``at``, then id), from
        ``since`` (inclusive) and after ``after``; of one team when ``team_id`` is given."""
        stmt = select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id).limit(limit)
        if team_id is not None:
            stmt = stmt.where(AuditEvent.team_id == team_id)
        if since is not None:
            stmt = stmt.where(AuditEvent.at >= since)
        if after is not None:
            stmt = stmt.where(
                or_(
                    AuditEvent.at > after.at,
                    and_(AuditEvent.at == after.at, AuditEvent.id > after.id),
                )
            )
        return list(session.scalars(stmt))


audit_service = AuditService()
