"""Outbox retention (notifications/retention.py): delivered messages go after
``BILLFOLD_OUTBOX_RETENTION_DAYS`` with their deliveries and attempt log; a message with a
delivery still pending stays, and so does every younger one. On both databases."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.kit.db import make_engine
from billfold.notifications.models import WebhookAttempt, WebhookDelivery
from billfold.notifications.retention import purge_delivered
from billfold.outbox.models import OutboxMessage
from tests.conftest import Api, frozen_at
from tests.notifications.conftest import Hooks, of_team
from tests.notifications.receiver import receiver
from tests.notifications.test_crossings import Team


def counts(api: Api, team_ids: list[str]) -> dict[str, int]:
    engine = make_engine(api.url, pool_size=1)
    try:
        with Session(engine) as session:
            ids = select(OutboxMessage.id).where(
                OutboxMessage.team_id.in_([uuid.UUID(t) for t in team_ids])
            )
            return {
                "messages": session.scalar(
                    select(func.count()).select_from(OutboxMessage).where(OutboxMessage.id.in_(ids))
                )
                or 0,
                "deliveries": session.scalar(
                    select(func.count())
                    .select_from(WebhookDelivery)
                    .where(WebhookDelivery.message_id.in_(ids))
                )
                or 0,
                "attempts": session.scalar(
                    select(func.count())
                    .select_from(WebhookAttempt)
                    .where(WebhookAttempt.message_id.in_(ids))
                )
                or 0,
            }
    finally:
        engine.dispose()


def age(api: Api, team_ids: list[str], days: int) -> None:
    """Move the teams' messages' fan-out ``days`` back (retention runs on the wall clock)."""
    engine = make_engine(api.url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.team_id.in_([uuid.UUID(t) for t in team_ids]))
                .values(dispatched_at=datetime.now(UTC) - timedelta(days=days))
            )
    finally:
        engine.dispose()


def test_delivered_messages_go_after_the_retention_and_pending_ones_stay(
    api: Api, hooks: Hooks
) -> None:
    app: Any = api.client.app
    settings: Settings = app.state.settings.model_copy(update={"outbox_retention_days": 30})
    with receiver() as rx:
        hooks.create(rx.url, ["spend.threshold_reached"])
        with frozen_at("2062-04-10T12:00:00"):
            old, young, slow = (Team(api, "2062-04") for _ in range(3))
            for team in (old, young):
                team.hard_limit(1000)
                team.use(600)
            rx.wait(1, of_team(old.id))
            rx.wait(1, of_team(young.id))
            rx.delay = 4.0  # the next delivery stays pending (in flight) for a while
            slow.hard_limit(1000)
            slow.use(600)
            deadline = time.monotonic() + 10
            while len(rx.arrivals) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert counts(api, [old.id]) == {"messages": 1, "deliveries": 1, "attempts": 1}
        age(api, [old.id, slow.id], days=31)
        age(api, [young.id], days=29)

        purge_delivered(app.state.sessionmaker, settings)
        assert counts(api, [old.id]) == {"messages": 0, "deliveries": 0, "attempts": 0}
        assert counts(api, [young.id])["messages"] == 1
        assert counts(api, [slow.id])["messages"] == 1  # its delivery is still pending
        off = settings.model_copy(update={"outbox_retention_days": 0})
        age(api, [young.id], days=400)
        assert purge_delivered(app.state.sessionmaker, off) == 0  # 0 keeps everything
        assert counts(api, [young.id])["messages"] == 1
        rx.delay = 0.0
