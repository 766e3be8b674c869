"""Request budgets: in-process token buckets, one mechanism for every caller.

Kinds of budget (``BILLFOLD_RATE_LIMIT_*``, requests per minute, a burst up to the same number):

* ``key``: per management key, charged after the key authenticated;
* ``operator``: per operator token, after it was accepted;
* ``spend_check`` and ``ingest``: the operator token's own budgets on the spend check and on usage
  ingestion, so a gateway is never throttled by a dashboard (nor a dashboard by a gateway);
* ``bad_auth``: per client address, charged by every FAILED authentication (missing, malformed,
  unknown or revoked credentials). The key a failed request names is never charged. Once an
  address's budget is spent, its requests whose credentials this process has not seen succeed
  (:meth:`RateLimits.vouch`) are answered 429 before any database work; a key that did
  authenticate in this process keeps working from that address within its own budget.

Each process keeps its own buckets and enforces the FULL budget: with ``--workers N`` on H hosts a
caller spread over every process can get up to N x H times a budget (the kernel spreads
connections, so a busy client usually lands on several). Exact enough to stop a flood; not a
quota. No shared counter: the spend check is a hot path, and a round trip would cost more than it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from billfold.kit.errors import RateLimited

F = TypeVar("F", bound=Callable[..., Any])

_MAX_BUCKETS = 100_000  # per budget: past it, full buckets (idle for a minute) are dropped
_VOUCH_TTL = 300.0  # seconds a credential that authenticated stays vouched for
_MAX_VOUCHED = 10_000


class Budget:
    """``per_minute`` requests per identity, refilled continuously, bursting up to the same."""

    __slots__ = ("_buckets", "capacity", "rate")

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[Hashable, list[float]] = {}

    def take(self, who: Hashable) -> float:
        """Spend one request of ``who``'s budget: 0.0, or the seconds to wait when it is spent
        (then nothing is spent)."""
        now = time.monotonic()
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._prune(now)
            self._buckets[who] = [self.capacity - 1.0, now]
            return 0.0 if self.capacity >= 1.0 else math.inf
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate if self.rate > 0 else math.inf

    def wait(self, who: Hashable) -> float:
        """Like :meth:`take` without spending: 0.0 while ``who`` has budget left."""
        bucket = self._buckets.get(who)
        if bucket is None:
            return 0.0
        tokens = bucket[0] + (time.monotonic() - bucket[1]) * self.rate
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self.rate if self.rate > 0 else math.inf

    def _prune(self, now: float) -> None:
        full = [
            w
            for w, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate >= self.capacity
        ]
        for who in full:
            del self._buckets[who]
        if (
            len(self._buckets) >= _MAX_BUCKETS
        ):  # a flood from many identities: forget the older half
            for who in list(self._buckets)[: _MAX_BUCKETS // 2]:
                del self._buckets[who]


class RateLimits:
    """Every budget of one process (``app.state.rate_limits``)."""

    def __init__(
        self,
        *,
        enabled: bool,
        key: int,
        operator: int,
        spend_check: int,
        ingest: int,
        bad_auth: int,
    ) -> None:
        self.enabled = enabled
        self.key = Budget(key)
        self.operator = Budget(operator)
        self.spend_check = Budget(spend_check)
        self.ingest = Budget(ingest)
        self.bad_auth = Budget(bad_auth)
        self._vouched: dict[str, float] = {}

    def charge(self, budget: Budget, who: Hashable) -> None:
        """Spend one request of ``who``'s ``budget``, or raise 429."""
        if self.enabled:
            wait = budget.take(who)
            if wait:
                raise too_many(wait)

    def failed(self, address: str) -> None:
        """A failed authentication from ``address``: charged to the address."""
        if self.enabled:
            self.bad_auth.take(address)

    def screen(self, address: str, credential: str | None) -> None:
        """Before any database work: 429 when ``address`` has spent its bad-credential budget and
        ``credential`` is not one this process has seen authenticate."""
        if not self.enabled:
            return
        wait = self.bad_auth.wait(address)
        if wait and not self._is_vouched(credential):
            raise too_many(wait)

    def vouch(self, credential: str) -> None:
        """``credential`` authenticated: it passes :meth:`screen` for a while."""
        if not self.enabled:
            return
        if len(self._vouched) >= _MAX_VOUCHED:
            self._vouched.clear()
        self._vouched[credential] = time.monotonic() + _VOUCH_TTL

    def _is_vouched(self, credential: str | None) -> bool:
        if credential is None:
            return False
        until = self._vouched.get(credential)
        return until is not None and until > time.monotonic()


def too_many(wait: float) -> RateLimited:
    error = RateLimited(
        "too many requests; retry after the time in Retry-After", code="rate_limited"
    )
    error.headers = {"Retry-After": retry_after(wait)}
    return error


def retry_after(wait: float) -> str:
    """Whole seconds, rounded up, at least 1 (``Retry-After`` takes an integer)."""
    return str(max(1, math.ceil(wait))) if math.isfinite(wait) else "60"


def budget(name: str) -> Callable[[F], F]:
    """Mark an endpoint whose operator requests spend the operator token's ``name`` budget
    (``"ingest"``) instead of its general one."""

    def mark(endpoint: F) -> F:
        endpoint.__billfold_budget__ = name  # type: ignore[attr-defined]
        return endpoint

    return mark
