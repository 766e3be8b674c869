"""Billfold through a real PgBouncer in transaction mode (Debian's; tests/pg_servers.py).

In transaction mode two transactions of one client connection may run on two server
connections, so nothing may outlive a transaction: no server-side prepared statement, no session
setting, no session advisory lock, no LISTEN. ``BILLFOLD_DATABASE_POOL_MODE=transaction`` makes
every path keep to that, and ``BILLFOLD_LISTEN_DATABASE_URL`` gives the spend cache its session
connection. (``pytest --pgbouncer`` also runs every PostgreSQL test through one: .ci/run.)
PostgreSQL only; never skipped in CI.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError

from billfold.app import DatabaseMisconfigured, create_app
from billfold.config import Settings
from billfold.kit.clock import utc_now
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.metering import scheduler
from billfold.migrate import upgrade
from billfold.spend.reader import _SpendReader
from tests.conftest import (
    OPERATOR_TOKEN,
    POSTGRES_URL,
    event,
    frozen_at,
    put_cent_price,
    unique_sku,
)
from tests.pg_servers import PgBouncer, _with_port

pytestmark = pytest.mark.postgres_only

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
SERVER_PORT = int(POSTGRES_URL.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def urls(fresh_postgres_url: str, pgbouncer: PgBouncer) -> Iterator[tuple[str, str]]:
    """A migrated database of its own: (its URL through PgBouncer, its direct URL)."""
    direct = _with_port(fresh_postgres_url, SERVER_PORT)
    pooled = pgbouncer.url(direct)
    engine = make_engine(pooled, pool_mode="transaction")  # migrations run through it too
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    yield pooled, direct


def _settings(pooled: str, direct: str, **more: object) -> Settings:
    return Settings(
        database_url=pooled,
        database_pool_mode="transaction",
        listen_database_url=direct,
        admin_token=OPERATOR_TOKEN,
        rate_limit=False,
        webhooks_deliver=False,
        **more,  # type: ignore[arg-type]
    )


def test_the_app_through_pgbouncer(urls: tuple[str, str]) -> None:
    """Teams, keys, limits, prices, ingestion and the spend check (its own libpq reads, here one
    simple query with its SET LOCAL timeouts) through PgBouncer, concurrently and many times over
    (psycopg would prepare a statement run five times); a write is seen by the next check at once
    (the spend cache listens on the direct URL and its barrier completes)."""
    pooled, direct = urls
    with (
        frozen_at("2026-11-30T12:00:00"),
        TestClient(create_app(_settings(pooled, direct))) as client,
    ):
        cache = client.app.state.spend_cache  # type: ignore[attr-defined]
        sku = unique_sku()
        put_cent_price(client, sku)
        teams = []
        for _ in range(4):
            team = client.post("/admin/v1/teams", json={"name": "Acme"}, headers=OPERATOR)
            assert team.status_code == 201, team.text
            teams.append(team.json()["teamId"])

        def work(team_id: str) -> None:
            for round_ in range(8):
                body = {"events": [event(team_id, sku, 10, "2026-11-30T10:00:00Z")]}
                ingested = client.post("/admin/v1/usage-events", json=body, headers=OPERATOR)
                assert ingested.status_code == 200, ingested.text
                status = client.get(f"/admin/v1/teams/{team_id}/spend-status", headers=OPERATOR)
                assert status.status_code == 200, status.text
                # exact right after the write: 10 units at 1 cent a round
                assert status.json()["cycleSpend"]["val"] == str(10 * (round_ + 1))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, teams))
        assert cache is not None and cache.listening


def test_the_spend_reader_without_the_pool_mode_fails_through_pgbouncer(
    urls: tuple[str, str],
) -> None:
    """Why the setting exists: the reader's session timeouts travel as the ``options`` startup
    parameter, which PgBouncer refuses; in transaction mode the reader sets them per
    transaction instead."""
    pooled, _ = urls
    session_engine = make_engine(pooled, pool_mode="session")  # the default
    pooled_engine = make_engine(pooled, pool_mode="transaction")
    try:
        with pytest.raises(Exception, match="unsupported startup parameter"):
            _SpendReader(session_engine)._connect()
        rows = _SpendReader(pooled_engine).read(uuid.uuid4(), utc_now())
        assert rows == []  # no such team: no rows, and no error
    finally:
        session_engine.dispose()
        pooled_engine.dispose()


def test_server_side_prepared_statements_break_through_pgbouncer(urls: tuple[str, str]) -> None:
    """Why the engine turns psycopg's prepared statements off in transaction mode: a statement
    prepared in one transaction is gone in the next when PgBouncer hands that one another server
    connection (here: another client holds the first)."""
    pooled, _ = urls
    query = text("SELECT count(*) FROM teams WHERE name = :name")

    def run(engine: Engine) -> None:
        with engine.connect() as mine, engine.connect() as other:
            for _ in range(8):  # psycopg prepares from the 6th run on (prepare_threshold 5)
                mine.execute(query, {"name": "x"})
                mine.commit()
            # The other client takes the only idle server connection, the one holding the
            # prepared statement; ours gets a new server connection for its next transaction.
            other.execute(text("SELECT 1"))
            mine.execute(query, {"name": "x"})
            mine.commit()
            other.commit()

    prepared = make_engine(pooled, pool_mode="session")
    try:
        with pytest.raises(ProgrammingError, match=r'prepared statement "_pg3_\d+" does not exist'):
            run(prepared)
    finally:
        prepared.dispose()
    plain = make_engine(pooled, pool_mode="transaction")
    try:
        run(plain)
    finally:
        plain.dispose()


def test_compaction_lock_holds_through_pgbouncer(urls: tuple[str, str]) -> None:
    """The automatic compaction's one-process-at-a-time lock is transaction-level, so it holds
    through PgBouncer: while one round holds it, another skips."""
    pooled, direct = urls
    engine = make_engine(pooled, pool_mode="transaction")
    sessions = make_sessionmaker(engine)
    settings = _settings(pooled, direct)
    inside = threading.Event()
    release = threading.Event()
    results: list[object] = []
    compact = scheduler._compact

    def slow_compact(*args: object) -> object:
        inside.set()
        assert release.wait(10)
        return compact(*args)  # type: ignore[arg-type]

    scheduler._compact = slow_compact  # type: ignore[assignment]
    try:
        first = threading.Thread(
            target=lambda: results.append(scheduler.compact_now(sessions, settings))
        )
        first.start()
        assert inside.wait(10)
        scheduler._compact = compact
        assert scheduler.compact_now(sessions, settings) is None  # the other round holds it
        release.set()
        first.join(10)
        assert results and results[0] is not None
        assert scheduler.compact_now(sessions, settings) is not None  # released
    finally:
        scheduler._compact = compact
        release.set()
        engine.dispose()


def test_a_transaction_pool_mode_needs_a_listen_url() -> None:
    """LISTEN through a transaction pooler is accepted and then deaf (the notifications go to
    whichever server connection ran it): the app refuses to start so configured."""
    settings = Settings(
        database_url="postgresql://billfold@pgbouncer:6432/billfold",
        database_pool_mode="transaction",
    )
    assert settings.database_problem() is not None
    with pytest.raises(DatabaseMisconfigured, match="BILLFOLD_LISTEN_DATABASE_URL"):
        create_app(settings)
    assert (
        Settings(
            database_url=settings.database_url,
            database_pool_mode="transaction",
            spend_cache=False,
        ).database_problem()
        is None
    )
    listening = Settings(
        database_url=settings.database_url,
        database_pool_mode="transaction",
        listen_database_url="postgresql://billfold@db:5432/billfold",
    )
    assert listening.database_problem() is None
    assert listening.listen_url() == "postgresql://billfold@db:5432/billfold"
    assert Settings(database_url="postgresql://x@db/b").listen_url() == "postgresql://x@db/b"
