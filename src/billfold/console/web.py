"""Rendering console pages: the Jinja2 environment, money and time formats, the page response
with its security headers, cookies, and the navigation.

A page is ``page(request, viewer, "name.html", title=..., **context)``; its template extends
``base.html``. Every figure is formatted here, from integer cents (``dollars``), never from a float
of dollars, except the usage analytics' own dollar values (``usd``), which the API sends as JSON
numbers.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from billfold.console.service import Viewer

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent.parent / "static"
STATIC_PATH = "/console/static"

SESSION_COOKIE = "billfold_console"
LOGIN_CSRF_COOKIE = "billfold_console_csrf"  # double-submit token of the sign-in form
CSRF_FIELD = "csrf_token"

# The pages in the navigation, in order: (path, label). A new page adds its line here.
NAV: list[tuple[str, str]] = [
    ("/console", "Overview"),
    ("/console/usage", "Usage"),
    ("/console/invoices", "Invoices"),
    ("/console/credits", "Credits"),
    ("/console/payment-methods", "Payment methods"),
    ("/console/billing-info", "Billing info"),
    ("/console/limits", "Limits"),
]

# Scripts and styles come from the package only; a page may add sources (Stripe.js) through
# page(..., csp={"script-src": "https://js.stripe.com", ...}).
_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "frame-src": "'none'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
    "base-uri": "'none'",
    "object-src": "'none'",
}


def dollars(cents: int | None) -> str:
    """Integer cents as ``$1,234.56`` (``-$5.00`` below zero)."""
    if cents is None:
        return ""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(int(cents)), 100)
    return f"{sign}${whole:,}.{part:02d}"


def usd(value: float | int) -> str:
    """A usage analytics dollar value (a JSON number on the API) to the cent, as the usage
    table shows it: the API's number rounded half-up to cents, formatted like ``dollars``."""
    cents = int((Decimal(repr(float(value))) * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP"))
    return dollars(cents)


def when(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    if value is None:
        return ""
    return value.astimezone(ZoneInfo("UTC")).strftime(fmt)


def _month_name(month: int) -> str:
    return datetime(2000, month, 1).strftime("%B")  # noqa: DTZ001 (a name, not a time)


def status_label(status: str) -> str:
    """An invoice status as people read it (``PENDING`` -> ``Pending``)."""
    return status.replace("_", " ").capitalize()


environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters["dollars"] = dollars
environment.filters["usd"] = usd
environment.filters["when"] = when
environment.filters["month_name"] = _month_name
environment.filters["status_label"] = status_label
environment.globals["static"] = lambda name: f"{STATIC_PATH}/{name}"
environment.globals["CSRF_FIELD"] = CSRF_FIELD


def security_headers(csp: dict[str, str] | None = None) -> dict[str, str]:
    policy = dict(_CSP)
    for directive, sources in (csp or {}).items():
        current = policy.get(directive, "")
        policy[directive] = sources if current in ("", "'none'") else f"{current} {sources}"
    return {
        "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in policy.items()),
        "X-Content-Type-Options": "nosniff",
        # The one-time link's token is in the URL: never send it on in a Referer.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
    }


def page(
    request: Request,
    viewer: Viewer | None,
    template: str,
    *,
    title: str,
    status_code: int = 200,
    csp: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A console page: ``template`` (extending base.html) with the viewer, the navigation, the
    flash message the session kept for this page, and the security headers."""
    html = environment.get_template(template).render(
        request=request,
        viewer=viewer,
        title=title,
        nav=NAV if viewer is not None else [],
        current=request.url.path,
        flash=viewer.flash if viewer is not None else None,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=security_headers(csp))


def redirect(url: str) -> RedirectResponse:
    """303 See Other: after a form, the browser GETs ``url`` (post/redirect/get)."""
    return RedirectResponse(url, status_code=303, headers=security_headers())


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """An HttpOnly, SameSite=Strict cookie for the whole site (document downloads live outside
    /console), Secure when the request came over HTTPS (behind a proxy: uvicorn's
    ``--proxy-headers`` makes the scheme the client's)."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def delete_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
    )


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a console path only (never another site)."""
    if (
        value
        and (value == "/console" or value.startswith(("/console/", "/console?")))
        and not value.startswith("/console/login")
        and "//" not in value
        and "\\" not in value
    ):
        return value
    return "/console"
