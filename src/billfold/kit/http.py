"""HTTP plumbing shared by every router: the per-request session and bearer tokens."""

from __future__ import annotations

import collections.abc
import copy
import types
import typing
import uuid
from collections.abc import Callable, Coroutine, Hashable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import solve_dependencies
from fastapi.routing import APIRoute
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from billfold.kit.audit import ACTOR_SYSTEM, CONTEXT, AuditContext
from billfold.kit.db import transaction
from billfold.kit.errors import (
    BadRequest,
    InvalidField,
    Unauthorized,
)
from billfold.kit.logs import REQUEST_ID, team_of
from billfold.kit.ratelimit import RateLimits

F = TypeVar("F", bound=Callable[..., Any])


def read_only(endpoint: F) -> F:
    """Mark an endpoint whose transaction only reads.

    Its transaction starts deferred on SQLite (a plain ``BEGIN``: in WAL mode readers neither take
    nor wait for the write lock, so a long analytics query does not stall ingestion) and read-only
    on PostgreSQL (a write there is refused by the database, not silently allowed).
    """
    endpoint.__billfold_read_only__ = True  # type: ignore[attr-defined]
    return endpoint


def get_session(request: Request, response: Response) -> Iterator[Session]:
    """The one place a request's transaction is opened, committed and rolled back.

    ``scope="function"`` makes FastAPI run the code after ``yield`` when the endpoint returns,
    before the response is sent, so a failed commit is answered as an error, never as a success
    that did not persist. A write (any method but GET/HEAD/OPTIONS on a route not ``@read_only``)
    commits its audit row with it (kit/audit.py).
    """
    endpoint = request.scope.get("endpoint")
    read = getattr(endpoint, "__billfold_read_only__", False)
    state = request.app.state
    with transaction(state.read_sessionmaker if read else state.sessionmaker) as session:
        yield session
        if not read and _audited(request):
            audit = audit_context(request)
            # The status the endpoint set (a replay's 200), else the route's own.
            audit.status = response.status_code or _route_status(request)
            session.info[CONTEXT] = audit


_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_STEPS = "billfold_in_steps"


def _audited(request: Request) -> bool:
    return request.method not in _READS and not request.scope.get(_STEPS)


def _route_status(request: Request) -> int:
    route = request.scope.get("route")
    return getattr(route, "status_code", None) or 200


def audit_context(request: Request) -> AuditContext:
    """Who wrote what in this request: the actor the auth dependencies left in
    ``request.state.audit_actor`` (``teams/auth.py``), the route template, the path's ids."""
    kind, actor = getattr(request.state, "audit_actor", (ACTOR_SYSTEM, "unauthenticated"))
    route = request.scope.get("route")
    template = getattr(route, "path", None) or "(no route)"
    team = team_of(request.scope)
    targets = {
        _camel(name): value
        for name, value in (request.scope.get("path_params") or {}).items()
        if name != "team_id"
    }
    return AuditContext(
        actor_kind=kind,
        actor_id=actor,
        action=f"{request.method} {template}",
        request_id=REQUEST_ID.get(),
        team_id=_uuid_or_none(team),
        targets=targets,
    )


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


DbSession = Annotated[Session, Depends(get_session, scope="function")]


def read_session(request: Request, session: DbSession) -> Iterator[Session]:
    """A read-only session on the read replica (``BILLFOLD_READ_DATABASE_URL``), else the
    request's own session.

    For reads that may lag the primary by the replica's replay delay: usage analytics, console
    charts. NEVER for anything that decides money (a spend check, a preview, a balance, an
    invoice, the ledger) nor for authentication: those read the request's session on the
    primary (the endpoint's other dependencies use ``DbSession``, which this depends on).
    """
    replica: sessionmaker[Session] | None = request.app.state.replica_sessionmaker
    if replica is None:
        yield session
        return
    with transaction(replica) as read:
        yield read


ReplicaSession = Annotated[Session, Depends(read_session, scope="function")]
"""See :func:`read_session`: analytics only."""


class RequestTransactionEnded(RuntimeError):
    """The request's session was used after :data:`Steps` ended its transaction (a bug)."""


def _ended(session: Session, transaction: Any, connection: Any) -> None:
    raise RequestTransactionEnded(
        "the request's transaction was ended by Steps: a flow that commits in steps runs every "
        "step in a transaction of its own (kit.db.transaction(steps)); declare Steps after the "
        "authentication dependency, and use no DbSession after it"
    )


def end_request_transaction(request: Request, session: DbSession) -> sessionmaker[Session]:
    """The dependency behind :data:`Steps`: commit the request's transaction, seal its session,
    and give the sessionmaker of the flow's step transactions."""
    session.commit()
    event.listen(session, "after_begin", _ended)  # any later use of the session raises
    sessions: sessionmaker[Session] = request.app.state.sessionmaker
    if not _audited(request):
        return sessions
    # The flow's sessions carry the request's audit context: its row commits with the first
    # step that commits (the pending state: the write), once per request (kit/audit.py). The
    # outcome status is not known yet then: the domain's own record and the access log have it.
    request.scope[_STEPS] = True
    audited = copy.copy(sessions)  # a copy, not a new sessionmaker: that would make a new class
    audited.kw = {
        **sessions.kw,
        "info": {**sessions.kw.get("info", {}), CONTEXT: audit_context(request)},
    }
    return audited


Steps = Annotated[sessionmaker[Session], Depends(end_request_transaction, scope="function")]
"""The one documented second way to run a request: for money that waits on the outside world.

A request runs in ONE transaction (:data:`DbSession`), except a flow that must commit in steps
around a call to the payment provider (a top-up commits its pending state, charges the card, then
settles in a second transaction; the balance settles pending top-ups; cycle close and an invoice
charge commit each invoice and each charge). Such an endpoint declares ``steps: Steps`` after its
authentication dependency and nothing else of the database: authentication reads through the
request's session, then ``Steps`` commits that transaction -- so it holds neither a pooled
connection nor, on SQLite, the database's single write lock (every write-capable transaction there
is BEGIN IMMEDIATE) while the provider is called -- and hands the flow a sessionmaker for its own
step transactions (:func:`billfold.kit.db.transaction`). Misuse is loud: a later use of the
request's session (a dependency declared after ``Steps`` that reads through it, an endpoint that
also takes ``DbSession`` and uses it) raises :class:`RequestTransactionEnded`, a 500.
"""


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing or malformed Authorization header; send 'Authorization: Bearer <key>'",
            code="missing_credentials",
        )
    return token.strip()


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy: the one uvicorn's ``--proxy-headers`` trusts)."""
    client = request.client
    return client.host if client is not None else ""


def screened_bearer(request: Request) -> str:
    """The bearer token, screened by the rate limits (kit/ratelimit.py) before any database work:
    an address that spent its bad-credential budget gets 429 unless this process has seen the
    token authenticate. A missing or malformed header is a failed authentication."""
    limits: RateLimits = request.app.state.rate_limits
    address = client_address(request)
    try:
        token = bearer_token(request)
    except Unauthorized:
        limits.screen(address, None)
        limits.failed(address)
        raise
    limits.screen(address, token)
    return token


def credentials_failed(request: Request) -> None:
    """A failed authentication: charged to the client's address, never to the key it names."""
    limits: RateLimits = request.app.state.rate_limits
    limits.failed(client_address(request))


def credentials_accepted(request: Request, token: str, budget: str, who: Hashable) -> None:
    """The credentials authenticated: charge ``who`` one request of ``budget`` (429 when it is
    spent). An endpoint marked with :func:`billfold.kit.ratelimit.budget` names its own."""
    limits: RateLimits = request.app.state.rate_limits
    if not limits.enabled:
        return
    limits.vouch(token)
    marked = getattr(request.scope.get("endpoint"), "__billfold_budget__", None)
    limits.charge(getattr(limits, marked or budget), who)


def parse_uuid(value: str, field: str = "team_id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(
            f"invalid uuid: {field} {value!r} is not a UUID", code="invalid_uuid", field=field
        ) from None


# --- bad input is answered after the credentials -----------------------------------------------


class WireRoute(APIRoute):
    """The route class of every router (``kit.schemas.WireRouter``): input FastAPI would take
    silently or judge too early is checked here, once for every endpoint.

    * **A repeated query parameter** that is not repeatable (declared as a list, such as
      ``invoiceIds.invoiceIds``) is a 400 ``invalid_argument`` naming it: FastAPI would silently
      keep the last value (``?billingCycle.year=2026&billingCycle.year=2025`` lists 2025), and the
      upstream gateway (grpc-gateway) refuses it too. So is a declared header sent twice
      (``Idempotency-Key``: FastAPI would keep the first).
    * **Credentials before input.** FastAPI parses a JSON body before it runs any dependency, so
      a malformed body would be answered 400 before an unknown or revoked key (401) or a key of
      another team (403) is noticed. Here a body that is not JSON is found first; then, as for a
      repeated parameter, the route's dependencies -- authentication and authorization among them
      -- run without the endpoint, so a credential error wins, and only then is the 400 raised.
      Other bad input (a wrong field, a wrong parameter) is already judged after the dependencies
      by FastAPI itself.

    A route with no body, query parameter or header parameter (the spend check) gets FastAPI's
    handler unchanged: no cost on the hot path. The dependencies run first are the route's own
    and its router's (``admin_router``'s ``Operator``); app.py adds none when it includes routers.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        queries, headers = _single_valued_params(self.dependant)
        has_body = self.body_field is not None
        if not queries and not headers and not has_body:
            return handler
        dependant = self.dependant
        overrides = self.dependency_overrides_provider

        async def credentials_then_input(request: Request) -> Response:
            problem = _repeated_param(request, queries, headers)
            if problem is None and has_body:
                problem = await _body_not_json(request)
            if problem is not None:
                await _run_dependencies(request, dependant, overrides or request.app)
                raise problem
            return await handler(request)

        return credentials_then_input


def _single_valued_params(dependant: Dependant) -> tuple[frozenset[str], frozenset[str]]:
    """The query parameters and headers the route or its dependencies declare as one value."""
    queries: set[str] = set()
    headers: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        for field in current.query_params:
            if not _is_sequence(field.field_info.annotation):
                queries.add(field.alias)
        for field in current.header_params:
            if not _is_sequence(field.field_info.annotation):
                convert = getattr(field.field_info, "convert_underscores", True)
                headers.add(field.alias.replace("_", "-") if convert else field.alias)
        pending.extend(current.dependencies)
    return frozenset(queries), frozenset(headers)


_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _is_sequence(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    return (origin or annotation) in _SEQUENCES


def _repeated_param(
    request: Request, queries: frozenset[str], headers: frozenset[str]
) -> BadRequest | None:
    if queries and request.scope.get("query_string"):
        seen: set[str] = set()
        for name, _ in request.query_params.multi_items():
            if name in queries:
                if name in seen:
                    return InvalidField(name, "is given more than once; send it once")
                seen.add(name)
    for name in headers:
        if len(request.headers.getlist(name)) > 1:
            return InvalidField(name, "header is given more than once; send it once")
    return None


async def _body_not_json(request: Request) -> BadRequest | None:
    """A body FastAPI would fail to parse (an empty one is judged later, as a missing body)."""
    if not await request.body():
        return None
    try:
        # Parsed as FastAPI would, and cached on the request: FastAPI does not parse it again.
        await request.json()
    except (ValueError, RecursionError):  # also invalid UTF-8; RecursionError: absurd nesting
        return BadRequest("request body is not valid JSON", code="invalid_json", field="body")
    return None


async def _run_dependencies(request: Request, dependant: Dependant, overrides: Any) -> None:
    """Run the route's dependencies without a body and without the endpoint.

    An authentication or authorization error raises here, as in a normal request; other
    parameter errors are collected and dropped (the caller answers its own 400 instead). A
    dependency that opened the request's transaction is closed with the error that follows, so
    the transaction is rolled back: nothing changes.
    """
    await solve_dependencies(
        request=request,
        dependant=dependant,
        body=None,
        dependency_overrides_provider=overrides,
        async_exit_stack=request.scope["fastapi_inner_astack"],
        embed_body_fields=False,
    )


REPLAYED_HEADER = "Idempotent-Replayed"
