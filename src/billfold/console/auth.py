"""The console's request dependencies: who is signed in, and the CSRF check of every form.

* ``ConsoleViewer`` -- the signed-in :class:`~billfold.console.service.Viewer` (team, ACLs,
  CSRF token); without a live session the browser is sent to ``/console/login``.
* ``ConsoleForm`` -- the posted form, after its CSRF field matched the session's token (else a
  403 page). Declare it after ``ConsoleViewer``.
* ``require_write(viewer)`` -- a change needs BillingWrite: a page explaining so otherwise.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from billfold.console.service import Viewer, console_service, same_secret
from billfold.console.web import CSRF_FIELD, SESSION_COOKIE


class LoginRequired(Exception):
    """No live session: redirect to the sign-in page (handled in console/errors.py)."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class ConsolePageError(Exception):
    """A console page answered with an error page of ``status_code`` (404, 403, ...)."""

    def __init__(self, status_code: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.title = title
        self.message = message


def not_found(what: str = "page") -> ConsolePageError:
    """Another team's object looks exactly like one that does not exist."""
    return ConsolePageError(404, "Not found", f"There is no such {what} in this team.")


def current_viewer(request: Request) -> Viewer:
    """The signed-in viewer, read in a transaction of its own (``ConsoleService.resolve``), so
    the page's own transaction (``DbSession``) may be read-only."""
    state = request.app.state
    viewer = console_service.resolve(
        state.read_sessionmaker, state.sessionmaker, request.cookies.get(SESSION_COOKIE, "")
    )
    if viewer is None:
        path = request.url.path
        query = request.url.query
        raise LoginRequired(path + (f"?{query}" if query else ""))
    request.state.team_id = viewer.team_id  # for the access log (kit/logs.py)
    return viewer


ConsoleViewer = Annotated[Viewer, Depends(current_viewer)]


async def posted_form(request: Request) -> FormData:
    return await request.form()


def checked_form(
    viewer: ConsoleViewer, form: Annotated[FormData, Depends(posted_form)]
) -> FormData:
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not same_secret(token, viewer.csrf_token):
        raise ConsolePageError(
            403,
            "Form expired",
            "This form could not be accepted (its security token is missing or out of date). "
            "Go back, reload the page and try again.",
        )
    return form


ConsoleForm = Annotated[FormData, Depends(checked_form)]


def require_write(viewer: Viewer) -> None:
    if not viewer.can_write:
        raise ConsolePageError(
            403,
            "BillingWrite needed",
            "This change needs a management key with BillingWrite. You signed in with a key "
            "that has BillingRead only: sign in again with a key that has BillingWrite.",
        )


class CookieSessions:
    """``documents.endpoints.ConsoleSessions``: invoice documents download with the session."""

    def team_of(self, session: Session, request: Request) -> uuid.UUID | None:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        viewer = console_service.viewer(session, cookie, take_flash=False)
        return None if viewer is None else viewer.team_id


cookie_sessions = CookieSessions()
