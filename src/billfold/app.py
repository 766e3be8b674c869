"""The FastAPI application: both HTTP surfaces and /healthz in one process."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from billfold import (
    __version__,
    wiring,  # noqa: F401 (hands lower domains what they need)
)
from billfold.audit import endpoints as audit
from billfold.autotopup import endpoints as autotopup
from billfold.autotopup.charger import auto_topup_charging
from billfold.config import Settings, get_settings
from billfold.console.install import install_console
from billfold.documents import endpoints as documents
from billfold.documents.service import document_service
from billfold.invoicing import endpoints as invoicing
from billfold.invoicing.scheduler import background_tasks
from billfold.kit.db import libpq_conninfo, make_engine, make_sessionmaker
from billfold.kit.errors import Forbidden, install_error_handlers
from billfold.kit.limits import BodySizeLimit
from billfold.kit.logs import RequestContext
from billfold.kit.openapi import Bearer, install_openapi
from billfold.kit.ratelimit import RateLimits
from billfold.ledger import endpoints as ledger
from billfold.metering import endpoints as metering
from billfold.metering.scheduler import compaction_tasks
from billfold.metrics import install_metrics, process_metrics
from billfold.notifications import endpoints as notifications
from billfold.notifications.delivery import webhook_delivery
from billfold.notifications.retention import retention_tasks
from billfold.payments import endpoints as payments
from billfold.payments.provider import PaymentProvider
from billfold.payments.providers import make_provider
from billfold.pricing import endpoints as pricing
from billfold.settlement import endpoints as settlement
from billfold.settlement.scheduler import reconcile_tasks
from billfold.spend import endpoints as spend
from billfold.spend.gateway import LISTENER_LIMITS, GatewayMiddleware, SpendCache
from billfold.teams import endpoints as teams
from billfold.teams.auth import authenticated_key, billing_read, billing_write, operator
from billfold.topups import endpoints as topups

log = logging.getLogger("billfold")

MANAGEMENT_KEY = Bearer(
    "managementKey",
    "A team's management key (Billing Management API): `Authorization: Bearer xai-...`.",
)
OPERATOR_TOKEN = Bearer(
    "operatorToken",
    "The operator token (`BILLFOLD_ADMIN_TOKEN`, or the generated `bfop_...` one), for "
    "`/admin/v1/...`.",
)


class DatabaseMisconfigured(Exception):
    """The database settings cannot work together (Settings.database_problem; one line)."""


class DatabaseHealth:
    """Whether this process reaches its database, for ``/healthz``.

    One probe (a pooled connection, ``SELECT 1``, in the thread pool) at a time, its answer reused
    for ``FRESH`` seconds: load balancers probe every instance often, and under load a probe per
    request queued for the pool and its threads (seconds at the p99 in bench/spend_check.py), long
    enough for a balancer to take a busy but healthy instance out.
    """

    FRESH = 1.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._checked_at = -math.inf
        self._failure: str | None = None
        self._probe: asyncio.Task[str | None] | None = None

    async def failure(self) -> str | None:
        """None when the database answered within the last FRESH seconds, else why not."""
        if time.monotonic() - self._checked_at < self.FRESH:
            return self._failure
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._run())
        return await asyncio.shield(self._probe)

    async def _run(self) -> str | None:
        failure = await run_in_threadpool(self._select_one)
        self._failure, self._checked_at = failure, time.monotonic()
        return failure

    def _select_one(self) -> str | None:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("health check failed: %s", exc)
            return str(exc)
        return None


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    provider: PaymentProvider | None = None,
) -> FastAPI:
    """Build the app. The schema must already be migrated (``billfold serve`` does it first)."""
    settings = settings or get_settings()
    problem = settings.database_problem()
    if problem is not None:
        raise DatabaseMisconfigured(problem)
    engine = engine or make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_mode=settings.database_pool_mode,
    )
    # A read replica for analytics only (kit.http.ReplicaSession): nothing that decides money.
    replica = (
        make_engine(
            settings.read_database_url,
            pool_size=settings.db_pool_size,
            pool_mode=settings.database_pool_mode,
        )
        if settings.read_database_url
        else None
    )
    # PostgreSQL: spend-check answers kept per process, dropped by notifications (gateway.py),
    # which it LISTENs for on a session connection of its own (BILLFOLD_LISTEN_DATABASE_URL).
    spend_cache = (
        SpendCache(
            libpq_conninfo(settings.listen_url(), LISTENER_LIMITS), settings.spend_cache_size
        )
        if settings.spend_cache and engine.dialect.name == "postgresql"
        else None
    )
    if provider is None:
        provider = make_provider(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything built so far lives as long as the process: move it out of the cyclic
        # garbage collector's sight, so its passes scan only what requests allocate.
        gc.freeze()
        # The event loop answers spend checks in tens of microseconds, but while an ingestion
        # batch runs in a worker thread the loop waits up to the switch interval for the GIL at
        # every wake-up. Python's 5 ms made that the checks' p99 under live ingestion; 1 ms cut
        # it (bench/results/spend_check.md), for a few more thread switches.
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        if spend_cache is not None:
            await spend_cache.start()
        try:
            async with (
                background_tasks(app),
                compaction_tasks(app),
                reconcile_tasks(app),
                webhook_delivery(app),
                retention_tasks(app),
                auto_topup_charging(app),
                process_metrics(app),
            ):
                yield
        finally:
            if spend_cache is not None:
                spend_cache.stop()
            engine.dispose()
            if replica is not None:
                replica.dispose()

    app = FastAPI(
        title="Billfold",
        version=__version__,
        summary="Usage billing; the Billing Management API is wire-compatible with xAI's.",
        lifespan=lifespan,
        docs_url=None,  # served by kit.openapi from the package, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    document_service.configure(settings)  # the seller on invoice documents
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine, settings=settings)
    app.state.read_sessionmaker = make_sessionmaker(engine, read_only=True, settings=settings)
    app.state.replica_sessionmaker = (
        make_sessionmaker(replica, read_only=True, settings=settings)
        if replica is not None
        else None
    )
    app.state.payment_provider = provider
    app.state.spend_cache = spend_cache
    app.state.rate_limits = RateLimits(
        enabled=settings.rate_limit,
        key=settings.rate_limit_key_per_minute,
        operator=settings.rate_limit_operator_per_minute,
        spend_check=settings.rate_limit_spend_check_per_minute,
        ingest=settings.rate_limit_ingest_per_minute,
        bad_auth=settings.rate_limit_bad_auth_per_minute,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(GatewayMiddleware, state=app.state)  # outermost but RequestContext

    # Outermost of all, around Starlette's error middleware: every response -- a 500, a spend
    # check answered by GatewayMiddleware -- carries X-Request-Id (kit/logs.py).
    # It records each request's metrics too (GET /metrics: billfold/metrics.py).
    build_stack = app.build_middleware_stack
    access = settings.log_format == "json"
    request_metrics = install_metrics(app)
    app.build_middleware_stack = lambda: RequestContext(  # type: ignore[method-assign]
        build_stack(), access=access, metrics=request_metrics
    )

    health = DatabaseHealth(engine)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        failure = await health.failure()
        if failure is not None:  # the database is unreachable: not healthy, say why
            return JSONResponse(
                {"code": "unavailable", "error": "database unreachable"}, status_code=503
            )
        return JSONResponse({"status": "ok", "version": __version__})

    # The spend check first: FastAPI tries routes in order (see spend/endpoints.py).
    app.include_router(spend.gateway_router, tags=["operator"])
    for module in (
        teams,
        payments,
        pricing,
        metering,
        ledger,
        spend,
        invoicing,
        topups,
        autotopup,
        documents,
        notifications,
        audit,
    ):
        app.include_router(module.billing_router, tags=["billing"])
        app.include_router(module.admin_router, tags=["operator"])
    app.include_router(settlement.router, tags=["webhooks"])
    install_console(app)  # the team console under /console (after the API's error handlers)
    install_openapi(
        app,
        bearers={
            authenticated_key: MANAGEMENT_KEY,
            documents.document_reader: MANAGEMENT_KEY,
            operator: OPERATOR_TOKEN,
        },
        guards={
            billing_read: (Forbidden,),
            billing_write: (Forbidden,),
            documents.document_reader: (Forbidden,),
        },
    )
    return app
