"""Usage ingestion: validate, de-duplicate, rate, and accrue -- one transaction per batch.

A batch is processed so that concurrent ingesters never lose an update nor deadlock:

1. every event is validated alone; a bad one is rejected with its index and reason;
2. the months the batch touches are locked shared (cycle close locks them exclusively) and the
   closed months are read after that, so no event lands in a month being closed;
3. events are inserted in key order with ``ON CONFLICT DO NOTHING``; the keys that come back are the
   accepted ones -- the primary key ``(team_id, event_id)`` decides exactly-once, also between two
   ingesters sending the same event at the same moment (the second waits for the first's commit);
4. rollups, cycle lines and billing cycles are upserted in key order (so row locks are always taken
   in the same order), and each touched line's rounded amount is recomputed from its new quantity.

Accepted means durable: the request's transaction commits before the response is sent.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.invoicing.models import BillingCycle
from billfold.invoicing.periods import closed_months, lock_months_shared
from billfold.kit.clock import utc_now
from billfold.kit.db import dialect_insert
from billfold.kit.errors import BadRequest
from billfold.kit.money import Pico, round_to_cents
from billfold.metering.models import CycleLine, UsageEvent, UsageRollup
from billfold.pricing.models import PriceVersion
from billfold.pricing.service import pricing_service
from billfold.teams.models import Team

BUCKET = timedelta(minutes=15)
MAX_QUANTITY = 10**15
MAX_PROPERTIES = 32
MAX_PROPERTY_LENGTH = 200


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


@dataclass(frozen=True)
class ParsedEvent:
    index: int
    team_id: uuid.UUID
    event_id: str
    sku: str
    quantity: int
    ts: datetime
    properties: dict[str, Any]


class _Invalid(Exception):
    def __init__(self, code: str, error: str) -> None:
        self.code = code
        self.error = error


def bucket_of(ts: datetime) -> datetime:
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


def dims_key(dims: dict[str, str]) -> str:
    return json.dumps(dims, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_quantity(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid("invalid_quantity", "quantity must be a whole number of units")
    if isinstance(value, int):
        quantity = value
    elif isinstance(value, str) and value.strip().isascii():
        text = value.strip()
        whole, dot, fraction = text.partition(".")
        if not whole.isdigit() or (dot and fraction.strip("0")) or (dot and not fraction.isdigit()):
            raise _Invalid(
                "invalid_quantity",
                'quantity must be a non-negative whole number of units, e.g. "1200" '
                "(prices are per smallest unit)",
            )
        quantity = int(whole)
    elif isinstance(value, float) and value.is_integer():
        quantity = int(value)
    else:
        raise _Invalid("invalid_quantity", "quantity must be a non-negative whole number of units")
    if quantity < 0:
        raise _Invalid("invalid_quantity", "quantity must not be negative")
    if quantity > MAX_QUANTITY:
        raise _Invalid("invalid_quantity", f"quantity exceeds {MAX_QUANTITY} units per event")
    return quantity


def parse_timestamp(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise _Invalid("invalid_timestamp", "timestamp must be an RFC 3339 string with a zone")
    text = value.strip()
    try:
        ts = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise _Invalid("invalid_timestamp", f"timestamp {value!r} is not RFC 3339") from None
    if ts.tzinfo is None:
        raise _Invalid("invalid_timestamp", "timestamp needs a zone, e.g. 2026-11-24T10:00:00Z")
    return ts.astimezone(UTC)


def parse_event(index: int, raw: Any) -> ParsedEvent:
    if not isinstance(raw, dict):
        raise _Invalid("invalid_event", "an event must be a JSON object")
    event_id = raw.get("eventId")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 200:
        raise _Invalid("invalid_event_id", "eventId must be a string of 1 to 200 characters")
    team = raw.get("teamId")
    try:
        team_id = uuid.UUID(team) if isinstance(team, str) else None
    except ValueError:
        team_id = None
    if team_id is None:
        raise _Invalid("invalid_team_id", "teamId must be a team's UUID")
    sku = raw.get("sku")
    if not isinstance(sku, str) or not 1 <= len(sku) <= 200:
        raise _Invalid("invalid_sku", "sku must be a string of 1 to 200 characters")
    if "quantity" not in raw:
        raise _Invalid("invalid_quantity", "quantity is required")
    quantity = parse_quantity(raw["quantity"])
    ts = parse_timestamp(raw.get("timestamp"))
    properties = raw.get("properties") or {}
    if not isinstance(properties, dict) or len(properties) > MAX_PROPERTIES:
        raise _Invalid(
            "invalid_properties", f"properties must be an object of at most {MAX_PROPERTIES} keys"
        )
    for key, value in properties.items():
        if not isinstance(value, str | int | float | bool) or value is None:
            raise _Invalid("invalid_properties", f"property {key!r} must be a string or number")
        if len(key) > 64 or len(str(value)) > MAX_PROPERTY_LENGTH:
            raise _Invalid(
                "invalid_properties",
                f"property {key[:64]!r} is longer than {MAX_PROPERTY_LENGTH} characters",
            )
    return ParsedEvent(index, team_id, event_id, sku, quantity, ts, properties)


class MeteringService:
    def ingest(
        self, session: Session, settings: Settings, raw_events: Sequence[Any]
    ) -> IngestResult:
        if len(raw_events) > settings.max_batch_events:
            raise BadRequest(
                f"a batch holds at most {settings.max_batch_events} events",
                code="batch_too_large",
                field="events",
            )
        result = IngestResult()
        now = utc_now()
        oldest = now - timedelta(days=settings.usage_retention_days)
        newest = now + timedelta(minutes=settings.future_tolerance_minutes)
        parsed: list[ParsedEvent] = []
        for index, raw in enumerate(raw_events):
            try:
                event = parse_event(index, raw)
                if event.ts > newest:
                    raise _Invalid("timestamp_in_future", "timestamp is in the future")
                if event.ts < oldest:
                    raise _Invalid(
                        "timestamp_too_old",
                        f"timestamp is older than the {settings.usage_retention_days}-day window",
                    )
                parsed.append(event)
            except _Invalid as exc:
                event_id = raw.get("eventId") if isinstance(raw, dict) else None
                result.rejected.append(
                    Rejection(
                        index, event_id if isinstance(event_id, str) else "", exc.code, exc.error
                    )
                )
        if not parsed:
            return result

        lock_months_shared(session, {(e.ts.year, e.ts.month) for e in parsed})
        closed = closed_months(session)
        known_teams = set(
            session.scalars(select(Team.id).where(Team.id.in_({e.team_id for e in parsed})))
        )
        book = pricing_service.book_for(session, (e.sku for e in parsed))
        groupable = settings.groupable()

        rows: list[dict[str, Any]] = []
        rated: dict[tuple[uuid.UUID, str], tuple[ParsedEvent, PriceVersion]] = {}
        for event in parsed:
            reason: tuple[str, str] | None = None
            version = None
            if event.team_id not in known_teams:
                reason = ("unknown_team", f"team {event.team_id} does not exist")
            elif (event.ts.year, event.ts.month) in closed:
                reason = ("cycle_closed", f"{event.ts:%Y-%m} is a closed billing cycle")
            else:
                version = book.version_at(event.sku, event.ts)
                if version is None:
                    reason = (
                        "unknown_sku",
                        f"no price for sku {event.sku!r} at {event.ts:%Y-%m-%dT%H:%M:%SZ}",
                    )
            if reason is not None or version is None:
                code, error = reason or ("unknown_sku", "no price")
                result.rejected.append(Rejection(event.index, event.event_id, code, error))
                continue
            key = (event.team_id, event.event_id)
            if key in rated:  # the same event twice in one batch: counted once
                result.duplicates += 1
                continue
            rated[key] = (event, version)
            rows.append(
                {
                    "team_id": event.team_id,
                    "event_id": event.event_id,
                    "ts": event.ts,
                    "sku": event.sku,
                    "quantity": event.quantity,
                    "price_version_id": version.id,
                    "properties": event.properties,
                    "ingested_at": now,
                }
            )
        result.rejected.sort(key=lambda r: r.index)
        if not rows:
            return result

        rows.sort(key=lambda r: (str(r["team_id"]), r["event_id"]))
        insert = dialect_insert(session)
        stmt = (
            insert(UsageEvent)
            .on_conflict_do_nothing(index_elements=["team_id", "event_id"])
            .returning(UsageEvent.team_id, UsageEvent.event_id)
        )
        inserted = {(r[0], r[1]) for r in session.execute(stmt, rows)}
        result.accepted = len(inserted)
        result.duplicates += len(rows) - len(inserted)
        if inserted:
            self._accrue(session, [rated[k] for k in inserted], groupable)
        return result

    def _accrue(
        self,
        session: Session,
        events: list[tuple[ParsedEvent, PriceVersion]],
        groupable: tuple[str, ...],
    ) -> None:
        insert = dialect_insert(session)
        rollups: dict[tuple[uuid.UUID, datetime, int, str], list[Any]] = {}
        lines: dict[tuple[uuid.UUID, int, int, int], list[int]] = defaultdict(lambda: [0, 0])
        prices: dict[int, PriceVersion] = {}
        for event, version in events:
            dims = {p: str(event.properties[p]) for p in groupable if p in event.properties}
            dkey = dims_key(dims)
            rkey = (event.team_id, bucket_of(event.ts), version.id, dkey)
            entry = rollups.get(rkey)
            if entry is None:
                rollups[rkey] = [dims, event.quantity, 1]
            else:
                entry[1] += event.quantity
                entry[2] += 1
            line = lines[(event.team_id, event.ts.year, event.ts.month, version.id)]
            line[0] += event.quantity
            line[1] += 1
            prices[version.id] = version

        rollup_rows = [
            {
                "team_id": team_id,
                "bucket_start": bucket,
                "price_version_id": version_id,
                "dims_key": dkey,
                "dims": dims,
                "quantity": quantity,
                "events": count,
            }
            for (team_id, bucket, version_id, dkey), (dims, quantity, count) in sorted(
                rollups.items(),
                key=lambda item: (str(item[0][0]), item[0][1], item[0][2], item[0][3]),
            )
        ]
        stmt = insert(UsageRollup)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["team_id", "bucket_start", "price_version_id", "dims_key"],
                set_={
                    "quantity": UsageRollup.quantity + stmt.excluded.quantity,
                    "events": UsageRollup.events + stmt.excluded.events,
                },
            ),
            rollup_rows,
        )

        spend_delta: dict[tuple[uuid.UUID, int, int], int] = defaultdict(int)
        for (team_id, year, month, version_id), (quantity, count) in sorted(
            lines.items(), key=lambda item: (str(item[0][0]), *item[0][1:])
        ):
            stmt = insert(CycleLine).values(
                team_id=team_id,
                year=year,
                month=month,
                price_version_id=version_id,
                quantity=quantity,
                events=count,
                amount_cents=0,
            )
            new_quantity = session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["team_id", "year", "month", "price_version_id"],
                    set_={
                        "quantity": CycleLine.quantity + stmt.excluded.quantity,
                        "events": CycleLine.events + stmt.excluded.events,
                    },
                ).returning(CycleLine.quantity)
            ).scalar_one()
            price = prices[version_id].unit_price_pico
            old_amount = round_to_cents(Pico((new_quantity - quantity) * price))
            new_amount = round_to_cents(Pico(new_quantity * price))
            if new_amount != old_amount or new_quantity == quantity:
                session.execute(
                    update(CycleLine)
                    .where(
                        CycleLine.team_id == team_id,
                        CycleLine.year == year,
                        CycleLine.month == month,
                        CycleLine.price_version_id == version_id,
                    )
                    .values(amount_cents=new_amount)
                )
            spend_delta[(team_id, year, month)] += new_amount - old_amount

        for (team_id, year, month), delta in sorted(
            spend_delta.items(), key=lambda item: (str(item[0][0]), *item[0][1:])
        ):
            stmt = insert(BillingCycle).values(
                team_id=team_id, year=year, month=month, spend_cents=delta
            )
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["team_id", "year", "month"],
                    set_={"spend_cents": BillingCycle.spend_cents + stmt.excluded.spend_cents},
                )
            )


metering_service = MeteringService()
