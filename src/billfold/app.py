"""The FastAPI application: both HTTP surfaces and /healthz in one process."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from billfold import __version__
from billfold.config import Settings, get_settings
from billfold.invoicing import endpoints as invoicing
from billfold.invoicing.gateway import GatewayMiddleware, SpendCache
from billfold.invoicing.scheduler import background_tasks
from billfold.kit.db import libpq_conninfo, make_engine, make_sessionmaker
from billfold.kit.errors import install_error_handlers
from billfold.kit.limits import BodySizeLimit
from billfold.ledger import endpoints as ledger
from billfold.metering import endpoints as metering
from billfold.payments import endpoints as payments
from billfold.payments.provider import PaymentProvider
from billfold.payments.sandbox import SandboxProvider
from billfold.pricing import endpoints as pricing
from billfold.teams import endpoints as teams

log = logging.getLogger("billfold")


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    provider: PaymentProvider | None = None,
) -> FastAPI:
    """Build the app. The schema must already be migrated (``billfold serve`` does it first)."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
    # PostgreSQL: spend-check answers kept per process, dropped by notifications (gateway.py).
    spend_cache = (
        SpendCache(libpq_conninfo(engine))
        if settings.spend_cache and engine.dialect.name == "postgresql"
        else None
    )
    if provider is None:
        sandbox = SandboxProvider.for_database(settings.database_url)
        sandbox.install()
        provider = sandbox

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything built so far lives as long as the process: move it out of the cyclic
        # garbage collector's sight, so its passes scan only what requests allocate.
        gc.freeze()
        if spend_cache is not None:
            await spend_cache.start()
        try:
            async with background_tasks(app):
                yield
        finally:
            if spend_cache is not None:
                spend_cache.stop()
            engine.dispose()

    app = FastAPI(
        title="Billfold",
        version=__version__,
        summary="Usage billing; the Billing Management API is wire-compatible with xAI's.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.read_sessionmaker = make_sessionmaker(engine, read_only=True)
    app.state.payment_provider = provider
    app.state.spend_cache = spend_cache
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(GatewayMiddleware, state=app.state)  # outermost: see invoicing/gateway.py

    @app.get("/healthz", include_in_schema=False)
    def healthz(request: Request) -> JSONResponse:
        try:
            with request.app.state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # the database is unreachable: not healthy, say why
            log.warning("health check failed: %s", exc)
            return JSONResponse(
                {"code": "unavailable", "error": "database unreachable"}, status_code=503
            )
        return JSONResponse({"status": "ok", "version": __version__})

    for module in (teams, payments, pricing, metering, ledger, invoicing):
        app.include_router(module.billing_router, tags=["billing"])
        app.include_router(module.admin_router, tags=["operator"])
    return app
