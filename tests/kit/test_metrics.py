"""GET /metrics (kit/metrics.py, billfold/metrics.py): what known traffic adds to each series,
the token, the figures read from the database, and -- served with ``--workers 2`` -- that one
scrape sums both workers exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.migrate import upgrade
from billfold.outbox.models import OutboxMessage
from billfold.payments.sandbox import CARD_TIMEOUT
from tests.conftest import OPERATOR_TOKEN, Api, event, unique_sku
from tests.served import start_serve, wait_healthy

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SPEND_ROUTE = "/admin/v1/teams/{team_id}/spend-status"
LIMITS_ROUTE = "/v1/billing/teams/{team_id}/postpaid/spending-limits"
INGEST_ROUTE = "/admin/v1/usage-events"


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` that has these labels (others free)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def requests(samples: Samples, route: str, status: int, method: str = "GET") -> float:
    return value(
        samples,
        "billfold_http_request_duration_seconds_count",
        method=method,
        route=route,
        status=str(status),
    )


def scrape(client: Any, headers: dict[str, str] | None = None) -> Samples:
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_known_traffic_adds_exactly_to_each_series(api: Api) -> None:
    before = scrape(api.client)
    team_id, key = api.team_with_key()
    sku = unique_sku()
    api.set_price(sku, "0.5")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    repeated = event(team_id, sku, 1, now)
    result = api.ingest(
        [
            repeated,
            repeated,  # a duplicate inside the batch
            event(team_id, sku, 2, now),
            event(team_id, "no-such-sku-" + sku, 1, now),  # rejected
        ]
    )
    assert (result["accepted"], result["duplicates"], len(result["rejected"])) == (2, 1, 1)
    assert api.ingest([repeated])["duplicates"] == 1  # a duplicate of a stored event
    reasons = [
        api.admin("GET", f"/admin/v1/teams/{team_id}/spend-status").json()["reason"]
        for _ in range(5)
    ]
    assert api.client.get(f"/v1/billing/teams/{team_id}/postpaid/spending-limits", headers=key)
    wrong = {"Authorization": "Bearer xai-wrong"}
    for _ in range(3):
        answer = api.client.get(
            f"/v1/billing/teams/{team_id}/postpaid/spending-limits", headers=wrong
        )
        assert answer.status_code == 401
    assert api.client.get(f"/no/such/{team_id}").status_code == 404
    after = scrape(api.client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("billfold_usage_events_total", outcome="accepted") == 2
    assert delta("billfold_usage_events_total", outcome="duplicate") == 2
    assert delta("billfold_usage_events_total", outcome="rejected") == 1
    assert (
        requests(after, INGEST_ROUTE, 200, "POST") - requests(before, INGEST_ROUTE, 200, "POST")
        == 2
    )
    assert requests(after, SPEND_ROUTE, 200) - requests(before, SPEND_ROUTE, 200) == 5
    checks = total(after, "billfold_spend_checks_total", reason=reasons[0]) - total(
        before, "billfold_spend_checks_total", reason=reasons[0]
    )
    assert set(reasons) == {"ok"} and checks == 5
    assert requests(after, LIMITS_ROUTE, 200) - requests(before, LIMITS_ROUTE, 200) == 1
    assert requests(after, LIMITS_ROUTE, 401) - requests(before, LIMITS_ROUTE, 401) == 3
    assert requests(after, "(unmatched)", 404) - requests(before, "(unmatched)", 404) == 1
    # Latency: every request falls in the +Inf bucket; the sum of durations grew.
    inf = value(
        after,
        "billfold_http_request_duration_seconds_bucket",
        method="GET",
        route=SPEND_ROUTE,
        status="200",
        le="+Inf",
    )
    assert inf == requests(after, SPEND_ROUTE, 200)
    # Templates only: no series is named after a raw path (a team id, a key).
    assert not any(team_id in str(labels) for _, labels in after)


@pytest.fixture
def own_app(fresh_url: str) -> Iterator[Any]:
    """An app of its own on a fresh database (each of them in turn), with the given settings."""
    url = fresh_url
    backend = "sqlite" if url.startswith("sqlite") else "postgres"
    clients: list[TestClient] = []

    def make(**settings: Any) -> Api:
        engine = make_engine(url, pool_size=1)
        upgrade(engine)
        engine.dispose()
        app = create_app(Settings(database_url=url, admin_token=OPERATOR_TOKEN, **settings))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Api(client, backend, url)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_the_token_is_asked_when_set(own_app: Any) -> None:
    api = own_app(metrics_token="scrape-me", rate_limit=False)
    missing = api.client.get("/metrics")
    assert (missing.status_code, missing.json()["code"]) == (401, "missing_credentials")
    wrong = api.client.get("/metrics", headers={"Authorization": "Bearer scrape-you"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_metrics_token")
    operator = api.client.get("/metrics", headers=api.operator)  # not the operator token either
    assert operator.status_code == 401
    assert "billfold_" not in wrong.text + missing.text
    samples = scrape(api.client, {"Authorization": "Bearer scrape-me"})
    assert requests(samples, "/metrics", 401) >= 3


def test_off_means_no_route(own_app: Any) -> None:
    api = own_app(metrics=False)
    assert api.client.get("/metrics").status_code == 404
    team_id = api.create_team()
    assert api.admin("GET", f"/admin/v1/teams/{team_id}/spend-status").status_code == 200


def test_pending_charges_and_the_outbox_are_read_from_the_database(own_app: Any) -> None:
    api = own_app(webhooks_deliver=False, rate_limit=False)  # the outbox stays as written
    empty = scrape(api.client)
    assert value(empty, "billfold_pending_charges", kind="topup") == 0
    assert value(empty, "billfold_outbox_undispatched_messages") == 0
    assert value(empty, "billfold_outbox_delivery_lag_seconds", stage="fanout") == 0

    lost, lost_key = api.team_with_key()
    api.add_card(lost, CARD_TIMEOUT)  # the charge's answer is lost: the top-up stays pending
    paid, paid_key = api.team_with_key()
    api.add_card(paid)
    for team_id, key in ((lost, lost_key), (paid, paid_key)):
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/prepaid/top-up",
            headers=key,
            json={"amount": {"val": "2500"}},
        )
        assert response.status_code in (200, 202), response.text
    time.sleep(0.05)
    samples = scrape(api.client)
    assert value(samples, "billfold_pending_charges", kind="topup") == 1
    assert value(samples, "billfold_pending_charges", kind="invoice") == 0
    engine = make_engine(api.url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        waiting = session.scalar(select(func.count()).where(OutboxMessage.dispatched_at.is_(None)))
    engine.dispose()
    assert waiting and value(samples, "billfold_outbox_undispatched_messages") == waiting
    assert 0 < value(samples, "billfold_outbox_delivery_lag_seconds", stage="fanout") < 60
    assert value(samples, "billfold_outbox_pending_deliveries", channel="webhook") == 0
    assert value(samples, "billfold_db_pool_size") >= 1


# --- served: two workers, one scrape ------------------------------------------------------------

TOKEN = "served-metrics-operator"
METRICS_TOKEN = "served-metrics-scrape"


def _workers(serve_pid: int) -> list[int]:
    """The serving processes under ``billfold serve``: its children that are not uvicorn's
    helpers (multiprocessing's resource tracker)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == serve_pid and b"resource_tracker" not in cmdline:
            found.append(int(name))
    return found


def test_metrics_after_traffic_on_two_workers_add_up(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    process, base = start_serve(
        fresh_postgres_url, 2, tmp_path, ADMIN_TOKEN=TOKEN, METRICS_TOKEN=METRICS_TOKEN
    )
    operator = {"Authorization": f"Bearer {TOKEN}"}
    scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection, any worker, each time
    directory: str | None = None
    try:
        wait_healthy(base, process)
        # Both workers serving (each says so when its app has started), before any traffic.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = parse(httpx.get(base + "/metrics", headers=scraper, timeout=10).text)
            if value(ready, "billfold_serving_processes") == 2:
                break
            time.sleep(0.2)
        workers = _workers(process.pid)
        assert len(workers) == 2, workers
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        directory = next(
            v.split(b"=", 1)[1].decode()
            for v in environ
            if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
        )
        with httpx.Client(base_url=base, headers=operator, limits=fresh, timeout=10) as http:
            teams = [
                http.post("/admin/v1/teams", json={"name": f"m{i}"}).json()["teamId"]
                for i in range(2)
            ]
            http.put(
                f"/admin/v1/teams/{teams[1]}/hard-spending-limit", json={"amount": "0"}
            ).raise_for_status()
            sku = unique_sku()
            http.put(
                f"/admin/v1/prices/{sku}",
                json={
                    "description": "m",
                    "unitType": "Prompt text tokens",
                    "unitPrice": "0.5",
                    "effectiveFrom": "2026-01-01T00:00:00Z",
                },
            ).raise_for_status()
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            accepted = duplicates = rejected = 0
            for batch in range(12):
                events = [event(teams[0], sku, 1, now, f"served-{batch}-{i}") for i in range(5)]
                events.append(event(teams[0], sku, 1, now, f"served-{batch - 1}-0"))  # repeat
                events.append(event(teams[0], "no-such-" + sku, 1, now))
                result = http.post("/admin/v1/usage-events", json={"events": events}).json()
                accepted += result["accepted"]
                duplicates += result["duplicates"]
                rejected += len(result["rejected"])
            assert (accepted, duplicates, rejected) == (61, 11, 12)  # the first "repeat" is new
            reasons: dict[str, int] = {}
            for i in range(60):
                answer = http.get(f"/admin/v1/teams/{teams[i % 2]}/spend-status")
                assert answer.status_code == 200
                reason = answer.json()["reason"]
                reasons[reason] = reasons.get(reason, 0) + 1
            assert len(reasons) == 2, reasons
            for _ in range(8):  # bad keys: within the bad-credential budget of either worker
                bad = http.get(
                    LIMITS_ROUTE.replace("{team_id}", teams[0]),
                    headers={"Authorization": "Bearer xai-nope"},
                )
                assert bad.status_code == 401
            unauthorized = http.get("/metrics", headers={"Authorization": "Bearer wrong"})
            assert unauthorized.status_code == 401

            expected = {
                ("billfold_usage_events_total", (("outcome", "accepted"),)): 61,
                ("billfold_usage_events_total", (("outcome", "duplicate"),)): 11,
                ("billfold_usage_events_total", (("outcome", "rejected"),)): 12,
            }
            # Each worker records a request just after sending its answer: wait for the last.
            deadline = time.monotonic() + 10
            while True:
                samples = scrape(http, scraper)
                got_requests = (
                    requests(samples, INGEST_ROUTE, 200, "POST"),
                    requests(samples, SPEND_ROUTE, 200),
                    requests(samples, LIMITS_ROUTE, 401),
                    requests(samples, "/metrics", 401),
                )
                if got_requests == (12, 60, 8, 1) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert got_requests == (12, 60, 8, 1)
        for (name, labels), count in expected.items():
            assert value(samples, name, **dict(labels)) == count, name
        for reason, count in reasons.items():
            assert total(samples, "billfold_spend_checks_total", reason=reason) == count
        assert requests(samples, "/admin/v1/teams", 201, "POST") == 2
        assert value(samples, "billfold_serving_processes") == 2
        assert value(samples, "billfold_db_pool_size") == 2 * 10
        assert value(samples, "billfold_pending_charges", kind="topup") == 0
        # Both workers answered some of it: each wrote its own values.
        pids = {
            int(m[1])
            for f in os.listdir(directory)
            if (m := re.fullmatch(r"histogram_(\d+)\.db", f))
        }
        assert set(workers) <= pids, (workers, pids)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    assert directory is not None and not os.path.exists(directory)  # removed at exit


# --- per-process gauges of workers that died -----------------------------------------------------

_WORKER = """
import os, sys
from billfold.kit.metrics import process_started, POOL_SIZE, SPEND_CHECKS
process_started()
POOL_SIZE.set(10)
SPEND_CHECKS.labels("ok", "true").inc(3)
print(os.getpid(), flush=True)
if sys.argv[1] == "killed":
    os._exit(0)  # as after kill -9: no cleanup
from billfold.kit.metrics import process_stopped
process_stopped()
"""

_SCRAPE = """
import sys
from billfold.kit.metrics import scrape
sys.stdout.write(scrape().decode())
"""


def test_a_dead_workers_gauges_leave_the_sums_and_its_counts_stay(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}

    def python(code: str, *argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    killed = python(_WORKER, "killed").strip()
    python(_WORKER, "stopped")
    assert f"gauge_livesum_{killed}.db" in os.listdir(directory)  # no cleanup after kill -9
    samples = parse(python(_SCRAPE))
    assert value(samples, "billfold_serving_processes") == 0
    assert value(samples, "billfold_db_pool_size") == 0
    assert value(samples, "billfold_spend_checks_total", reason="ok", cached="true") == 6
    assert f"gauge_livesum_{killed}.db" not in os.listdir(directory)
