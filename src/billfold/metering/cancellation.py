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
4. takes their sums back from the rollups by version, the cycle lines (each line's amount
   recomputed from its new quantity, the one rounding, so the cycle's spend moves by the
   difference: metering/service.py) and the cycles, through the same writer as ingestion, with
   negative sums; rows left with no events are deleted, as if the events had never come;
5. recomputes the rollups with properties of each touched team-day from its raw events, as the
   rebuild does -- rather than subtracting from them, because the groupable properties may have
   changed since the events were ingested, and only the raw events tell under which dimensions
   they are counted now.

An event canceled already is counted as such (``alreadyCanceled``), the same event twice in one
call once: calling again changes nothing. Not revisited: a credit grant that expired before the
cancellation keeps the expiry it was booked with (the ledger is append-only); the usage it paid
for, now canceled, no longer draws on the credit left.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.invoicing.periods import closed_months, lock_month_exclusive
from billfold.kit.clock import utc_now
from billfold.kit.db import dialect_insert
from billfold.kit.errors import BadRequest
from billfold.metering import rebuild
from billfold.metering.models import (
    VERSION_ROLLUPS_BY_WIDTH,
    CycleLine,
    UsageCancellation,
    UsageEvent,
)
from billfold.metering.service import (
    MAX_ID_LENGTH,
    Properties,
    RatedEvent,
    Rejection,
    metering_service,
    sum_accepted,
)
from billfold.pricing.models import PriceVersion

MAX_REASON_LENGTH = 500
# The rollups with properties are recomputed, not summed: no properties needed.
_NO_PROPERTIES: Properties = ({}, "", b"")


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
    canceled: bool


EventKey = tuple[uuid.UUID, str]  # (team id, event id)


def _key_of(raw: Any) -> EventKey:
    """An item of the call: ``{"teamId", "eventId"}``; a ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("invalid_event", "an item must be an object with teamId and eventId")
    event_id, team = raw.get("eventId"), raw.get("teamId")
    if (
        not isinstance(event_id, str)
        or not 1 <= len(event_id) <= MAX_ID_LENGTH
        or "\x00" in event_id
    ):
        raise ValueError(
            "invalid_event_id",
            "eventId must be a string of 1 to 200 characters (no NUL characters)",
        )
    try:
        team_id = uuid.UUID(team) if isinstance(team, str) else None
    except ValueError:
        team_id = None
    if team_id is None:
        raise ValueError("invalid_team_id", "teamId must be a team's UUID")
    return team_id, event_id


def _stored(session: Session, keys: Sequence[EventKey]) -> dict[EventKey, _Stored]:
    e = UsageEvent
    found: dict[EventKey, _Stored] = {}
    for start in range(0, len(keys), 1_000):  # bounded statements
        page = keys[start : start + 1_000]
        rows = session.execute(
            select(
                e.team_id, e.event_id, e.ts, e.price_version_id, e.quantity, e.canceled_at
            ).where(tuple_(e.team_id, e.event_id).in_(page))
        )
        for team_id, event_id, ts, version_id, quantity, canceled_at in rows:
            found[(team_id, event_id)] = _Stored(
                ts, int(version_id), int(quantity), canceled_at is not None
            )
    return found


class CancellationService:
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
        for index, raw in enumerate(items):
            try:
                key = _key_of(raw)
            except ValueError as exc:
                code, error = exc.args
                event_id = raw.get("eventId") if isinstance(raw, dict) else None
                result.rejected.append(
                    Rejection(index, event_id if isinstance(event_id, str) else "", code, error)
                )
                continue
            if key in first:
                result.already_canceled += 1  # the same event twice in one call: once
            else:
                first[key] = index
        if not first:
            return result

        # 1. The events, their months locked, then read again under the locks.
        keys = sorted(first, key=lambda k: (k[1], str(k[0])))  # the events' key order
        months = {(s.ts.year, s.ts.month) for s in _stored(session, keys).values()}
        for year, month in sorted(months):
            lock_month_exclusive(session, year, month)
        closed = closed_months(session)
        stored = _stored(session, keys)

        wanted: dict[EventKey, _Stored] = {}
        for key in keys:
            event = stored.get(key)
            if event is None or (event.ts.year, event.ts.month) not in months:
                self._reject(result, first[key], key, "not_found", "no such event of the team")
            elif event.canceled:
                result.already_canceled += 1
            elif (event.ts.year, event.ts.month) in closed:
                self._reject(
                    result,
                    first[key],
                    key,
                    "cycle_closed",
                    f"{event.ts:%Y-%m} is a closed billing cycle: its usage is invoiced",
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
                    self._reject(
                        result,
                        first[key],
                        key,
                        "raw_events_incomplete",
                        f"raw events of {day} were compacted; its usage can no longer be "
                        "recomputed without this event",
                    )
        days = {k: v for k, v in days.items() if all(key in wanted for key in v)}
        result.rejected.sort(key=lambda r: r.index)
        if not wanted:
            return result

        # 3. Marked and recorded.
        now = utc_now()
        self._mark(session, list(wanted), now)
        session.execute(
            dialect_insert(session)(UsageCancellation),
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
        rated: list[RatedEvent] = [
            (str(team_id), event_id, e.ts, "", e.quantity, e.price_version_id, _NO_PROPERTIES)
            for (team_id, event_id), e in wanted.items()
        ]
        versions = {e.price_version_id for e in wanted.values()}
        prices = {
            int(version_id): int(price)
            for version_id, price in session.execute(
                select(PriceVersion.id, PriceVersion.unit_price_pico).where(
                    PriceVersion.id.in_(versions)
                )
            )
        }
        writer = metering_service.writer(session)
        sums = sum_accepted(rated).negated()
        metering_service.add_sums(session, writer, sums, prices, with_dims=False)
        self._drop_empty_rows(session, days)

        # 5. The rollups with properties, from the raw events left.
        for team_id, day in sorted(days):
            rebuild.rebuild_day(session, settings, team_id, day, write=True)
        result.canceled = len(wanted)
        return result

    @staticmethod
    def _reject(result: CancelResult, index: int, key: EventKey, code: str, error: str) -> None:
        result.rejected.append(Rejection(index, key[1], code, error))

    @staticmethod
    def _mark(session: Session, keys: list[EventKey], now: datetime) -> None:
        e = UsageEvent
        for start in range(0, len(keys), 1_000):
            session.execute(
                update(e)
                .where(tuple_(e.team_id, e.event_id).in_(keys[start : start + 1_000]))
                .values(canceled_at=now)
                .execution_options(synchronize_session=False)
            )

    @staticmethod
    def _drop_empty_rows(session: Session, days: dict[tuple[uuid.UUID, date], Any]) -> None:
        """Rollups by version and cycle lines left with no event: gone, as if never written."""
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
            session.execute(
                delete(CycleLine).where(
                    CycleLine.team_id == team_id,
                    tuple_(CycleLine.year, CycleLine.month).in_(
                        sorted({(d.year, d.month) for t, d in days if t == team_id})
                    ),
                    CycleLine.events == 0,
                )
            )


cancellation_service = CancellationService()
