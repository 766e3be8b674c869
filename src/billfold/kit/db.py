"""Database plumbing: engine, sessions, column types.

One engine per process; one session (one transaction) per request, opened and closed by
:func:`billfold.kit.http.get_session` -- services receive the session and never commit.

SQLite is run so that its traps do not bite:
* every transaction starts with ``BEGIN IMMEDIATE`` (row locks emit nothing on SQLite, so writers
  must serialize on the database lock instead of racing or failing on upgrade);
* WAL mode and a busy timeout, so readers do not block writers;
* :class:`UTCDateTime` stores aware UTC and gives it back aware.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg.conninfo import make_conninfo
from sqlalchemy import JSON, BigInteger, DateTime, Engine, Integer, Uuid, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from billfold.kit.units import Cents, Pico

DEFAULT_DATABASE_URL = "sqlite:///./billfold.db"
READ_ONLY_OPTION = "billfold_read_only"

# Set by the HTTP layer for a request whose method says nothing about writing (a GET can settle a
# pending top-up): a session flushing changes marks it (invoicing/gateway.py waits for the other
# processes' caches only then).
_WROTE: ContextVar[list[bool] | None] = ContextVar("billfold_wrote", default=None)


def watch_writes() -> list[bool]:
    """A cell that becomes ``[True]`` when a session of this context (threads it starts
    included: they copy the context) flushes a change."""
    cell = [False]
    _WROTE.set(cell)
    return cell


@event.listens_for(Session, "after_flush")
def _mark_write(session: Session, flush_context: Any) -> None:
    cell = _WROTE.get()
    if cell is not None:
        cell[0] = True


# BIGINT everywhere it matters; SQLite needs INTEGER for autoincrement primary keys.
BigInt = BigInteger().with_variant(Integer(), "sqlite")


def normalize_database_url(url: str) -> str:
    """Accept the plain URL forms and pick Billfold's driver when none is named."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every engine (timestamptz on PostgreSQL, naive UTC on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = (
    JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(sqlite.JSON(), "sqlite")
)


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UTCDateTime(),
        uuid.UUID: Uuid(),
        dict[str, Any]: JSONType,
        list[str]: JSONType,
        list[dict[str, Any]]: JSONType,
        int: BigInteger(),
        # NewTypes at run time (kit.units); SQLAlchemy maps a NewType only when listed here.
        Cents: BigInteger(),
        Pico: BigInteger(),
    }


PoolMode = Literal["session", "transaction"]


# The engines whose connections go through a pooler in transaction mode (make_engine's
# ``pool_mode``): the spend check's reader asks (is_transaction_pooled).
_TRANSACTION_POOLED: weakref.WeakSet[Engine] = weakref.WeakSet()


def make_engine(url: str, *, pool_size: int = 10, pool_mode: PoolMode = "session") -> Engine:
    """The process's engine. ``pool_mode="transaction"``: ``url`` is a pooler in transaction
    mode (PgBouncer's ``pool_mode = transaction``), where consecutive transactions of one client
    connection may run on different server connections -- so psycopg must not prepare
    statements server-side (it would after 5 executions of one text; PgBouncer before 1.21
    cannot follow them)."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    pooled = pool_mode == "transaction"
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"prepare_threshold": None} if pooled else {},
    )
    if pooled:
        _TRANSACTION_POOLED.add(engine)
    return engine


def is_transaction_pooled(engine: Engine) -> bool:
    """Whether ``engine`` was made with ``pool_mode="transaction"``."""
    return engine in _TRANSACTION_POOLED


# For libpq connections kept open on an event loop: a peer gone silent is noticed in ~25 s
# instead of TCP's minutes.
LIBPQ_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def libpq_conninfo(engine: Engine | str, defaults: dict[str, str] | None = None) -> bytes:
    """The connection string of a PostgreSQL engine's URL (or of a URL), for connections made
    with libpq itself (the spend check's reads and its cache's listener): host, port, user,
    password, sslmode, ... The dialect's other entries are psycopg.connect() arguments, not
    libpq's. ``defaults`` fill what the URL leaves out; an ``options`` default is appended to the
    URL's own options."""
    if isinstance(engine, str):
        engine = create_engine(normalize_database_url(engine))  # connects to nothing
    _, params = engine.dialect.create_connect_args(engine.url)
    given = {k: str(v) for k, v in params.items() if isinstance(v, (str, int))}
    for key, value in (defaults or {}).items():
        if key == "options" and given.get("options"):
            given["options"] = f"{given['options']} {value}"
        else:
            given.setdefault(key, value)
    return make_conninfo("", **given).encode()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


# The key of ``Session.info`` holding the app's (or a CLI command's) settings, where a service
# that is handed only a session needs one (the crossing detection's default hard limit).
SETTINGS_INFO = "billfold.settings"


def make_sessionmaker(
    engine: Engine, *, read_only: bool = False, settings: Any = None
) -> sessionmaker[Session]:
    """Sessions on ``engine``; ``read_only`` ones begin deferred on SQLite and READ ONLY on
    PostgreSQL (see kit.http.read_only). ``settings`` rides on each session's ``info``
    (:data:`SETTINGS_INFO`)."""
    if read_only:
        options: dict[str, Any] = {READ_ONLY_OPTION: True}
        if engine.dialect.name == "postgresql":
            options["postgresql_readonly"] = True
        engine = engine.execution_options(**options)
    info = {SETTINGS_INFO: settings} if settings is not None else None
    return sessionmaker(engine, expire_on_commit=False, autoflush=True, info=info)


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: Session) -> Any:
    """The dialect's ``insert`` (PostgreSQL's or SQLite's), for ON CONFLICT clauses."""
    if is_postgres(session):
        return postgresql.insert
    return sqlite.insert


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A short transaction of its own, for work that must commit before the outside world is
    called (a card charge): commit on success, roll back on any error."""
    session = sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
