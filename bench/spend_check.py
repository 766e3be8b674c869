"""Spend check benchmark: ``GET /admin/v1/teams/{id}/spend-status`` under live ingestion.

What it does, in one run:

1. creates a fresh database on the PostgreSQL server of ``BILLFOLD_BENCH_POSTGRES_URL``
   (default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, and creates 10,000
   teams through the services (every other one with a credit grant, every third with a soft limit),
   then starts ``billfold serve --workers 2`` on it as a subprocess;
2. gives every team usage in the current month (so each check reads a real cycle row) and starts
   live ingestion in a background process: batches of ``--ingest-batch`` events over random teams,
   one every ``--ingest-interval`` seconds, for as long as the load runs;
3. runs a closed-loop load generator (``--concurrency`` keep-alive connections, asyncio) against
   ``/healthz`` (the ceiling: the trivial endpoint, one ``SELECT 1``) and then against the spend
   check over all 10,000 teams, each for ``--seconds`` after a warm-up, and prints checks/s, p50,
   p90, p99 latency, the ratio to the ceiling, the events/s ingested meanwhile, and the peak RSS of
   the server processes (VmRSS from /proc);
4. stops everything and drops the database (``--keep-database`` keeps it).

The load generator speaks HTTP/1.1 over raw asyncio streams: on a 2-core machine the client shares
the cores with the server and PostgreSQL, and an httpx client spends more CPU per request than the
server does on a trivial one, which would measure the client. Both endpoints are measured with the
same client, so the ratio compares the server's work alone.

    .venv/bin/python bench/spend_check.py
    .venv/bin/python bench/spend_check.py --seconds 5 --teams 2000   # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-operator-token"
SKU = "bench-sku"

# --- /proc ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> tuple[str, list[str]] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    stat = _stat_fields(pid)
    return None if stat is None else int(stat[1][1])


def cpu_seconds(pid: int) -> float:
    stat = _stat_fields(pid)
    return 0.0 if stat is None else (int(stat[1][11]) + int(stat[1][12])) / CLOCK_TICKS


def postgres_pids(database: str) -> list[int]:
    """The PostgreSQL backends serving ``database`` (their title names it): other databases'
    work on a shared server is not counted."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            title = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if title.startswith("postgres:") and f" {database} " in title:
            pids.append(int(name))
    return pids


def cpu_of(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def cpu_used(before: dict[int, float], pids: list[int]) -> float:
    """CPU seconds used since ``before`` (processes that appeared since count from 0)."""
    return sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids)


def server_processes(root: int) -> dict[int, str]:
    """The uvicorn supervisor and its workers (multiprocessing's resource tracker left out)."""
    found = {root: "supervisor"}
    for name in os.listdir("/proc"):
        if not name.isdigit() or parent_of(int(name)) != root:
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "resource_tracker" not in cmdline:
            found[int(name)] = "worker"
    return found


@dataclass
class RssSampler:
    pids: dict[int, str]
    peak: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        for pid in self.pids:
            value = rss_mb(pid)
            if value is not None:
                self.peak[pid] = max(self.peak.get(pid, 0.0), value)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


# --- database, setup and server ---------------------------------------------------------------


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://").replace(
        "postgres://", "postgresql://"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def create_teams(db_url: str, count: int) -> list[str]:
    """Migrate, then create the teams through the services (1,000 per transaction)."""
    from billfold.kit.db import make_engine, make_sessionmaker
    from billfold.ledger.service import ledger_service
    from billfold.migrate import upgrade
    from billfold.teams.service import team_service

    engine = make_engine(db_url, pool_size=2)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    rng = random.Random(5000)
    ids: list[str] = []
    for start in range(0, count, 1000):
        with sessions() as session:
            for index in range(start, min(start + 1000, count)):
                team = team_service.create(session, f"bench-{index}")
                if index % 3 == 0:
                    team.soft_limit_cents = rng.randrange(0, 50_000)
                if index % 2 == 0:
                    ledger_service.append(
                        session,
                        team.id,
                        kind="grant",
                        credit_cents=rng.randrange(100, 100_000),
                        idempotency_key="bench-grant",
                    )
                ids.append(str(team.id))
            session.commit()
    engine.dispose()
    return ids


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(db_url: str, workers: int) -> tuple[Server, list[str]]:
    port = free_port()
    billfold = Path(sys.executable).with_name("billfold")
    command = [str(billfold), "serve", "--workers", str(workers), "--port", str(port)]
    env = {
        **os.environ,
        "BILLFOLD_DATABASE_URL": db_url,
        "BILLFOLD_ADMIN_TOKEN": TOKEN,
        "BILLFOLD_LOG_LEVEL": os.environ.get("BILLFOLD_LOG_LEVEL", "warning"),
    }
    log = Path(tempfile.mkstemp(prefix="billfold-spend-bench-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(server.base_url + "/healthz", timeout=2).status_code == 200:
                time.sleep(1.0)  # the second worker comes up a moment later
                return server, command
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    sys.exit(f"the server did not answer /healthz within 90 s:\n{log.read_text()}")


def events_body(teams: list[str], count: int, rng: random.Random) -> bytes:
    now = datetime.now(UTC)
    earliest = max(
        now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), now - timedelta(hours=1)
    )
    span = max(int((now - earliest).total_seconds()), 1)
    events = [
        {
            "eventId": uuid.uuid4().hex,
            "teamId": rng.choice(teams),
            "sku": SKU,
            "quantity": str(rng.randrange(1, 5000)),
            "timestamp": (earliest + timedelta(seconds=rng.randrange(span))).isoformat(),
            "properties": {"model": "grok-4"},
        }
        for _ in range(count)
    ]
    return orjson.dumps({"events": events})


def ingest_loop(
    base_url: str, teams: list[str], batch: int, interval: float, stop: Any, counter: Any
) -> None:
    """The background ingester (its own process): a batch every ``interval`` seconds."""
    rng = random.Random(os.getpid())
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as http:
        while not stop.is_set():
            started = time.monotonic()
            response = http.post("/admin/v1/usage-events", content=events_body(teams, batch, rng))
            if response.status_code == 200:
                with counter.get_lock():
                    counter.value += response.json()["accepted"]
            stop.wait(max(interval - (time.monotonic() - started), 0))


# --- the load generator -----------------------------------------------------------------------


@dataclass
class LoadResult:
    label: str
    seconds: float
    latencies: list[float]
    errors: int
    events_per_second: int = 0  # ingested by the background process meanwhile
    server_cpu: float = 0.0  # CPU seconds of the server processes during the whole run
    postgres_cpu: float = 0.0
    requests_total: int = 0  # warm-up included, to divide the CPU by

    def cpu_per_request_us(self) -> tuple[float, float]:
        n = max(self.requests_total, 1)
        return self.server_cpu / n * 1e6, self.postgres_cpu / n * 1e6

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


async def _connection(
    port: int,
    requests: list[bytes],
    offset: int,
    warmup_until: float,
    until: float,
    latencies: list[float],
    errors: list[int],
    total: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = offset
    try:
        while True:
            started = time.perf_counter()
            if started >= until:
                return
            writer.write(requests[index % len(requests)])
            index += 7919  # a prime stride: connections walk the teams in different orders
            status = await reader.readuntil(b"\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            total[0] += 1
            if started >= warmup_until:
                latencies.append(time.perf_counter() - started)
                if not status.startswith(b"HTTP/1.1 200"):
                    errors[0] += 1
    finally:
        writer.close()


async def _load(
    port: int, requests: list[bytes], concurrency: int, warmup: float, seconds: float
) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    errors = [0]
    total = [0]
    now = time.perf_counter()
    warmup_until, until = now + warmup, now + warmup + seconds
    await asyncio.gather(
        *(
            _connection(port, requests, i * 13, warmup_until, until, latencies, errors, total)
            for i in range(concurrency)
        )
    )
    return latencies, errors[0], total[0]


def run_load(
    label: str,
    port: int,
    paths: list[str],
    concurrency: int,
    warmup: float,
    seconds: float,
    ingested: Any,
    server_pids: list[int],
    database: str,
) -> LoadResult:
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        for path in paths
    ]
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    before = ingested.value
    pg = postgres_pids(database)
    server_before, pg_before = cpu_of(server_pids), cpu_of(pg)
    started = time.monotonic()
    latencies, errors, total = runner(_load(port, requests, concurrency, warmup, seconds))
    events_per_second = (ingested.value - before) / max(time.monotonic() - started, 1e-9)
    return LoadResult(
        label,
        seconds,
        latencies,
        errors,
        int(events_per_second),
        cpu_used(server_before, server_pids),
        cpu_used(pg_before, postgres_pids(database)),
        total,
    )


# --- main -------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return f"{os.cpu_count()} cores ({model}), {memory} RAM, {platform.platform()}"


def report(result: LoadResult) -> str:
    server_us, postgres_us = result.cpu_per_request_us()
    return (
        f"{result.label:<14} {result.rate:>9,.0f} req/s   p50 {result.percentile(0.50):5.2f} ms"
        f"   p90 {result.percentile(0.90):5.2f} ms   p99 {result.percentile(0.99):5.2f} ms"
        f"   max {max(result.latencies) * 1000:6.1f} ms   errors {result.errors}"
        f"   ingesting {result.events_per_second:,} events/s meanwhile\n"
        f"{'':<14} CPU per request (ingestion's share included): server {server_us:,.0f} us,"
        f" PostgreSQL {postgres_us:,.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teams", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="billfold serve --workers")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ingest-batch", type=int, default=200, help="events per batch")
    parser.add_argument(
        "--ingest-interval", type=float, default=0.2, help="seconds between batches"
    )
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args()

    base = os.environ.get("BILLFOLD_BENCH_POSTGRES_URL", DEFAULT_URL)
    name = f"billfold_bench_spend_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(base), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = libpq_url(base).rsplit("/", 1)[0] + "/" + name
    server: Server | None = None
    stop = multiprocessing.Event()
    ingested = multiprocessing.Value("q", 0)
    ingester: multiprocessing.Process | None = None
    try:
        started = time.monotonic()
        teams = create_teams(db_url, args.teams)
        print(f"created {len(teams):,} teams in {time.monotonic() - started:.1f} s")
        server, command = start_server(db_url, args.workers)
        operator = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.base_url, headers=operator, timeout=120) as http:
            month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0)
            http.put(
                f"/admin/v1/prices/{SKU}",
                json={
                    "description": "Chat bench",
                    "unitType": "Prompt text tokens",
                    "unitPrice": "0.000003",
                    "effectiveFrom": (month_start - timedelta(days=40)).isoformat(),
                },
            ).raise_for_status()
            rng = random.Random(1)
            for start in range(0, len(teams), 2000):  # every team gets a cycle row this month
                chunk = teams[start : start + 2000]
                body = orjson.loads(events_body(chunk, len(chunk), rng))
                for team_id, item in zip(chunk, body["events"], strict=True):
                    item["teamId"] = team_id
                response = http.post("/admin/v1/usage-events", json=body)
                response.raise_for_status()
            sample = http.get(f"/admin/v1/teams/{teams[0]}/spend-status").json()
            print("a spend check answers:", orjson.dumps(sample).decode())

        ingester = multiprocessing.Process(
            target=ingest_loop,
            args=(server.base_url, teams, args.ingest_batch, args.ingest_interval, stop, ingested),
            daemon=True,
        )
        ingester.start()
        time.sleep(1.0)
        pids = server_processes(server.process.pid)
        check_paths = [f"/admin/v1/teams/{t}/spend-status" for t in teams]
        with RssSampler(pids) as rss:
            ceiling = run_load(
                "/healthz", server.port, ["/healthz"], args.concurrency, args.warmup,
                args.seconds, ingested, list(pids), name,
            )  # fmt: skip
            checks = run_load(
                "spend-status", server.port, check_paths, args.concurrency, args.warmup,
                args.seconds, ingested, list(pids), name,
            )  # fmt: skip
        stop.set()
        ingester.join(30)

        print()
        print(f"machine: {machine()}")
        print(f"server:  {shlex.join(command)} (PostgreSQL {name})")
        print(
            f"load:    {args.concurrency} keep-alive connections, {args.warmup:.0f} s warm-up + "
            f"{args.seconds:.0f} s measured per endpoint; live ingestion: {args.ingest_batch} "
            f"events every {args.ingest_interval} s over {len(teams):,} teams"
        )
        print(report(ceiling))
        print(report(checks))
        print(f"spend-status / healthz = {checks.rate / ceiling.rate:.0%}")
        print(
            "server RSS (peak): "
            + ", ".join(f"{role} {rss.peak.get(pid, 0):.0f} MB" for pid, role in pids.items())
        )
        goals = (
            f"goals: >= 5,000 checks/s: {'met' if checks.rate >= 5000 else 'MISSED'}; "
            f"p99 < 5 ms: {'met' if checks.percentile(0.99) < 5 else 'MISSED'}; "
            f">= 50% of trivial: {'met' if checks.rate >= 0.5 * ceiling.rate else 'MISSED'}"
        )
        print(goals)
        print(
            f"reproduce: .venv/bin/python bench/spend_check.py {shlex.join(sys.argv[1:])}".strip()
        )
    finally:
        stop.set()
        if ingester is not None and ingester.is_alive():
            ingester.terminate()
        if server is not None:
            server.stop()
        if not args.keep_database:
            with psycopg.connect(libpq_url(base), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
