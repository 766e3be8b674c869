"""Request ids and JSON logs: the outermost ASGI layer and the log formatter.

Every response carries ``X-Request-Id``: the caller's (1-128 characters of ``A-Z a-z 0-9 . _ : -``)
or, when absent or not that, a generated one (24 hex digits). With ``BILLFOLD_LOG_FORMAT=json`` each
log line is one JSON object (:class:`JsonFormatter`) with the request id of the request it was
logged in, and :class:`RequestContext` logs one access line per request (logger
``billfold.access``): method, route template, status, duration, team id when known. Never a
header, a body, a query string or a raw path: so never a key, a token, a card number or a secret.
The same layer records each request's metrics (method, route template, status, duration:
kit/metrics.py), so they cost no layer of their own.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold.kit.metrics import RequestMetrics

REQUEST_ID: ContextVar[str | None] = ContextVar("billfold_request_id", default=None)
"""The id of the request being served (None outside a request)."""

_VALID_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_UUID_SHAPE = re.compile(r"[0-9a-fA-F-]{32,36}")
_SPEND_PREFIX, _SPEND_SUFFIX = "/admin/v1/teams/", "/spend-status"
_SPEND_ROUTE = _SPEND_PREFIX + "{team_id}" + _SPEND_SUFFIX
_FIELDS = ("method", "route", "status", "duration_ms", "team_id")

access_log = logging.getLogger("billfold.access")


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _VALID_ID.fullmatch(value):
                return bytes(value)
            break
    return os.urandom(12).hex().encode()


class RequestContext:
    """The outermost layer (around Starlette's error middleware, so a 500 carries the id too):
    takes or makes the request id, returns it, records the request's metrics, and, with JSON
    logs, writes the access line."""

    def __init__(
        self, app: ASGIApp, *, access: bool, metrics: RequestMetrics | None = None
    ) -> None:
        self.app = app
        self.access = access
        self.metrics = metrics  # a tally per request, flushed every second (kit/metrics.py)
        self.timed = access or metrics is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        header = (b"x-request-id", rid)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST_ID.set(rid.decode())
        started = time.perf_counter() if self.timed else 0.0
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.timed:
                seconds = time.perf_counter() - started
                route = route_of(scope)
                if self.metrics is not None:
                    self.metrics.observe(scope["method"], route, status, seconds)
                if self.access:
                    _log_access(scope, route, status, seconds, rid.decode())
            REQUEST_ID.reset(token)


def route_of(scope: Scope) -> str | None:
    """The route TEMPLATE that answered (``/admin/v1/teams/{team_id}/limits``), never the raw
    path; None when no route matched."""
    route = getattr(scope.get("route"), "path", None)
    if route is None:
        path: str = scope["path"]
        if path.startswith(_SPEND_PREFIX) and path.endswith(_SPEND_SUFFIX):
            # Answered by the spend check's middleware (spend/gateway.py), before any routing.
            return _SPEND_ROUTE
    return route


def _log_access(scope: Scope, route: str | None, status: int, seconds: float, rid: str) -> None:
    duration_ms = round(seconds * 1000, 3)
    team = team_of(scope)
    if team is None and route == _SPEND_ROUTE:
        shaped = scope["path"][len(_SPEND_PREFIX) : -len(_SPEND_SUFFIX)]
        team = shaped if _UUID_SHAPE.fullmatch(shaped) else None
    access_log.info(
        "%s %s %d",
        scope["method"],
        route or "(no route)",
        status,
        extra={
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "team_id": team,
            "request_id": rid,
        },
    )


def team_of(scope: Scope) -> str | None:
    """The team the request was for: the authenticated key's, else the path's team id."""
    state = scope.get("state") or {}
    team = state.get("team_id")
    if team is not None:
        return str(team)
    param = (scope.get("path_params") or {}).get("team_id")
    if isinstance(param, str) and _UUID_SHAPE.fullmatch(param):
        return param
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, and the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": record.__dict__.get("request_id") or REQUEST_ID.get(),
        }
        for field in _FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                out[field] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def log_config(level: str, json: bool) -> dict[str, Any]:
    """``logging.config.dictConfig`` for ``billfold serve`` (uvicorn's ``log_config``): with
    ``json``, every logger -- uvicorn's and Billfold's -- writes JSON lines to stderr."""
    formatter = (
        {"()": "billfold.kit.logs.JsonFormatter"}
        if json
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "root": {"handlers": ["main"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["main"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["main"], "level": level, "propagate": False},
        },
    }
