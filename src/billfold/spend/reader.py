"""The spend check's read: one statement, on PostgreSQL through connections of its own (libpq)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn, PGresult
from sqlalchemy import (
    BigInteger,
    Boolean,
    Engine,
    Uuid,
    bindparam,
    event,
    text,
)

from billfold.kit.db import (
    LIBPQ_KEEPALIVES,
    UTCDateTime,
    is_transaction_pooled,
    libpq_conninfo,
)
from billfold.kit.errors import (
    ServiceUnavailable,
)
from billfold.kit.money import Cents

log = logging.getLogger("billfold.spend")


# The spend check in one statement: the team's limits, its posted credit (and whether a grant's
# expiry is due), and its open cycles -- one row per open cycle, or one row of NULL cycle columns.
# One statement is one snapshot, so no transaction is needed around it. The same text serves
# SQLAlchemy on SQLite (_SPEND_CHECK) and libpq on PostgreSQL (_SpendReader). No ORDER BY:
# allocate_credit orders the cycles itself, and a Sort node was a quarter of PostgreSQL's work
# per check.
_SPEND_CHECK_SQL = """
    SELECT t.soft_limit_cents, t.hard_limit_override_cents, ca.balance_cents,
           ca.next_expiry_at <= {now} AS expiry_due, {next_expiry} AS next_expiry_us,
           bc.year, bc.month, bc.spend_cents
    FROM teams t
    LEFT JOIN credit_accounts ca ON ca.team_id = t.id
    LEFT JOIN billing_cycles bc ON bc.team_id = t.id AND bc.closed_at IS NULL
    WHERE t.id = {team_id}
"""


_SPEND_CHECK = (
    text(_SPEND_CHECK_SQL.format(now=":now", team_id=":team_id", next_expiry="NULL"))
    .bindparams(bindparam("team_id", type_=Uuid()), bindparam("now", type_=UTCDateTime()))
    .columns(
        soft_limit_cents=BigInteger(),
        hard_limit_override_cents=BigInteger(),
        balance_cents=BigInteger(),
        expiry_due=Boolean(),
        next_expiry_us=BigInteger(),
        year=BigInteger(),
        month=BigInteger(),
        spend_cents=BigInteger(),
    )
)


# On PostgreSQL the next expiry comes back too, as microseconds since the epoch (no timestamp to
# parse): a cached answer (invoicing/gateway.py) is good until then.
_SPEND_CHECK_LIBPQ = _SPEND_CHECK_SQL.format(
    now="$2::timestamptz",
    team_id="$1::uuid",
    next_expiry="floor(extract(epoch FROM ca.next_expiry_at) * 1000000)::bigint",
).encode()


# Through a pooler in transaction mode (make_engine's pool_mode, BILLFOLD_DATABASE_POOL_MODE)
# nothing may outlive a transaction: neither a prepared statement nor the timeouts set at
# connection. There the check is one simple query of three statements -- one implicit
# transaction, one round trip -- whose timeouts are the transaction's own (SET LOCAL), with the
# id and the time inlined (a UUID and an ISO timestamp we format: nothing from the caller).
_SPEND_CHECK_POOLED = (
    "SET LOCAL lock_timeout = 100; SET LOCAL statement_timeout = 1000; "
    + _SPEND_CHECK_SQL.format(
        now="'{now}'::timestamptz",
        team_id="'{team_id}'::uuid",
        next_expiry="floor(extract(epoch FROM ca.next_expiry_at) * 1000000)::bigint",
    )
)


_SPEND_CHECK_NAME = b"billfold_spend_check"


_UNDEFINED_STATEMENT = b"26000"  # SQLSTATE invalid_sql_statement_name: not prepared here


_TIMED_OUT = (b"55P03", b"57014")  # lock_not_available, query_canceled (statement_timeout)


_READER_LIMITS = {
    **LIBPQ_KEEPALIVES,
    "connect_timeout": "2",
    "options": "-c lock_timeout=100 -c statement_timeout=1000",
}

# PgBouncer refuses the ``options`` startup parameter ("unsupported startup parameter").
_POOLED_READER_LIMITS = {**LIBPQ_KEEPALIVES, "connect_timeout": "2"}


_READER_BACKOFF = 1.0  # after a failed connection, checks answer 503 at once for this long


# (soft limit, hard override, posted credit, expiry due, next expiry in us since the epoch (None
# on SQLite), year, month, spend): one per open cycle
SpendRow = tuple[
    Cents | None,
    Cents | None,
    Cents | None,
    bool | None,
    int | None,
    int | None,
    int | None,
    Cents | None,
]


_READER_IDLE = 4  # connections a process keeps open for the spend check, at most


class _ConnectionLost(Exception):
    """A spend check's connection was dropped, or could not be made."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


# The money columns of a row: the same function, typed as cents (no call added per row).
_cents = cast("Callable[[bytes | None], Cents | None]", _int)


class _SpendReader:
    """The spend check's own connections to PostgreSQL, per process and per app engine.

    The check is the platform's per-request call, so its read is kept to one round trip and as
    little Python as it can be:

    * no ping: the app's pool pings every connection it hands out (``pool_pre_ping``), a round
      trip as long as the check's statement. Instead a read whose connection turns out dropped (a
      PostgreSQL restart, an idle-connection timeout) is retried once on a fresh connection --
      harmless, the read changes nothing; the other idle connections are closed with it (after a
      restart they are as dead);
    * libpq itself (``psycopg.pq``, psycopg's own libpq binding), not a psycopg cursor through
      SQLAlchemy's pool: the statement is prepared once per connection and each check sends only
      the team id and the time, in text, and reads a few integers back. That costs ~25 us of
      CPU and ~65 us of wall time per read against ~80 us and ~155 us (measured in-process);
    * no transaction: libpq runs a lone statement in autocommit, one statement is one snapshot.

    It holds connections only, never an answer: every worker process reads the same committed
    rows. The checks of a process run one at a time on its event loop, so one connection is
    usually all it opens; more only when reads overlap (several threads or event loops). A
    connection is opened on the event loop too (the first check of a process, or after a drop):
    put ``connect_timeout`` in the database URL when the database is remote.
    """

    def __init__(self, engine: Engine) -> None:
        # The read runs on the event loop, so nothing may make it wait long: a table lock (an
        # ALTER TABLE queued behind a long transaction), a slow statement, a connection attempt
        # or a peer gone silent would stall every request of the process. Hence the timeouts
        # (a lock or statement timeout answers 503 like an unreachable database) and keepalives.
        self.pooled = is_transaction_pooled(engine)
        self.conninfo = libpq_conninfo(
            engine, _POOLED_READER_LIMITS if self.pooled else _READER_LIMITS
        )
        self._idle: list[PGconn] = []  # list.pop/append are atomic: safe across threads
        self._down_until = 0.0

    def read(self, team_id: uuid.UUID, now: datetime) -> list[SpendRow]:
        if time.monotonic() < self._down_until:  # failed a moment ago: do not wait again now
            raise ServiceUnavailable("the database is unreachable; retry", code="unavailable")
        params = [str(team_id).encode(), now.isoformat().encode()]
        try:
            return self._read(params)
        except _ConnectionLost:
            self.dispose()
        try:
            return self._read(params)
        except _ConnectionLost as lost:
            log.warning("spend check: the database is unreachable: %s", lost)
            self._down_until = time.monotonic() + _READER_BACKOFF
            raise ServiceUnavailable(
                "the database is unreachable; retry", code="unavailable"
            ) from lost

    def _read(self, params: list[bytes]) -> list[SpendRow]:
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._connect()
        result = self._execute(connection, params)
        if result is not None and result.status == pq.ExecStatus.TUPLES_OK:
            self._release(connection)
            value = result.get_value
            return [
                (
                    _cents(value(row, 0)),
                    _cents(value(row, 1)),
                    _cents(value(row, 2)),
                    None if (due := value(row, 3)) is None else due == b"t",
                    _int(value(row, 4)),
                    _int(value(row, 5)),
                    _int(value(row, 6)),
                    _cents(value(row, 7)),
                )
                for row in range(result.ntuples)
            ]
        message = _libpq_error(connection if result is None else result)
        if connection.status != pq.ConnStatus.OK:
            connection.finish()
            raise _ConnectionLost(message)
        self._release(connection)  # the statement failed, the connection is fine: no retry
        if result is not None and result.error_field(pq.DiagnosticField.SQLSTATE) in _TIMED_OUT:
            log.warning("spend check: %s", message)
            raise ServiceUnavailable("the database is busy; retry", code="unavailable")
        raise psycopg.DatabaseError(message)

    def _execute(self, connection: PGconn, params: list[bytes]) -> PGresult | None:
        """The prepared statement's result; None when libpq could not even send it."""
        if self.pooled:
            return self._execute_pooled(connection, params)
        try:
            result = connection.exec_prepared(_SPEND_CHECK_NAME, params)
            if result.error_field(pq.DiagnosticField.SQLSTATE) == _UNDEFINED_STATEMENT:
                # The session lost it (DISCARD ALL, or a pooler such as PgBouncer handing over
                # another server connection): prepare it again, once.
                prepared = connection.prepare(_SPEND_CHECK_NAME, _SPEND_CHECK_LIBPQ)
                if prepared.status == pq.ExecStatus.COMMAND_OK:
                    result = connection.exec_prepared(_SPEND_CHECK_NAME, params)
            return result
        except psycopg.OperationalError:
            return None

    def _execute_pooled(self, connection: PGconn, params: list[bytes]) -> PGresult | None:
        """The simple query's last result (the SELECT's, or the first error: the statements
        after it do not run); None when libpq could not even send it."""
        team_id, now = (param.decode() for param in params)
        sql = _SPEND_CHECK_POOLED.format(team_id=team_id, now=now).encode()
        try:
            connection.send_query(sql)
            last = None
            while (result := connection.get_result()) is not None:
                last = result
            return last
        except psycopg.OperationalError:
            return None

    def _connect(self) -> PGconn:
        connection = pq.PGconn.connect(self.conninfo)
        if connection.status != pq.ConnStatus.OK:
            message = _libpq_error(connection)
            connection.finish()
            raise _ConnectionLost(message)
        if self.pooled:
            return connection  # nothing to prepare: nothing outlives a transaction there
        prepared = connection.prepare(_SPEND_CHECK_NAME, _SPEND_CHECK_LIBPQ)
        if prepared.status != pq.ExecStatus.COMMAND_OK:
            message = _libpq_error(prepared)
            lost = connection.status != pq.ConnStatus.OK
            connection.finish()
            raise _ConnectionLost(message) if lost else psycopg.DatabaseError(message)
        return connection

    def _release(self, connection: PGconn) -> None:
        if len(self._idle) < _READER_IDLE:
            self._idle.append(connection)
        else:
            connection.finish()

    def dispose(self) -> None:
        """Close the idle connections (those in use are closed or kept when they come back)."""
        while True:
            try:
                self._idle.pop().finish()
            except IndexError:
                return


def _libpq_error(source: PGconn | PGresult) -> str:
    return source.error_message.decode(errors="replace").strip() or "libpq error"


_spend_readers: weakref.WeakKeyDictionary[Engine, _SpendReader] = weakref.WeakKeyDictionary()


_spend_readers_lock = threading.Lock()


def _spend_reader(engine: Engine) -> _SpendReader:
    """The reader of ``engine``'s database in this process, created at the first check (each
    uvicorn worker builds its own app and engine, so each gets its own)."""
    reader = _spend_readers.get(engine)
    if reader is None:
        with _spend_readers_lock:
            reader = _spend_readers.get(engine)
            if reader is None:
                reader = _spend_readers[engine] = _SpendReader(engine)
                # The app disposes its engine at shutdown: close these connections with it.
                event.listen(engine, "engine_disposed", _dispose_reader(reader))
    return reader


def _dispose_reader(reader: _SpendReader) -> Callable[[Engine], None]:
    def dispose(_engine: Engine) -> None:
        reader.dispose()

    return dispose
