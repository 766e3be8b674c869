"""What exactly-once costs PostgreSQL, by key design: COPYs of the same events into tables that
differ only in their key.

Billfold keys ``usage_events`` on ``(event_id, team_id)`` (exactly once per team and event id,
migration 0009) and indexes ``(team_id, ts)`` for raw-event reads. This times a binary COPY of
1,000,000 events, in sorted 10,000-row transactions as ingestion sends them, into a table with
the columns of ``usage_events`` and:

* ``billfold``: its key and index (what ingestion pays);
* ``digest``: instead of that key, a 16-byte ``event_key`` column, the BLAKE2b-128 digest of
  the team's and the event id's bytes, as the only key (the alternative that keeps a fixed-width
  key: it would make exactly-once "equal digests" instead of "equal ids");
* ``index only``: the ``(team_id, ts)`` index and no key (exactly-once left out);
* ``bare``: no key and no index.

Each variant runs ``--rounds`` times, interleaved, each after a ``CHECKPOINT``; it prints rows/s
and the backend's CPU and WAL per row (medians), and what computing the digest costs Python per
event -- what the server would pay for the ``digest`` key. Results: bench/results/ingest.md
("Round 7").

    .venv/bin/python bench/event_keys.py     # BILLFOLD_BENCH_POSTGRES_URL as for bench/ingest.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.string import BytesBinaryDumper

from procfs import libpq_url, machine  # bench/procfs.py

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BATCH = 10_000
COLUMNS = (
    'team_id uuid NOT NULL, event_id varchar(200) COLLATE "C" NOT NULL, ts timestamptz NOT NULL,'
    " quantity bigint NOT NULL, price_version_id bigint NOT NULL, property_set_id uuid NOT NULL,"
    " ingested_at timestamptz NOT NULL"
)
NAMES = "team_id, event_id, ts, quantity, price_version_id, property_set_id, ingested_at"
TYPES = ["bytea", "text", "timestamptz", "int8", "int8", "bytea", "timestamptz"]
INDEX = "CREATE INDEX ON bench_keys (team_id, ts)"
# name -> (DDL, whether rows carry the digest first)
VARIANTS: dict[str, tuple[str, bool]] = {
    "billfold": (
        f"CREATE TABLE bench_keys ({COLUMNS}, PRIMARY KEY (event_id, team_id)); {INDEX}",
        False,
    ),
    "digest": (
        f"CREATE TABLE bench_keys (event_key uuid PRIMARY KEY, {COLUMNS}); {INDEX}",
        True,
    ),
    "index only": (f"CREATE TABLE bench_keys ({COLUMNS}); {INDEX}", False),
    "bare": (f"CREATE TABLE bench_keys ({COLUMNS})", False),
}

Row = tuple[Any, ...]


def event_digest(team: bytes, event_id: str) -> bytes:
    return hashlib.blake2b(team + event_id.encode(), digest_size=16).digest()


def make_rows(count: int) -> list[Row]:
    """The benchmark's events as Billfold stores them: one big team, time-ordered, random
    128-bit request ids, 4 price versions, 20 property sets."""
    rng = random.Random(20261205)
    team = uuid.UUID(int=rng.getrandbits(128)).bytes
    sets = [uuid.UUID(int=rng.getrandbits(128)).bytes for _ in range(20)]
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    now = datetime.now(UTC)
    return [
        (
            team,
            f"req_{rng.getrandbits(128):032x}",
            start + timedelta(milliseconds=i * 250),
            rng.randint(1, 5000),
            rng.randint(1, 4),
            rng.choice(sets),
            now,
        )
        for i in range(count)
    ]


def batches(rows: list[Row], digest: bool) -> list[list[Row]]:
    """10,000-row batches, each sorted by the table's key (ingestion's order)."""
    out = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        if digest:
            keyed = [(event_digest(r[0], r[1]), *r) for r in chunk]
            out.append(sorted(keyed, key=lambda r: r[0]))
        else:
            out.append(sorted(chunk, key=lambda r: (r[1], r[0])))
    return out


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run(url: str, ddl: str, data: list[list[Row]], digest: bool) -> tuple[float, float, float]:
    """(rows/s, backend CPU us per row, WAL bytes per row) of one COPY of ``data``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_keys")
        for statement in ddl.split("; "):
            conn.execute(statement)
        conn.execute("CHECKPOINT")
    names = f"event_key, {NAMES}" if digest else NAMES
    types = ["bytea", *TYPES] if digest else TYPES
    rows = sum(map(len, data))
    with psycopg.connect(url) as conn:
        conn.adapters.register_dumper(bytes, BytesBinaryDumper)
        pid = conn.info.backend_pid
        wal_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        conn.commit()
        cpu_before, started = backend_cpu(pid), time.perf_counter()
        for batch in data:
            statement = f"COPY bench_keys ({names}) FROM STDIN (FORMAT BINARY)"
            with conn.cursor().copy(statement) as copy:
                copy.set_types(types)
                for row in batch:
                    copy.write_row(row)
            conn.commit()
        seconds = time.perf_counter() - started
        cpu = backend_cpu(pid) - cpu_before
        wal = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (wal_before,)).fetchone()[0]  # type: ignore[index]
        conn.execute("DROP TABLE bench_keys")
        conn.commit()
    return rows / seconds, cpu / rows * 1e6, float(wal) / rows


def python_cost(rows: list[Row], what: Callable[[Row], object]) -> float:
    """CPU us per row of ``what`` over ``rows`` (best of 5)."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for row in rows:
            what(row)
        best = min(best, time.process_time() - started)
    return best / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = libpq_url(os.environ.get("BILLFOLD_BENCH_POSTGRES_URL", DEFAULT_URL))

    print(f"machine:  {machine()}")
    rows = make_rows(args.events)
    data = {name: batches(rows, digest) for name, (_, digest) in VARIANTS.items()}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (ddl, digest) in VARIANTS.items():
            results[name].append(run(url, ddl, data[name], digest))

    print(
        f"COPY of {args.events:,} events in sorted {BATCH:,}-row transactions, binary, "
        f"{args.rounds} interleaved rounds (medians; rows/s range in brackets):"
    )
    for name, runs in results.items():
        rates = [r[0] for r in runs]
        print(
            f"  {name:<11} {statistics.median(rates):>9,.0f} rows/s "
            f"[{min(rates):,.0f}-{max(rates):,.0f}]   "
            f"backend CPU {statistics.median(r[1] for r in runs):.2f} us/row   "
            f"WAL {statistics.median(r[2] for r in runs):.0f} B/row"
        )
    sample = rows[:100_000]
    print(
        "python:   the digest of (team, event id) "
        f"{python_cost(sample, lambda r: event_digest(r[0], r[1])):.2f} us per event"
    )
    print(
        "reproduce: .venv/bin/python bench/event_keys.py"
        + (f" --events {args.events}" if args.events != 1_000_000 else "")
        + f"  (BILLFOLD_BENCH_POSTGRES_URL={url})"
    )


if __name__ == "__main__":
    main()
