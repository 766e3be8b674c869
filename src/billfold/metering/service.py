"""Usage ingestion: validate, de-duplicate, rate, and accrue -- one transaction per batch.

A batch is processed so that concurrent ingesters never lose an update nor deadlock:

1. every event is validated alone; a bad one is rejected with its index and reason;
2. the months the batch touches are locked shared (cycle close locks them exclusively) and the
   closed months are read after that, so no event lands in a month being closed;
3. the batch's property sets not stored yet are added, in id order (``usage_property_sets``:
   one row per distinct combination of properties, its id the digest of their canonical JSON,
   :func:`property_set_id`); then the events are inserted in key order. The primary key
   ``(event_id, team_id)`` decides exactly-once, also between two ingesters sending the same
   event at the same moment (the second waits for the first's commit). On PostgreSQL a binary
   ``COPY`` inserts the whole batch in a savepoint, and only if an event is stored already does
   ``INSERT ... ON CONFLICT DO NOTHING`` sort it out (:meth:`PostgresWriter.insert_events`);
   elsewhere that statement always does, and the keys that come back are the accepted ones;
4. the six rollup tables, cycle lines and billing cycles are upserted in key order (so row locks
   are always taken in the same order: property sets; events; rollups and rollups by version per
   quarter hour, then per hour, then per day; lines (per team, month, price version and cluster:
   :func:`cluster_of`); cycles; each sorted by key), and each touched line's rounded amount is
   recomputed from its new quantity. Rollups by version are the
   rollups summed over their property dimensions, the hourly and daily ones the same summed per
   UTC hour and day (metering/models.py), all computed from the same sums and written in the
   same transaction, so the tables always agree.

Accepted means durable: the request's transaction commits before the response is sent.

Everything up to the writes -- validation, rating, de-duplication inside the batch, sorting, and
summing the accepted events into rollup and line deltas -- is one code path.
The writes have two implementations of the same statements (``tests/metering/test_ingest_paths.py``
checks that they agree on every outcome and every stored row):

* :class:`PostgresWriter` copies the events in PostgreSQL's binary COPY format (formatted by
  psycopg's C code), and sends each other table's rows as ONE JSONB array parameter, unpacked by
  ``jsonb_array_elements`` in one statement per table (the property sets' as one json array,
  which keeps their text: migration 0011). Binding rows one by one through SQLAlchemy
  (type processors, ``json.dumps``, insertmanyvalues pages) cost far more CPU than PostgreSQL's own
  work; one orjson document costs ~1 us per event, and PostgreSQL parses it in C.
* :class:`CoreWriter`: SQLAlchemy Core executemany, for SQLite (and any other database).

Why the per-event Python code looks the way it does: at ~170,000 events/s on two cores, one event
gets ~12 us of CPU for everything -- HTTP, JSON, validation, and PostgreSQL's own work
(bench/results/ingest.md). So the usual event takes a short path through validation
(:meth:`EventParser.parse`), events travel as plain tuples (a NamedTuple or dataclass costs 3x to
build), a team id string is parsed to a UUID once per batch, a combination of property values is
validated and turned into rollup dimensions and its property set id once per batch, price versions
are found with a bisect over a list built once per SKU, repeats inside the batch are found by the
sort that orders the inserts, rollups are summed in a dict before one upsert (and the rollups by
version and the lines are summed from those sums, not from the events again), and the cyclic
garbage collector is paused while a batch runs (:func:`cyclic_gc_paused`).
"""

from __future__ import annotations

import bisect
import gc
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from operator import itemgetter, ne
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.cycles.periods import closed_months, lock_months_shared
from billfold.figures.watch import watch
from billfold.kit.audit import note
from billfold.kit.clock import utc_now
from billfold.kit.db import is_postgres
from billfold.kit.errors import BadRequest
from billfold.kit.metrics import USAGE_EVENTS, count_at_commit
from billfold.kit.money import Pico, round_to_cents
from billfold.metering.events import (
    MAX_EVENT_COST,
    EventParser,
    ParsedEvent,
    RatedEvent,
    _Invalid,
    echo_id,
)
from billfold.metering.models import (
    ROLLUP_WIDTHS,
)
from billfold.metering.schemas import WireEvent
from billfold.metering.writers import (
    BatchSums,
    CoreWriter,
    CycleKey,
    LineKey,
    PostgresWriter,
    Writer,
    sum_accepted,
)
from billfold.pricing.models import PriceVersion
from billfold.pricing.service import pricing_service
from billfold.teams.models import Team


@dataclass
class Rejection:
    index: int
    event_id: str
    code: str
    error: str

    def as_wire(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "eventId": self.event_id,
            "code": self.code,
            "error": self.error,
        }


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)


# --- what a batch adds to the aggregates ---------------------------------------------------------


# --- the writes ---------------------------------------------------------------------------------


# --- the service --------------------------------------------------------------------------------


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch is processed.

    A 10,000-event batch allocates ~100,000 containers (the request's parsed JSON, the tuples
    here) that all die by reference counting when the request ends. With the collector on, every
    700 allocations start a collection that traverses the young ones, and now and then a full one
    traverses the whole heap of the process: measured in a server under load, ~35% of its CPU
    went to collections that found nothing to free. Those objects form no reference cycles, so
    pausing loses nothing; whatever cycles other code (or another thread) creates meanwhile are
    collected once the collector is on again.

    With concurrent batches (threads): the one that found the collector on turns it back on when
    it ends, even if others still run (they just pay for collections as before) -- so it is off
    only while a batch that paused it runs, never left off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_ACCEPTED, _DUPLICATE, _REJECTED = (
    USAGE_EVENTS.labels(outcome) for outcome in ("accepted", "duplicate", "rejected")
)


class MeteringService:
    def __init__(self, *, postgres_writer: bool = True) -> None:
        """``postgres_writer=False`` uses the generic writer on PostgreSQL too (the tests that
        compare the two)."""
        self._core = CoreWriter()
        self._postgres = PostgresWriter() if postgres_writer else None

    def writer(self, session: Session) -> Writer:
        # PostgresWriter's statements use psycopg 3's parameter syntax (Billfold's driver for
        # PostgreSQL); an operator's explicit other driver gets the generic writer.
        if (
            self._postgres is not None
            and is_postgres(session)
            and session.get_bind().dialect.driver == "psycopg"
        ):
            return self._postgres
        return self._core

    def ingest(
        self, session: Session, settings: Settings, raw_events: Sequence[Any]
    ) -> IngestResult:
        if len(raw_events) > settings.max_batch_events:
            raise BadRequest(
                f"a batch holds at most {settings.max_batch_events} events",
                code="batch_too_large",
                field="events",
            )
        note(session, events=len(raw_events))  # the audit trail's summary of the batch: a count
        with cyclic_gc_paused():
            result = self._ingest(session, settings, raw_events)
        # /metrics: counted when the batch commits (kit/metrics.py), never for a rolled-back one
        count_at_commit(session, _ACCEPTED, result.accepted)
        count_at_commit(session, _DUPLICATE, result.duplicates)
        count_at_commit(session, _REJECTED, len(result.rejected))
        return result

    def _ingest(
        self, session: Session, settings: Settings, raw_events: Sequence[Any]
    ) -> IngestResult:
        result = IngestResult()
        now = utc_now()
        oldest = now - timedelta(days=settings.usage_retention_days)
        newest = now + timedelta(minutes=settings.future_tolerance_minutes)
        parser = EventParser(settings.groupable())
        parse = parser.parse
        parsed: list[ParsedEvent] = []
        for index, raw in enumerate(raw_events):
            try:
                event = parse(index, raw)
                if not oldest <= event[5] <= newest:
                    if event[5] > newest:
                        raise _Invalid("timestamp_in_future", "timestamp is in the future")
                    raise _Invalid(
                        "timestamp_too_old",
                        f"timestamp is older than the {settings.usage_retention_days}-day window",
                    )
                parsed.append(event)
            except _Invalid as exc:
                event_id = (
                    raw.eventId
                    if type(raw) is WireEvent
                    else raw.get("eventId")
                    if isinstance(raw, dict)
                    else None
                )
                result.rejected.append(Rejection(index, echo_id(event_id), exc.code, exc.error))
        if not parsed:
            return result

        lock_months_shared(session, {(e[5].year, e[5].month) for e in parsed})
        closed = closed_months(session)
        known_teams = {
            str(team_id)
            for team_id in session.scalars(
                select(Team.id).where(Team.id.in_(list(parser.team_ids.values())))
            )
        }
        book = pricing_service.book_for(session, {e[3] for e in parsed}).versions
        rated = self._rate(parsed, book, known_teams, closed, result.rejected)
        result.rejected.sort(key=lambda r: r.index)
        if not rated:
            return result

        # Key order (event id, team): the order of the events' primary key, and so the lock order
        # (see the module docstring). Python compares str by code point, which is the key's byte
        # order (UTF-8; the "C" collation on PostgreSQL, BINARY on SQLite). Two stable sorts,
        # not one by an (event id, team) tuple: 2.5x cheaper, and the first is a single pass
        # when the batch has one team. Stable, so repeats of an event inside the batch follow its
        # first occurrence, which is the one kept.
        rated.sort(key=itemgetter(0))
        rated.sort(key=itemgetter(1))
        unique = self._first_occurrences(rated)
        result.duplicates = len(rated) - len(unique)

        writer = self.writer(session)
        # The events' property sets first (by id: see Writer), then the events.
        sets = {e[6][2]: e[6] for e in unique}
        writer.add_property_sets(session, sorted(sets.items(), key=itemgetter(0)))
        not_inserted = writer.insert_events(session, unique, now)
        accepted = (
            [e for i, e in enumerate(unique) if i not in not_inserted] if not_inserted else unique
        )
        result.accepted = len(accepted)
        result.duplicates += len(not_inserted)
        if accepted:
            prices = {v.id: v.unit_price_pico for versions in book.values() for v in versions}
            self._accrue(session, writer, accepted, prices)
        return result

    @staticmethod
    def _rate(
        parsed: list[ParsedEvent],
        book: dict[str, list[PriceVersion]],
        known_teams: set[str],
        closed: set[tuple[int, int]],
        rejected: list[Rejection],
    ) -> list[RatedEvent]:
        """Each event with the price version in force at its time; events of unknown teams or
        SKUs, or in closed months, are rejected."""
        # sku -> (effective_from of each version, their ids), both in time order
        versions = {
            sku: (
                [v.effective_from for v in vs],
                [v.id for v in vs],
                [v.unit_price_pico for v in vs],
            )
            for sku, vs in book.items()
        }
        no_versions: tuple[list[datetime], list[int], list[int]] = ([], [], [])
        rated: list[RatedEvent] = []
        append = rated.append
        for index, team_key, event_id, sku, quantity, ts, properties in parsed:
            if team_key not in known_teams:
                code, error = "unknown_team", f"team {team_key} does not exist"
            elif closed and (ts.year, ts.month) in closed:
                code, error = "cycle_closed", f"{ts:%Y-%m} is a closed billing cycle"
            else:
                starts, ids, unit_prices = versions.get(sku, no_versions)
                position = bisect.bisect_right(starts, ts) - 1
                if position < 0:
                    code = "unknown_sku"
                    error = f"no price for sku {sku!r} at {ts:%Y-%m-%dT%H:%M:%SZ}"
                elif quantity * unit_prices[position] > MAX_EVENT_COST:
                    code = "amount_too_large"
                    error = "the event costs more than $100,000,000,000; split it"
                else:
                    append((team_key, event_id, ts, sku, quantity, ids[position], properties))
                    continue
            rejected.append(Rejection(index, event_id, code, error))
        return rated

    @staticmethod
    def _first_occurrences(events: list[RatedEvent]) -> list[RatedEvent]:
        """The events sorted by key without repeats (each key's first occurrence)."""
        keys = list(map(itemgetter(0, 1), events))
        if all(map(ne, keys, islice(keys, 1, None))):  # the usual case, checked at C speed
            return events
        unique: list[RatedEvent] = []
        previous_team = previous_id = ""
        for event in events:
            if event[1] == previous_id and event[0] == previous_team:
                continue  # the same event twice in one batch: counted once
            previous_team, previous_id = event[0], event[1]
            unique.append(event)
        return unique

    @staticmethod
    def _accrue(
        session: Session,
        writer: Writer,
        events: list[RatedEvent],
        prices: dict[int, Pico],
    ) -> None:
        MeteringService.add_sums(session, writer, sum_accepted(events), prices)

    @staticmethod
    def add_sums(
        session: Session,
        writer: Writer,
        sums: BatchSums,
        prices: dict[int, Pico],
        *,
        with_dims: bool = True,
    ) -> None:
        """Add a batch's sums to the aggregate tables -- negative ones take usage back (the
        cancellation, metering/cancellation.py, which rebuilds the rollups with properties
        instead: ``with_dims=False``). ``prices``: unit price (pico-dollars) by price version."""
        # The tables in the lock order of the module docstring, each in key order.
        for width in ROLLUP_WIDTHS:
            rollups, by_version = sums.rollups[width], sums.version_rollups[width]
            if with_dims:
                writer.add_to_rollups(
                    session, sorted(rollups.items(), key=itemgetter(0)), width=width
                )
            writer.add_to_version_rollups(
                session, sorted(by_version.items(), key=itemgetter(0)), width=width
            )

        sorted_lines = sorted(sums.lines.items(), key=itemgetter(0))
        new_quantities = writer.add_to_lines(session, sorted_lines)
        # A line's amount is the ONE rounding of its exact total (kit.money.round_to_cents), so it
        # is recomputed from the new quantity, never summed from rounded pieces; the cycle's spend
        # moves by the difference, so it stays the sum of its lines' amounts.
        amounts: list[tuple[LineKey, int]] = []
        spend: dict[CycleKey, int] = {}
        for key, (quantity, _) in sorted_lines:
            team, year, month, version_id, _ = key
            price = prices[version_id]
            new_quantity = new_quantities[key]
            old_amount = round_to_cents((new_quantity - quantity) * price)
            new_amount = round_to_cents(new_quantity * price)
            if new_amount != old_amount:
                amounts.append((key, new_amount))
            cycle = (team, year, month)
            spend[cycle] = spend.get(cycle, 0) + new_amount - old_amount
        if amounts:
            writer.set_line_amounts(session, amounts)
        # Every touched cycle is upserted, also with a zero delta: a cycle row exists once the
        # team has usage in that month.
        writer.add_to_cycles(session, sorted(spend.items(), key=itemgetter(0)))
        # The figure watch hears of each cycle's spend delta (per cycle, not per event); the
        # crossing events and the listeners of lowered credit run on them before the commit.
        moved = [
            (team, year, month, delta) for (team, year, month), delta in spend.items() if delta
        ]
        if moved:
            team_ids = {team: uuid.UUID(team) for team, _, _, _ in moved}
            watch.spend_added(
                session,
                [(team_ids[team], year, month, delta) for team, year, month, delta in moved],
            )


metering_service = MeteringService()
