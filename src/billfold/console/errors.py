"""Errors under /console are pages, not JSON: the app's handlers are wrapped so a console path
gets an HTML page (a redirect to sign-in, a 404 page, ...) and every other path keeps the API's
``{"code", "error"}`` body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from billfold.console.auth import ConsolePageError, LoginRequired
from billfold.console.web import STATIC_PATH, page, redirect
from billfold.kit.errors import BillfoldError

Handler = Callable[[Request, Any], Awaitable[Response] | Response]


def is_console(request: Request) -> bool:
    path = request.url.path
    return (path == "/console" or path.startswith("/console/")) and not path.startswith(
        STATIC_PATH + "/"
    )


def error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    return page(request, None, "error.html", title=title, message=message, status_code=status_code)


def install_error_pages(app: FastAPI) -> None:
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return redirect("/console/login?next=" + quote(exc.next_url, safe="/"))

    async def page_error(request: Request, exc: ConsolePageError) -> Response:
        return error_page(request, exc.status_code, exc.title, exc.message)

    app.add_exception_handler(LoginRequired, login_required)  # type: ignore[arg-type]
    app.add_exception_handler(ConsolePageError, page_error)  # type: ignore[arg-type]

    for kind in (BillfoldError, StarletteHTTPException, RequestValidationError, Exception):
        api_handler: Handler | None = app.exception_handlers.get(kind)
        if api_handler is not None:
            app.add_exception_handler(kind, _console_or(api_handler))


def _console_or(api_handler: Handler) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        if not is_console(request):
            answer = api_handler(request, exc)
            return answer if isinstance(answer, Response) else await answer
        if isinstance(exc, BillfoldError):
            status, message = exc.status_code, exc.message
        elif isinstance(exc, StarletteHTTPException):
            status = exc.status_code
            message = "There is no such page." if status == 404 else str(exc.detail)
        elif isinstance(exc, RequestValidationError):
            status, message = 400, "The form or the address is not valid."
        else:
            answer = api_handler(request, exc)  # logs it
            if not isinstance(answer, Response):
                await answer
            status, message = 500, "Something went wrong on our side; nothing was changed."
        titles = {
            404: "Not found",
            403: "Not allowed",
            429: "Too many requests",
            503: "Try again",
        }
        return error_page(request, status, titles.get(status, "Something went wrong"), message)

    return handler
