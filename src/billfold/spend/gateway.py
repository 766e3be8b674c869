"""The gateway's spend check: its answers cached in each process, and a way in around the router.

``GET /admin/v1/teams/{id}/spend-status`` is asked before every request the platform serves, so
it is answered from memory whenever it can be, and exactly whenever it is.

**The cache** (PostgreSQL; SQLite reads every time). Each process keeps the response body per
team, with the instant until which it holds if no row changes: the next month (a new cycle) or the
team's next grant expiry, whichever comes first (``InvoicingService.spend_snapshot``). Everything
else that changes an answer is a write to ``teams``' limits, ``credit_accounts`` or
``billing_cycles``, and migration 0007's triggers announce each one on the channel
``billfold_spend`` (payload: the team id), in the writing transaction, so PostgreSQL delivers it
when -- and only if -- that transaction commits. Each process listens on a connection of its own
(:class:`SpendCache`) and drops the team's answer when the notification arrives:

* **The lease.** A process answers from memory only while the latest of its own ``hello``
  messages (one every ``_HELLO_EVERY`` s) to have come back to it was sent less than ``_LEASE``
  ago. Notifications arrive in commit order, so it has then seen every write committed more than
  ``_LEASE`` ago. A process whose listening connection is stuck, slow or gone therefore stops
  answering from memory on its own within ``_LEASE`` (and reconnects after ``_LOST_AFTER``).
* *A request through Billfold's HTTP API that may have committed a write* -- any method but
  GET/HEAD/OPTIONS answered 2xx/3xx or 402 (a declined top-up may first settle an older one), a
  GET during which a session flushed a change (reading a balance settles pending top-ups), or
  one that fails after committing -- starts its response only once no process can answer from
  before it: the writing process notifies a barrier (``sync:...``) after its commit and waits
  until every process it knows of (by their hellos) has acknowledged it; a process that has seen
  the barrier has seen the write. If the barrier cannot complete (a process does not answer in
  ``_ACK_TIMEOUT``, or this process is not listening), the response waits until ``_LEASE`` has
  passed since the commit instead: by then every process still answering from memory has seen
  the write. A process that was not known when the barrier was sent either had not started
  keeping answers (it keeps none until its first hello has come back, and that hello was
  committed after the write) or was not acknowledging, i.e. had no lease. So a check that follows
  the response -- the same client, or anyone it told, on any worker -- reads the new rows.
  (bench/spend_check.py checks that under load: write, then check on a new connection.)
* *Other writes* -- the CLI, the scheduler's cycle close, a fix in psql -- are not waited for:
  each process drops the answer when the notification arrives (PostgreSQL signals every
  listening backend at commit), and every answer from memory first reads whatever has already
  arrived on the socket.
* An answer is never kept from a read that a notification overtook (:attr:`SpendCache.epoch`).
* Payloads are matched against fixed patterns and never become SQL: any role that can log in to
  the database can NOTIFY on these channels. Such a role can still make writes wait
  ``_ACK_TIMEOUT`` by announcing processes that do not exist.
* At most ``BILLFOLD_SPEND_CACHE_SIZE`` answers (default 50,000, ~420 bytes each with the
  dictionary's share: ~21 MB); when full, the oldest tenth is dropped.

**The way in** (:class:`GatewayMiddleware`, outermost ASGI layer). FastAPI's routing -- trying
each route in turn, building the request, solving dependencies -- cost more than the check itself
(bench/results/spend_check.md). With a configured operator token (``BILLFOLD_ADMIN_TOKEN``), a
well-formed team id and an answer at hand (cached, or read in one statement on the event loop),
the check is answered here; anything else -- a wrong token, a bad id, an unknown team, an expiry
due, a database error, SQLite, a generated operator token (looked up in the database) -- goes on
to the FastAPI route, which answers it the same way with the usual error bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import math
import os
import re
import secrets
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold.kit.clock import utc_now
from billfold.kit.db import LIBPQ_KEEPALIVES, watch_writes
from billfold.kit.errors import RateLimited, ServiceUnavailable
from billfold.kit.metrics import SPEND_CACHE_ANSWERS, SPEND_CACHE_LEASED, SPEND_CHECKS
from billfold.kit.ratelimit import RateLimits, too_many
from billfold.spend.limits import REASONS, SpendDecision
from billfold.spend.service import spend_service

log = logging.getLogger("billfold.spend_cache")

CHANNEL = b"billfold_spend"  # migration 0007's triggers notify here
_HELLO_EVERY = 0.25  # seconds between a process's hellos (each renews its lease)
# Answers from memory only this long after the latest own hello that came back. On a saturated
# 2-core machine a hello's round trip (a notifying commit) took 1-2 s now and then; a
# shorter lease sent checks to the database meanwhile.
_LEASE = 2.0
_ACK_TIMEOUT = 2.0  # a sync waits this long for acknowledgements (at least _LEASE)
_MEMBER_TTL = 3.0  # a process not heard of for this long is gone
_LOST_AFTER = 5.0  # our own hellos have not come back for this long: reconnect
# The listener's connection: connecting happens in a thread, but a peer gone silent must be
# noticed (keepalives) so the cache reconnects instead of trusting a dead socket.
LISTENER_LIMITS = {**LIBPQ_KEEPALIVES, "connect_timeout": "5"}
_DONE = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_RECONNECT_FIRST, _RECONNECT_MAX = 0.5, 10.0


def spend_status_json(decision: SpendDecision) -> bytes:
    """The body of SpendStatusOut (invoicing/schemas.py), serialized directly: the hot path."""
    return (
        b'{"allowed":%s,"reason":"%s","prepaidRemaining":{"val":"%d"},'
        b'"postpaidRemaining":{"val":"%d"},"cycleSpend":{"val":"%d"},'
        b'"postpaidSpend":{"val":"%d"},"effectiveSpendingLimit":{"val":"%d"}}'
        % (
            b"true" if decision.allowed else b"false",
            decision.reason.encode(),
            decision.prepaid_remaining,
            decision.postpaid_remaining,
            decision.cycle_spend,
            decision.postpaid_spend,
            decision.effective_limit,
        )
    )


if len({reason[0] for reason in REASONS}) != len(REASONS):
    raise RuntimeError("SpendCheckCounter tells the spend check's reasons by their first letter")


class SpendCheckCounter:
    """Counts answered checks by reason and by where the answer came from (``app.state.
    spend_checks``; None with BILLFOLD_METRICS=false).

    On the event loop (PostgreSQL: the check runs there) a count is a dictionary lookup and an
    addition, added to the shared counter by :meth:`flush` (every second and before a scrape,
    on the loop too; kit/metrics.py says why). Where checks run in the thread pool (SQLite),
    each increments the shared counter at once, which is thread-safe.
    """

    __slots__ = ("_on_loop", "_tallies")

    def __init__(self, on_loop: bool) -> None:
        self._on_loop = on_loop
        # (first letter of the reason, cached) -> [counter child, pending count]
        self._tallies: dict[tuple[int, bool], list[Any]] = {
            (reason.encode()[0], cached): [
                SPEND_CHECKS.labels(reason, "true" if cached else "false"),
                0,
            ]
            for reason in REASONS
            for cached in (True, False)
        }

    def count(self, body: bytes, cached: bool) -> None:
        # The body is spend_status_json's: the reason follows the flag at a fixed offset
        # (b'{"allowed":true,"reason":"' is 26 bytes, the false one 27), and its first letter
        # tells it (checked at import, above): cheaper than keeping it beside every answer.
        tally = self._tallies[body[26] if body[11] == 116 else body[27], cached]  # t(rue)
        if self._on_loop:
            tally[1] += 1
        else:
            tally[0].inc()

    def flush(self) -> None:
        for tally in self._tallies.values():
            if tally[1]:
                tally[0].inc(tally[1])
                tally[1] = 0


def spend_answer(state: State, team_id: uuid.UUID) -> bytes | None:
    """The check's response body: from this process's cache, or read (and cached); counted.

    None when a grant's expiry is due: the ledger books it in a transaction first (the route
    does that in the thread pool, and counts it). Raises what the read raises (unknown team,
    database down).
    """
    cache: SpendCache | None = state.spend_cache
    checks: SpendCheckCounter | None = state.spend_checks
    key = str(team_id)
    if cache is not None:
        body = cache.get(key, utc_now())
        if body is not None:
            if checks is not None:
                checks.count(body, cached=True)
            return body
        epoch = cache.epoch
    snapshot = spend_service.spend_snapshot(state.engine, state.settings, team_id)
    if snapshot.decision is None:
        return None
    body = spend_status_json(snapshot.decision)
    if cache is not None:
        cache.put(key, body, snapshot.valid_from, snapshot.valid_until, epoch)
    if checks is not None:
        checks.count(body, cached=False)
    return body


# (body, valid from, valid until): a tuple of atoms, which the cyclic GC stops tracking (an
# object per team would be traversed by every full collection).
_Answer = tuple[bytes, datetime, datetime]


class _Lost(Exception):
    pass


@dataclass(slots=True)
class _Barrier:
    """One round of :meth:`SpendCache.sync`: who waits for it, and which processes still have to
    acknowledge it (known once the barrier itself has come back to us: None until then)."""

    number: int
    waiters: list[asyncio.Future[bool]]
    pending: set[str] | None = None


# The caches' own messages; anything else on the channels is ignored (any role that can log in
# may NOTIFY): a payload is parsed by these patterns only, and never becomes SQL.
_NAME = rb"billfold_cache_\d{1,10}_[0-9a-f]{8}"
_TEAM = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\*")
_HELLO = re.compile(rb"hello:(" + _NAME + rb"):(\d{1,12}\.\d{6})")
_BYE = re.compile(rb"bye:(" + _NAME + rb")")
_SYNC = re.compile(rb"sync:(" + _NAME + rb"):(\d{1,18})")
_ACK = re.compile(rb"ack:(\d{1,18}):(" + _NAME + rb")")


class SpendCache:
    """One process's spend-check answers and the connection that keeps them current.

    Used on the event loop only (the check runs there on PostgreSQL; the listener is a reader of
    that loop), so it takes no locks. ``get``/``put`` work whether or not it is listening: when it
    cannot vouch for its answers, ``get`` finds nothing and ``put`` keeps nothing.

    The channel ``billfold_spend`` carries, in commit order, the triggers' team ids and the
    caches' own messages: ``hello:<process>:<sent at>`` every ``_HELLO_EVERY`` s, ``bye:<process>``
    when one stops, and ``sync:<process>:<n>`` for :meth:`sync`; acknowledgements
    (``ack:<n>:<process>``) go to the syncing process's own channel (its name).

    **The lease.** A process answers from memory only while the latest of its own hellos to have
    come back was sent less than ``_LEASE`` ago. Hellos come back in commit order, so it has then
    seen every notification committed before that hello: every write older than ``_LEASE``. A
    write whose barrier cannot be completed -- a process does not acknowledge in
    ``_ACK_TIMEOUT``, or the writer's own listener is down -- is answered only once ``_LEASE``
    has passed since it committed; by then any process still answering from memory has seen it.
    So no write depends on the membership list being right, only on the lease.
    """

    def __init__(self, conninfo: bytes, size: int = 50_000) -> None:
        self._conninfo = conninfo
        self.size = size
        self.name = f"billfold_cache_{os.getpid()}_{secrets.token_hex(4)}"
        self._answers: dict[str, _Answer] = {}
        self._instants: dict[datetime, datetime] = {}
        self._epoch = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: PGconn | None = None
        self._fd = -1
        self._connected_at = 0.0
        self._lease_from = -math.inf  # when the latest own hello that came back was sent
        self._closed = False
        self._reconnect_delay = _RECONNECT_FIRST
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._members: dict[str, float] = {}  # the other processes -> when last heard of
        # libpq runs one command at a time: the rest wait in the outbox (channel, payload).
        self._outbox: deque[tuple[bytes, bytes] | bytes] = deque()
        self._command_done = True
        self._numbers = itertools.count(1)
        self._barrier: _Barrier | None = None
        self._waiting: list[asyncio.Future[bool]] = []  # for the barrier after the current one

    # --- answers --------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._conn is not None

    @property
    def ready(self) -> bool:
        """Listening, and within its lease: answers are served from memory."""
        return self._conn is not None and self._leased()

    def _leased(self) -> bool:
        assert self._loop is not None
        return self._loop.time() - self._lease_from < _LEASE

    @property
    def epoch(self) -> int:
        """Changes with every invalidation: a read begun in another epoch is not kept."""
        return self._epoch

    @property
    def members(self) -> set[str]:
        """The other processes whose caches this one's writes wait for."""
        assert self._loop is not None
        now = self._loop.time()
        return {name for name, heard in self._members.items() if now - heard < _MEMBER_TTL}

    def get(self, team: str, now: datetime) -> bytes | None:
        if self._conn is None:
            return None
        self._drain()  # a notification already on the socket is never missed
        if not self._leased():
            return None
        answer = self._answers.get(team)
        if answer is None or not answer[1] <= now < answer[2]:
            return None
        return answer[0]

    def put(
        self, team: str, body: bytes, valid_from: datetime, valid_until: datetime, epoch: int
    ) -> None:
        if self._conn is None or epoch != self._epoch or not self._leased():
            return
        answers = self._answers
        if len(answers) >= self.size:
            # The oldest tenth goes (dicts keep insertion order): a team asked about often is
            # back at the end of the line as soon as a write drops its answer.
            for stale in list(itertools.islice(answers, max(1, self.size // 10))):
                del answers[stale]
        # Most answers share their bounds (the month's): keep one object of each.
        instants = self._instants
        if len(instants) > 2 * self.size:
            instants.clear()
        answers[team] = (
            body,
            instants.setdefault(valid_from, valid_from),
            instants.setdefault(valid_until, valid_until),
        )

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, team: object) -> bool:
        return team in self._answers

    def _invalidate(self, team: str | None) -> None:
        self._epoch += 1
        if team is None:
            self._answers.clear()
        else:
            self._answers.pop(team, None)

    # --- keeping every process's answers current ----------------------------------------------

    async def sync(self) -> None:
        """Return once no process answers from memory without the writes committed before this
        call: every listening process has acknowledged a barrier, or ``_LEASE`` has passed."""
        if self._loop is None:
            return
        started = self._loop.time()
        complete = False
        if self._conn is not None:
            waiter: asyncio.Future[bool] = self._loop.create_future()
            self._waiting.append(waiter)
            self._start_barrier()
            try:
                complete = await asyncio.wait_for(asyncio.shield(waiter), 2 * _ACK_TIMEOUT)
            except TimeoutError:
                complete = False
        if not complete:
            await asyncio.sleep(max(0.0, started + _LEASE - self._loop.time()))

    def _start_barrier(self) -> None:
        if self._conn is None or self._barrier is not None or not self._waiting:
            return
        assert self._loop is not None
        number = next(self._numbers)
        self._barrier = _Barrier(number, self._waiting)
        self._waiting = []
        self._notify(CHANNEL, b"sync:%s:%d" % (self.name.encode(), number))
        self._loop.call_later(_ACK_TIMEOUT, self._barrier_timed_out, number)

    def _end_barrier(self, complete: bool) -> None:
        barrier, self._barrier = self._barrier, None
        if barrier is not None:
            _release(barrier.waiters, complete)
        self._start_barrier()

    def _barrier_timed_out(self, number: int) -> None:
        barrier = self._barrier
        if barrier is None or barrier.number != number:
            return
        if barrier.pending:
            # Stuck or gone: writes stop waiting for them until their next hello. A stuck one
            # stops answering from memory when its lease runs out (before this timeout).
            log.warning("spend cache: no answer from %s", ", ".join(sorted(barrier.pending)))
            for name in barrier.pending:
                self._members.pop(name, None)
        self._end_barrier(complete=False)  # its writes wait out the lease

    # --- the connection -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(_HELLO_EVERY, self._tick)
        await self._connect()

    def stop(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        if self._conn is not None and self._command_done:
            with contextlib.suppress(psycopg.Error):  # best effort: the others stop waiting for us
                bye = [CHANNEL, b"bye:%s" % self.name.encode()]
                self._conn.send_query_params(b"SELECT pg_notify($1, $2)", list[bytes | None](bye))
                self._conn.flush()
        self._close()

    async def _connect(self) -> None:
        assert self._loop is not None
        try:
            conn = await self._loop.run_in_executor(None, self._open)
        except _Lost as failure:
            log.warning("spend cache: cannot listen (%s); checks read the database", failure)
            self._retry_later()
            return
        if self._closed:
            conn.finish()
            return
        self._conn, self._fd = conn, conn.socket
        self._invalidate(None)  # whatever happened while not listening is unknown
        self._connected_at = self._loop.time()
        self._lease_from = -math.inf  # until our first hello comes back
        self._loop.add_reader(self._fd, self._drain)
        self._reconnect_delay = _RECONNECT_FIRST
        self._hello()
        log.info("spend cache: listening")

    def _open(self) -> PGconn:
        """Connect and LISTEN (in a worker thread: connecting may wait on the network)."""
        conn = pq.PGconn.connect(self._conninfo)
        try:
            if conn.status != pq.ConnStatus.OK:
                raise _Lost(_error(conn))
            for channel in (CHANNEL, self.name.encode()):
                result = conn.exec_(b"LISTEN " + channel)
                if result.status != pq.ExecStatus.COMMAND_OK:
                    raise _Lost(_error(conn))
            conn.nonblocking = 1
        except BaseException:
            conn.finish()
            raise
        return conn

    def _hello(self) -> None:
        assert self._loop is not None
        self._notify(CHANNEL, b"hello:%s:%.6f" % (self.name.encode(), self._loop.time()))

    def _notify(self, channel: bytes, payload: bytes) -> None:
        self._outbox.append((channel, payload))
        self._send_next()

    def _send_sql(self, sql: bytes) -> None:
        """A statement of our own on the listening connection (tests use it to hold it busy)."""
        self._outbox.append(sql)
        self._send_next()

    def _send_next(self) -> None:
        conn = self._conn
        if conn is None or not self._command_done or not self._outbox:
            return
        outbox = self._outbox
        try:
            if isinstance(outbox[0], bytes):
                conn.send_query(outbox.popleft())  # type: ignore[arg-type]
            else:
                # Every queued message in one statement, so one commit: each notifying commit
                # takes PostgreSQL's cluster-wide notify lock and a WAL flush, and one at a time
                # they fell behind under load. Parameters, never text built from a payload.
                params: list[bytes] = []
                while outbox and not isinstance(outbox[0], bytes) and len(params) < 200:
                    params.extend(outbox.popleft())  # type: ignore[arg-type]
                calls = ", ".join(f"pg_notify(${i}, ${i + 1})" for i in range(1, len(params), 2))
                conn.send_query_params(f"SELECT {calls}".encode(), params)
            while conn.flush():  # a few bytes: the socket takes them at once in practice
                pass
        except psycopg.OperationalError as failure:
            self._lost(str(failure))
            return
        self._command_done = False

    def _drain(self) -> None:
        """Read what the listener's socket holds: notifications, and our commands' results."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.consume_input()
            while not self._command_done and not conn.is_busy():
                result = conn.get_result()
                if result is None:
                    self._command_done = True
                elif result.status not in _DONE:
                    raise _Lost(_error(conn))
            while (notification := conn.notifies()) is not None:
                self._notified(notification.relname, notification.extra)
        except (psycopg.OperationalError, _Lost) as failure:
            self._lost(str(failure))
            return
        self._send_next()

    def _notified(self, channel: bytes, payload: bytes) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if channel != CHANNEL:  # our own channel: acknowledgements
            if ack := _ACK.fullmatch(payload):
                barrier = self._barrier
                if barrier and barrier.pending is not None and int(ack[1]) == barrier.number:
                    barrier.pending.discard(ack[2].decode())
                    if not barrier.pending:
                        self._end_barrier(complete=True)
        elif _TEAM.fullmatch(payload):
            self._invalidate(None if payload == b"*" else payload.decode())
        elif hello := _HELLO.fullmatch(payload):
            name = hello[1].decode()
            if name == self.name:
                self._lease_from = max(self._lease_from, float(hello[2]))
            else:
                self._members[name] = now
        elif sync := _SYNC.fullmatch(payload):
            name = sync[1].decode()
            if name != self.name:
                # Everything committed before that barrier has reached us: say so.
                self._members[name] = now
                self._notify(sync[1], b"ack:%s:%s" % (sync[2], self.name.encode()))
            elif self._barrier is not None and int(sync[2]) == self._barrier.number:
                self._barrier.pending = self.members
                if not self._barrier.pending:
                    self._end_barrier(complete=True)
        elif bye := _BYE.fullmatch(payload):
            name = bye[1].decode()
            self._members.pop(name, None)
            barrier = self._barrier
            if barrier is not None and barrier.pending is not None:
                barrier.pending.discard(name)
                if not barrier.pending:
                    self._end_barrier(complete=True)
        else:
            log.debug("spend cache: ignored a notification %r", payload[:100])

    def _tick(self) -> None:
        """Every _HELLO_EVERY s: say hello (it renews our lease when it comes back), forget
        processes not heard of for _MEMBER_TTL, and give up on a connection whose own hellos
        stopped coming back."""
        assert self._loop is not None
        self._timer = self._loop.call_later(_HELLO_EVERY, self._tick)
        now = self._loop.time()
        for name in [n for n, heard in self._members.items() if now - heard >= _MEMBER_TTL]:
            del self._members[name]
        SPEND_CACHE_LEASED.set(1 if self.ready else 0)  # /metrics (kit/metrics.py)
        SPEND_CACHE_ANSWERS.set(len(self._answers))
        if self._conn is None:
            return
        if now - max(self._lease_from, self._connected_at) > _LOST_AFTER:
            self._lost("our own notifications stopped coming back")
            return
        self._hello()

    def _lost(self, reason: str) -> None:
        if self._conn is None:
            return
        log.warning("spend cache: stopped listening (%s); checks read the database", reason)
        self._close()
        self._retry_later()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._lease_from = -math.inf
        if conn is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._fd)
            conn.finish()
        self._invalidate(None)
        self._outbox.clear()
        self._command_done = True
        waiting = self._waiting + (self._barrier.waiters if self._barrier is not None else [])
        self._barrier, self._waiting = None, []
        _release(waiting, complete=False)  # they wait out the lease instead

    def _retry_later(self) -> None:
        if self._closed or self._loop is None:
            return
        delay, self._reconnect_delay = (
            self._reconnect_delay,
            min(self._reconnect_delay * 2, _RECONNECT_MAX),
        )
        self._loop.call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        if self._closed or self._conn is not None or self._loop is None:
            return
        task = self._loop.create_task(self._connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _release(waiting: list[asyncio.Future[bool]], complete: bool) -> None:
    for waiter in waiting:
        if not waiter.done():
            waiter.set_result(complete)


def _error(conn: PGconn) -> str:
    return conn.error_message.decode(errors="replace").strip() or "libpq error"


# --- the way in -------------------------------------------------------------------------------

_PREFIX = "/admin/v1/teams/"
_SUFFIX = "/spend-status"


class GatewayMiddleware:
    """The outermost ASGI layer: answers spend checks it can answer, and holds the response of
    each request that may have written until no process answers from before it (see the module
    docstring)."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state
        token = state.settings.admin_token
        self._token = token.encode() if token else None
        self._who = token  # the spend-check budget of the configured token (kit/ratelimit.py)
        limits: RateLimits = state.rate_limits
        self._budget = limits.spend_check if limits.enabled else None
        self._inline = spend_service.reads_inline(state.engine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "GET":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                try:
                    body = self._spend_check(scope, path[len(_PREFIX) : -len(_SUFFIX)])
                except (ServiceUnavailable, RateLimited) as error:
                    # Answered here: the route would try the database again (twice) on the loop.
                    await _send_json(
                        send, error.status_code, orjson.dumps(error.body()), error.headers
                    )
                    return
                if body is not None:
                    await _send_json(send, 200, body)
                    return
        cache: SpendCache | None = self.state.spend_cache
        if cache is None or method in ("HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        # A GET waits only if it wrote (reading a balance may settle a pending top-up); other
        # methods whenever they may have committed. Not listening ourselves is no excuse: sync()
        # then waits out the lease of the processes that are.
        wrote = watch_writes() if method == "GET" else None
        synced = False

        def must_sync(status: int) -> bool:
            return _may_have_written(status) and (wrote is None or wrote[0])

        async def send_when_synced(message: Message) -> None:
            nonlocal synced
            # The request's transaction is over (committed or rolled back) before its response
            # starts: wait until every process has seen that commit's notifications. Only when
            # something may have been committed: a success, or a declined top-up (402: the call
            # may first have settled an older pending purchase). Other errors roll the request
            # back, and a flood of them -- bad keys, unknown paths -- must not turn into
            # barriers across every process.
            if message["type"] == "http.response.start" and must_sync(message["status"]):
                synced = True
                await cache.sync()
            await send(message)

        try:
            await self.app(scope, receive, send_when_synced)
        except Exception:
            # An unexpected error after a commit (a flow that commits in steps): the 500 that
            # Starlette sends for it must not overtake the barrier either.
            if not synced and (wrote is None or wrote[0]):
                await cache.sync()
            raise

    def _spend_check(self, scope: Scope, team: str) -> bytes | None:
        if self._token is None or not self._inline or "/" in team:
            return None
        if not hmac.compare_digest(_bearer(scope), self._token):
            return None
        if self._budget is not None:  # one dict lookup and a few float operations
            wait = self._budget.take(self._who)
            if wait:
                raise too_many(wait)
        try:
            return spend_answer(self.state, uuid.UUID(team))
        except ServiceUnavailable:
            raise
        except Exception:  # the route answers it again, with the usual error body
            return None


async def _send_json(
    send: Send, status: int, body: bytes, extra: dict[str, str] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if extra:
        headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _may_have_written(status: int) -> bool:
    return status < 400 or status == 402


def _bearer(scope: Scope) -> bytes:
    headers: Any = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""
