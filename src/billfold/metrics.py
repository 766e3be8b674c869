"""``GET /metrics``: every worker's counters (kit/metrics.py) and the figures only the database
knows, read at scrape time.

Pending charges and the outbox are facts of the database, shared by every process: they are read
by the scraping process in one statement (a handful of indexed counts and minimums) instead of
being kept per process, so every scrape shows the same truth whichever worker answers it. The
per-process gauges -- the pool's use, the spend cache's lease -- are set by each process (every
second; the spend cache at each of its ticks) and summed by the scrape. Every second, too, each
process adds its per-request tallies (kept in plain numbers on the hot path: kit/metrics.py) to
the shared values; a scrape flushes its own process's first.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from billfold.invoicing.models import PENDING as INVOICE_PENDING
from billfold.invoicing.models import Invoice
from billfold.kit.errors import Unauthorized
from billfold.kit.http import credentials_failed, screened_bearer
from billfold.kit.metrics import (
    CONTENT_TYPE,
    RequestMetrics,
    process_started,
    process_stopped,
    sample_pool,
    scrape,
)
from billfold.ledger.schemas import TO_CHARGE
from billfold.notifications.models import EmailDelivery, WebhookDelivery
from billfold.outbox.models import OutboxMessage
from billfold.spend.gateway import SpendCheckCounter
from billfold.spend.service import spend_service
from billfold.topups.models import Refund, Topup
from billfold.topups.refunds import PENDING as REFUND_PENDING

SAMPLE_EVERY = 1.0  # seconds between a process's samples of its pool


def install_metrics(app: FastAPI) -> RequestMetrics | None:
    """Add ``GET /metrics`` and the counters' per-app parts; None when BILLFOLD_METRICS=false
    (then nothing is counted on the request paths and the route does not exist)."""
    settings = app.state.settings
    if not settings.metrics:
        app.state.spend_checks = None
        return None
    request_metrics = app.state.request_metrics = RequestMetrics()
    app.state.spend_checks = SpendCheckCounter(spend_service.reads_inline(app.state.engine))
    token = settings.metrics_token.encode() if settings.metrics_token else None
    figures = DatabaseFigures(app.state.read_sessionmaker)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if token is not None:
            given = screened_bearer(request)  # rate limits: a wrong token is a failed login
            if not hmac.compare_digest(given.encode(), token):
                credentials_failed(request)
                raise Unauthorized("wrong metrics token", code="invalid_metrics_token")
        flush(request.app)  # on the loop, where the request path counts
        body = await run_in_threadpool(scrape, [figures])  # reads files and the database
        return Response(body, media_type=CONTENT_TYPE)

    return request_metrics


def flush(app: FastAPI) -> None:
    """This process's per-request tallies into the shared values (on the event loop)."""
    app.state.request_metrics.flush()
    app.state.spend_checks.flush()


@asynccontextmanager
async def process_metrics(app: FastAPI) -> AsyncIterator[None]:
    """For the app's lifespan: every second, this process's per-request tallies flushed and its
    gauges (its pool, alive) sampled; a last flush at exit."""
    if not app.state.settings.metrics:
        yield
        return
    pool = app.state.engine.pool
    process_started()

    async def sample() -> None:
        while True:
            flush(app)
            sample_pool(pool)
            await asyncio.sleep(SAMPLE_EVERY)

    task = asyncio.create_task(sample(), name="billfold-metrics-sample")
    try:
        yield
    finally:
        task.cancel()
        flush(app)
        process_stopped()


class DatabaseFigures(Collector):
    """What the database knows, in one statement: charges waiting on the payment provider, and
    the outbox's backlog with its lag (the age of the oldest message still waiting)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterable[Any]:
        with self.sessions() as session:
            row = session.execute(_FIGURES).one()
        (topups, invoices, refunds, undispatched, oldest_undispatched) = row[:5]
        (webhooks, oldest_webhook, emails, oldest_email) = row[5:]
        now = datetime.now(UTC)  # the wall clock, as the deliverer's scheduling

        pending = GaugeMetricFamily(
            "billfold_pending_charges",
            "Charges waiting on the payment provider's answer (reconciliation settles old ones).",
            labels=["kind"],
        )
        pending.add_metric(["topup"], topups)
        pending.add_metric(["invoice"], invoices)
        pending.add_metric(["refund"], refunds)
        yield pending
        yield GaugeMetricFamily(
            "billfold_outbox_undispatched_messages",
            "Outbox messages not yet fanned out to their deliveries.",
            value=undispatched,
        )
        deliveries = GaugeMetricFamily(
            "billfold_outbox_pending_deliveries",
            "Deliveries waiting to be sent or retried, by channel.",
            labels=["channel"],
        )
        deliveries.add_metric(["webhook"], webhooks)
        deliveries.add_metric(["email"], emails)
        yield deliveries
        lag = GaugeMetricFamily(
            "billfold_outbox_delivery_lag_seconds",
            "Age of the oldest message still waiting: at fan-out, or for a webhook or e-mail "
            "delivery (0 when none waits).",
            labels=["stage"],
        )
        for stage, oldest in (
            ("fanout", oldest_undispatched),
            ("webhook", oldest_webhook),
            ("email", oldest_email),
        ):
            lag.add_metric([stage], _age(now, oldest))
        yield lag


def _age(now: datetime, oldest: datetime | None) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # a min() over SQLite's column comes back naive UTC
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (now - oldest).total_seconds())


def _oldest_message(delivery: Any) -> Any:
    return (
        select(func.min(OutboxMessage.created_at))
        .join(delivery, delivery.message_id == OutboxMessage.id)
        .where(delivery.state == "pending")
        .scalar_subquery()
    )


_FIGURES = select(
    select(func.count()).where(Topup.status == TO_CHARGE).scalar_subquery(),
    select(func.count())
    .where(Invoice.status == INVOICE_PENDING, Invoice.provider_charge_id.is_not(None))
    .scalar_subquery(),
    select(func.count()).where(Refund.status == REFUND_PENDING).scalar_subquery(),
    select(func.count()).where(OutboxMessage.dispatched_at.is_(None)).scalar_subquery(),
    select(func.min(OutboxMessage.created_at))
    .where(OutboxMessage.dispatched_at.is_(None))
    .scalar_subquery(),
    select(func.count()).where(WebhookDelivery.state == "pending").scalar_subquery(),
    _oldest_message(WebhookDelivery),
    select(func.count()).where(EmailDelivery.state == "pending").scalar_subquery(),
    _oldest_message(EmailDelivery),
)
