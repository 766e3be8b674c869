from __future__ import annotations

from billfold.kit.schemas import WireModel


class RejectedEvent(WireModel):
    index: int
    event_id: str
    code: str
    error: str


class IngestResponse(WireModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]
