"""Errors that carry their HTTP status and a stable machine code.

Every code is catalogued, with its status and meaning, in kit/error_codes.py (the documented list
docs/errors.md and the OpenAPI error responses are generated from it).

Services raise these; one set of handlers (:func:`install_error_handlers`) turns every error,
expected or not, into the body both APIs share: ``{"code": "...", "error": "..."}`` plus optional
fields such as ``field`` for validation errors.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request, routing
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

log = logging.getLogger("billfold")


class BillfoldError(Exception):
    """Base of every error answered with the house body. A subclass per HTTP status: its
    docstring's first paragraph describes that status in the OpenAPI document (kit/openapi.py)."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra
        self.headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "error": self.message, **self.extra}


class BadRequest(BillfoldError):
    """Bad input: a field, parameter or body that is wrong; nothing changed."""

    status_code = 400
    code = "bad_request"


class InvalidField(BadRequest):
    """A field of the request is missing or wrong; ``field`` names it (dotted path)."""

    code = "invalid_argument"

    def __init__(self, field: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{field}: {message}", code=code, field=field)


class Unauthorized(BillfoldError):
    """Missing, malformed, unknown or revoked credentials."""

    status_code = 401
    code = "unauthenticated"


class PaymentFailed(BillfoldError):
    """The payment provider declined the charge; the code is the provider's own."""

    status_code = 402
    code = "payment_failed"


class Forbidden(BillfoldError):
    """The credentials are valid but may not do this (an ACL is missing, or another team's)."""

    status_code = 403
    code = "permission_denied"


class ResourceNotFound(BillfoldError):
    """The object named by the request does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(BillfoldError):
    """The request conflicts with the current state (an idempotency key reused with another
    request, an object that exists, a state that does not allow it)."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(BillfoldError):
    """The request body is larger than the server accepts (kit/limits.py)."""

    status_code = 413
    code = "payload_too_large"


class RateLimited(BillfoldError):
    """Too many requests: a budget of the caller is spent (kit/ratelimit.py); retry after the
    seconds in ``Retry-After``."""

    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(BillfoldError):
    """The service cannot answer now (the database is unreachable or busy, or a setting is
    invalid): retry."""

    status_code = 503
    code = "unavailable"


# The code of an HTTP error Starlette raises itself (an unknown route, a wrong method); every code
# is catalogued in kit/error_codes.py. No other status is raised by Starlette or FastAPI here; one
# would be answered with its class's generic code.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
}


def http_code(status: int) -> str:
    """The code of an HTTP error of ``status`` raised outside Billfold's own errors."""
    return _HTTP_CODES.get(status) or ("bad_request" if status < 500 else "internal")


def _loc_to_field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _message(error: Any) -> str:
    if error.get("type") == "missing":
        return "is required"
    # pydantic prefixes the message of a ValueError raised by our validators; the sentence reads
    # better without it ("amount.val: must be an integer string ...").
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


def validation_error_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return {"code": "invalid_json", "error": "request body is not valid JSON", "field": "body"}
    field = _loc_to_field(tuple(first.get("loc", ())))
    message = _message(first)
    body: dict[str, Any] = {
        "code": "invalid_argument",
        "error": f"{field}: {message}",
        "field": field,
    }
    if len(errors) > 1:
        body["details"] = [
            {"field": _loc_to_field(tuple(e.get("loc", ()))), "error": _message(e)} for e in errors
        ]
    return body


class ErrorResponse(JSONResponse):
    """An error body, whatever text it carries: a message may quote what the client sent, and a
    JSON string the client escaped (``"\\ud800"``) can hold a lone surrogate, which UTF-8 cannot
    encode. Written back as the same JSON escape instead of failing the response with a 500."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the request's path answers, for a 405's ``Allow``.

    Starlette's router hands a wrong method to the first route whose path matches, which lists
    only its own methods (``DELETE billing-info`` would say ``Allow: GET``, hiding the POST).
    Only 405s pay for this walk over the routes.
    """
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in routing.iter_route_contexts(request.app.router.routes):
        original = route.original_route
        if isinstance(original, Route) and original.path_regex.match(path):
            methods |= route.methods or set()
        elif (  # the docs pages' assets
            isinstance(original, Mount)
            and isinstance(original.app, StaticFiles)
            and path.startswith(original.path + "/")
        ):
            methods |= {"GET", "HEAD"}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BillfoldError)
    async def _billfold_error(request: Request, exc: BillfoldError) -> ErrorResponse:
        return ErrorResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> ErrorResponse:
        # Reached only after the route's dependencies ran (kit.http.WireRoute checks a body that
        # is not JSON itself), so a credential error has already been answered.
        return ErrorResponse(validation_error_body(exc), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> ErrorResponse:
        code = http_code(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return ErrorResponse(
            {"code": code, "error": message}, status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ErrorResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ErrorResponse(
            {"code": "internal", "error": "internal error; the request changed nothing"},
            status_code=500,
        )
