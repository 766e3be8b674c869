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

* *A write through Billfold's HTTP API* is answered only once **every** process has dropped
  what it changed: before the response starts, the writing process notifies a barrier
  (``sync:...``) after its commit, and waits until each other process listening on the
  database has acknowledged it. PostgreSQL delivers notifications in commit order, so a process
  that has seen the barrier has seen the write's notifications. Hence a check that follows the
  write's response -- the same client, or anyone it told, on any worker -- reads the new rows.
  (bench/spend_check.py checks exactly that under load: write, then check on a new connection.)
* *Other writes* -- the CLI, the scheduler's cycle close, a fix in psql -- are not waited for:
  each process drops the answer when the notification arrives (PostgreSQL signals every
  listening backend at commit; the benchmark prints the delay), and every answer from memory
  first reads whatever has already arrived on the socket.
* An answer is never kept from a read that a notification overtook (:attr:`SpendCache.epoch`).
* Processes know each other by ``hello`` messages every ``_HELLO_EVERY`` s, and a process keeps
  answers only once its first hello has come back to it: a barrier committed after that hello
  waits for it, and a write committed before it is in every read it makes afterwards, so no
  write can skip a process that answers from memory. One that does not acknowledge a barrier
  within ``_ACK_TIMEOUT`` is taken for gone (writes stop waiting for it until its next hello). A
  process whose own hellos stop coming back, or whose connection drops (PostgreSQL restarts),
  empties its cache and reads the database for every check until it listens again, then starts
  empty.
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
import os
import secrets
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billfold.invoicing.limits import SpendDecision
from billfold.invoicing.service import invoicing_service
from billfold.kit.clock import utc_now

log = logging.getLogger("billfold.spend_cache")

CHANNEL = b"billfold_spend"  # migration 0007's triggers notify here
_HELLO_EVERY = 2.0  # seconds between a process's hellos
_MEMBER_TTL = 3 * _HELLO_EVERY  # not heard of for this long: gone
_ACK_TIMEOUT = 1.0  # a sync waits this long for the other processes' acknowledgements
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


def spend_answer(state: State, team_id: uuid.UUID) -> bytes | None:
    """The check's response body: from this process's cache, or read (and cached).

    None when a grant's expiry is due: the ledger books it in a transaction first (the route
    does that in the thread pool). Raises what the read raises (unknown team, database down).
    """
    cache: SpendCache | None = state.spend_cache
    key = str(team_id)
    if cache is not None:
        body = cache.get(key, utc_now())
        if body is not None:
            return body
        epoch = cache.epoch
    snapshot = invoicing_service.spend_snapshot(state.engine, state.settings, team_id)
    if snapshot.decision is None:
        return None
    body = spend_status_json(snapshot.decision)
    if cache is not None:
        cache.put(key, body, snapshot.valid_from, snapshot.valid_until, epoch)
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
    waiters: list[asyncio.Future[None]]
    pending: set[str] | None = None


class SpendCache:
    """One process's spend-check answers and the connection that keeps them current.

    Used on the event loop only (the check runs there on PostgreSQL; the listener is a reader of
    that loop), so it takes no locks. ``get``/``put`` work whether or not it is listening: when it
    is not, ``get`` finds nothing and ``put`` keeps nothing.

    The channel ``billfold_spend`` carries, in commit order, the triggers' team ids and the
    caches' own messages (``kind:...``; a team id has no colon): ``hello:<process>`` every
    ``_HELLO_EVERY`` s (a process that has not said hello for ``_MEMBER_TTL`` s is gone; hearing
    our own proves the connection delivers), ``bye:<process>`` when one stops, and
    ``sync:<process>:<n>`` for :meth:`sync`. Acknowledgements go to the syncing process's own
    channel (its name).
    """

    def __init__(self, conninfo: bytes, size: int = 50_000) -> None:
        self._conninfo = conninfo
        self.size = size
        self._instants: dict[datetime, datetime] = {}
        self.name = f"billfold_cache_{os.getpid()}_{secrets.token_hex(4)}"
        self._answers: dict[str, _Answer] = {}
        self._epoch = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: PGconn | None = None
        self._fd = -1
        self._closed = False
        self._reconnect_delay = _RECONNECT_FIRST
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._members: dict[str, float] = {}  # the other processes -> when last heard of
        self._heard_myself = 0.0
        # Answers are kept only once our first hello has come back: every barrier committed after
        # it waits for us, and every write committed before it is in what we read afterwards.
        self._known = False
        # libpq runs one command at a time: the rest wait in the outbox.
        self._outbox: deque[bytes] = deque()
        self._command_done = True
        self._numbers = itertools.count(1)
        self._barrier: _Barrier | None = None
        self._waiting: list[asyncio.Future[None]] = []  # for the barrier after the current one

    # --- answers --------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._conn is not None

    @property
    def ready(self) -> bool:
        """Listening, and known to the other processes: answers are kept from now on."""
        return self._conn is not None and self._known

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
        answer = self._answers.get(team)
        if answer is None or not answer[1] <= now < answer[2]:
            return None
        return answer[0]

    def put(
        self, team: str, body: bytes, valid_from: datetime, valid_until: datetime, epoch: int
    ) -> None:
        if self._conn is None or not self._known or epoch != self._epoch:
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
        """Return once every process listening on this database -- this one included -- has
        received every notification committed before this call (so dropped what it changed)."""
        if self._conn is None or self._loop is None:
            return  # not listening: nothing is answered from memory here
        waiter = self._loop.create_future()
        self._waiting.append(waiter)
        self._start_barrier()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), 2 * _ACK_TIMEOUT)
        except TimeoutError:
            self._lost("a sync got no answer in time")

    def _start_barrier(self) -> None:
        if self._conn is None or self._barrier is not None or not self._waiting:
            return
        assert self._loop is not None
        number = next(self._numbers)
        self._barrier = _Barrier(number, self._waiting)
        self._waiting = []
        self._send(b"NOTIFY %s, 'sync:%s:%d'" % (CHANNEL, self.name.encode(), number))
        self._loop.call_later(_ACK_TIMEOUT, self._barrier_timed_out, number)

    def _end_barrier(self) -> None:
        barrier, self._barrier = self._barrier, None
        if barrier is not None:
            _release(barrier.waiters)
        self._start_barrier()

    def _barrier_timed_out(self, number: int) -> None:
        barrier = self._barrier
        if barrier is None or barrier.number != number:
            return
        if barrier.pending is None:  # our own message did not come back: we are not listening
            self._lost("a sync did not come back in time")
            return
        # Those that did not answer are stuck or gone; a stuck one drops its own answers when it
        # stops hearing its hellos (_tick). Writes stop waiting for them until they say hello.
        log.warning("spend cache: no answer from %s; writes stop waiting for them", barrier.pending)
        for name in barrier.pending:
            self._members.pop(name, None)
        self._end_barrier()

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
                self._conn.send_query(b"NOTIFY %s, 'bye:%s'" % (CHANNEL, self.name.encode()))
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
        self._heard_myself = self._loop.time()
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
        self._send(b"NOTIFY %s, 'hello:%s'" % (CHANNEL, self.name.encode()))

    def _send(self, command: bytes) -> None:
        self._outbox.append(command)
        self._send_next()

    def _send_next(self) -> None:
        conn = self._conn
        if conn is None or not self._command_done or not self._outbox:
            return
        try:
            conn.send_query(self._outbox.popleft())
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
                elif result.status != pq.ExecStatus.COMMAND_OK:
                    raise _Lost(_error(conn))
            while (notification := conn.notifies()) is not None:
                self._notified(notification.relname, notification.extra)
        except (psycopg.OperationalError, _Lost) as failure:
            self._lost(str(failure))
            return
        self._send_next()

    def _notified(self, channel: bytes, payload: bytes) -> None:
        assert self._loop is not None
        if channel != CHANNEL:  # our own channel: an acknowledgement "ack:<n>:<process>"
            _, number, name = payload.decode().split(":", 2)
            barrier = self._barrier
            if (
                barrier is not None
                and barrier.pending is not None
                and int(number) == barrier.number
            ):
                barrier.pending.discard(name)
                if not barrier.pending:
                    self._end_barrier()
            return
        if b":" not in payload:
            self._invalidate(None if payload == b"*" else payload.decode())
            return
        kind, _, rest = payload.decode().partition(":")
        if kind == "sync":
            name, _, number = rest.rpartition(":")
            if name != self.name:
                # Everything committed before that barrier has reached us: say so.
                self._members[name] = self._loop.time()
                self._send(
                    b"NOTIFY %s, 'ack:%s:%s'" % (name.encode(), number.encode(), self.name.encode())
                )
            elif self._barrier is not None and int(number) == self._barrier.number:
                self._barrier.pending = self.members
                if not self._barrier.pending:
                    self._end_barrier()
        elif kind == "hello":
            if rest == self.name:
                self._heard_myself = self._loop.time()
                self._known = True
            else:
                self._members[rest] = self._loop.time()
        elif kind == "bye":
            self._members.pop(rest, None)
            barrier = self._barrier
            if barrier is not None and barrier.pending is not None:
                barrier.pending.discard(rest)
                if not barrier.pending:
                    self._end_barrier()

    def _tick(self) -> None:
        """Every _HELLO_EVERY s: say hello; and stop trusting a connection that stopped
        delivering (our own hellos do not come back)."""
        assert self._loop is not None
        self._timer = self._loop.call_later(_HELLO_EVERY, self._tick)
        if self._conn is None:
            return
        if self._loop.time() - self._heard_myself > _MEMBER_TTL:
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
        self._known = False
        if conn is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._fd)
            conn.finish()
        self._invalidate(None)
        self._outbox.clear()
        self._command_done = True
        waiting = self._waiting + (self._barrier.waiters if self._barrier is not None else [])
        self._barrier, self._waiting = None, []
        _release(waiting)  # nothing is answered from memory here now: they need not wait

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


def _release(waiting: list[asyncio.Future[None]]) -> None:
    for waiter in waiting:
        if not waiter.done():
            waiter.set_result(None)


def _error(conn: PGconn) -> str:
    return conn.error_message.decode(errors="replace").strip() or "libpq error"


# --- the way in -------------------------------------------------------------------------------

_PREFIX = "/admin/v1/teams/"
_SUFFIX = "/spend-status"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class GatewayMiddleware:
    """The outermost ASGI layer: answers spend checks it can answer (see the module docstring)
    and holds each write request's response until this process's cache is in sync."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state
        token = state.settings.admin_token
        self._token = token.encode() if token else None
        self._inline = invoicing_service.reads_inline(state.engine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "GET":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                body = self._spend_check(scope, path[len(_PREFIX) : -len(_SUFFIX)])
                if body is not None:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", b"%d" % len(body)),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
            await self.app(scope, receive, send)
            return
        cache: SpendCache | None = self.state.spend_cache
        if method in _SAFE_METHODS or cache is None or not cache.listening:
            await self.app(scope, receive, send)
            return

        async def send_when_synced(message: Message) -> None:
            # The request's transaction is over (committed or rolled back) before its response
            # starts: wait until every process has seen that commit's notifications. Only when
            # something may have been committed: a success, or a declined top-up (402: the call
            # may first have settled an older pending purchase). Other errors roll the request
            # back, and a flood of them -- bad keys, unknown paths -- must not turn into
            # barriers across every process.
            if message["type"] == "http.response.start" and _may_have_written(message["status"]):
                await cache.sync()
            await send(message)

        await self.app(scope, receive, send_when_synced)

    def _spend_check(self, scope: Scope, team: str) -> bytes | None:
        if self._token is None or not self._inline or "/" in team:
            return None
        if not hmac.compare_digest(_bearer(scope), self._token):
            return None
        try:
            return spend_answer(self.state, uuid.UUID(team))
        except Exception:  # the route answers it again, with the usual error body
            return None


def _may_have_written(status: int) -> bool:
    return status < 400 or status == 402


def _bearer(scope: Scope) -> bytes:
    headers: Any = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""
