"""Crossing events benchmark: what detecting them costs ingestion, and how late they arrive.

What it does, in one run:

1. creates a fresh database on the PostgreSQL server of ``BILLFOLD_BENCH_POSTGRES_URL``
   (default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it and starts
   ``billfold serve --workers 2`` on it (webhooks to loopback allowed, the deliverer's poll
   interval ``--poll-seconds``);
2. **ingestion**: for each round, two fresh groups of ``--teams`` teams (1,000) and the same
   workload for each: ``--events`` events in batches of ``--batch-size``, each event of a random
   team of the group (so every batch holds hundreds of teams: the detection's worst case, it
   works per team per batch). The *quiet* group stays far below its limits: no event fires. The
   *crossing* group's hard limits are set so that the run takes every team past 50, 80 and 100 %
   and blocks it: 4 events per team. No webhook endpoint is registered during this part (the
   outbox fills, nothing is sent), so the figures compare the ingestion path alone. Rounds
   alternate quiet / crossing, each after a ``CHECKPOINT``; it prints each round's events/s, the
   medians and their ratio (goal: crossing within 5 % of quiet), and checks the outbox holds
   exactly 4 events per crossing team and none for the quiet ones;
3. **delivery lag**: a loopback receiver (asyncio, keep-alive, answers 200 at once) is registered
   for ``spend.threshold_reached``; ``--lag-teams`` teams get thresholds every 9 % (10 of them,
   the most a team may set) and a limit such that each of their events crosses exactly one.
   Batches of ``--rate`` / 10 events (one per team, round robin) are sent 10 times a second for
   ``--lag-seconds``: ``--rate`` deliveries per second offered. Each delivery's lag is its
   arrival at the receiver less the moment its batch's response came back (the commit happened
   before: a lag is at most this much too short), and, for comparison, less the message's
   ``timestamp`` (its creation in the batch's transaction: at most that much too long). Prints
   p50 / p99 / max of both, what arrived, and the delivery rate achieved (goal: p99 < 1 s);
4. drops the database (``--keep-database`` keeps it).

Everything runs on one machine: client, receiver, server and PostgreSQL share its cores.

    .venv/bin/python bench/notify.py                        # the full run
    .venv/bin/python bench/notify.py --teams 50 --events 20000 --rounds 1 \\
        --lag-teams 50 --rate 100 --lag-seconds 2          # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shlex
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import psycopg

from ingest import send_all  # bench/ingest.py
from procfs import free_port, machine  # bench/procfs.py
from served import create_database, drop_database, start_server, upgrade_database  # bench/served.py

SKU = "bench-cents"  # one cent per unit: an event's quantity is its cost in cents
THRESHOLDS = (50, 80, 100)  # the default thresholds (the crossing group keeps them)
LAG_THRESHOLDS = list(range(9, 91, 9))  # 10 (the most a team may set): each lag event crosses one


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- setup through the operator API -----------------------------------------------------------


def make_teams(http: httpx.Client, count: int, name: str) -> list[str]:
    teams = []
    for i in range(count):
        response = http.post("/admin/v1/teams", json={"name": f"{name} {i}"})
        response.raise_for_status()
        teams.append(str(response.json()["teamId"]))
    return teams


def set_hard_limit(http: httpx.Client, teams: list[str], cents: int) -> None:
    for team in teams:
        response = http.put(
            f"/admin/v1/teams/{team}/hard-spending-limit", json={"amount": str(cents)}
        )
        response.raise_for_status()


def set_thresholds(http: httpx.Client, teams: list[str], thresholds: list[int]) -> None:
    for team in teams:
        response = http.put(
            f"/admin/v1/teams/{team}/alerts",
            json={"spendThresholdsPercent": thresholds, "lowCreditCents": None, "emails": []},
        )
        response.raise_for_status()


def now_ts() -> str:
    """An event time a minute ago (this cycle, never in the future)."""
    return (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- part 1: ingestion, quiet vs crossing -----------------------------------------------------


def workload(
    rng: random.Random, teams: list[str], events: int, batch_size: int
) -> tuple[list[bytes], list[int]]:
    """``events`` events of 1 cent... each of a random team, in batches."""
    ts = now_ts()
    bodies, sizes = [], []
    for start in range(0, events, batch_size):
        batch = [
            {
                "eventId": f"req_{rng.getrandbits(128):032x}",
                "teamId": rng.choice(teams),
                "sku": SKU,
                "quantity": "10",
                "timestamp": ts,
                "properties": {},
            }
            for _ in range(min(batch_size, events - start))
        ]
        bodies.append(orjson.dumps({"events": batch}))
        sizes.append(len(batch))
    return bodies, sizes


def crossing_events(db: str, teams: list[str]) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox_messages WHERE team_id = ANY(%s::uuid[])"
            " AND type LIKE 'spend.%%'",
            (teams,),
        ).fetchone()
        return int(row[0]) if row else 0


def ingestion(
    http: httpx.Client, base_url: str, token: str, db: str, args: argparse.Namespace
) -> list[str]:
    rng = random.Random(20261208)
    rates: dict[str, list[float]] = {"quiet": [], "crossing": []}
    problems: list[str] = []
    per_team = args.events * 10 // args.teams  # cents each team spends in a run, on average
    for round_ in range(args.rounds):
        for kind in ("quiet", "crossing"):
            teams = make_teams(http, args.teams, f"{kind} {round_}")
            if kind == "crossing":
                # ~0.75x of the average spend: the random share of every team passes 100 %
                set_hard_limit(http, teams, max(1, per_team * 3 // 4))
            else:
                set_hard_limit(http, teams, per_team * 100)  # 1 %: nothing fires
            bodies, sizes = workload(rng, teams, args.events, args.batch_size)
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
            load = asyncio.run(send_all(base_url, token, bodies, sizes, args.concurrency))
            rate = load.accepted / load.seconds
            rates[kind].append(rate)
            fired = crossing_events(db, teams)
            expected = 4 * len(teams) if kind == "crossing" else 0
            print(
                f"  round {round_ + 1} {kind:8}: {load.accepted:,} events in {load.seconds:.2f} s"
                f" = {rate:,.0f} events/s; {fired:,} crossing events (expected {expected:,})"
            )
            if load.accepted != sum(sizes):
                problems.append(f"{kind} round {round_ + 1}: {load.accepted} accepted")
            if fired != expected:
                problems.append(f"{kind} round {round_ + 1}: {fired} events, {expected} expected")
    quiet, crossing = statistics.median(rates["quiet"]), statistics.median(rates["crossing"])
    print(
        f"ingest:   median quiet {quiet:,.0f} events/s, crossing {crossing:,.0f} events/s: "
        f"crossing at {crossing / quiet:.1%} of quiet (goal >= 95 %)"
    )
    return problems


# --- part 2: delivery lag ---------------------------------------------------------------------


@dataclass
class Receiver:
    """A loopback webhook receiver on its own thread and event loop."""

    port: int = field(default_factory=free_port)
    arrivals: dict[tuple[str, int], tuple[float, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                arrived = time.time()
                message = orjson.loads(body)
                data = message["data"]
                key = (data["teamId"], int(data.get("thresholdPercent", 0)))
                with self.lock:
                    self.arrivals.setdefault(key, (arrived, message["timestamp"]))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()
            async with server:
                await server.serve_forever()

        threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


async def offer(
    base_url: str, token: str, teams: list[str], rate: int, seconds: float
) -> dict[tuple[str, int], float]:
    """Batches of rate/10 events, 10 a second; each event crosses the next 9 % of its team.
    Returns when each (team, threshold) was committed (its batch's response came back)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    per_batch = max(1, rate // 10)
    reached = {team: 0 for team in teams}
    committed: dict[tuple[str, int], float] = {}
    cursor = 0
    tasks = []
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:

        async def send(body: bytes, keys: list[tuple[str, int]]) -> None:
            response = await http.post("/admin/v1/usage-events", content=body, headers=headers)
            done = time.time()
            if response.status_code != 200:
                raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")
            for key in keys:
                committed[key] = done

        started = time.monotonic()
        for tick in range(int(seconds * 10)):
            events, keys = [], []
            for _ in range(per_batch):
                team = teams[cursor % len(teams)]
                cursor += 1
                if reached[team] >= len(LAG_THRESHOLDS):
                    continue
                threshold = LAG_THRESHOLDS[reached[team]]
                reached[team] += 1
                events.append(
                    {
                        "eventId": f"lag_{uuid.uuid4().hex}",
                        "teamId": team,
                        "sku": SKU,
                        "quantity": "9",  # 9 % of the 100-cent limit
                        "timestamp": now_ts(),
                        "properties": {},
                    }
                )
                keys.append((team, threshold))
            if events:
                tasks.append(asyncio.create_task(send(orjson.dumps({"events": events}), keys)))
            await asyncio.sleep(max(0.0, started + (tick + 1) / 10 - time.monotonic()))
        await asyncio.gather(*tasks)
    return committed


def delivery_lag(
    http: httpx.Client, base_url: str, token: str, args: argparse.Namespace
) -> list[str]:
    capacity = args.lag_teams * len(LAG_THRESHOLDS)
    offered = int(args.rate * args.lag_seconds)
    if offered > capacity:
        return [f"--lag-teams {args.lag_teams} can cross {capacity} thresholds, not {offered}"]
    teams = make_teams(http, args.lag_teams, "lag")
    set_hard_limit(http, teams, 100)
    set_thresholds(http, teams, LAG_THRESHOLDS)
    receiver = Receiver()
    receiver.start()
    response = http.post(
        "/admin/v1/webhook-endpoints",
        json={"url": receiver.url, "eventTypes": ["spend.threshold_reached"], "description": ""},
    )
    response.raise_for_status()
    committed = asyncio.run(offer(base_url, token, teams, args.rate, args.lag_seconds))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with receiver.lock:
            if len(receiver.arrivals) >= len(committed):
                break
        time.sleep(0.2)
    with receiver.lock:
        arrivals = dict(receiver.arrivals)
    lags = [arrivals[k][0] - t for k, t in committed.items() if k in arrivals]
    created = [
        arrivals[k][0] - datetime.fromisoformat(arrivals[k][1].replace("Z", "+00:00")).timestamp()
        for k in committed
        if k in arrivals
    ]
    first = min(t for t in committed.values())
    last = max(a for a, _ in arrivals.values()) if arrivals else first
    print(
        f"lag:      {len(committed):,} crossings offered at {args.rate:,}/s for "
        f"{args.lag_seconds:g} s; {len(lags):,} delivered ({len(lags) / (last - first):,.0f}/s "
        f"from the first commit to the last arrival)"
    )
    if lags:
        print(
            f"          from the batch's response: p50 {statistics.median(lags) * 1000:.0f} ms, "
            f"p99 {percentile(lags, 99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms "
            f"(goal p99 < 1000 ms)"
        )
        print(
            f"          from the message's creation: p50 {statistics.median(created) * 1000:.0f}"
            f" ms, p99 {percentile(created, 99) * 1000:.0f} ms, max {max(created) * 1000:.0f} ms"
        )
    missing = len(committed) - len(lags)
    return [f"{missing} crossings not delivered within 60 s"] if missing else []


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teams", type=int, default=1_000, help="teams per ingestion group")
    parser.add_argument("--events", type=int, default=300_000, help="events per ingestion run")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/crossing pairs")
    parser.add_argument("--lag-teams", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=1_000, help="deliveries offered per second")
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="billfold serve --workers")
    parser.add_argument(
        "--poll-seconds", type=float, default=0.1, help="BILLFOLD_WEBHOOK_POLL_SECONDS"
    )
    parser.add_argument(
        "--endpoint-concurrency",
        type=int,
        help="BILLFOLD_WEBHOOK_ENDPOINT_CONCURRENCY (default: Billfold's, 4 per process)",
    )
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args()

    database = create_database("billfold_bench_")
    name, db, pg_version = database.name, database.url, database.pg_version
    token = "bench-" + secrets.token_hex(16)
    server = None
    problems: list[str] = []
    try:
        upgrade_database(db)
        server, command = start_server(
            args.workers,
            {
                "BILLFOLD_DATABASE_URL": db,
                "BILLFOLD_ADMIN_TOKEN": token,
                "BILLFOLD_RATE_LIMIT": "false",
                "BILLFOLD_WEBHOOKS_ALLOW_HTTP": "true",
                "BILLFOLD_WEBHOOK_POLL_SECONDS": str(args.poll_seconds),
                **(
                    {"BILLFOLD_WEBHOOK_ENDPOINT_CONCURRENCY": str(args.endpoint_concurrency)}
                    if args.endpoint_concurrency
                    else {}
                ),
            },
        )
        print(f"machine:  {machine()}; PostgreSQL {pg_version}")
        print(
            f"server:   {' '.join(command[1:])}, database {name}, "
            f"BILLFOLD_WEBHOOK_POLL_SECONDS={args.poll_seconds:g}"
            + (
                f", BILLFOLD_WEBHOOK_ENDPOINT_CONCURRENCY={args.endpoint_concurrency}"
                if args.endpoint_concurrency
                else ""
            )
            + " (other settings: defaults)"
        )
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as http:
            response = http.put(
                f"/admin/v1/prices/{SKU}",
                json={
                    "description": "Bench",
                    "unitType": "Requests",
                    "unitPrice": "0.01",
                    "effectiveFrom": "2020-01-01T00:00:00Z",
                },
            )
            response.raise_for_status()
            print(
                f"ingest:   {args.rounds} round(s) of {args.events:,} events in batches of "
                f"{args.batch_size:,} over {args.teams:,} teams, {args.concurrency} in flight"
            )
            problems += ingestion(http, server.base_url, token, db, args)
            problems += delivery_lag(http, server.base_url, token, args)
    finally:
        if server is not None:
            server.stop()
        if not args.keep_database:
            drop_database(database)
    print()
    print("reproduce: " + shlex.join([".venv/bin/python", "bench/notify.py", *sys.argv[1:]]))
    if problems:
        sys.exit("PROBLEMS:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
