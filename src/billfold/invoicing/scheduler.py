"""Background tasks of a serving process (automatic cycle close when enabled).

With ``BILLFOLD_AUTO_CLOSE_CYCLES=true`` every serving process runs :func:`close_due_months` every
few minutes. A month is due once ``BILLFOLD_CLOSE_GRACE_HOURS`` have passed since its end (so late
events of its last hours still land). Several processes (``--workers N``, several hosts) may run
it at the same moment: cycle close is idempotent and locked per month and per team, and charges
are keyed by invoice id, so the work is done once whoever does it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.cycles.models import BillingCycle, ClosedPeriod
from billfold.cycles.periods import month_of, previous_month
from billfold.invoicing.service import CloseSummary, invoicing_service
from billfold.kit.background import periodic
from billfold.kit.clock import utc_now
from billfold.kit.db import transaction
from billfold.payments.provider import PaymentProvider

log = logging.getLogger("billfold.scheduler")

CHECK_INTERVAL_SECONDS = 300.0


def latest_due_month(now: datetime, grace_hours: int) -> tuple[int, int]:
    """The last month whose end lies at least ``grace_hours`` before ``now``."""
    return previous_month(*month_of(now - timedelta(hours=grace_hours)))


def due_months(session: Session, now: datetime, grace_hours: int) -> list[tuple[int, int]]:
    """Months to close now, oldest first: the latest due month unless it is closed already, and
    any older month that still has open cycles (the service was down, or auto close was just
    switched on)."""
    latest = latest_due_month(now, grace_hours)
    open_months = {
        (row.year, row.month)
        for row in session.execute(
            select(BillingCycle.year, BillingCycle.month)
            .where(BillingCycle.closed_at.is_(None))
            .distinct()
        )
    }
    due = {m for m in open_months if m <= latest}
    if session.get(ClosedPeriod, latest) is None:
        due.add(latest)
    return sorted(due)


def close_due_months(
    sessions: sessionmaker[Session], settings: Settings, provider: PaymentProvider
) -> list[CloseSummary]:
    with transaction(sessions) as session:
        months = due_months(session, utc_now(), settings.close_grace_hours)
    summaries = []
    for year, month in months:
        summary = invoicing_service.close_cycle(sessions, settings, provider, year, month)
        log.info(
            "closed %04d-%02d: %d invoices, %d cents",
            year,
            month,
            summary.totals.invoices,
            summary.totals.total,
        )
        summaries.append(summary)
    return summaries


@asynccontextmanager
async def background_tasks(app: FastAPI) -> AsyncIterator[None]:
    """Started with the app and stopped with it (see app.create_app's lifespan)."""
    settings: Settings = app.state.settings

    def close(_: threading.Event) -> None:  # a round is short: it is not cut off at stop
        close_due_months(app.state.sessionmaker, settings, app.state.payment_provider)

    # close is idempotent: a failed round is retried by the next one
    enabled = settings.auto_close_cycles
    async with periodic(app, "auto_close", CHECK_INTERVAL_SECONDS, close, log, enabled=enabled):
        yield
