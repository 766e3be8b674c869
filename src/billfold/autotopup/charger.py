"""The charger: serving processes charge the pending auto top-ups.

Every serving process runs it (``BILLFOLD_AUTO_TOPUP_CHARGE``, on by default), as a periodic
job of the app's lifespan (kit/background.py), every ``BILLFOLD_AUTO_TOPUP_POLL_SECONDS``; any
number may run against one database, as the webhook deliverer does (notifications/delivery.py):

1. a cheap read: is a pending auto top-up due? (an idle charger takes no write lock);
2. **claim** (short transaction): due pending auto top-ups, ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL (SQLite's write lock serializes claims), leased by moving ``lease_until``
   ``BILLFOLD_AUTO_TOPUP_LEASE_SECONDS`` ahead (wall clock). A process killed mid-charge leaves
   its claim due again when the lease ends;
3. each claimed top-up is charged outside any transaction and settled by
   ``TopupService.resolve``: the provider is first asked whether a charge with the top-up's id
   as idempotency key exists (the sandbox), or the stored PaymentIntent is confirmed (Stripe:
   created and its id committed before confirming); so a retry never charges twice.

A top-up the provider leaves pending (Stripe's ``requires_action``/``processing``, or no answer)
stays ``TO_CHARGE``: Stripe's webhook, reconciliation or the next lease settles it.
``billfold auto-top-up charge`` runs one round by hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.kit.background import periodic
from billfold.kit.db import transaction
from billfold.ledger.schemas import AUTO_PURCHASE, TO_CHARGE
from billfold.payments.provider import PaymentProvider
from billfold.topups.models import Topup
from billfold.topups.service import topup_service

log = logging.getLogger("billfold.autotopup")

CHARGE_BATCH = 20  # claimed per round and process


def wall_clock() -> datetime:
    """Leases run on the wall clock, not Billfold's (tests freeze that in other years)."""
    return datetime.now(UTC)


def _due(now: datetime, provider: str) -> ColumnElement[bool]:
    """Pending auto top-ups of this provider (a method of another provider -- a deployment that
    moved from the sandbox to Stripe -- is not this process's to charge), not leased."""
    return and_(
        Topup.origin == AUTO_PURCHASE,
        Topup.provider == provider,
        Topup.status == TO_CHARGE,
        or_(Topup.lease_until.is_(None), Topup.lease_until <= now),
    )


def claim(
    sessions: sessionmaker[Session], provider: str, lease: timedelta, limit: int
) -> list[Topup]:
    """Step 2: lease due pending auto top-ups to this process, in a short transaction."""
    now = wall_clock()
    with transaction(sessions) as session:
        claimed = list(
            session.scalars(
                select(Topup)
                .where(_due(now, provider))
                .order_by(Topup.created_at, Topup.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for topup in claimed:
            topup.lease_until = now + lease
    return claimed


def charge_due(
    sessions: sessionmaker[Session],
    read_sessions: sessionmaker[Session],
    provider: PaymentProvider,
    settings: Settings,
    stopping: threading.Event | None = None,
) -> list[Topup]:
    """One round: claim due pending auto top-ups and charge each; returns them as they end
    (SUCCEEDED, FAILED_TO_CHARGE, or still TO_CHARGE when the provider has not decided)."""
    with transaction(read_sessions) as session:
        if (
            session.scalar(select(Topup.id).where(_due(wall_clock(), provider.name)).limit(1))
            is None
        ):
            return []
    lease = timedelta(seconds=settings.auto_topup_lease_seconds)
    done = []
    for topup in claim(sessions, provider.name, lease, CHARGE_BATCH):
        if stopping is not None and stopping.is_set():
            break  # the rest stay leased and are charged after the lease by any process
        ended = topup_service.resolve(sessions, provider, topup)
        log.info("auto top-up %s of team %s: %s", ended.id, ended.team_id, ended.status)
        done.append(ended)
    return done


@asynccontextmanager
async def auto_topup_charging(app: FastAPI) -> AsyncIterator[None]:
    """Started with the app and stopped with it (see app.create_app's lifespan)."""
    settings: Settings = app.state.settings

    def work(stopping: threading.Event) -> None:
        charge_due(
            app.state.sessionmaker,
            app.state.read_sessionmaker,
            app.state.payment_provider,
            settings,
            stopping,
        )

    async with periodic(
        app,
        "auto_topup",
        settings.auto_topup_poll_seconds,
        work,
        log,
        enabled=settings.auto_topup_charge,
    ):
        yield
