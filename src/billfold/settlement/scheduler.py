"""Every serving process reconciles pending charges and refunds every few minutes (with Stripe)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from billfold.config import Settings
from billfold.kit.background import periodic
from billfold.settlement.reconcile import reconcile

log = logging.getLogger("billfold.reconcile")

RECONCILE_INTERVAL_SECONDS = 180.0


@asynccontextmanager
async def reconcile_tasks(app: FastAPI) -> AsyncIterator[None]:
    """Settles charges pending longer than BILLFOLD_STRIPE_PENDING_AFTER_SECONDS. Safe in several
    processes at once: settling is idempotent under the record's row lock, and a stored
    PaymentIntent is only ever retrieved or confirmed, never created again. Off with the sandbox
    (its pending top-ups are resolved by the team's next call, as before)."""
    settings: Settings = app.state.settings
    older_than = timedelta(seconds=settings.stripe_pending_after_seconds)

    def work(_: threading.Event) -> None:
        report = reconcile(app.state.sessionmaker, app.state.payment_provider, older_than)
        if report.settled:
            log.info("reconciled: %s", "; ".join(report.settled))

    enabled = settings.payment_provider == "stripe"
    async with periodic(app, "reconcile", RECONCILE_INTERVAL_SECONDS, work, log, enabled=enabled):
        yield
