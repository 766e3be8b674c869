"""Server time of the console's pages for a team with many events in the month.

    .venv/bin/python -m bench.console_pages [--events 1000000] [--database-url URL] [--n 20]

Builds the app on a fresh SQLite file (or the given database, which must be empty), prices three
SKUs, makes one team with a key and some credit, ingests ``--events`` usage events spread over
2066-07-01..28 (models and API keys as properties, batches of 10,000, clock frozen at
2066-07-28 12:00 UTC), signs in to the console with the key, and times each page ``--n`` times
through the in-process ASGI client (so the figures include the client's own ~1 ms): median and
max per page. The issue's goal: each page under 100 ms at 1,000,000 events in the month.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.clock import frozen
from billfold.kit.db import make_engine
from billfold.migrate import upgrade

TOKEN = "bench-token"
NOW = "2066-07-28T12:00:00+00:00"
PAGES = (
    ("overview", "/console", {}),
    ("usage, month by day, by description", "/console/usage", {"tz": "UTC"}),
    (
        "usage, month by day, by model, New York",
        "/console/usage",
        {"tz": "America/New_York", "by": "model"},
    ),
    (
        "usage, 7 days by hour, by model",
        "/console/usage",
        {"range": "7d", "unit": "hour", "by": "model", "tz": "Europe/Berlin"},
    ),
    ("usage CSV, month by day", "/console/usage.csv", {"tz": "UTC"}),
    ("invoices", "/console/invoices", {}),
)


def seed(client: TestClient, events: int) -> str:
    operator = {"Authorization": f"Bearer {TOKEN}"}
    for sku, price in (("b-in", "0.000003"), ("b-out", "0.000015"), ("b-img", "0.07")):
        client.put(
            f"/admin/v1/prices/{sku}",
            json={
                "description": f"Bench {sku}",
                "unitType": "Tokens",
                "unitPrice": price,
                "effectiveFrom": "2030-01-01T00:00:00Z",
            },
            headers=operator,
        )
    team = client.post("/admin/v1/teams", json={"name": "bench"}, headers=operator).json()["teamId"]
    key = client.post(
        f"/admin/v1/teams/{team}/management-keys", json={"name": "b"}, headers=operator
    ).json()["apiKey"]
    client.post(
        f"/admin/v1/teams/{team}/credits",
        json={"amount": "100000000", "reason": "bench", "idempotencyKey": "bench"},
        headers=operator,
    )
    rnd = random.Random(7)
    span = 27 * 86_400 + 12 * 3600
    models = ("grok-4", "grok-3", "grok-3-mini", "grok-2-image")
    keys = [f"key-{i}" for i in range(8)]
    started = time.perf_counter()
    sent = 0
    while sent < events:
        batch = []
        for _ in range(min(10_000, events - sent)):
            at = 3_045_168_000 + rnd.randrange(span)  # 2066-07-01T00:00:00Z + up to 27.5 days
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
            batch.append(
                {
                    "eventId": uuid.uuid4().hex,
                    "teamId": team,
                    "sku": rnd.choice(("b-in", "b-out", "b-img")),
                    "quantity": str(rnd.randint(1, 5000)),
                    "timestamp": stamp,
                    "properties": {"model": rnd.choice(models), "apiKeyId": rnd.choice(keys)},
                }
            )
        response = client.post("/admin/v1/usage-events", json={"events": batch}, headers=operator)
        assert response.status_code == 200 and response.json()["accepted"] == len(batch), (
            response.text
        )
        sent += len(batch)
    print(f"ingested {sent:,} events in {time.perf_counter() - started:.0f} s")
    return str(key)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database-url")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--keep", help="keep the SQLite database at this path (and reuse it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        settings = Settings(
            database_url=url, admin_token=TOKEN, rate_limit=False, webhooks_deliver=False
        )
        from datetime import datetime

        with frozen(datetime.fromisoformat(NOW)), TestClient(create_app(settings)) as client:
            key = seed(client, args.events)
            form = client.get("/console/login")
            token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
            signed = client.post(
                "/console/login", data={"csrf_token": token, "key": key}, follow_redirects=False
            )
            assert signed.status_code == 303, signed.text
            # Wall time, and this process's CPU time (the app and SQLite run in it): on a shared,
            # loaded machine the CPU time is the steadier figure (PostgreSQL's own work is not in
            # it).
            print(f"{'page':45} {'median ms':>10} {'max ms':>8} {'median CPU ms':>14}")
            for name, path, params in PAGES:
                times, cpu = [], []
                for i in range(args.n + 2):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    response = client.get(path, params=params)
                    elapsed = (time.perf_counter() - started) * 1000
                    elapsed_cpu = (time.process_time() - started_cpu) * 1000
                    assert response.status_code == 200, (path, response.status_code)
                    if i >= 2:  # warm-up left out
                        times.append(elapsed)
                        cpu.append(elapsed_cpu)
                print(
                    f"{name:45} {statistics.median(times):10.1f} {max(times):8.1f} "
                    f"{statistics.median(cpu):14.1f}"
                )


if __name__ == "__main__":
    main()
