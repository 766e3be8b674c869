"""The console's pages: sign-in and sign-out, the overview, usage and invoices.

Each page is thin, as the API's endpoints are: the viewer dependency (``ConsoleViewer``: the
session's team and ACLs), one call to a service, and ``page(...)`` with a template. Forms post
with ``ConsoleForm`` (CSRF checked) and answer with a redirect and a flash message, or the page
again with field errors (status 400).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from billfold.console import overview as overview_figures
from billfold.console import usage
from billfold.console.auth import (
    ConsoleForm,
    ConsolePageError,
    ConsoleViewer,
    not_found,
    posted_form,
)
from billfold.console.invoices import invoice_view
from billfold.console.service import SignInRefused, console_service, same_secret
from billfold.console.web import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    delete_cookie,
    page,
    redirect,
    safe_next,
    security_headers,
    set_cookie,
)
from billfold.invoicing.service import InvoiceFilter, invoicing_service
from billfold.kit.errors import ResourceNotFound
from billfold.kit.http import DbSession, client_address, read_only
from billfold.kit.ratelimit import RateLimits
from billfold.teams.auth import AppSettings, Keys

router = APIRouter(include_in_schema=False)


# --- signing in and out ------------------------------------------------------------------------


def _login_page(
    request: Request,
    *,
    csrf: str,
    next_url: str,
    error: str | None = None,
    link_team: str | None = None,
    token: str = "",
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    response = page(
        request,
        None,
        "login.html",
        title="Sign in",
        csrf=csrf,
        next_url=next_url,
        error=error,
        link_team=link_team,
        token=token,
        notice=notice,
        status_code=status_code,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, csrf)
    return response


@router.get("/console/login")
def login_form(
    request: Request,
    session: DbSession,
    token: str | None = None,
    next: str | None = None,
    signed_out: str | None = None,
) -> Response:
    """The sign-in page: a key form; with ``?token=`` (a one-time link) a button that uses it.

    The link is used by the button's POST, not by this GET: a mail scanner fetching the link
    cannot spend it, and the session cookie (SameSite=Strict) is set by a same-site request."""
    if not token and console_service.viewer(session, request.cookies.get(SESSION_COOKIE, "")):
        return redirect(safe_next(next))
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    if token:
        team = console_service.link_team(session, token)
        if team is None:
            return _login_page(
                request,
                csrf=csrf,
                next_url=safe_next(next),
                error="This sign-in link has expired or has already been used. Ask for a new "
                "one, or sign in with a management key.",
                status_code=400,
            )
        return _login_page(
            request, csrf=csrf, next_url=safe_next(next), link_team=team.name, token=token
        )
    notice = "You are signed out." if signed_out else None
    return _login_page(request, csrf=csrf, next_url=safe_next(next), notice=notice)


@router.post("/console/login")
def login(
    request: Request,
    session: DbSession,
    keys: Keys,
    form: Annotated[FormData, Depends(posted_form)],
) -> Response:
    """Sign in with a management key (field ``key``) or a one-time link (field ``token``)."""
    next_url = safe_next(str(form.get("next") or ""))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = form.get(CSRF_FIELD)
    csrf = cookie or secrets.token_urlsafe(32)
    if not cookie or not isinstance(given, str) or not same_secret(given, cookie):
        return _login_page(
            request,
            csrf=csrf,
            next_url=next_url,
            error="The sign-in form expired. Please try again.",
            status_code=403,
        )
    limits: RateLimits = request.app.state.rate_limits
    address = client_address(request)
    token = str(form.get("token") or "")
    key = str(form.get("key") or "")
    limits.screen(address, key or None)  # 429 after too many bad sign-ins from this address
    try:
        if token:
            _, secret = console_service.redeem_link(session, token)
        else:
            _, secret = console_service.sign_in_with_key(session, keys, key)
    except SignInRefused as refused:
        limits.failed(address)
        return _login_page(
            request, csrf=csrf, next_url=next_url, error=refused.message, status_code=400
        )
    response = redirect(next_url)
    set_cookie(request, response, SESSION_COOKIE, secret)
    delete_cookie(request, response, LOGIN_CSRF_COOKIE)
    return response


@router.post("/console/logout")
def logout(
    request: Request, viewer: ConsoleViewer, form: ConsoleForm, session: DbSession
) -> Response:
    console_service.sign_out(session, viewer)
    response = redirect("/console/login?signed_out=1")
    delete_cookie(request, response, SESSION_COOKIE)
    return response


# --- the overview --------------------------------------------------------------------------------


@router.get("/console")
def overview_page(
    request: Request, viewer: ConsoleViewer, session: DbSession, settings: AppSettings
) -> Response:
    figures = overview_figures.overview(session, settings, viewer.team_id)
    return page(request, viewer, "overview.html", title="Overview", o=figures)


# --- invoices ------------------------------------------------------------------------------------


@router.get("/console/invoices")
def invoices_page(request: Request, viewer: ConsoleViewer, session: DbSession) -> Response:
    items = invoicing_service.list_invoices(session, viewer.team_id, InvoiceFilter())
    return page(
        request,
        viewer,
        "invoices.html",
        title="Invoices",
        invoices=[invoice_view(item) for item in items],
    )


@router.get("/console/invoices/{invoice_id}")
def invoice_page(
    request: Request, viewer: ConsoleViewer, session: DbSession, invoice_id: str
) -> Response:
    try:
        item = invoicing_service.get_invoice(session, invoice_id)
    except ResourceNotFound:
        raise not_found("invoice") from None
    if item.invoice.team_id != viewer.team_id:  # another team's invoice: as if it did not exist
        raise not_found("invoice")
    view = invoice_view(item)
    return page(request, viewer, "invoice.html", title=f"Invoice {view.number}", inv=view)


# --- usage ----------------------------------------------------------------------------------------


def _usage_form(
    settings: AppSettings,
    range_: Annotated[str | None, Query(alias="range")] = None,
    start: str | None = None,
    end: str | None = None,
    unit: str | None = None,
    by: str | None = None,
    tz: str | None = None,
) -> usage.UsageForm:
    """The usage page's query string (the page and its CSV read the same one)."""
    return usage.read_form(settings, range_, start, end, unit, by, tz)


UsageQuery = Annotated[usage.UsageForm, Depends(_usage_form)]


@router.get("/console/usage")
@read_only
def usage_page(
    request: Request,
    viewer: ConsoleViewer,
    session: DbSession,
    settings: AppSettings,
    form: UsageQuery,
) -> Response:
    table = usage.usage_table(session, settings, viewer.team_id, form)
    return page(
        request,
        viewer,
        "usage.html",
        title="Usage",
        form=form,
        table=table,
        ranges=usage.RANGES,
        units=usage.UNITS,
        groups=usage.groups_available(settings),
        zones=usage.time_zones(),
        status_code=400 if form.errors else 200,
    )


@router.get("/console/usage.csv")
@read_only
def usage_csv(
    request: Request,
    viewer: ConsoleViewer,
    session: DbSession,
    settings: AppSettings,
    form: UsageQuery,
) -> Response:
    """The usage table of the same query string, as CSV."""
    table = usage.usage_table(session, settings, viewer.team_id, form)
    if table is None:
        raise ConsolePageError(400, "Cannot export", " ".join(form.errors.values()))
    name = f"usage-{table.first.isoformat()}-{table.last.isoformat()}-by-{form.unit}.csv"
    return Response(
        table.csv(),
        media_type="text/csv; charset=utf-8",
        headers={
            **security_headers(),
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )
