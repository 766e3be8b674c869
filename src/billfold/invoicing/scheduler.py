"""Background tasks of a serving process (automatic cycle close when enabled)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI


@asynccontextmanager
async def background_tasks(app: FastAPI) -> AsyncIterator[None]:
    """Started with the app and stopped with it (see app.create_app's lifespan)."""
    yield
