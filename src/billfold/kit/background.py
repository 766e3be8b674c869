"""Periodic work of a serving process, in a worker thread, for as long as the app runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI


@asynccontextmanager
async def periodic(
    app: FastAPI,
    name: str,
    interval: float,
    work: Callable[[threading.Event], object],
    log: logging.Logger,
    *,
    enabled: bool = True,
) -> AsyncIterator[None]:
    """Run ``work`` now and then every ``interval`` seconds (``app.state.<name>_interval``
    overrides it, for tests) until the context ends. A failure is logged and the loop goes on:
    the next round retries, so ``work`` must be safe to run again (and, with ``--workers N``,
    in several processes at once).

    ``work`` runs in a thread, which cancelling the loop cannot stop: it gets an event that is
    set when the app stops, and long work checks it between steps, so that stopping the server
    does not wait for a whole round. ``enabled=False``: nothing runs (a setting turned off)."""
    if not enabled:
        yield
        return
    seconds = float(getattr(app.state, f"{name}_interval", interval))
    stopping = threading.Event()

    async def loop() -> None:
        while True:
            try:
                await asyncio.to_thread(work, stopping)
            except Exception:
                log.exception("%s failed", name.replace("_", " "))
            await asyncio.sleep(seconds)

    task = asyncio.create_task(loop(), name=f"billfold-{name}")
    try:
        yield
    finally:
        stopping.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
