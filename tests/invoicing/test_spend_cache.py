"""The spend check's per-process cache on PostgreSQL (invoicing/gateway.py).

Each test checks that an answer really came from memory (the cache holds it) and that a change
made afterwards -- through this process, through another process, or straight in the database --
is what the next check shows. "Another process" is a second app on the same database: its own
cache, its own listening connection, exactly what a second uvicorn worker has.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.clock import utc_now
from billfold.kit.db import make_engine, normalize_database_url
from billfold.spend.gateway import SpendCache
from billfold.spend.reader import _spend_reader
from tests.conftest import OPERATOR_TOKEN, Api, event, unique_sku
from tests.invoicing.conftest import frozen_at, grant, set_soft_limit

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def cache_of(api: Api) -> SpendCache:
    cache = api.client.app.state.spend_cache  # type: ignore[attr-defined]
    assert isinstance(cache, SpendCache)
    return cache


def check(client: TestClient, team_id: str) -> dict[str, Any]:
    response = client.get(f"/admin/v1/teams/{team_id}/spend-status", headers=OPERATOR)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cached(api: Api, team_id: str) -> bool:
    return team_id in cache_of(api)._answers


def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def pg(postgres_api: Api) -> Api:
    eventually(lambda: cache_of(postgres_api).ready)
    return postgres_api


@pytest.fixture
def other_worker(postgres_url: str) -> Iterator[TestClient]:
    """A second app on the same database: another worker process's cache and listener."""
    app = create_app(Settings(database_url=postgres_url, admin_token=OPERATOR_TOKEN))
    with TestClient(app, raise_server_exceptions=False) as client:
        eventually(lambda: app.state.spend_cache.ready)
        yield client


def other_cache(client: TestClient) -> SpendCache:
    cache = client.app.state.spend_cache  # type: ignore[attr-defined]
    assert isinstance(cache, SpendCache)
    return cache


def hold_listener(cache: SpendCache, seconds: float) -> None:
    """Keep ``cache``'s listening connection busy: PostgreSQL delivers nothing to it meanwhile."""
    loop = cache._loop
    assert loop is not None
    sql = b"DO $$ BEGIN PERFORM pg_sleep(%g); END $$" % seconds
    loop.call_soon_threadsafe(cache._send_sql, sql)
    time.sleep(0.05)


def libpq(url: str) -> str:
    """The test database's URL as psycopg.connect() takes it."""
    return normalize_database_url(url).replace("+psycopg", "")


def priced_team(api: Api, soft_limit: str | None = None) -> tuple[str, str]:
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    if soft_limit is not None:
        assert set_soft_limit(api, headers, team_id, soft_limit).status_code == 200
    return team_id, sku


def test_answers_come_from_memory_and_match_the_full_route(pg: Api) -> None:
    team_id, sku = priced_team(pg)
    with frozen_at("2030-06-10T12:00:00"):
        assert pg.ingest([event(team_id, sku, 250, "2030-06-10T10:00:00Z")])["accepted"] == 1
        first = check(pg.client, team_id)
        assert cached(pg, team_id)
        assert check(pg.client, team_id) == first
        # The operator's team view computes the same decision through the ORM, uncached.
        team = pg.admin("GET", f"/admin/v1/teams/{team_id}").json()
        assert team["spendStatus"] == first
        assert first["cycleSpend"] == {"val": "250"}


def test_writes_through_this_process_show_at_once(pg: Api) -> None:
    """Every kind of write the check depends on, each followed at once by a check that must
    not come from the stale answer (the response waited for this process's cache)."""
    team_id, sku = priced_team(pg, soft_limit="500")
    headers = pg.create_key_headers(team_id)
    with frozen_at("2030-06-11T12:00:00"):
        assert check(pg.client, team_id)["postpaidRemaining"] == {"val": "500"}
        assert cached(pg, team_id)

        pg.ingest([event(team_id, sku, 600, "2030-06-11T10:00:00Z")])  # billing_cycles
        status = check(pg.client, team_id)
        assert (status["allowed"], status["reason"]) == (False, "spending_limit_reached")

        grant(pg, team_id, 300)  # credit_accounts
        status = check(pg.client, team_id)
        assert status["allowed"] is True and status["postpaidSpend"] == {"val": "300"}

        assert set_soft_limit(pg, headers, team_id, "100").status_code == 200  # teams
        assert check(pg.client, team_id)["allowed"] is False

        response = pg.admin(
            "PUT", f"/admin/v1/teams/{team_id}/hard-spending-limit", json={"amount": "50"}
        )
        assert response.status_code == 200, response.text
        assert check(pg.client, team_id)["effectiveSpendingLimit"] == {"val": "50"}


def test_a_new_month_and_an_expiry_need_no_write(pg: Api) -> None:
    team_id, sku = priced_team(pg)
    with frozen_at("2037-01-31T12:00:00"):
        assert pg.ingest([event(team_id, sku, 700, "2037-01-31T10:00:00Z")])["accepted"] == 1
        assert check(pg.client, team_id)["cycleSpend"] == {"val": "700"}
        assert cached(pg, team_id)
    with frozen_at("2037-02-01T00:00:00"):  # a new cycle: its spend starts at zero
        assert check(pg.client, team_id)["cycleSpend"] == {"val": "0"}
    with frozen_at("2037-01-31T13:00:00"):  # and the answer of January is not served in February
        assert check(pg.client, team_id)["cycleSpend"] == {"val": "700"}

    expiring_team, _ = priced_team(pg)
    with frozen_at("2037-03-01T00:00:00"):
        response = pg.admin(
            "POST",
            f"/admin/v1/teams/{expiring_team}/credits",
            json={
                "amount": "400",
                "reason": "promo",
                "idempotencyKey": f"g-{uuid.uuid4().hex}",
                "expiresAt": "2037-03-05T00:00:00Z",
            },
        )
        assert response.status_code == 201, response.text
        assert check(pg.client, expiring_team)["prepaidRemaining"] == {"val": "400"}
        assert cached(pg, expiring_team)
    with frozen_at("2037-03-05T00:00:00"):
        assert check(pg.client, expiring_team)["prepaidRemaining"] == {"val": "0"}


def test_a_write_through_one_process_shows_at_once_in_another(
    pg: Api, other_worker: TestClient
) -> None:
    team_id, sku = priced_team(pg, soft_limit="500")
    with frozen_at("2030-06-12T12:00:00"):
        assert check(other_worker, team_id)["allowed"] is True
        assert str(team_id) in other_cache(other_worker)._answers
        # The first app knows the other is there (its hello), so its writes wait for it ...
        other = other_cache(other_worker)
        eventually(lambda: other.name in cache_of(pg).members)
        # ... even when the other's listening connection is slow: PostgreSQL delivers nothing
        # to it while it runs a statement (here, half a second of sleep).
        hold_listener(other, 0.5)
        started = time.monotonic()
        pg.ingest([event(team_id, sku, 600, "2030-06-12T10:00:00Z")])  # through the first app
        assert time.monotonic() - started > 0.3  # the response waited for the other process
        # ... and the other process's very next check shows the write.
        assert check(other_worker, team_id)["allowed"] is False
        # ... and a write made outside Billfold altogether (psql) too: the triggers announce it.
        assert check(other_worker, team_id)["allowed"] is False
        with pg.client.app.state.engine.begin() as connection:  # type: ignore[attr-defined]
            connection.execute(
                text("UPDATE teams SET soft_limit_cents = 1000 WHERE id = :id"),
                {"id": uuid.UUID(team_id)},
            )
        eventually(lambda: check(other_worker, team_id)["allowed"] is True)


def test_a_read_overtaken_by_a_notification_is_not_kept(pg: Api) -> None:
    cache = cache_of(pg)
    team_id, _ = priced_team(pg)
    with frozen_at("2030-06-13T12:00:00"):
        body = pg.client.get(f"/admin/v1/teams/{team_id}/spend-status", headers=OPERATOR).content
        epoch = cache.epoch
        grant(pg, team_id, 100)  # notifies; the response waited until this cache saw it
        assert cache.epoch != epoch
        cache._answers.pop(team_id, None)
        now = utc_now()
        cache.put(team_id, body, now, now.replace(year=now.year + 1), epoch)
        assert team_id not in cache._answers


def _backend_pids(url: str) -> list[int]:
    with psycopg.connect(libpq(url), autocommit=True) as c:
        return [row[0] for row in c.execute("SELECT pid FROM pg_stat_activity")]


def _terminate(url: str, pids: list[int]) -> None:
    with psycopg.connect(libpq(url), autocommit=True) as c:
        for pid in pids:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_lost_listener_empties_the_cache_until_it_listens_again(
    postgres_url: str, other_worker: TestClient
) -> None:
    cache = other_cache(other_worker)
    team = other_worker.post("/admin/v1/teams", headers=OPERATOR, json={"name": "x"}).json()
    team_id = team["teamId"]
    check(other_worker, team_id)
    assert team_id in cache._answers
    listener_pid = cache._conn.backend_pid if cache._conn is not None else 0
    _terminate(postgres_url, [listener_pid])
    eventually(lambda: not cache.listening)  # the socket's EOF is noticed on the event loop
    assert len(cache) == 0
    # While not listening, a change made meanwhile is read from the database.
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE teams SET hard_limit_override_cents = 7 WHERE id = :id"),
            {"id": uuid.UUID(team_id)},
        )
    engine.dispose()
    assert check(other_worker, team_id)["effectiveSpendingLimit"] == {"val": "7"}
    eventually(lambda: cache.ready)  # reconnects on its own (first retry after 0.5 s)
    assert cache._conn is not None and cache._conn.backend_pid != listener_pid
    check(other_worker, team_id)
    assert team_id in cache._answers


def test_the_reader_survives_a_dropped_connection_and_a_lost_statement(
    postgres_url: str, other_worker: TestClient
) -> None:
    """The check's own connections: one killed under it is replaced (the read is retried), and
    one that lost its prepared statement (DISCARD ALL, a pooler) prepares it again."""
    cache = other_cache(other_worker)
    team = other_worker.post("/admin/v1/teams", headers=OPERATOR, json={"name": "r"}).json()
    team_id = team["teamId"]
    check(other_worker, team_id)
    reader = _spend_reader(other_worker.app.state.engine)  # type: ignore[attr-defined]
    assert reader._idle, "the check's connection is kept for the next check"

    cache._answers.clear()
    pids = [connection.backend_pid for connection in reader._idle]
    _terminate(postgres_url, pids)
    eventually(lambda: not set(pids) & set(_backend_pids(postgres_url)))
    assert check(other_worker, team_id)["allowed"] is True

    cache._answers.clear()
    for connection in reader._idle:
        connection.exec_(b"DEALLOCATE ALL")
    assert check(other_worker, team_id)["allowed"] is True
    assert reader._idle


def test_a_process_that_vanished_without_a_word_stops_holding_up_writes(
    pg: Api, postgres_url: str
) -> None:
    app = create_app(Settings(database_url=postgres_url, admin_token=OPERATOR_TOKEN))
    team_id, _ = priced_team(pg)
    with TestClient(app, raise_server_exceptions=False):
        gone = app.state.spend_cache
        eventually(lambda: gone.listening and gone.name in cache_of(pg).members)
        gone._closed = True  # no reconnecting, and no "bye": as if the process were killed
        assert gone._conn is not None
        _terminate(postgres_url, [gone._conn.backend_pid])
        eventually(lambda: not gone.listening)
        started = time.monotonic()
        grant(pg, team_id, 100)  # waits for the vanished one's acknowledgement, then gives up
        assert 0.9 < time.monotonic() - started < 5
        assert gone.name not in cache_of(pg).members
        started = time.monotonic()
        grant(pg, team_id, 100)
        assert time.monotonic() - started < 0.9  # and the next write does not wait for it


def test_a_process_that_stops_says_bye(pg: Api, postgres_url: str) -> None:
    app = create_app(Settings(database_url=postgres_url, admin_token=OPERATOR_TOKEN))
    with TestClient(app, raise_server_exceptions=False):
        name = app.state.spend_cache.name
        eventually(lambda: name in cache_of(pg).members)
    eventually(lambda: name not in cache_of(pg).members)


def test_a_full_cache_drops_its_oldest_answers(postgres_url: str) -> None:
    settings = Settings(database_url=postgres_url, admin_token=OPERATOR_TOKEN, spend_cache_size=10)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        cache = other_cache(client)
        eventually(lambda: cache.ready)
        teams = [
            client.post("/admin/v1/teams", headers=OPERATOR, json={"name": "f"}).json()["teamId"]
            for _ in range(12)
        ]
        for team_id in teams:
            check(client, team_id)
        assert len(cache) == 10  # 10 kept, then the oldest one dropped for the 11th and 12th
        assert teams[-1] in cache and teams[-2] in cache and teams[0] not in cache
        assert check(client, teams[0])["allowed"] is True  # read again, answered all the same


def test_refused_requests_do_not_wait_for_the_other_processes(
    pg: Api, other_worker: TestClient
) -> None:
    """Only a request that may have committed waits (see GatewayMiddleware): a flood of bad keys
    or unknown paths must not become barriers across every process."""
    other = other_cache(other_worker)
    eventually(lambda: other.name in cache_of(pg).members)
    hold_listener(other, 0.5)
    started = time.monotonic()
    bad_key = {"Authorization": "Bearer nope"}
    assert pg.client.post("/admin/v1/teams", headers=bad_key, json={"name": "x"}).status_code == 401
    assert pg.client.post("/no/such/path", json={}).status_code == 404
    assert time.monotonic() - started < 0.3
    pg.create_team()  # a write: waits for the slow process
    assert time.monotonic() - started > 0.3


def _notify_as_someone_else(url: str, channel: str, payload: str) -> None:
    with psycopg.connect(libpq(url), autocommit=True) as c:
        c.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def test_foreign_notifications_are_ignored_never_run(pg: Api, postgres_url: str) -> None:
    """Any role that can log in may NOTIFY on our channels: payloads are parsed, never SQL."""
    team_id, _ = priced_team(pg)
    cache = cache_of(pg)
    injection = (
        "sync:x, 'a'; UPDATE teams SET hard_limit_override_cents = 424242"
        f" WHERE id = '{team_id}'; --:1"
    )
    for channel, payload in [
        ("billfold_spend", injection),
        ("billfold_spend", "hello:ghost"),
        ("billfold_spend", "garbage:1:2:3"),
        (cache.name, "garbage"),
        (cache.name, "ack:not-a-number:x"),
    ]:
        _notify_as_someone_else(postgres_url, channel, payload)
    eventually(lambda: check(pg.client, team_id) is not None and cache.ready)
    assert check(pg.client, team_id)["effectiveSpendingLimit"] == {"val": "100000"}
    assert "ghost" not in cache.members and not any("UPDATE" in m for m in cache.members)
    assert team_id in cache  # still answering from memory


def test_a_stuck_listener_stops_answering_from_memory(pg: Api, other_worker: TestClient) -> None:
    """The lease: a process whose own hellos stop coming back (here its listening connection is
    busy for 3 s) reads the database instead, so a write that gave up waiting for it (1 s) is
    still seen there; so is the next write, which no longer waits for it at all."""
    other = other_cache(other_worker)
    team = other_worker.post("/admin/v1/teams", headers=OPERATOR, json={"name": "s"}).json()
    team_id = team["teamId"]
    eventually(lambda: other.name in cache_of(pg).members)
    check(other_worker, team_id)
    assert team_id in other
    hold_listener(other, 3)
    for limit in ("7", "8"):
        response = pg.admin(
            "PUT", f"/admin/v1/teams/{team_id}/hard-spending-limit", json={"amount": limit}
        )
        assert response.status_code == 200
        assert check(other_worker, team_id)["effectiveSpendingLimit"] == {"val": limit}
    assert not other.ready
    eventually(lambda: other.ready)  # back once its hellos return


def test_a_locked_table_is_a_quick_503_not_a_frozen_worker(pg: Api, postgres_url: str) -> None:
    """The check reads on the event loop: a lock on a table it reads (an ALTER TABLE, say) must
    cost it a lock timeout and a 503, not the whole process its requests."""
    cached_team, _ = priced_team(pg)
    uncached_team, _ = priced_team(pg)
    check(pg.client, cached_team)
    url = libpq(postgres_url)
    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE credit_accounts IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = pg.client.get(f"/admin/v1/teams/{uncached_team}/spend-status", headers=OPERATOR)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "unavailable"
        assert time.monotonic() - started < 1.0
        assert check(pg.client, cached_team)["allowed"] is True  # from memory, meanwhile
        locker.rollback()
    assert check(pg.client, uncached_team)["allowed"] is True


def test_a_get_that_settles_a_top_up_waits_for_the_other_processes(
    pg: Api, other_worker: TestClient
) -> None:
    """Reading the balance settles a pending top-up (its charge's answer was lost): that GET
    wrote credit, so it waits like a write; a plain GET does not."""
    team_id, headers = pg.team_with_key()
    pg.add_card(team_id, "4000000000000119")  # the charge succeeds, its answer is lost once
    with frozen_at("2030-06-20T12:00:00"):
        other = other_cache(other_worker)
        eventually(lambda: other.name in cache_of(pg).members)
        assert check(other_worker, team_id)["prepaidRemaining"] == {"val": "0"}
        top_up = pg.client.post(
            f"/v1/billing/teams/{team_id}/prepaid/top-up",
            headers=headers,
            json={"amount": {"val": "2000"}},
        )
        assert top_up.status_code == 202, top_up.text  # pending: no credit yet
        assert check(other_worker, team_id)["prepaidRemaining"] == {"val": "0"}

        hold_listener(other, 0.5)
        started = time.monotonic()
        balance = pg.client.get(f"/v1/billing/teams/{team_id}/prepaid/balance", headers=headers)
        assert balance.json()["total"] == {"val": "-2000"}
        assert time.monotonic() - started > 0.3  # it settled the top-up: it waited
        assert check(other_worker, team_id)["prepaidRemaining"] == {"val": "2000"}

        hold_listener(other, 0.5)
        started = time.monotonic()
        pg.client.get(f"/v1/billing/teams/{team_id}/prepaid/balance", headers=headers)
        assert time.monotonic() - started < 0.3  # nothing to settle: no wait
