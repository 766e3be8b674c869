"""Several deliverers on one PostgreSQL database share the work: a claim skips the deliveries
another deliverer has locked (FOR UPDATE SKIP LOCKED), and a leased delivery is not due again
until its lease ends."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from billfold.config import Settings
from billfold.kit.db import make_engine, make_sessionmaker, transaction
from billfold.migrate import upgrade
from billfold.notifications.models import WebhookDelivery
from billfold.notifications.service import webhook_service
from billfold.outbox.writer import enqueue


@pytest.mark.postgres_only
def test_concurrent_claims_take_disjoint_deliveries(fresh_postgres_url: str) -> None:
    """Row locks: PostgreSQL only (SQLite serializes claims on its write lock)."""
    fresh_url = fresh_postgres_url
    engine = make_engine(fresh_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    settings = Settings(database_url=fresh_url, webhook_lease_seconds=1)
    try:
        with transaction(sessions) as session:
            endpoint = webhook_service.create(
                session, settings, "https://hooks.example/a", ["*"], ""
            )
            for n in range(10):
                enqueue(session, "billing_cycle.closed", None, {"n": n})
        with transaction(sessions) as session:
            assert webhook_service.fan_out(session, settings) == 10
            assert webhook_service.fan_out(session, settings) == 0  # dispatched once

        wide = settings.model_copy(update={"webhook_endpoint_concurrency": 100})
        first = sessions()
        try:
            held = webhook_service.claim(first, wide, 4, {})  # not committed: rows stay locked
            with transaction(sessions) as other:
                rest = webhook_service.claim(other, wide, 100, {})
            first.commit()
        finally:
            first.close()
        assert len(held) == 4 and len(rest) == 6
        assert not {j.message_id for j in held} & {j.message_id for j in rest}
        assert all(j.endpoint_id == endpoint.id for j in held + rest)

        with transaction(sessions) as session:
            assert webhook_service.claim(session, wide, 100, {}) == []  # all leased
        time.sleep(1.2)
        with transaction(sessions) as session:  # the lease ran out: due again (sender died)
            assert len(webhook_service.claim(session, wide, 100, {})) == 10
            states = set(session.scalars(select(WebhookDelivery.state)))
        assert states == {"pending"}
    finally:
        engine.dispose()
