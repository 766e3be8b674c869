"""HTTP plumbing shared by every router: the per-request session and bearer tokens."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from billfold.kit.db import transaction
from billfold.kit.errors import BadRequest, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


def read_only(endpoint: F) -> F:
    """Mark an endpoint whose transaction only reads.

    Its transaction starts deferred on SQLite (a plain ``BEGIN``: in WAL mode readers neither take
    nor wait for the write lock, so a long analytics query does not stall ingestion) and read-only
    on PostgreSQL (a write there is refused by the database, not silently allowed).
    """
    endpoint.__billfold_read_only__ = True  # type: ignore[attr-defined]
    return endpoint


def get_session(request: Request) -> Iterator[Session]:
    """The one place a request's transaction is opened, committed and rolled back.

    ``scope="function"`` makes FastAPI run the code after ``yield`` when the endpoint returns,
    before the response is sent, so a failed commit is answered as an error, never as a success
    that did not persist.
    """
    endpoint = request.scope.get("endpoint")
    read = getattr(endpoint, "__billfold_read_only__", False)
    state = request.app.state
    with transaction(state.read_sessionmaker if read else state.sessionmaker) as session:
        yield session


DbSession = Annotated[Session, Depends(get_session, scope="function")]


def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    """For the few flows that must commit in steps around a call to the outside world (a top-up
    commits its pending state, charges the card, then settles in a second transaction)."""
    sessions: sessionmaker[Session] = request.app.state.sessionmaker
    return sessions


Sessions = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]


def end_request_transaction(session: Session) -> None:
    """End the request's transaction before a flow that runs its own step transactions.

    Authentication read through the request's session; commit it so that it holds neither a pooled
    connection nor, on SQLite, the database's single write lock (every write-capable transaction
    there is BEGIN IMMEDIATE) while the steps and the provider call run.
    """
    session.commit()


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing or malformed Authorization header; send 'Authorization: Bearer <key>'",
            code="missing_credentials",
        )
    return token.strip()


def parse_uuid(value: str, field: str = "team_id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(
            f"invalid uuid: {field} {value!r} is not a UUID", code="invalid_uuid", field=field
        ) from None
