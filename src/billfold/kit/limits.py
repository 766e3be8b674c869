"""Request hygiene at the ASGI edge: a cap on body size, and JSON whatever the Content-Type."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 32 * 1024 * 1024  # a full batch of 10,000 events is a few MB


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")


def _console_form(scope: Scope) -> bool:
    """A browser's form posted to the team console (/console/...) keeps its Content-Type."""
    path: str = scope.get("path", "")
    if not path.startswith("/console/"):
        return False
    return any(
        name == b"content-type" and value.split(b";")[0].strip().lower() in _FORM_TYPES
        for name, value in scope.get("headers", ())
    )


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Pure ASGI middleware.

    * 413 before reading a body whose declared length is too large, and stop reading one that
      grows past the limit without declaring it: no request makes a process hold an unbounded body.
    * Every body is JSON, whatever its Content-Type says: the upstream gateway (grpc-gateway) reads
      any content type as JSON, and browsers' ``fetch`` sends ``text/plain`` by default. The one
      exception is an HTML form posted to the team console (``/console/...``).
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        if (
            scope.get("method") in _BODY_METHODS
            and (b"content-type", b"application/json") not in headers
            and not _console_form(scope)
        ):
            scope = dict(scope)
            scope["headers"] = [(n, v) for n, v in headers if n != b"content-type"] + [
                (b"content-type", b"application/json")
            ]
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body: dict[str, Any] = {
            "code": "payload_too_large",
            "error": f"the request body exceeds {self.max_bytes} bytes",
        }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
