"""Spend check benchmark: ``GET /admin/v1/teams/{id}/spend-status`` under live ingestion.

What it does, in one run:

1. creates a fresh database on the PostgreSQL server of ``BILLFOLD_BENCH_POSTGRES_URL``
   (default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, and creates 10,000
   teams through the services (every other one with a credit grant, every third with a soft limit),
   then starts ``billfold serve --workers 2`` on it as a subprocess;
2. gives every team usage in the current month (so each check reads a real cycle row) and starts
   live ingestion in a background process: batches of ``--ingest-batch`` events over random teams,
   one every ``--ingest-interval`` seconds on a fixed schedule (up to 4 in flight, so a saturated
   server is offered the same ingestion whatever endpoint is measured), for as long as the load
   runs (``--ingest-batch 0``: none);
3. runs a closed-loop load generator (``--concurrency`` keep-alive connections) against two
   ceilings and then the spend check over all the teams, each for ``--seconds`` after a warm-up:
   ``/docs/oauth2-redirect`` (TRIVIAL: FastAPI's constant Swagger page, no database -- the
   goal's ratio is taken against it) and ``/healthz`` (a database probe reused for 1 s). It
   prints req/s, p50/p75/p90/p99 latency, errors, the events/s ingested meanwhile, the server's
   and PostgreSQL's CPU per request, where the machine's CPU went during each measurement (load
   average, our processes, OTHER processes -- other sessions' work on a shared machine -- and
   hypervisor steal; a run counts as quiet when the others used <= 0.15 cores), the ratios, the
   peak RSS of the server processes, and the goals;
   then (wrk only) the trivial endpoint and the spend check again PACED at about ``--paced-rate``
   requests/s (default 5,000, the goal's rate): each connection pauses 4 ms between its
   requests, so the latency is that of a server below saturation rather than of a queue;
4. measures the spend check once more with a FRESHNESS probe running beside the load: every
   ~20 ms a write through the API (a probe team's hard limit), then at once a check of that team
   on a new connection (either worker may take it), counting answers that miss the write; and
   the delay PostgreSQL takes to deliver the cache's notification after a commit (a separate
   figure: the probe's writes cost the workers CPU, so its throughput is not the goal's figure);
5. stops everything and drops the database (``--keep-database`` keeps it).

The load generator is wrk when it is on PATH (``apt-get install wrk``; ``--client`` chooses): C,
a few us of CPU per request, with a Lua ``request()`` that walks the teams from a file (one path
for the ceilings, so every endpoint costs the client the same), and ``--latency`` for the
distribution. Without wrk a Python one speaks HTTP/1.1 over raw asyncio streams; it spends
~100+ us of CPU per request on the cores the server needs, so its figures are lower. The output
says which was used. ``--hold N`` keeps the server under spend-check load for N s first and
prints the worker pids, to profile them (``.venv/bin/py-spy record -p PID``).

    .venv/bin/python bench/spend_check.py
    .venv/bin/python bench/spend_check.py --seconds 5 --teams 2000   # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from procfs import RssSampler, machine  # bench/procfs.py
from served import Server, create_database, drop_database, start_server  # bench/served.py

TOKEN = "bench-operator-token"
SKU = "bench-sku"

# --- /proc ------------------------------------------------------------------------------------


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


INGEST_IN_FLIGHT = 4


def ingest_loop(
    base_url: str,
    teams: list[str],
    batch: int,
    interval: float,
    stop: Any,
    counter: Any,
    skipped: Any,
) -> None:
    """The background ingester (its own process): a batch every ``interval`` seconds on a fixed
    schedule, up to INGEST_IN_FLIGHT at once -- so the ingestion offered is the same whatever
    endpoint is being measured (one batch at a time, a saturated server would be offered less).
    A batch due while that many are in flight is skipped, and counted."""
    rng = random.Random(os.getpid())
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    slots = threading.Semaphore(INGEST_IN_FLIGHT)

    def send(http: httpx.Client, body: bytes) -> None:
        try:
            response = http.post("/admin/v1/usage-events", content=body)
            if response.status_code == 200:
                with counter.get_lock():
                    counter.value += response.json()["accepted"]
        finally:
            slots.release()

    limits = httpx.Limits(max_connections=INGEST_IN_FLIGHT)
    with (
        httpx.Client(base_url=base_url, headers=headers, timeout=60, limits=limits) as http,
        ThreadPoolExecutor(INGEST_IN_FLIGHT) as pool,
    ):
        due = time.monotonic()
        while not stop.is_set():
            if slots.acquire(blocking=False):
                pool.submit(send, http, events_body(teams, batch, rng))
            else:
                with skipped.get_lock():
                    skipped.value += 1
            due += interval
            stop.wait(max(due - time.monotonic(), 0))


# --- machine accounting -----------------------------------------------------------------------


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy, and stolen by the hypervisor (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS, fields[7] / CLOCK_TICKS


def children_cpu() -> float:
    """CPU seconds of this process's finished children (wrk, once it has been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Accounting:
    """Where the machine's CPU went during one measured window (CPU seconds)."""

    server_pids: list[int]
    ingester_pid: int | None
    database: str
    ingested: Any  # the ingester's shared counter of accepted events
    wall: float = 0.0
    busy: float = 0.0
    steal: float = 0.0
    server: float = 0.0
    by_server_process: list[float] = field(default_factory=list)  # supervisor, workers
    postgres: float = 0.0
    client: float = 0.0
    ingester: float = 0.0
    events: int = 0  # ingested meanwhile
    load_before: float = 0.0
    _before: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.load_before = os.getloadavg()[0]
        busy, steal = machine_cpu()
        pg = postgres_pids(self.database)
        self._before = {
            "wall": time.monotonic(),
            "busy": busy,
            "steal": steal,
            "server": cpu_of(self.server_pids),
            "pg": cpu_of(pg),
            "client": children_cpu() + own_cpu(),
            "ingester": cpu_seconds(self.ingester_pid) if self.ingester_pid else 0.0,
            "events": self.ingested.value,
        }

    def stop(self) -> None:
        before = self._before
        busy, steal = machine_cpu()
        self.wall = time.monotonic() - before["wall"]
        self.busy = busy - before["busy"]
        self.steal = steal - before["steal"]
        self.server = cpu_used(before["server"], self.server_pids)
        self.by_server_process = [
            cpu_seconds(pid) - before["server"].get(pid, 0.0) for pid in self.server_pids
        ]
        self.postgres = cpu_used(before["pg"], postgres_pids(self.database))
        self.client = children_cpu() + own_cpu() - before["client"]
        if self.ingester_pid:
            self.ingester = cpu_seconds(self.ingester_pid) - before["ingester"]
        self.events = self.ingested.value - before["events"]

    @property
    def uneven_workers(self) -> bool:
        """Did one worker do most of the work? The workers share one listening socket and the
        kernel hands each new connection to whichever accepts first; with few connections they
        can all land on one worker, which then measures one core, not the server."""
        workers = self.by_server_process[1:]
        return len(workers) > 1 and min(workers) < 0.5 * max(workers)

    @property
    def ours(self) -> float:
        return self.server + self.postgres + self.client + self.ingester

    @property
    def others(self) -> float:
        """What the rest of the machine used: other sessions' work, and PostgreSQL's shared
        background processes (WAL writer, checkpointer) -- which our ingestion also feeds."""
        return max(self.busy - self.ours, 0.0)

    def cores(self, seconds: float) -> float:
        return seconds / max(self.wall, 1e-9)

    def line(self) -> str:
        return (
            f"machine: load {self.load_before:.2f} before; busy {self.cores(self.busy):.2f} of "
            f"{os.cpu_count()} cores: server {self.cores(self.server):.2f} "
            f"({' + '.join(f'{self.cores(s):.2f}' for s in self.by_server_process)}), PostgreSQL "
            f"{self.cores(self.postgres):.2f}, client {self.cores(self.client):.2f}, ingester "
            f"{self.cores(self.ingester):.2f}, OTHER processes {self.cores(self.others):.2f}"
            f" (steal {self.cores(self.steal):.2f})"
            + (
                "  UNEVEN: the connections did not spread over the workers"
                if self.uneven_workers
                else ""
            )
        )


# --- the load generators ----------------------------------------------------------------------


@dataclass
class LoadResult:
    label: str
    client: str
    seconds: float
    requests: int  # measured (warm-up left out)
    p50: float  # ms
    p75: float
    p90: float
    p99: float
    max: float
    errors: int  # non-200 answers and socket errors
    cpu: Accounting

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def events_per_second(self) -> float:
        """Events the background process ingested meanwhile."""
        return self.cpu.events / max(self.cpu.wall, 1e-9)

    def cpu_per_request_us(self) -> tuple[float, float]:
        n = max(self.requests, 1)
        return self.cpu.server / n * 1e6, self.cpu.postgres / n * 1e6


# The wrk script: spreads the GETs over the paths in the file named after "--" (one a line; one
# path for the ceilings, so every endpoint is measured with the same client work). Each thread
# starts at its own offset and walks the paths with a prime stride; the requests are formatted
# once in init(), so request() costs the client a table lookup.
WRK_SCRIPT = """
local requests = {}
local count = 0
local index = 0
local threads = 0

function setup(thread)
  thread:set("offset", threads * 104729)
  threads = threads + 1
end

function init(args)
  for path in io.lines(args[1]) do
    count = count + 1
    requests[count] = wrk.format("GET", path)
  end
  index = offset or 0
  pause = tonumber(args[2]) or 0
end

function request()
  index = index + 7919
  return requests[index % count + 1]
end

function delay()
  return pause
end
"""
# Paced runs (--paced-rate): each connection waits this long before its next request.
PACE_DELAY_MS = 4

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _wrk_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if match is None:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(match[1]) * _WRK_UNITS[match[2]]


@dataclass(frozen=True)
class WrkOutput:
    requests: int
    seconds: float
    rate: float
    percentiles: dict[int, float]  # 50, 75, 90, 99 -> ms
    max: float
    errors: int


def parse_wrk(text: str) -> WrkOutput:
    """Reads wrk's report (run with --latency): req/s, the latency distribution and errors."""
    percentiles = {
        int(m[1]): _wrk_ms(m[2]) for m in re.finditer(r"^\s+(\d+)%\s+(\S+)\s*$", text, re.M)
    }
    latency = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+)", text, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if latency is None or total is None or rate is None or not {50, 99} <= set(percentiles):
        raise ValueError(f"unexpected wrk output:\n{text}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx[1])
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if sockets:
        errors += sum(int(sockets[i]) for i in range(1, 5))
    return WrkOutput(
        requests=int(total[1]),
        seconds=_wrk_ms(total[2] + total[3]) / 1000,
        rate=float(rate[1]),
        percentiles=percentiles,
        max=_wrk_ms(latency[3]),
        errors=errors,
    )


@dataclass
class Load:
    """One endpoint's measurement: a warm-up, then ``seconds`` measured, by wrk or in Python."""

    port: int
    concurrency: int
    warmup: float
    seconds: float
    accounting: Callable[[], Accounting]
    wrk: str | None
    wrk_threads: int
    workdir: Path
    pause_ms: int = 0  # wrk waits this long between a connection's requests (a paced run)

    @property
    def client(self) -> str:
        if self.wrk:
            return f"wrk ({self.wrk_threads} threads, Lua request() over the paths)"
        return "Python (asyncio streams)"

    def measure(self, label: str, paths: list[str]) -> LoadResult:
        if self.pause_ms and not self.wrk:
            sys.exit("paced runs need wrk")
        if self.wrk:
            return self._wrk(label, paths)
        return self._python(label, paths)

    def _wrk(self, label: str, paths: list[str]) -> LoadResult:
        binary = self.wrk
        assert binary is not None
        script = self.workdir / "spend_check.lua"
        script.write_text(WRK_SCRIPT)
        paths_file = self.workdir / f"paths-{len(paths)}.txt"
        paths_file.write_text("\n".join(paths) + "\n")

        def wrk(seconds: float) -> str:
            command = [
                binary,
                f"--threads={min(self.wrk_threads, self.concurrency)}",
                f"--connections={self.concurrency}",
                f"--duration={max(round(seconds), 1)}s",
                "--timeout=10s",
                "--latency",
                f"--header=Authorization: Bearer {TOKEN}",
                f"--script={script}",
                f"http://127.0.0.1:{self.port}",
                "--",
                str(paths_file),
                str(self.pause_ms),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            return done.stdout

        if self.warmup > 0:
            wrk(self.warmup)
        cpu = self.accounting()
        cpu.start()
        out = parse_wrk(wrk(self.seconds))
        cpu.stop()
        p = out.percentiles
        return LoadResult(
            label,
            "wrk",
            out.seconds,
            out.requests,
            p[50],
            p.get(75, p[50]),
            p.get(90, p[99]),
            p[99],
            out.max,
            out.errors,
            cpu,
        )

    def _python(self, label: str, paths: list[str]) -> LoadResult:
        requests = [
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
            for path in paths
        ]
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        cpu = self.accounting()
        state = _PythonLoad(cpu)
        runner(_load(self.port, requests, self.concurrency, self.warmup, self.seconds, state))
        ordered = sorted(state.latencies)

        def percentile(q: float) -> float:
            return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000

        return LoadResult(
            label,
            "python",
            self.seconds,
            len(ordered),
            percentile(0.50),
            percentile(0.75),
            percentile(0.90),
            percentile(0.99),
            ordered[-1] * 1000,
            state.errors,
            cpu,
        )


@dataclass
class _PythonLoad:
    cpu: Accounting
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    measuring: bool = False


async def _connection(
    port: int,
    requests: list[bytes],
    offset: int,
    warmup_until: float,
    until: float,
    state: _PythonLoad,
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
            if started >= warmup_until:
                state.latencies.append(time.perf_counter() - started)
                if not status.startswith(b"HTTP/1.1 200"):
                    state.errors += 1
    finally:
        writer.close()


async def _load(
    port: int,
    requests: list[bytes],
    concurrency: int,
    warmup: float,
    seconds: float,
    state: _PythonLoad,
) -> None:
    now = time.perf_counter()
    warmup_until, until = now + warmup, now + warmup + seconds

    async def account() -> None:
        await asyncio.sleep(max(warmup_until - time.perf_counter(), 0))
        state.cpu.start()
        await asyncio.sleep(max(until - time.perf_counter(), 0))
        state.cpu.stop()

    await asyncio.gather(
        account(),
        *(
            _connection(port, requests, i * 13, warmup_until, until, state)
            for i in range(concurrency)
        ),
    )


# --- main -------------------------------------------------------------------------------------


def report(result: LoadResult) -> str:
    server_us, postgres_us = result.cpu_per_request_us()
    return (
        f"{result.label:<22} {result.rate:>8,.0f} req/s   p50 {result.p50:5.2f} ms"
        f"   p75 {result.p75:5.2f}   p90 {result.p90:5.2f}   p99 {result.p99:5.2f} ms"
        f"   max {result.max:6.1f} ms   errors {result.errors}"
        f"   ingesting {result.events_per_second:,.0f} events/s\n"
        f"{'':<22} CPU per request (ingestion's share included): server {server_us:,.0f} us,"
        f" PostgreSQL {postgres_us:,.0f} us\n"
        f"{'':<22} {result.cpu.line()}"
    )


# The ceilings, both already in the app (the benchmark adds no route):
# * TRIVIAL: FastAPI's Swagger OAuth2 redirect page, a plain Starlette route (no dependencies, no
#   database) answering a constant ~3 KB HTML string: what the framework costs per request. The
#   goal's ratio is taken against it.
# * /healthz: the database probe (a pooled connection and SELECT 1, in the thread pool), run at
#   most once a second per process; the requests in between reuse its answer.
TRIVIAL = "/docs/oauth2-redirect"
HEALTHZ = "/healthz"
QUIET_OTHERS = 0.15  # cores other processes may use for a run to count as quiet


class FreshnessProbe:
    """Runs while the spend check is measured: is an answer ever stale after a write?

    Every ~20 ms it sets a probe team's hard limit through the operator API, then at once asks
    that team's spend check on a new connection (so either worker may answer, not only the one
    that took the write), and counts answers that do not show the new limit yet. Beside that, a
    listening psycopg connection measures how long PostgreSQL takes to deliver the trigger's
    notification after the writer's commit returned (what another worker's cache waits for).
    """

    def __init__(self, base_url: str, db_url: str, team: str) -> None:
        self.base_url, self.db_url, self.team = base_url, db_url, team
        self.stop = threading.Event()
        self.pairs = 0
        self.stale = 0
        self.delays: list[float] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> FreshnessProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        fresh = httpx.Limits(max_keepalive_connections=0)
        with (
            httpx.Client(base_url=self.base_url, headers=headers, limits=fresh) as http,
            psycopg.connect(self.db_url, autocommit=True) as listener,
            psycopg.connect(self.db_url, autocommit=True) as writer,
        ):
            listener.execute("LISTEN billfold_spend")
            # A soft limit far above the hard ones below, so the answer's limit is the hard one.
            writer.execute(
                "UPDATE teams SET soft_limit_cents = %s WHERE id = %s", (10**12, self.team)
            )
            limit = 1_000_000
            while not self.stop.wait(0.02):
                limit += 1
                http.put(
                    f"/admin/v1/teams/{self.team}/hard-spending-limit", json={"amount": str(limit)}
                ).raise_for_status()
                answer = http.get(f"/admin/v1/teams/{self.team}/spend-status").json()
                self.pairs += 1
                self.stale += answer["effectiveSpendingLimit"]["val"] != str(limit)
                # The notification delay, measured on a write of our own (not through Billfold).
                for _ in listener.notifies(timeout=0):
                    pass  # drop the ones of the HTTP write and of ingestion
                # Another soft limit far above: it changes the row, not the answer.
                writer.execute(
                    "UPDATE teams SET soft_limit_cents = %s WHERE id = %s",
                    (10**12 + limit % 2, self.team),
                )
                committed = time.perf_counter()
                for note in listener.notifies(timeout=1.0):
                    if note.payload == self.team:
                        self.delays.append(time.perf_counter() - committed)
                        break

    def report(self) -> str:
        delays = sorted(self.delays) or [float("nan")]

        def ms(q: float) -> str:
            return f"{delays[min(len(delays) - 1, int(q * len(delays)))] * 1000:.2f}"

        return (
            f"freshness: {self.stale} stale answers in {self.pairs:,} write-then-check pairs "
            f"(either worker); notification delivered {ms(0.5)} ms (p50) / {ms(0.99)} ms (p99) / "
            f"{delays[-1] * 1000:.2f} ms (max) after the commit returned"
        )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """--client and --wrk-threads: the load generator of the request rates (``chosen_wrk``)."""
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="the rate's load generator: wrk when it is on PATH (auto), else the Python one",
    )
    parser.add_argument("--wrk-threads", type=int, default=2)


def chosen_wrk(args: argparse.Namespace) -> str | None:
    """wrk's path when --client lets it run (exits when --client wrk and it is missing)."""
    wrk = shutil.which("wrk") if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and wrk is None:
        sys.exit("--client wrk: wrk is not on PATH (apt-get install wrk)")
    return wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teams", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="billfold serve --workers")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--ingest-batch", type=int, default=200, help="events per batch (0: no live ingestion)"
    )
    parser.add_argument(
        "--ingest-interval", type=float, default=0.2, help="seconds between batches"
    )
    add_client_arguments(parser)
    parser.add_argument(
        "--paced-rate",
        type=int,
        default=5000,
        help="also measure the trivial endpoint and the spend check paced at about this many "
        "requests/s (wrk only; 0: skip), for their latency below saturation",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="after setup, keep the server up and loaded with spend checks for this many seconds "
        "before measuring (to attach a profiler; the worker pids are printed)",
    )
    parser.add_argument(
        "--spend-cache",
        choices=["on", "off"],
        default="on",
        help="BILLFOLD_SPEND_CACHE of the server (off: every check reads the database)",
    )
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args()

    wrk = chosen_wrk(args)
    database = create_database("billfold_bench_spend_")
    name, db_url = database.name, database.url
    server: Server | None = None
    stop = multiprocessing.Event()
    ingested = multiprocessing.Value("q", 0)
    ingest_skipped = multiprocessing.Value("q", 0)  # batches not sent: too many in flight
    ingester: multiprocessing.Process | None = None
    workdir = Path(tempfile.mkdtemp(prefix="billfold-spend-bench-"))
    try:
        started = time.monotonic()
        teams = create_teams(db_url, args.teams)
        print(f"created {len(teams):,} teams in {time.monotonic() - started:.1f} s")
        server, command = start_server(
            args.workers,
            {
                "BILLFOLD_DATABASE_URL": db_url,
                "BILLFOLD_ADMIN_TOKEN": TOKEN,
                "BILLFOLD_SPEND_CACHE": "true" if args.spend_cache == "on" else "false",
            },
        )
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
            trivial = http.get(TRIVIAL)
            assert trivial.status_code == 200, trivial.text

        if args.ingest_batch > 0:
            ingester = multiprocessing.Process(
                target=ingest_loop,
                args=(
                    server.base_url, teams, args.ingest_batch, args.ingest_interval, stop,
                    ingested, ingest_skipped,
                ),
                daemon=True,
            )  # fmt: skip
            ingester.start()
        ingester_pid = ingester.pid if ingester is not None else None
        time.sleep(1.0)
        pids = server_processes(server.process.pid)
        probe_team, teams = teams[-1], teams[:-1]  # its limit is rewritten by FreshnessProbe
        check_paths = [f"/admin/v1/teams/{t}/spend-status" for t in teams]
        load = Load(
            port=server.port,
            concurrency=args.concurrency,
            warmup=args.warmup,
            seconds=args.seconds,
            accounting=lambda: Accounting(list(pids), ingester_pid, name, ingested),
            wrk=wrk,
            wrk_threads=args.wrk_threads,
            workdir=workdir,
        )
        print(f"client:  {load.client}")
        if args.hold > 0:
            workers = [pid for pid, role in pids.items() if role == "worker"]
            print(f"holding {args.hold:.0f} s under spend-check load; workers: {workers}")
            Load(**{**load.__dict__, "warmup": 0.0, "seconds": args.hold}).measure(
                "hold", check_paths
            )
        with RssSampler(pids) as rss:
            trivial_result = load.measure(f"{TRIVIAL} (trivial)", [TRIVIAL])
            healthz = load.measure(f"{HEALTHZ} (probe reused 1 s)", [HEALTHZ])
            checks = load.measure("spend-status", check_paths)
            paced_results = []
            if args.paced_rate and wrk:
                # Latency at a given rate rather than at saturation: each connection sends a
                # request, waits for the answer, pauses PACE_DELAY_MS, and so on.
                connections = max(1, round(args.paced_rate * (PACE_DELAY_MS + 0.6) / 1000))
                paced = replace(load, concurrency=connections, pause_ms=PACE_DELAY_MS)
                for label, paths in (
                    (f"{TRIVIAL} (trivial)", [TRIVIAL]),
                    ("spend-status", check_paths),
                ):
                    paced_results.append(
                        paced.measure(f"{label}, paced at ~{args.paced_rate:,}/s", paths)
                    )
            # Separately: the probe's writes (through FastAPI, in the workers) cost the checks.
            with FreshnessProbe(server.base_url, db_url, probe_team) as probe:
                probed = load.measure("spend-status + freshness probe", check_paths)
        stop.set()
        if ingester is not None:
            ingester.join(30)

        print()
        print(f"machine: {machine()}")
        print(f"server:  {shlex.join(command)} (PostgreSQL {name})")
        print(f"client:  {load.client}")
        print(
            f"load:    {args.concurrency} keep-alive connections, {args.warmup:.0f} s warm-up + "
            f"{args.seconds:.0f} s measured per endpoint; live ingestion: {args.ingest_batch} "
            f"events every {args.ingest_interval} s over {len(teams):,} teams (up to "
            f"{INGEST_IN_FLIGHT} batches in flight; {ingest_skipped.value} batches skipped)"
        )
        results = (trivial_result, healthz, checks, *paced_results, probed)
        for result in results:
            print(report(result))
        print(
            f"spend-status / trivial ({TRIVIAL}) = {checks.rate / trivial_result.rate:.0%}"
            f"  (the goal's ratio);  spend-status / {HEALTHZ} = {checks.rate / healthz.rate:.0%}"
            + (
                "  -- UNEVEN runs: a rate there is one worker's, so the ratios are skewed"
                if any(r.cpu.uneven_workers for r in results)
                else ""
            )
        )
        print(probe.report())
        print(
            "server RSS (peak): "
            + ", ".join(f"{role} {rss.peak.get(pid, 0):.0f} MB" for pid, role in pids.items())
        )
        # /healthz is left out: under load its pool opens and closes overflow connections, and
        # the PostgreSQL backends forked for them, gone by the end, count as "other" processes.
        others = max(r.cpu.cores(r.cpu.others) for r in (trivial_result, checks))
        quiet = others <= QUIET_OTHERS
        print(
            f"quiet:   {'yes' if quiet else 'NO'} (other processes used up to {others:.2f} cores "
            f"while the trivial endpoint and the spend check were measured; quiet: <= "
            f"{QUIET_OTHERS})"
        )
        paced_p99 = (
            f", paced at ~{args.paced_rate:,}/s: "
            f"{'met' if paced_results[-1].p99 < 5 else 'MISSED'} ({paced_results[-1].p99:.2f} ms)"
            if paced_results
            else ""
        )
        goals = (
            f"goals: >= 5,000 checks/s: {'met' if checks.rate >= 5000 else 'MISSED'}; "
            f"p99 < 5 ms at saturation: {'met' if checks.p99 < 5 else 'MISSED'} "
            f"({checks.p99:.2f} ms){paced_p99}; "
            f">= 50% of trivial: {'met' if checks.rate >= 0.5 * trivial_result.rate else 'MISSED'}"
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
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep_database:
            drop_database(database)


if __name__ == "__main__":
    main()
