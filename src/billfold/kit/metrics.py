"""Prometheus metrics: what every process counts, and one scrape for all of them.

``GET /metrics`` (billfold/metrics.py) answers in Prometheus's text format. The counting lives
here, below every domain, so any layer can count; the figures read from the database at scrape
time (pending charges, the outbox) are the composition root's.

**All workers in one scrape.** With ``billfold serve --workers N`` (N > 1) each worker is a process
of its own, and the kernel hands a scrape to any one of them. prometheus-client's multiprocess mode
makes every process write its values into memory-mapped files of one directory
(``PROMETHEUS_MULTIPROC_DIR``) and the scraping process sum them. The variable must be set before
prometheus_client is imported, so ``serve`` sets it (:func:`multiprocess_dir`, a fresh temporary
directory, removed at exit) before uvicorn spawns the workers, which import everything anew. With
one worker the process's own values are the whole truth and no files are written. Counters of a
worker that died stay in the sum (a counter never goes back); per-process gauges (``livesum``) of a
dead worker are dropped at the next scrape (:func:`forget_dead_processes`).

**Cost.** The request path never touches the shared files: in multiprocess mode one increment of
a prometheus-client value costs ~1-4 us (a lock, ``os.getpid()`` -- a system call -- and a write
into the mapped file), several per histogram observation, which the spend check (tens of us)
would feel. So the two per-request metrics -- a request's latency (:class:`RequestMetrics`, in
:class:`RequestContext <billfold.kit.logs.RequestContext>`, no layer of its own) and the spend
check's answer (``spend.gateway.SpendCheckCounter``) -- are kept in plain Python numbers on the
event loop (a dictionary lookup and an addition) and added to the shared values once a second
and before every scrape (``flush``). A scrape therefore shows the other workers' requests of the
last second or less a moment later; nothing is lost (a clean exit flushes). Routes are labelled
by their TEMPLATE, never the raw path, and methods outside HTTP's usual ones are ``other``: a
client cannot grow the number of series. Counters that are not per request (usage events at
commit) increment the shared values directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chose its kind of values when it was imported (just above): the same test.
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` (nor in multiprocess mode)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. The spend check answers in well under a millisecond; a cycle close can take seconds.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

REQUESTS = Histogram(
    "billfold_http_request_duration_seconds",
    "HTTP requests by method, route template and status: their count (_count) and latency.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
USAGE_EVENTS = Counter(
    "billfold_usage_events",
    "Usage events by outcome of ingestion (accepted, duplicate, rejected), counted at commit.",
    ["outcome"],
)
SPEND_CHECKS = Counter(
    "billfold_spend_checks",
    "Spend checks answered 200, by reason (ok, prepaid_exhausted, spending_limit_reached) and "
    "whether the answer came from the process's cache (cached=true) or the database.",
    ["reason", "cached"],
)
SPEND_CACHE_LEASED = Gauge(
    "billfold_spend_cache_leased_processes",
    "Serving processes whose spend cache holds its lease (answers from memory), summed.",
    multiprocess_mode="livesum",
)
SPEND_CACHE_ANSWERS = Gauge(
    "billfold_spend_cache_answers",
    "Spend-check answers kept in memory, summed over the serving processes.",
    multiprocess_mode="livesum",
)
PROCESSES = Gauge(
    "billfold_serving_processes",
    "Serving processes (workers) alive.",
    multiprocess_mode="livesum",
)
POOL_CHECKED_OUT = Gauge(
    "billfold_db_pool_checked_out",
    "Database connections in use from the serving processes' pools (sampled every second).",
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "billfold_db_pool_size",
    "The serving processes' pool sizes (BILLFOLD_DB_POOL_SIZE each), summed; in use above it "
    "means overflow connections.",
    multiprocess_mode="livesum",
)

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_UNMATCHED = "(unmatched)"
_MAX_CHILDREN = 5_000  # (method, route, status) combinations kept; far above the routes' count


class RequestMetrics:
    """Records one request: called by the outermost layer (kit/logs.RequestContext), on the
    event loop. Kept in plain Python numbers and added to the shared values by :meth:`flush`
    (every second, and before a scrape): see the module docstring."""

    __slots__ = ("_series",)

    def __init__(self) -> None:
        # (method, route, status) -> [histogram child, counts per bucket (+Inf last), sum]
        self._series: dict[tuple[str, str | None, int], list[Any]] = {}

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:
            series = self._add(method, route, status)
        series[1][bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        series[2] += seconds

    def _add(self, method: str, route: str | None, status: int) -> list[Any]:
        if method not in _METHODS:  # kept once as "other", whatever clients send
            method = "other"
            series = self._series.get((method, route, status))
            if series is not None:
                return series
        if len(self._series) >= _MAX_CHILDREN:
            self.flush()
            self._series.clear()
        child = REQUESTS.labels(method, route or _UNMATCHED, str(status))
        series = [child, [0] * (len(_LATENCY_BUCKETS) + 1), 0.0]
        self._series[(method, route, status)] = series
        return series

    def flush(self) -> None:
        """Add what was observed since the last flush to the shared values (on the loop)."""
        for series in self._series.values():
            counts = series[1]
            if not any(counts):
                continue
            child = series[0]
            # A histogram child's own parts (prometheus-client's Histogram: one value per
            # bucket, not cumulative, +Inf last; and the sum): what its observe() increments.
            for index, count in enumerate(counts):
                if count:
                    child._buckets[index].inc(count)
                    counts[index] = 0
            child._sum.inc(series[2])
            series[2] = 0.0


# --- counting what a transaction did, once it commits ----------------------------------------

_PENDING = "billfold_metrics_pending"


def count_at_commit(session: Session, counter: Any, amount: int) -> None:
    """Add ``amount`` to ``counter`` (a labelled child) when ``session``'s transaction commits;
    nothing when it rolls back. So a counter never counts what did not happen."""
    if amount:
        session.info.setdefault(_PENDING, []).append((counter, amount))


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        for counter, amount in pending:
            counter.inc(amount)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


# --- per-process gauges ----------------------------------------------------------------------


def sample_pool(pool: Any) -> None:
    """This process's pool use (QueuePool on PostgreSQL; other pools report what they have)."""
    checked_out = getattr(pool, "checkedout", None)
    size = getattr(pool, "size", None)
    POOL_CHECKED_OUT.set(checked_out() if callable(checked_out) else 0)
    POOL_SIZE.set(size() if callable(size) else 0)


def process_started() -> None:
    PROCESSES.set(1)


def process_stopped() -> None:
    """A clean exit: this process's per-process gauges leave the sum at once."""
    PROCESSES.set(0)
    directory = os.environ.get(MULTIPROC_ENV)
    if MULTIPROCESS and directory:
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


# --- the scrape --------------------------------------------------------------------------------


class _Collect(Collector):
    def __init__(self, collect: Any) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Any]:
        return self._collect()  # type: ignore[no-any-return]


def scrape(extra: Iterable[Collector] = ()) -> bytes:
    """Every process's metrics (multiprocess mode) or this one's, and ``extra`` collectors (the
    figures read from the database), in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get(MULTIPROC_ENV)
    if MULTIPROCESS and directory:
        forget_dead_processes(directory)
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Collect(REGISTRY.collect))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


def forget_dead_processes(directory: str) -> None:
    """Drop the per-process gauges of workers that died without a clean exit (kill -9, OOM):
    uvicorn restarts them under new pids, and their last values would stay in the sums."""
    for name in os.listdir(directory):
        if not (name.startswith("gauge_live") and name.endswith(".db")):
            continue
        try:
            pid = int(name[:-3].rsplit("_", 1)[1])
        except ValueError:
            continue
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def multiprocess_dir(workers: int) -> Iterator[str | None]:
    """For ``billfold serve``: with several workers, a fresh directory for their values, named
    in ``PROMETHEUS_MULTIPROC_DIR`` before uvicorn spawns them, and removed at exit. A directory
    the operator named is used instead, emptied of other processes' files first (a previous
    run's values would be summed in)."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        mine = f"_{os.getpid()}.db"
        for name in os.listdir(given):
            if name.endswith(".db") and not name.endswith(mine):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(given, name))
        yield given
        return
    if workers <= 1:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="billfold-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)
