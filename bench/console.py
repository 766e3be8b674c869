"""Console page benchmark: each page's server time for a team with 1,000,000 events this month.

What it does, in one run:

1. creates a fresh database on the PostgreSQL server of ``BILLFOLD_BENCH_POSTGRES_URL``
   (default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it and starts
   ``billfold serve --workers N`` on it (bench/served.py);
2. fills it with bench/ingest.py's loaders: a team with ``--events`` events this month ("big"), a
   team with 1,000 ("small"), the same four priced SKUs, sent over HTTP as the ingestion
   benchmark sends them; then gives each team billing info, a card and a $25 top-up (a posted
   ledger entry and a receipt invoice, so every page has something to show);
3. runs ``ANALYZE`` when autovacuum is off (what autovacuum would have done) and a ``CHECKPOINT``;
4. signs in to the console with each team's management key (the login form and its CSRF field,
   as a browser does) and times GET of every page, interleaved (a round requests each page once,
   in a new random order), after warm-up rounds; prints p50/p95/max per page and team against
   the goal (< 100 ms);
5. drops the database (``--keep-database`` keeps it).

It measures PostgreSQL, the production database, over real HTTP (the in-process SQLite variant,
bench/console_pages.py, went: this one times the same pages, usage's heavier choices included).

Two times per request: the server's own (``duration_ms`` of its JSON access line, from the
outermost ASGI layer in to the last byte out; each timed request carries an ``X-Request-Id`` that
finds its line) -- the goal's figure -- and the client's on loopback (the server's plus the client
and the socket). Client, server and PostgreSQL share the machine's cores.

    .venv/bin/python bench/console.py                      # the goal's size (1,000,000 events)
    .venv/bin/python bench/console.py --events 20000       # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import orjson
import psycopg

from ingest import build_workload, send_all, setup  # bench/ingest.py
from procfs import machine  # bench/procfs.py
from served import create_database, drop_database, start_server, upgrade_database  # bench/served.py

GOAL_MS = 100.0
PAGES = [
    ("overview", "/console"),
    ("usage", "/console/usage"),
    # the usage page's heavier choices: another series, another zone, hours instead of days
    ("usage by model, New York", "/console/usage?tz=America/New_York&by=model"),
    ("usage 7d by hour, Berlin", "/console/usage?range=7d&unit=hour&by=model&tz=Europe/Berlin"),
    ("usage CSV", "/console/usage.csv?tz=UTC"),
    ("invoices", "/console/invoices"),
    ("invoice", "/console/invoices/{invoice}"),
    ("credits", "/console/credits"),
    ("payment methods", "/console/payment-methods"),
    ("billing info", "/console/billing-info"),
    ("limits", "/console/limits"),
]


class _Form(HTMLParser):
    """The first form's action and its inputs' values (the CSRF field is one of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None and not self._done:
            self.action = values.get("action", "")
        elif tag == "input" and self.action is not None and not self._done and "name" in values:
            self.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.action is not None:
            self._done = True


def sign_in(base_url: str, key: str) -> httpx.Client:
    """A client holding a console session of the key's team (cookies kept by httpx)."""
    http = httpx.Client(base_url=base_url, timeout=60, follow_redirects=False)
    page = http.get("/console/login")
    page.raise_for_status()
    form = _Form()
    form.feed(page.text)
    fields = form.fields | {"key": key}
    answer = http.post(form.action or "/console/login", data=fields)
    if answer.status_code not in (302, 303):
        raise RuntimeError(f"sign-in answered {answer.status_code}: {answer.text[:300]}")
    return http


def prepare_team(http: httpx.Client, team: str, key: str) -> str:
    """Billing info, a card and a $25 top-up: a ledger entry and a receipt invoice; its id."""
    auth = {"Authorization": f"Bearer {key}"}
    info = {
        "billingInfo": {
            "name": "Bench Ltd",
            "email": "billing@bench.example",
            "address": {"line1": "1 Main St", "city": "Dublin", "country": "IE"},
        }
    }
    http.post(f"/v1/billing/teams/{team}/billing-info", json=info, headers=auth).raise_for_status()
    http.post(
        f"/admin/v1/teams/{team}/payment-methods",
        json={"cardNumber": "4242424242424242", "expMonth": 12, "expYear": 2035},
    ).raise_for_status()
    topup = http.post(
        f"/v1/billing/teams/{team}/prepaid/top-up", json={"amount": {"val": "2500"}}, headers=auth
    )
    topup.raise_for_status()
    return str(topup.json()["change"]["invoiceId"])


def time_pages(
    clients: dict[str, httpx.Client], invoices: dict[str, str], runs: int, warmup: int
) -> list[tuple[str, str, list[float], list[str]]]:
    """Per page and team: the client's times (ms) and the request ids of the timed requests."""
    reads = [
        (label, team, path.format(invoice=invoices[team]))
        for team in clients
        for label, path in PAGES
    ]
    samples: dict[int, list[float]] = {i: [] for i in range(len(reads))}
    ids: dict[int, list[str]] = {i: [] for i in range(len(reads))}
    for _, team, path in reads:  # each page answers at all before the clock starts
        response = clients[team].get(path)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
    order = list(range(len(reads)))
    shuffle = random.Random(7).shuffle
    for round_ in range(warmup + runs):
        shuffle(order)
        for i in order:
            _, team, path = reads[i]
            request_id = f"bench-console-{i}-{round_}"
            started = time.perf_counter()
            response = clients[team].get(path, headers={"X-Request-Id": request_id})
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if round_ >= warmup:
                samples[i].append(elapsed)
                ids[i].append(request_id)
    return [(label, team, samples[i], ids[i]) for i, (label, team, _) in enumerate(reads)]


def server_times(log: Path) -> dict[str, float]:
    """request id -> duration_ms, from the server's JSON access lines."""
    times = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"duration_ms"' not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if str(entry.get("request_id", "")).startswith("bench-console-"):
            times[entry["request_id"]] = float(entry["duration_ms"])
    return times


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(len(ordered) * 0.95) - 1)]
    return statistics.median(ordered), p95, ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the big team")
    parser.add_argument("--small-events", type=int, default=1_000, help="events of the small team")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4, help="ingest requests in flight")
    parser.add_argument("--workers", type=int, default=2, help="billfold serve --workers")
    parser.add_argument("--runs", type=int, default=30, help="timed requests per page and team")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args()

    database = create_database("billfold_bench_console_")
    name, db, pg_version = database.name, database.url, database.pg_version
    token = "bench-" + secrets.token_hex(16)
    server = None
    try:
        upgrade_database(db)
        server, command = start_server(
            args.workers,
            {
                "BILLFOLD_DATABASE_URL": db,
                "BILLFOLD_ADMIN_TOKEN": token,
                "BILLFOLD_RATE_LIMIT": "false",
                # the access line of every request (duration_ms: the server's time)
                "BILLFOLD_LOG_LEVEL": "info",
                "BILLFOLD_LOG_FORMAT": "json",
            },
        )
        print(f"machine:  {machine()}; PostgreSQL {pg_version}")
        print(f"server:   {' '.join(command[1:])}, database {name}")
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as http:
            big, small, keys = setup(http, db)
            workload = build_workload(big, small, args.events, args.small_events, args.batch_size)
            load = asyncio.run(
                send_all(
                    server.base_url, token, workload.bodies, workload.batch_sizes, args.concurrency
                )
            )
            print(
                f"filled:   {load.accepted:,} events accepted in {load.seconds:.1f} s "
                f"({workload.events[big]:,} for the big team, {workload.events[small]:,} for "
                f"the small one), this month up to an hour ago"
            )
            invoices = {team: prepare_team(http, team, keys[team]) for team in (big, small)}
        with psycopg.connect(db, autocommit=True) as conn:
            setting = conn.execute("SHOW autovacuum").fetchone()
            if setting is not None and setting[0] == "off":
                conn.execute("ANALYZE")
                print("analyze:  autovacuum is off on this server: ran ANALYZE as it would have")
            conn.execute("CHECKPOINT")

        labels = {
            big: f"{workload.events[big]:>9,} events",
            small: f"{workload.events[small]:>9,} events",
        }
        clients = {team: sign_in(server.base_url, keys[team]) for team in (big, small)}
        try:
            results = time_pages(clients, invoices, args.runs, args.warmup)
        finally:
            for client in clients.values():
                client.close()
        print()
        print(
            f"pages (GET, signed in; {args.runs} timed requests each after {args.warmup} "
            "warm-up rounds):"
        )
        logged = server_times(server.log)
        worst = 0.0
        for label, team, ms, request_ids in results:
            c50, c95, _ = percentiles(ms)
            served_ms = [logged[r] for r in request_ids if r in logged]
            if len(served_ms) != len(request_ids):
                sys.exit(f"{label}: {len(request_ids) - len(served_ms)} access lines missing")
            s50, s95, smax = percentiles(served_ms)
            worst = max(worst, s95)
            flag = "" if s95 < GOAL_MS else "   OVER the goal"
            print(
                f"  {label:<25} team with {labels[team]}: server p50 {s50:6.1f} ms  "
                f"p95 {s95:6.1f} ms  max {smax:6.1f} ms   (client p50 {c50:6.1f}, "
                f"p95 {c95:6.1f}){flag}"
            )
        verdict = "met" if worst < GOAL_MS else "NOT met"
        print(
            f"goal:     every page < {GOAL_MS:.0f} ms of server time (p95): {verdict} "
            f"(worst p95 {worst:.1f} ms)"
        )
        print()
        print("reproduce: .venv/bin/python bench/console.py " + " ".join(sys.argv[1:]))
    finally:
        if server is not None:
            server.stop()
        if not args.keep_database:
            drop_database(database)
        else:
            print(f"kept database {name}")


if __name__ == "__main__":
    main()
