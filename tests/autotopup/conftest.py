"""Helpers of the auto top-up tests: settings through the operator API, the team's auto top-ups
and events as stored, and waiting for the serving process's charger.

Usage here lives in 2063 and 2064 (under ``clock.frozen``), years of these tests alone."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select

from billfold.ledger.schemas import AUTO_PURCHASE, TO_CHARGE
from billfold.outbox.models import OutboxMessage
from billfold.topups.models import Topup
from tests.conftest import Api
from tests.ledger.conftest import session_of


def put_settings(api: Api, team_id: str, **body: Any) -> Any:
    return api.admin("PUT", f"/admin/v1/teams/{team_id}/auto-top-up", json=body)


def get_settings(api: Api, team_id: str) -> dict[str, Any]:
    response = api.admin("GET", f"/admin/v1/teams/{team_id}/auto-top-up")
    assert response.status_code == 200, response.text
    return dict(response.json())


def enable(api: Api, team_id: str, **body: Any) -> dict[str, Any]:
    response = put_settings(api, team_id, enabled=True, **body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def auto_topups(api: Api, team_id: str) -> list[Topup]:
    with session_of(api) as session:
        return list(
            session.scalars(
                select(Topup)
                .where(Topup.team_id == uuid.UUID(team_id), Topup.origin == AUTO_PURCHASE)
                .order_by(Topup.created_at, Topup.id)
            )
        )


def settled(api: Api, team_id: str, count: int, timeout: float = 30.0) -> list[Topup]:
    """The team's auto top-ups once there are ``count`` and none is pending (the app's charger
    charges them in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        found = auto_topups(api, team_id)
        if len(found) == count and all(t.status != TO_CHARGE for t in found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not {count} settled auto top-ups: {found}")
        time.sleep(0.05)


def events(api: Api, team_id: str, prefix: str = "auto_topup.") -> list[OutboxMessage]:
    with session_of(api) as session:
        return list(
            session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.team_id == uuid.UUID(team_id),
                    OutboxMessage.type.startswith(prefix),
                )
                .order_by(OutboxMessage.created_at, OutboxMessage.id)
            )
        )
