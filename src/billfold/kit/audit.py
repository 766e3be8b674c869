"""The audit trail's write side: ``audit_events``, one row per write, in the write's transaction.

Who (the actor: a management key's id, the operator, the OS user of a CLI command, or the system
for Stripe's signed webhooks), what (the route template or the CLI command path, the target ids),
when, the request id (kit/logs.py's ``X-Request-Id``) and the outcome status. Never a body, a
header or a query string: so never a key, a token, a card number or a webhook secret.

The row is added by one ``before_commit`` listener on every :class:`Session`, so it commits with
the write it records or rolls back with it: a committed write always has its row, a rolled-back
one never does. Where the listener learns what to record:

* **HTTP** (``kit/http.py``): every route that is not ``GET``/``HEAD``/``OPTIONS`` and not
  ``@read_only``. ``get_session`` puts an :class:`AuditContext` in the request session's ``info``
  when the endpoint returned (so its status is known); an endpoint in steps (``Steps``) gets
  sessions that carry it, and the row commits with the flow's first committed step. One row per
  request. The actor is what the auth dependencies (``teams/auth.py``) left in ``request.state``.
* **CLI**: any transaction committed while a ``billfold`` command runs (the callback of the
  command and of its groups, ``kit/cli.audited_command``, names it; a server it starts runs
  outside it: :func:`cli_run_suspended`) that wrote (an INSERT, UPDATE or DELETE went to the
  database): one row per such transaction, all with the command's run id as request id.

A domain may name what its write concerns with :func:`note` (the team, a target id): the
request's path parameters are noted already.

Append-only: no code updates or deletes a row; on PostgreSQL a trigger refuses it (migration
0021). The key leads with ``at`` so the table can be range-partitioned by time.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from billfold.kit.clock import utc_now
from billfold.kit.db import Base

ACTOR_MANAGEMENT_KEY = "management_key"
ACTOR_OPERATOR = "operator"
ACTOR_CLI = "cli"
ACTOR_SYSTEM = "system"
ACTOR_KINDS = (ACTOR_MANAGEMENT_KEY, ACTOR_OPERATOR, ACTOR_CLI, ACTOR_SYSTEM)

CONTEXT = "billfold_audit"  # Session.info key: the AuditContext of a request
_NOTES = "billfold_audit_notes"  # Session.info key: what the transaction's domains noted
_CONNECTION = "billfold_audit_connection"  # Session.info key: the transaction's connection
_WROTE = "billfold_audit_wrote"  # Connection.info key: a write statement went out (CLI)
_DML = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY")
# A CTE that writes (``WITH inserted AS (INSERT ...``); ``SELECT ... FOR UPDATE`` is no write.
_CTE_DML = re.compile(r"\(\s*(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


class AuditEvent(Base):
    """One recorded write. Never updated, never deleted."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_team", "team_id", "at", "id"),)

    # Time leads the key: range partitions by month need it, and listings read it in order.
    at: Mapped[datetime] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # aud_...
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64))
    team_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(200))
    targets: Mapped[dict[str, Any]]
    request_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[int | None] = mapped_column(Integer())


def new_event_id() -> str:
    """``aud_`` + the wall clock in microseconds (hex, so ids sort in the order rows were
    written even under a frozen ``kit.clock``) + randomness."""
    return f"aud_{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"


@dataclass
class AuditContext:
    """What a request (or a CLI run) records; filled as the request goes."""

    actor_kind: str
    actor_id: str
    action: str
    request_id: str | None
    team_id: uuid.UUID | None = None
    targets: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    once: bool = True  # a request: one row; a CLI run: one row per transaction that wrote
    recorded: bool = False


def note(session: Session, *, team_id: uuid.UUID | None = None, **targets: Any) -> None:
    """Name what this transaction's write concerns (camelCase target names: ``keyId=...``).
    Ids only: never a secret."""
    notes: dict[str, Any] = session.info.setdefault(_NOTES, {})
    if team_id is not None:
        notes["teamId"] = team_id
    for name, value in targets.items():
        if value is not None:
            notes[name] = str(value)


_CLI_RUN: ContextVar[AuditContext | None] = ContextVar("billfold_cli_run", default=None)


def start_cli_run(action: str) -> Token[AuditContext | None]:
    """A ``billfold`` command starts (kit/cli.py's callback): its writes are recorded."""
    return _CLI_RUN.set(
        AuditContext(
            actor_kind=ACTOR_CLI,
            actor_id=_os_user(),
            action=action,
            request_id="cli-" + os.urandom(10).hex(),
            once=False,
        )
    )


def name_cli_subcommand(name: str) -> None:
    """A group of the running command resolved its subcommand: ``billfold team`` + ``create``."""
    run = _CLI_RUN.get()
    if run is not None:
        run.action = f"{run.action} {name}"


def end_cli_run(token: Token[AuditContext | None]) -> None:
    _CLI_RUN.reset(token)


@contextmanager
def cli_run_suspended() -> Iterator[None]:
    """A command that serves (``serve``, ``demo``): its server's requests are recorded as
    requests, and its background jobs not at all, so the server runs outside the command's run
    (asyncio copies this context into every task)."""
    token = _CLI_RUN.set(None)
    try:
        yield
    finally:
        _CLI_RUN.reset(token)


def _cli_context() -> AuditContext | None:
    return _CLI_RUN.get()


def _os_user() -> str:
    try:
        return getpass.getuser()[:64]
    except Exception:  # no user name for this uid (a bare container)
        return f"uid:{os.getuid()}"


@event.listens_for(Session, "after_begin")
def _begun(session: Session, transaction: Any, connection: Connection) -> None:
    session.info[_CONNECTION] = connection
    connection.info.pop(_WROTE, None)
    if CONTEXT not in session.info and _cli_context() is not None:
        engine = connection.engine
        if not event.contains(engine, "before_cursor_execute", _watch_statement):
            event.listen(engine, "before_cursor_execute", _watch_statement)


def _watch_statement(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    """CLI engines only: notice a statement that writes."""
    head = statement.lstrip()[:6].upper()
    if head.startswith(_DML) or (head.startswith("WITH") and _CTE_DML.search(statement)):
        conn.info[_WROTE] = True


@event.listens_for(Session, "before_commit")
def _record(session: Session) -> None:
    if session.in_nested_transaction():  # a SAVEPOINT's release: not the transaction's commit
        return
    audit: AuditContext | None = session.info.get(CONTEXT)
    if audit is None:
        audit = _cli_context()
        if audit is None:
            return
        connection: Connection | None = session.info.get(_CONNECTION)
        wrote = bool(session.new or session.dirty or session.deleted) or (
            connection is not None and connection.info.pop(_WROTE, False)
        )
        if not wrote:
            return
    elif audit.once and audit.recorded:
        return
    notes: dict[str, Any] = session.info.get(_NOTES, {})
    team = notes.get("teamId", audit.team_id)
    targets = {**audit.targets, **{k: v for k, v in notes.items() if k != "teamId"}}
    session.add(
        AuditEvent(
            at=utc_now(),
            id=new_event_id(),
            actor_kind=audit.actor_kind,
            actor_id=audit.actor_id,
            team_id=team,
            action=audit.action[:200],
            targets=targets,
            request_id=audit.request_id,
            status=audit.status,
        )
    )
    session.info["billfold_audit_pending"] = audit


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.in_nested_transaction():
        return
    audit: AuditContext | None = session.info.pop("billfold_audit_pending", None)
    if audit is not None:
        audit.recorded = True
    session.info.pop(_NOTES, None)  # noted for the transaction that ended


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    if session.in_nested_transaction():
        return
    session.info.pop("billfold_audit_pending", None)
    session.info.pop(_NOTES, None)
