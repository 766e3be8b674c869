"""Canceling usage events: ``POST /admin/v1/usage-events/cancel`` and ``billfold usage cancel``.

The platform reported usage it should not have (a failed request billed, a test key's traffic):
the operator cancels those events by their ids, and they stop counting everywhere -- analytics,
the invoice preview, the cycle's lines and spend, the spend check, the credit the cycle draws.
Only events of open billing cycles: a closed month is invoiced, and an invoice is not changed
after the fact (``cycle_closed``).

What a cancellation does, in one transaction:

1. finds the events (``not_found``: never ingested, compacted past the retention window, or of
   another team) and locks each month they fall in exclusively -- the period lock that ingestion
   takes shared and cycle close exclusively (invoicing/periods.py) -- so no ingestion batch of
   those months runs meanwhile and none can close; then reads the closed months;
2. checks that each team-day it touches still has all its raw events (they sum to its rollups by
   version, as the rollup rebuild checks: metering/rebuild.py); a day that does not (raw events
   compacted under a short retention window) cannot be recomputed, and its events are rejected
   alone (``raw_events_incomplete``);
3. marks the events ``canceled_at`` (the row stays: its id stays used, so sending the event again
   is a duplicate, as exactly-once requires) and records each in ``usage_cancellations``
   (append-only: what it took back, when, why);
4. takes their sums back from the rollups by version, the cycle lines and the cycles, through the
   same writer as ingestion, with negative sums: each event from its own line (its price version
   and its cluster, read from its property set as ingestion read it from its properties:
   metering.service.cluster_of); each line's amount is recomputed from its new quantity, the one
   rounding, so the cycle's spend moves by the difference; rows left with no events are deleted,
   as if the events had never come;
5. recomputes the rollups with properties of each touched team-day from its raw events, as the
   rebuild does -- rather than subtracting from them, because the groupable properties may have
   changed since the events were ingested, and only the raw events tell under which dimensions
   they are counted now.

An event canceled already is counted as such (``alreadyCanceled``); the same event twice in one
call gets the first one's answer once and ``alreadyCanceled`` (or the same rejection) for the
repeat: calling again changes nothing.

Credit that expired: a grant's expiry is booked once, with the credit that usage before its
expiry instant had drawn by then (ledger/service.py). Canceling such usage afterwards would hand
that expired credit back (the ledger is append-only, the expiry is not booked again). So an event
older than the expiry of a grant of its team, and ingested before that expiry was booked, is not
canceled (``credit_expired``; the operator adjusts with a credit grant instead). The team's
credit account is locked for the check, so no expiry is booked in between (expiries are booked
under that lock).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.cycles.models import BillingCycle, CycleLine
from billfold.cycles.periods import closed_months, lock_month_exclusive
from billfold.kit.clock import utc_now
from billfold.kit.errors import BadRequest, Conflict
from billfold.kit.money import Pico
from billfold.metering import rebuild
from billfold.metering.events import Properties, RatedEvent, cluster_of, echo_id, is_id, team_uuid
from billfold.metering.models import (
    VERSION_ROLLUPS_BY_WIDTH,
    UsageCancellation,
    UsageEvent,
    UsagePropertySet,
)
from billfold.metering.service import Rejection, metering_service
from billfold.metering.writers import sum_accepted
from billfold.pricing.models import PriceVersion


def _line_properties(cluster: str) -> Properties:
    """What the sums need of a canceled event's properties: only its line's cluster. The rollups
    with properties are recomputed, not summed (step 5)."""
    return ({}, "", b"", cluster)


@dataclass
class CancelResult:
    canceled: int = 0
    already_canceled: int = 0
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class _Stored:
    ts: datetime
    price_version_id: int
    quantity: int
    ingested_at: datetime
    canceled: bool
    property_set_id: uuid.UUID


EventKey = tuple[uuid.UUID, str]  # (team id, event id)


def _key_of(raw: Any) -> EventKey:
    """An item of the call: ``{"teamId", "eventId"}``; a ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("invalid_event", "an item must be an object with teamId and eventId")
    event_id, team_id = raw.get("eventId"), team_uuid(raw.get("teamId"))
    if not is_id(event_id):
        raise ValueError(
            "invalid_event_id",
            "eventId must be a string of 1 to 200 characters (no NUL characters)",
        )
    if team_id is None:
        raise ValueError("invalid_team_id", "teamId must be a team's UUID")
    return team_id, event_id


def _by_team(keys: Sequence[EventKey]) -> dict[uuid.UUID, list[str]]:
    """Event ids per team: each statement looks up one team's ids with one IN list (read in
    :func:`_pages` of 1,000). A thousand-way OR of (team, event) pairs cost PostgreSQL's planner
    a fraction of a second per statement."""
    teams: dict[uuid.UUID, list[str]] = defaultdict(list)
    for team_id, event_id in keys:
        teams[team_id].append(event_id)
    return teams


def _pages(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), 1_000):
        yield ids[start : start + 1_000]


def _stored(session: Session, keys: Sequence[EventKey]) -> dict[EventKey, _Stored]:
    e = UsageEvent
    found: dict[EventKey, _Stored] = {}
    for team_id, ids in sorted(_by_team(keys).items()):
        for page in _pages(ids):
            rows = session.execute(
                select(e.event_id, e.ts, e.price_version_id, e.quantity, e.ingested_at)
                .add_columns(e.canceled_at, e.property_set_id)
                .where(e.team_id == team_id, e.event_id.in_(page))
            )
            for event_id, ts, version_id, quantity, ingested_at, canceled_at, set_id in rows:
                found[(team_id, event_id)] = _Stored(
                    ts,
                    int(version_id),
                    int(quantity),
                    ingested_at,
                    canceled_at is not None,
                    set_id,
                )
    return found


def _clusters(session: Session, set_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The line cluster of each property set (once per set, not per event)."""
    ids = sorted(set_ids)
    clusters: dict[uuid.UUID, str] = {}
    for start in range(0, len(ids), 1_000):
        rows = session.execute(
            select(UsagePropertySet.id, UsagePropertySet.properties).where(
                UsagePropertySet.id.in_(ids[start : start + 1_000])
            )
        )
        for set_id, properties in rows:
            clusters[set_id] = cluster_of(properties)
    return clusters


class BookedExpiries(Protocol):
    """What the ledger knows of expired credit (implemented by ``ledger.service.LedgerService``;
    metering sits below the ledger, so it is handed in: billfold/wiring.py)."""

    def booked_expiries(
        self, session: Session, team_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[tuple[datetime, datetime]]]:
        """Per team, the (expiry instant, booked at) of each grant whose expiry is booked, with
        the team's credit account locked so that none is booked meanwhile."""
        ...


class CancellationService:
    def __init__(self) -> None:
        self._expiries: BookedExpiries | None = None

    def use(self, expiries: BookedExpiries) -> None:
        """Wire in the ledger's booked expiries (billfold/wiring.py does it for app and CLI)."""
        self._expiries = expiries

    @property
    def expiries(self) -> BookedExpiries:
        if self._expiries is None:
            raise RuntimeError("cancellation is not wired to the ledger: import billfold.wiring")
        return self._expiries

    def cancel(
        self, session: Session, settings: Settings, items: Sequence[Any], reason: str
    ) -> CancelResult:
        if len(items) > settings.max_batch_events:
            raise BadRequest(
                f"a call cancels at most {settings.max_batch_events} events",
                code="batch_too_large",
                field="events",
            )
        result = CancelResult()
        first: dict[EventKey, int] = {}  # each event's first index in the call
        repeats: list[tuple[int, EventKey]] = []
        for index, raw in enumerate(items):
            try:
                key = _key_of(raw)
            except ValueError as exc:
                code, error = exc.args
                event_id = raw.get("eventId") if isinstance(raw, dict) else None
                result.rejected.append(Rejection(index, echo_id(event_id), code, error))
                continue
            if key in first:
                repeats.append((index, key))
            else:
                first[key] = index
        if first:
            self._cancel(session, settings, first, reason, result)
        # A repeat gets the first occurrence's answer: the same rejection, or counted once.
        rejected = {r.index: r for r in result.rejected}
        for index, key in repeats:
            earlier = rejected.get(first[key])
            if earlier is None:
                result.already_canceled += 1
            else:
                result.rejected.append(Rejection(index, key[1], earlier.code, earlier.error))
        result.rejected.sort(key=lambda r: r.index)
        return result

    def _cancel(
        self,
        session: Session,
        settings: Settings,
        first: dict[EventKey, int],
        reason: str,
        result: CancelResult,
    ) -> None:
        def reject(key: EventKey, code: str, error: str) -> None:
            result.rejected.append(Rejection(first[key], key[1], code, error))

        # 1. The events, their months locked, then read again under the locks; the credit
        # accounts locked for the expiry check.
        keys = list(first)
        months = {(s.ts.year, s.ts.month) for s in _stored(session, keys).values()}
        for year, month in sorted(months):
            lock_month_exclusive(session, year, month)
        closed = closed_months(session)
        stored = _stored(session, keys)
        expiries = self.expiries.booked_expiries(session, sorted({k[0] for k in stored}))

        wanted: dict[EventKey, _Stored] = {}
        for key in keys:
            event = stored.get(key)
            if event is None or (event.ts.year, event.ts.month) not in months:
                reject(key, "not_found", "no such event of the team")
            elif event.canceled:
                result.already_canceled += 1
            elif (event.ts.year, event.ts.month) in closed:
                reject(key, "cycle_closed", f"{event.ts:%Y-%m} is a closed billing cycle: invoiced")
            elif any(
                event.ts < expired_at and event.ingested_at <= booked_at
                for expired_at, booked_at in expiries.get(key[0], ())
            ):
                reject(
                    key,
                    "credit_expired",
                    "a credit grant of the team expired after this usage and its expiry counted "
                    "the usage; canceling it would give expired credit back (adjust with a grant)",
                )
            else:
                wanted[key] = event

        # 2. Only team-days whose raw events are all there.
        days: dict[tuple[uuid.UUID, date], list[EventKey]] = defaultdict(list)
        for key, event in wanted.items():
            days[(key[0], event.ts.date())].append(key)
        for (team_id, day), day_keys in sorted(days.items()):
            check = rebuild.rebuild_day(session, settings, team_id, day, write=False)
            if check.version_mismatches:
                for key in day_keys:
                    del wanted[key]
                    reject(
                        key,
                        "raw_events_incomplete",
                        f"raw events of {day} were compacted; its usage can no longer be "
                        "recomputed without this event",
                    )
        days = {k: v for k, v in days.items() if all(key in wanted for key in v)}
        if not wanted:
            return

        # 3. Marked and recorded.
        now = utc_now()
        self._mark(session, list(wanted), now)
        session.execute(
            insert(UsageCancellation),
            [
                {
                    "team_id": team_id,
                    "event_id": event_id,
                    "ts": event.ts,
                    "price_version_id": event.price_version_id,
                    "quantity": event.quantity,
                    "reason": reason,
                    "canceled_at": now,
                }
                for (team_id, event_id), event in wanted.items()
            ],
        )

        # 4. Taken back from what billing reads.
        clusters = _clusters(session, {e.property_set_id for e in wanted.values()})
        properties = {cluster: _line_properties(cluster) for cluster in set(clusters.values())}
        rated: list[RatedEvent] = [
            (
                str(team_id),
                event_id,
                e.ts,
                "",
                e.quantity,
                e.price_version_id,
                properties[clusters[e.property_set_id]],
            )
            for (team_id, event_id), e in wanted.items()
        ]
        versions = {e.price_version_id for e in wanted.values()}
        prices = {
            int(version_id): Pico(int(price))
            for version_id, price in session.execute(
                select(PriceVersion.id, PriceVersion.unit_price_pico).where(
                    PriceVersion.id.in_(versions)
                )
            )
        }
        writer = metering_service.writer(session)
        sums = sum_accepted(rated).negated()
        metering_service.add_sums(session, writer, sums, prices, with_dims=False)
        self._drop_empty_rows(session, list(days))

        # 5. The rollups with properties, from the raw events left.
        for team_id, day in sorted(days):
            done = rebuild.rebuild_day(session, settings, team_id, day, write=True)
            if done.version_mismatches:  # compaction deleted some of the day's events meanwhile
                raise Conflict(
                    f"raw events of {day} were compacted while the cancellation ran; nothing "
                    "was canceled: try again",
                    code="raw_events_incomplete",
                )
        result.canceled = len(wanted)

    @staticmethod
    def _mark(session: Session, keys: list[EventKey], now: datetime) -> None:
        e = UsageEvent
        for team_id, ids in sorted(_by_team(keys).items()):
            for page in _pages(ids):
                session.execute(
                    update(e)
                    .where(e.team_id == team_id, e.event_id.in_(page))
                    .values(canceled_at=now)
                    .execution_options(synchronize_session=False)
                )

    @staticmethod
    def _drop_empty_rows(session: Session, days: list[tuple[uuid.UUID, date]]) -> None:
        """Rollups by version, cycle lines and open cycles left with no usage: gone, as if never
        written (an empty cycle would be closed into a $0 invoice, spending an invoice number)."""
        spans: dict[uuid.UUID, tuple[date, date]] = {}
        for team_id, day in days:
            lo, hi = spans.get(team_id, (day, day))
            spans[team_id] = (min(lo, day), max(hi, day))
        for team_id, (lo, hi) in sorted(spans.items()):
            start = datetime.combine(lo, time(), tzinfo=UTC)
            end = datetime.combine(hi, time(), tzinfo=UTC) + timedelta(days=1)
            for table in VERSION_ROLLUPS_BY_WIDTH.values():
                session.execute(
                    delete(table).where(
                        table.team_id == team_id,
                        table.bucket_start >= start,
                        table.bucket_start < end,
                        table.events == 0,
                    )
                )
            months = sorted({(d.year, d.month) for t, d in days if t == team_id})
            session.execute(
                delete(CycleLine).where(
                    CycleLine.team_id == team_id,
                    tuple_(CycleLine.year, CycleLine.month).in_(months),
                    CycleLine.events == 0,
                )
            )
            lines = (
                select(CycleLine.team_id)
                .where(
                    CycleLine.team_id == BillingCycle.team_id,
                    CycleLine.year == BillingCycle.year,
                    CycleLine.month == BillingCycle.month,
                )
                .exists()
            )
            session.execute(
                delete(BillingCycle).where(
                    BillingCycle.team_id == team_id,
                    tuple_(BillingCycle.year, BillingCycle.month).in_(months),
                    BillingCycle.closed_at.is_(None),
                    BillingCycle.spend_cents == 0,
                    ~lines,
                )
            )


cancellation_service = CancellationService()
