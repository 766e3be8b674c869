"""A read replica for usage analytics (``BILLFOLD_READ_DATABASE_URL``), with a real one.

The module starts a streaming replica of the test server (tests/pg_servers.py: ``pg_basebackup
-R`` into a temporary directory, started on another port). Analytics read it -- a paused replay
makes them stale, a stopped replica makes them fail -- while every path that decides money (the
spend check, the invoice preview, the balance, the invoices, ingestion) reads and writes the
primary and does not notice the replica at all. PostgreSQL only; never skipped in CI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.clock import frozen
from billfold.kit.db import make_engine
from billfold.migrate import upgrade
from tests.conftest import (
    IN_CI,
    OPERATOR_TOKEN,
    POSTGRES_URL,
    _postgres_admin_engine,
    event,
    put_cent_price,
)
from tests.conftest import unique_sku as new_sku
from tests.pg_servers import Missing, Replica, _with_port, start_replica

pytestmark = pytest.mark.postgres_only

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def replica(postgres_url: str) -> Iterator[Replica]:
    from sqlalchemy import make_url

    from billfold.kit.db import normalize_database_url

    server = make_url(normalize_database_url(POSTGRES_URL))
    admin = _postgres_admin_engine()
    try:
        started = start_replica(
            admin, server.host or "127.0.0.1", server.port or 5432, server.username or "postgres"
        )
    except Missing as missing:
        if IN_CI:
            pytest.fail(f"{missing} (CI=true: the replica tests must run)", pytrace=False)
        pytest.skip(str(missing))
    finally:
        admin.dispose()
    try:
        yield started
    finally:
        started.remove()


class Setup:
    def __init__(self, client: TestClient, primary: Engine, replica: Engine, team: str) -> None:
        self.client, self.primary, self.replica, self.team = client, primary, replica, team
        self.sku = ""
        self.headers: dict[str, str] = {}


@pytest.fixture
def setup(fresh_postgres_url: str, replica: Replica) -> Iterator[Setup]:
    """An app on a database of its own, analytics on the replica; a team with a key and a
    price. The replica URL names the same database on the replica's port (direct, never through
    a pooler: under --pgbouncer the database URL is PgBouncer's)."""
    server_port = int(POSTGRES_URL.rsplit(":", 1)[1].split("/")[0])
    direct = _with_port(fresh_postgres_url, server_port)
    primary = make_engine(fresh_postgres_url)
    upgrade(primary)
    replica_url = replica.url(direct)
    replica_engine = make_engine(replica_url, pool_mode="session")
    settings = Settings(
        database_url=fresh_postgres_url,
        read_database_url=replica_url,
        admin_token=OPERATOR_TOKEN,
        rate_limit=False,
        webhooks_deliver=False,
    )
    with frozen(NOW), TestClient(create_app(settings), raise_server_exceptions=False) as client:
        team = client.post("/admin/v1/teams", json={"name": "Acme"}, headers=OPERATOR).json()
        made = Setup(client, primary, replica_engine, str(team["teamId"]))
        key = client.post(
            f"/admin/v1/teams/{made.team}/management-keys", json={"name": "k"}, headers=OPERATOR
        ).json()
        made.headers = {"Authorization": f"Bearer {key['apiKey']}"}
        made.sku = new_sku()
        put_cent_price(client, made.sku)
        try:
            yield made
        finally:
            replica_engine.dispose()
            primary.dispose()


def ingest(setup: Setup, quantity: int) -> None:
    body = {"events": [event(setup.team, setup.sku, quantity, "2026-11-30T10:00:00Z")]}
    response = setup.client.post("/admin/v1/usage-events", json=body, headers=OPERATOR)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


def analytics(setup: Setup) -> Any:
    body = {
        "analyticsRequest": {
            "timeRange": {
                "startTime": "2026-11-30 00:00:00",
                "endTime": "2026-12-01 00:00:00",
                "timezone": "Etc/GMT",
            },
            "timeUnit": "TIME_UNIT_DAY",
            "values": [{"name": "num_units", "aggregation": "AGGREGATION_SUM"}],
            "groupBy": [],
            "filters": [],
        }
    }
    return setup.client.post(
        f"/v1/billing/teams/{setup.team}/usage", json=body, headers=setup.headers
    )


def units(setup: Setup) -> Decimal:
    response = analytics(setup)
    assert response.status_code == 200, response.text
    return sum(
        (
            Decimal(str(point["values"][0]))
            for s in response.json()["timeSeries"]
            for point in s["dataPoints"]
        ),
        Decimal(0),
    )


def money(setup: Setup) -> dict[str, Any]:
    """What the money paths say now: each must answer from the primary."""
    client, team, headers = setup.client, setup.team, setup.headers
    status = client.get(f"/admin/v1/teams/{team}/spend-status", headers=OPERATOR)
    preview = client.get(f"/v1/billing/teams/{team}/postpaid/invoice/preview", headers=headers)
    balance = client.get(f"/v1/billing/teams/{team}/prepaid/balance", headers=headers)
    invoices = client.get(f"/v1/billing/teams/{team}/invoices", headers=headers)
    for response in (status, preview, balance, invoices):
        assert response.status_code == 200, response.text
    return {
        "spend": status.json()["cycleSpend"]["val"],
        "preview": preview.json()["coreInvoice"]["amountBeforeVat"],
    }


def _pause(replica: Engine, paused: bool) -> None:
    with replica.connect() as connection:
        call = "pg_wal_replay_pause" if paused else "pg_wal_replay_resume"
        connection.execute(text(f"SELECT {call}()"))
        deadline = time.monotonic() + 10
        want = "paused" if paused else "not paused"
        state = text("SELECT pg_get_wal_replay_pause_state()")
        while connection.execute(state).scalar_one() != want:
            assert time.monotonic() < deadline, f"replay not {want}"
            time.sleep(0.02)


def test_analytics_read_the_replica_money_reads_the_primary(setup: Setup, replica: Replica) -> None:
    """Usage replayed on the replica shows in analytics; with the replay paused, new usage shows
    at once in the spend check and the preview but not in analytics (stale: the replica), until
    the replay resumes."""
    with frozen(NOW):
        ingest(setup, 100)
        replica.wait_replayed(setup.primary, setup.replica)
        assert units(setup) == 100
        before = money(setup)
        assert before["spend"] == "100"  # 100 units at 1 cent
        _pause(setup.replica, True)
        try:
            ingest(setup, 250)
            after = money(setup)
            assert after["spend"] == "350"  # exact: the primary
            assert after["preview"] != before["preview"]
            assert units(setup) == 100  # stale: the replica has not replayed the new usage
        finally:
            _pause(setup.replica, False)
        replica.wait_replayed(setup.primary, setup.replica)
        assert units(setup) == 350


def test_money_paths_never_touch_the_replica(setup: Setup, replica: Replica) -> None:
    """The replica stopped: analytics fail (they read it), everything that decides money --
    ingestion, the spend check, the preview, the balance, the invoices -- works as before."""
    with frozen(NOW):
        ingest(setup, 40)
        replica.wait_replayed(setup.primary, setup.replica)
        assert units(setup) == 40
        setup.replica.dispose()
        replica.stop()
        try:
            ingest(setup, 2)
            assert money(setup)["spend"] == "42"
            assert analytics(setup).status_code >= 500  # it reads the replica, which is gone
        finally:
            replica.start()
        setup.replica.dispose()
        replica.wait_replayed(setup.primary, setup.replica)
        assert units(setup) == 42
