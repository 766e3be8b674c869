"""Usage ingestion benchmark: Billfold over HTTP on PostgreSQL vs a raw PostgreSQL COPY.

What it does, in one run:

1. creates a fresh database on the PostgreSQL server of ``BILLFOLD_BENCH_POSTGRES_URL``
   (default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it (``billfold db
   upgrade``) and starts ``billfold serve --workers 2`` on it as a subprocess;
2. creates a team with 1,000,000 events this month ("big"), a team with 1,000 ("small"), four
   priced SKUs, and pre-serializes every batch body before the clock starts, so the client does
   little more than write bytes to sockets;
3. sends the batches with ``--concurrency`` requests in flight (asyncio + httpx, a new connection
   per batch so both workers get work) and prints events/s, the CPU seconds used by the client,
   the server workers, PostgreSQL (its backends for this database, autovacuum in it, the shared
   background writers) and everything else on the machine, and the peak RSS of each server
   process (VmRSS from /proc/<pid>/status, sampled every 200 ms while the load runs);
4. checks the result in the database (events, rollups, cycle lines and cycle spend agree);
5. after a ``CHECKPOINT``, times the usage analytics query (a month, DAY buckets, groupBy
   description, and the same groupBy api_key_id) and the invoice preview for the big and the small
   team, the six reads interleaved (a random order each round);
6. stops the server, then times a raw ``COPY`` of the same rows, as sent (with their SKU and
   properties JSON), into a bare table (no key, no index; three times, the median counts: the
   goal's reference) and into one with usage_events' key and index; and a ``COPY`` of the rows as
   Billfold stores them (a property set id instead of the properties, no SKU: migration 0010)
   into a copy of usage_events. It prints Billfold's rate as a share of each. The ingestion run
   and each COPY start right after a ``CHECKPOINT``;
7. drops the database (``--keep-database`` keeps it).

Everything runs on one machine: client, server and PostgreSQL share its cores, so the figures are
a floor for a deployment where they do not. Results and their conditions: bench/results/ingest.md.

    .venv/bin/python bench/ingest.py                       # the full run (1,000,000 events)
    .venv/bin/python bench/ingest.py --events 100000       # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import secrets
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from billfold.metering.events import property_set_id
from procfs import RssSampler, libpq_url, machine  # bench/procfs.py
from served import start_server  # bench/served.py

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

API_KEYS = [f"key-{i}" for i in range(5)]
MODELS = ["grok-4", "grok-4-mini"]
CLUSTERS = ["us-east-1", "eu-west-1"]
# sku -> (description, unit price in USD)
PRICES = {
    "grok-4-prompt": ("Chat grok-4 prompt", "0.000003"),
    "grok-4-completion": ("Chat grok-4 completion", "0.000015"),
    "grok-4-mini-prompt": ("Chat grok-4-mini prompt", "0.0000003"),
    "grok-4-mini-completion": ("Chat grok-4-mini completion", "0.0000005"),
}
# The events as the platform sends them (and as usage_events held them until migration 0010):
# the raw COPY reference's rows.
COLUMNS = "team_id, event_id, ts, sku, quantity, price_version_id, properties, ingested_at"
SENT_COLUMNS = """
    team_id uuid NOT NULL, event_id varchar(200) COLLATE "C" NOT NULL,
    ts timestamptz NOT NULL, sku varchar(200) NOT NULL, quantity bigint NOT NULL,
    price_version_id bigint NOT NULL, properties jsonb NOT NULL, ingested_at timestamptz NOT NULL
"""
# The same rows as Billfold stores them (usage_events since 0010): a property set id instead of
# the properties, no SKU.
STORED_COLUMNS = "team_id, event_id, ts, quantity, price_version_id, property_set_id, ingested_at"


# --- processes and /proc ----------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command, CPU seconds) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def server_processes(root: int) -> dict[int, str]:
    """The uvicorn supervisor and its workers (the multiprocessing resource tracker left out)."""
    found = {root: "supervisor"}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is None or stat[0] != root:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "resource_tracker" in cmdline or "semaphore_tracker" in cmdline:
            continue
        found[pid] = "worker"
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (the first line of /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def postgres_cpu(database: str) -> dict[int, tuple[str, float]]:
    """CPU seconds of the PostgreSQL processes working for the benchmark, by kind: the backends
    of its database, autovacuum in it, and the shared background writers (not the backends of
    other databases, which other work on the machine may use)."""
    cpu = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is None or not stat[1].startswith("postgres"):
            continue
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(name in title for name in ("checkpointer", "background writer", "walwriter")):
            cpu[pid] = ("background", stat[2])
        elif database in title.split():
            cpu[pid] = ("autovacuum" if "autovacuum" in title else "backends", stat[2])
    return cpu


def cpu_by_kind(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    kinds = {"backends": 0.0, "autovacuum": 0.0, "background": 0.0}
    for pid, (kind, seconds) in after.items():
        kinds[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    return kinds


def database_url(base: str, name: str) -> str:
    return libpq_url(base).rsplit("/", 1)[0] + "/" + name


# --- the workload -----------------------------------------------------------------------------


@dataclass
class Workload:
    big_team: str
    small_team: str
    bodies: list[bytes]
    batch_sizes: list[int]
    rows: list[tuple[str, str, datetime, str, int, str]]  # for the raw COPY
    total_quantity: dict[str, int]
    events: dict[str, int]
    window: tuple[datetime, datetime]


def event_window(now: datetime) -> tuple[datetime, datetime]:
    """This month up to an hour ago: the current cycle, so the invoice preview shows it."""
    end = (now - timedelta(hours=1)).replace(microsecond=0)
    start = end.replace(day=1, hour=0, minute=0, second=0)
    if end - start < timedelta(days=1):  # the first day of a month: use the last day instead
        start = end - timedelta(days=1)
    return start, end


def make_events(
    rng: random.Random, team_id: str, count: int, window: tuple[datetime, datetime]
) -> Iterator[tuple[dict[str, Any], tuple[str, str, datetime, str, int, str]]]:
    """A time-ordered stream, as a gateway sends it: random request ids, 4 SKUs, 5 keys x 2 models
    x 2 clusters of dimensions, sub-second timestamps (milliseconds)."""
    start, end = window
    span = (end - start).total_seconds()
    for i in range(count):
        ts = start + timedelta(seconds=round((i + rng.random()) * span / count, 3))
        model = rng.choice(MODELS)
        sku = f"{model}-{'prompt' if rng.random() < 0.6 else 'completion'}"
        quantity = rng.randint(1, 5000)
        properties = {
            "apiKeyId": rng.choice(API_KEYS),
            "model": model,
            "clusterName": rng.choice(CLUSTERS),
        }
        event_id = f"req_{rng.getrandbits(128):032x}"
        wire = {
            "eventId": event_id,
            "teamId": team_id,
            "sku": sku,
            "quantity": str(quantity),
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "properties": properties,
        }
        yield wire, (team_id, event_id, ts, sku, quantity, orjson.dumps(properties).decode())


def build_workload(
    big_team: str, small_team: str, events: int, small_events: int, batch_size: int
) -> Workload:
    rng = random.Random(20261125)  # a fixed seed: every run sends the same events
    window = event_window(datetime.now(UTC))
    rows: list[tuple[str, str, datetime, str, int, str]] = []
    bodies: list[bytes] = []
    sizes: list[int] = []
    totals = {big_team: 0, small_team: 0}
    counts = {big_team: events, small_team: small_events}
    for team, count in ((small_team, small_events), (big_team, events)):
        batch: list[dict[str, Any]] = []
        for wire, row in make_events(rng, team, count, window):
            batch.append(wire)
            rows.append(row)
            totals[team] += row[4]
            if len(batch) == batch_size:
                bodies.append(orjson.dumps({"events": batch}))
                sizes.append(len(batch))
                batch = []
        if batch:
            bodies.append(orjson.dumps({"events": batch}))
            sizes.append(len(batch))
    return Workload(big_team, small_team, bodies, sizes, rows, totals, counts, window)


# --- the load ---------------------------------------------------------------------------------


@dataclass
class LoadResult:
    seconds: float
    accepted: int
    duplicates: int
    rejected: int
    latencies: list[float]


async def send_all(
    base_url: str, token: str, bodies: list[bytes], sizes: list[int], concurrency: int
) -> LoadResult:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post("/admin/v1/usage-events", content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")
            answer = orjson.loads(response.content)
            totals["accepted"] += answer["accepted"]
            totals["duplicates"] += answer["duplicates"]
            totals["rejected"] += len(answer["rejected"])

    # A new connection per batch, as from many gateway instances: uvicorn's workers share one
    # listening socket, and a kept-alive connection stays with the worker that accepted it -- 4
    # connections opened at once often all land on the same worker. A fresh connection is accepted
    # by whichever worker is free (about 1 ms per 10,000 events).
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(
        seconds, totals["accepted"], totals["duplicates"], totals["rejected"], latencies
    )


# --- setup through the operator API -----------------------------------------------------------


def setup(http: httpx.Client) -> tuple[str, str, dict[str, str]]:
    teams = []
    for name in ("Bench big", "Bench small"):
        response = http.post("/admin/v1/teams", json={"name": name})
        response.raise_for_status()
        teams.append(response.json()["teamId"])
    for sku, (description, price) in PRICES.items():
        response = http.put(
            f"/admin/v1/prices/{sku}",
            json={
                "description": description,
                "unitType": "Text tokens",
                "unitPrice": price,
                "effectiveFrom": "2026-01-01T00:00:00Z",
            },
        )
        response.raise_for_status()
    keys = {}
    for team in teams:
        response = http.post(f"/admin/v1/teams/{team}/management-keys", json={"name": "bench"})
        response.raise_for_status()
        keys[team] = response.json()["apiKey"]
    return teams[0], teams[1], keys


# --- checks and read latencies ----------------------------------------------------------------


def check_consistency(db: str, workload: Workload) -> list[str]:
    """Events, rollups, cycle lines and the cycle's spend agree with what was sent."""
    problems = []
    with psycopg.connect(db) as conn:
        for team, expected in workload.total_quantity.items():
            events = conn.execute(
                "SELECT coalesce(sum(quantity), 0) FROM usage_events WHERE team_id = %s", [team]
            ).fetchone()
            rollups = conn.execute(
                "SELECT coalesce(sum(quantity), 0) FROM usage_rollups WHERE team_id = %s", [team]
            ).fetchone()
            lines = conn.execute(
                "SELECT coalesce(sum(quantity), 0), coalesce(sum(amount_cents), 0) "
                "FROM cycle_lines WHERE team_id = %s",
                [team],
            ).fetchone()
            spend = conn.execute(
                "SELECT coalesce(sum(spend_cents), 0) FROM billing_cycles WHERE team_id = %s",
                [team],
            ).fetchone()
            assert events and rollups and lines and spend
            got = (int(events[0]), int(rollups[0]), int(lines[0]))
            if got != (expected, expected, expected):
                problems.append(f"team {team}: events/rollups/lines {got} != {expected}")
            if int(lines[1]) != int(spend[0]):
                problems.append(f"team {team}: lines {lines[1]} != cycle spend {spend[0]}")
    return problems


@dataclass
class Read:
    label: str
    method: str
    path: str
    key: str
    body: Any


def time_reads(http: httpx.Client, reads: list[Read], runs: int) -> list[str]:
    """p50/p95 of each read, the reads interleaved (one of each per round, in a new random order
    each round), so that whatever the machine does meanwhile -- the checkpointer writing out the
    load, another process, the garbage the previous request left -- weighs on all of them alike,
    not on whichever happened to be timed first or always came after the heaviest."""
    samples: dict[int, list[float]] = {i: [] for i in range(len(reads))}
    failed: dict[int, str] = {}
    for i, read in enumerate(reads):
        headers = {"Authorization": f"Bearer {read.key}"}
        response = http.request(read.method, read.path, headers=headers, json=read.body)
        if response.status_code != 200:
            failed[i] = f"error {response.status_code}: {response.text[:200]}"
    order = [i for i in range(len(reads)) if i not in failed]
    shuffle = random.Random(7).shuffle
    for round_ in range(3 + runs):  # 3 warm-up rounds
        shuffle(order)
        for i in order:
            read = reads[i]
            headers = {"Authorization": f"Bearer {read.key}"}
            started = time.perf_counter()
            response = http.request(read.method, read.path, headers=headers, json=read.body)
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if round_ >= 3:
                samples[i].append(elapsed)
    out = []
    for i, read in enumerate(reads):
        if i in failed:
            out.append(f"  {read.label}: {failed[i]}")
            continue
        ordered = sorted(samples[i])
        p95 = ordered[min(len(ordered) - 1, round(len(ordered) * 0.95) - 1)]
        out.append(
            f"  {read.label}: p50 {statistics.median(ordered):6.1f} ms   p95 {p95:6.1f} ms   "
            f"({runs} runs)"
        )
    return out


def read_latencies(
    http: httpx.Client, workload: Workload, keys: dict[str, str], runs: int
) -> list[str]:
    start, _ = workload.window
    month = start.replace(day=1, hour=0, minute=0, second=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    analytics = {
        "analyticsRequest": {
            "timeRange": {
                "startTime": f"{month:%Y-%m-%d %H:%M:%S}",
                "endTime": f"{next_month:%Y-%m-%d %H:%M:%S}",
                "timezone": "Etc/GMT",
            },
            "timeUnit": "TIME_UNIT_DAY",
            "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
            "groupBy": ["description"],
            "filters": [],
        }
    }
    # the same by API key: clients chart that too (billing-api §14); it reads the rollups that
    # keep the properties (5 keys x 2 models x 2 clusters here)
    by_key = {"analyticsRequest": {**analytics["analyticsRequest"], "groupBy": ["api_key_id"]}}
    teams = [
        (f"{workload.events[team]:>9,} events", team)
        for team in (workload.big_team, workload.small_team)
    ]
    reads = [
        Read(
            f"usage analytics ({month:%Y-%m}, DAY, by {name}), team with {label}",
            "POST",
            f"/v1/billing/teams/{team}/usage",
            keys[team],
            body,
        )
        for name, body in (("description", analytics), ("api_key_id ", by_key))
        for label, team in teams
    ]
    reads += [
        Read(
            f"invoice preview,                                   team with {label}",
            "GET",
            f"/v1/billing/teams/{team}/postpaid/invoice/preview",
            keys[team],
            None,
        )
        for label, team in teams
    ]
    return time_reads(http, reads, runs)


# --- the raw COPY reference -------------------------------------------------------------------


def copy_buffer(
    workload: Workload, version_ids: dict[str, int], ingested_at: datetime, *, stored: bool
) -> bytes:
    """The same rows in COPY text format, as sent (COLUMNS) or as stored (STORED_COLUMNS), built
    before the clock starts (no escaping is needed: no value holds a tab, a newline or a
    backslash)."""
    out = io.StringIO()
    stamp = ingested_at.isoformat()
    set_ids: dict[str, uuid.UUID] = {}
    for team, event_id, ts, sku, quantity, properties in workload.rows:
        if stored:
            set_id = set_ids.get(properties)
            if set_id is None:
                set_id = set_ids[properties] = uuid.UUID(
                    bytes=property_set_id(orjson.loads(properties))
                )
            out.write(
                f"{team}\t{event_id}\t{ts.isoformat()}\t{quantity}\t{version_ids[sku]}\t"
                f"{set_id}\t{stamp}\n"
            )
        else:
            out.write(
                f"{team}\t{event_id}\t{ts.isoformat()}\t{sku}\t{quantity}\t{version_ids[sku]}\t"
                f"{properties}\t{stamp}\n"
            )
    return out.getvalue().encode()


def timed_copy(db: str, table: str, ddl: str, data: bytes, columns: str = COLUMNS) -> float:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(ddl)
        conn.execute("CHECKPOINT")  # start both copies from the same clean state
    with psycopg.connect(db) as conn:
        started = time.perf_counter()
        with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            view = memoryview(data)
            for offset in range(0, len(data), 1 << 20):
                copy.write(view[offset : offset + (1 << 20)])
        conn.commit()
        return time.perf_counter() - started


def raw_copy(db: str, workload: Workload, runs: int) -> tuple[list[float], float, float]:
    """Seconds of ``runs`` COPYs of the events as sent into a bare table (the goal's reference,
    which varied by up to 1.5x between runs minutes apart on this machine), of one into a table
    with usage_events' key and index, and of one of the rows as Billfold stores them into a copy
    of usage_events (its columns, key and index)."""
    with psycopg.connect(db) as conn:
        version_ids = {
            sku: int(version_id)
            for sku, version_id in conn.execute("SELECT sku, id FROM price_versions").fetchall()
        }
    now = datetime.now(UTC)
    data = copy_buffer(workload, version_ids, now, stored=False)
    bare = [
        timed_copy(db, "bench_raw_bare", f"CREATE TABLE bench_raw_bare ({SENT_COLUMNS})", data)
        for _ in range(runs)
    ]
    keyed = timed_copy(
        db,
        "bench_raw_keyed",
        f"CREATE TABLE bench_raw_keyed ({SENT_COLUMNS}, PRIMARY KEY (event_id, team_id));"
        " CREATE INDEX ON bench_raw_keyed (team_id, ts)",
        data,
    )
    del data
    stored = timed_copy(
        db,
        "bench_raw_stored",
        "CREATE TABLE bench_raw_stored (LIKE usage_events INCLUDING ALL)",
        copy_buffer(workload, version_ids, now, stored=True),
        STORED_COLUMNS,
    )
    return bare, keyed, stored


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the big team")
    parser.add_argument("--small-events", type=int, default=1_000, help="events of the small team")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--workers", type=int, default=2, help="billfold serve --workers")
    parser.add_argument("--read-runs", type=int, default=30, help="timed runs per read query")
    parser.add_argument(
        "--copy-runs", type=int, default=3, help="raw COPYs into the bare table (the median counts)"
    )
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument(
        "--server-command",
        help="for experiments only: start the server with this command instead of billfold "
        "serve ({port} and {workers} are filled in; the database must already be migrated, "
        "which the benchmark does first). The recorded figures use the default.",
    )
    args = parser.parse_args()

    base = os.environ.get("BILLFOLD_BENCH_POSTGRES_URL", DEFAULT_URL)
    name = f"billfold_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(base), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        pg_version = str(admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    db = database_url(base, name)
    token = "bench-" + secrets.token_hex(16)
    server = None
    try:
        subprocess.run(
            [str(Path(sys.executable).with_name("billfold")), "db", "upgrade"],
            env={**os.environ, "BILLFOLD_DATABASE_URL": db},
            check=True,
            capture_output=True,
        )
        server, command = start_server(
            args.workers,
            {"BILLFOLD_DATABASE_URL": db, "BILLFOLD_ADMIN_TOKEN": token},
            args.server_command,
        )
        processes = server_processes(server.process.pid)
        print(f"machine:  {machine()}; PostgreSQL {pg_version}")
        print(f"server:   {' '.join(command[1:])} (pids {sorted(processes)}), database {name}")
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as http:
            big, small, keys = setup(http)
        prepared = time.perf_counter()
        workload = build_workload(big, small, args.events, args.small_events, args.batch_size)
        sent_events = sum(workload.batch_sizes)
        print(
            f"workload: {sent_events:,} events in {len(workload.bodies)} batches of up to "
            f"{args.batch_size:,} ({sum(map(len, workload.bodies)) / 2**20:,.0f} MiB of JSON, "
            f"built in {time.perf_counter() - prepared:.1f} s before the clock starts), "
            f"{args.concurrency} requests in flight"
        )

        with psycopg.connect(db, autocommit=True) as conn:
            # The same clean state as each raw COPY below starts from: no checkpoint's backlog of
            # dirty pages, and every page's first change after it a full-page image in the WAL.
            conn.execute("CHECKPOINT")
        load_before = os.getloadavg()[0]
        busy_before = machine_busy_seconds()
        pg_before = postgres_cpu(name)
        server_before = {pid: (proc_stat(pid) or (0, "", 0.0))[2] for pid in processes}
        client_before = os.times()
        with RssSampler(processes) as rss:
            load = asyncio.run(
                send_all(
                    server.base_url, token, workload.bodies, workload.batch_sizes, args.concurrency
                )
            )
        client_after = os.times()
        busy = machine_busy_seconds() - busy_before
        server_cpu = sum(
            (proc_stat(pid) or (0, "", 0.0))[2] - before for pid, before in server_before.items()
        )
        pg_after = postgres_cpu(name)
        pg_kinds = cpu_by_kind(pg_before, pg_after)
        pg_cpu = sum(pg_kinds.values())
        client_cpu = (client_after.user - client_before.user) + (
            client_after.system - client_before.system
        )

        rate = load.accepted / load.seconds
        print()
        print(
            f"ingest:   {load.accepted:,} accepted, {load.duplicates} duplicates, "
            f"{load.rejected} rejected in {load.seconds:.2f} s = {rate:,.0f} events/s"
        )
        batch_ms = sorted(x * 1000 for x in load.latencies)
        print(
            f"          batch latency p50 {statistics.median(batch_ms):.0f} ms, "
            f"max {batch_ms[-1]:.0f} ms"
        )
        others = max(0.0, busy - client_cpu - server_cpu - pg_cpu)
        print(
            f"cpu:      client {client_cpu:.1f} s, server workers {server_cpu:.1f} s, "
            f"postgres {pg_cpu:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in pg_kinds.items())}), "
            f"other processes {others:.1f} s "
            f"of {load.seconds * (os.cpu_count() or 1):.1f} s available "
            f"(load average {load_before:.1f} before the run)"
        )
        rss_line = ", ".join(
            f"{processes[pid]} {pid} {mb:.0f} MB" for pid, mb in sorted(rss.peak.items())
        )
        over = [pid for pid, mb in rss.peak.items() if mb >= 200]
        print(f"rss peak: {rss_line} (limit 200 MB each{': EXCEEDED' if over else ''})")

        problems = check_consistency(db, workload)
        with psycopg.connect(db) as conn:
            rollup_rows = conn.execute(
                "SELECT count(*) FROM usage_rollups WHERE team_id = %s", [workload.big_team]
            ).fetchone()
        print(
            f"rollups:  {rollup_rows[0] if rollup_rows else 0:,} rollup rows hold the "
            f"{workload.events[workload.big_team]:,} events of the big team"
        )
        print(
            "check:    "
            + (
                "; ".join(problems)
                if problems
                else "events = rollups = cycle lines"
                " per team, cycle spend = sum of line amounts: ok"
            )
        )

        # A server with autovacuum on (PostgreSQL's default) analyzes the tables the load filled
        # on its own; without statistics the planner expects a handful of rows per team and
        # sorts where it would hash. Do what autovacuum would have done, and say so.
        with psycopg.connect(db, autocommit=True) as conn:
            setting = conn.execute("SHOW autovacuum").fetchone()
            if setting is not None and setting[0] == "off":
                conn.execute("ANALYZE")
                print("analyze:  autovacuum is off on this server: ran ANALYZE as it would have")
            conn.execute("CHECKPOINT")  # the load's dirty pages written before the reads

        print()
        print("reads (after the load):")
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            for line in read_latencies(http, workload, keys, args.read_runs):
                print(line)

        server.stop()  # the COPY reference gets the machine to itself, as the ingest run did not
        print()
        all_bare, keyed, stored = raw_copy(db, workload, args.copy_runs)
        bare = statistics.median(all_bare)
        rows = len(workload.rows)
        print(
            f"raw COPY: {rows:,} rows into a bare table in {bare:.2f} s = "
            f"{rows / bare:,.0f} rows/s; billfold = {rate / (rows / bare):.0%} of it"
            + (
                f"  (median of {len(all_bare)}: "
                + ", ".join(f"{rows / seconds:,.0f}" for seconds in all_bare)
                + " rows/s)"
                if len(all_bare) > 1
                else ""
            )
        )
        print(
            f"          into a table with usage_events' key and index in {keyed:.2f} s = "
            f"{rows / keyed:,.0f} rows/s; billfold = {rate / (rows / keyed):.0%} of it"
        )
        print(
            f"          as Billfold stores them (usage_events' columns, key, index) in "
            f"{stored:.2f} s = {rows / stored:,.0f} rows/s; billfold = "
            f"{rate / (rows / stored):.0%} of it"
        )
        print()
        print(
            "reproduce: "
            + shlex.join([".venv/bin/python", "bench/ingest.py", *sys.argv[1:]])
            + f"  (BILLFOLD_BENCH_POSTGRES_URL={base})"
        )
    finally:
        if server is not None:
            server.stop()
            server.log.unlink(missing_ok=True)
        if not args.keep_database:
            with psycopg.connect(libpq_url(base), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
