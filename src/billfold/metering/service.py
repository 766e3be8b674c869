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
import hashlib
import json
import math
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from operator import itemgetter, ne
from typing import Any, Protocol, TypeGuard

import orjson
from psycopg.errors import UniqueViolation
from psycopg.types.json import Json, Jsonb
from psycopg.types.string import BytesBinaryDumper
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.cycles.models import BillingCycle, CycleLine
from billfold.cycles.periods import closed_months, lock_months_shared
from billfold.kit.clock import utc_now
from billfold.kit.db import dialect_insert, is_postgres
from billfold.kit.errors import BadRequest
from billfold.kit.money import Pico, round_to_cents
from billfold.metering.models import (
    ROLLUP_WIDTHS,
    ROLLUPS_BY_WIDTH,
    VERSION_ROLLUPS_BY_WIDTH,
    UsageEvent,
    UsagePropertySet,
)
from billfold.metering.schemas import WireEvent
from billfold.pricing.models import PriceVersion
from billfold.pricing.service import pricing_service
from billfold.teams.models import Team

BUCKET = timedelta(minutes=15)
# At most 10^12 units per event, so that no single batch can overflow the 64-bit sums it adds to
# (rollups, rollups by version, cycle lines): 10,000 maximal events in one bucket add 10^16, far
# below 2^63 - 1 (~9.2 * 10^18); even BILLFOLD_MAX_BATCH_EVENTS raised to 9 million events stays
# below it (and the 32 MiB body limit stops a batch long before that). A bigger quantity is
# rejected with the event, instead of failing its whole batch with a database overflow error.
# Still a trillion of the smallest unit (tokens, bytes, milliseconds) per event.
MAX_QUANTITY = 10**12
_QUANTITY_DIGITS = len(str(MAX_QUANTITY))
# $10^11 in pico-dollars: what one event may cost. With it, a cycle line (int64 cents) holds
# ~900,000 maximal events before it could overflow: no realistic sum of usage fails at the database.
MAX_EVENT_COST = 10**23
MAX_ID_LENGTH = 200
MAX_PROPERTIES = 32
MAX_PROPERTY_KEY_LENGTH = 64
MAX_PROPERTY_LENGTH = 200
# The rollups' dims_key column (varchar(1000)), and PostgreSQL's limit on a B-tree entry (2,704
# bytes, the primary keys of the rollup tables): long values full of characters that JSON
# escapes (a quote takes two) or that take 4 bytes in UTF-8, or more groupable properties than
# the default three, could exceed them together, and the database would refuse the whole batch.
MAX_DIMS_KEY_LENGTH = 1000
MAX_DIMS_KEY_BYTES = 2000
# Property numbers are stored as JSON numbers; beyond 64 bits orjson (and many JSON readers)
# cannot carry them, so they are refused like any other value that cannot be stored.
_MIN_PROPERTY_INT = -(2**63)
_MAX_PROPERTY_INT = 2**64 - 1


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


# An event's properties as the writes need them, built once per distinct combination of values
# (EventParser keeps them): the properties as sent (what usage_property_sets keeps); the
# canonical JSON of the groupable ones as rollups keep them (the values' text), which is the
# rollups' dims_key; the id of their property set (property_set_id) as its 16 bytes, which
# PostgresWriter's binary COPY sends as they are; and the cluster of its invoice line
# (cluster_of).
Properties = tuple[dict[str, Any], str, bytes, str]
# A valid event: (index in the batch, team key, event id, sku, quantity, ts, properties). The
# team key is the canonical text of the team's UUID (str(UUID)): sort key, dict key, and what
# PostgreSQL parses back into a uuid.
ParsedEvent = tuple[int, str, str, str, int, datetime, Properties]
# A rated event: (team key, event id, ts, sku, quantity, price version id, properties).
RatedEvent = tuple[str, str, datetime, str, int, int, Properties]


_MISSING = object()  # a field left out (where that differs from null)


class _Invalid(Exception):
    def __init__(self, code: str, error: str) -> None:
        self.code = code
        self.error = error


def bucket_of(ts: datetime) -> datetime:
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


def bucket_number(ts: datetime) -> int:
    """The 15-minute bucket of a UTC time as an integer (5x cheaper than :func:`bucket_of`, and a
    cheaper dict key than a datetime)."""
    return (ts.toordinal() * 24 + ts.hour) * 4 + ts.minute // 15


def bucket_start(number: int) -> datetime:
    day, quarter = divmod(number, 96)
    return datetime.fromordinal(day).replace(tzinfo=UTC) + quarter * BUCKET


def dims_key(dims: dict[str, str]) -> str:
    return json.dumps(dims, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dims_of(properties: dict[str, Any], groupable: tuple[str, ...]) -> dict[str, str]:
    """An event's rollup dimensions: the text of each groupable property it has (``str()`` of
    the JSON value: "1.5", "True"). Ingestion and the rollup rebuild (metering/rebuild.py) both
    use it, so a rebuild gives the rows ingestion would have written."""
    return {p: str(properties[p]) for p in groupable if p in properties}


def cluster_of(properties: dict[str, Any]) -> str:
    """The cluster an event's usage is invoiced under (a cycle line per SKU, price version and
    cluster; invoice lines' ``clusterName``): its ``clusterName`` property when that is a string,
    whether or not the property is groupable; ``""`` without one. A number is no cluster name
    (upstream's is a string), and its text would not survive every way back from the database
    (migration 0011), which the cancellation relies on to find an event's line again."""
    value = properties.get("clusterName")
    return value if type(value) is str else ""


def property_set_id(properties: dict[str, Any]) -> bytes:
    """The id of a combination of properties (usage_property_sets.id, a UUID's 16 bytes): the
    BLAKE2b digest of its canonical JSON (keys sorted, orjson's compact form). Equal properties
    get one id in every process without asking the database; 128 bits make two different
    combinations sharing one as unlikely as a collision of random UUIDs. Migration 0010 computes
    it the same way for the events stored before it, from their properties as the database gave
    them back (where PostgreSQL had normalised how a number is written, e.g. 1e16 as
    10000000000000000, such old events have a set of their own, with the same values)."""
    canonical = orjson.dumps(properties, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).digest()


def storable(text: str) -> bool:
    """Text every database can store: PostgreSQL refuses NUL characters (in text and in JSONB),
    and UTF-8 cannot encode lone surrogates (which JSON can escape: metering/endpoints.py and the
    CLI read such a body or line with a reader that lets them through, to be refused here).
    Checked per event, so such an event is rejected alone instead of failing its whole batch."""
    if "\x00" in text:
        return False
    if text.isascii():  # O(1) in CPython: the common case costs nothing more
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_id(value: Any) -> TypeGuard[str]:
    """An event id or a SKU: a string of 1 to 200 characters that every database can store."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_ID_LENGTH
        and ((value.isascii() and "\x00" not in value) or storable(value))
    )


def echo_id(event_id: Any) -> str:
    """An event's eventId as its rejection repeats it: "" if not a string; a lone surrogate
    (which JSON can carry and UTF-8 cannot) as its escape (``\\ud800``), so the answer can be
    written."""
    if not isinstance(event_id, str):
        return ""
    return event_id if event_id.isascii() else event_id.encode("utf-8", "backslashreplace").decode()


def team_uuid(value: Any) -> uuid.UUID | None:
    """A team id as sent, as a UUID; None when it is not one."""
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def whole_units(digits: str) -> int:
    """ASCII digits (leading zeros allowed) as a quantity, refused above MAX_QUANTITY -- judged by
    the digits before ``int()``, which refuses more than 4,300 of them with a ValueError that
    would have failed the whole batch instead of this one event."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > _QUANTITY_DIGITS or int(digits) > MAX_QUANTITY:
        raise _Invalid("invalid_quantity", f"quantity exceeds {MAX_QUANTITY} units per event")
    return int(digits)


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
        quantity = whole_units(whole)
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
    # A NUL, because Python 3.11's fromisoformat stops reading at one: "...10:00:00Z\x00junk"
    # would pass as 10:00 UTC.
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _Invalid("invalid_timestamp", "timestamp must be an RFC 3339 string with a zone")
    try:
        ts = datetime.fromisoformat(value)  # since 3.11 this reads "...Z" too: the usual case
    except ValueError:
        text = value.strip()
        try:
            ts = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise _Invalid("invalid_timestamp", f"timestamp {value!r} is not RFC 3339") from None
    if ts.tzinfo is None:
        raise _Invalid("invalid_timestamp", "timestamp needs a zone, e.g. 2026-11-24T10:00:00Z")
    if not 1970 <= ts.year <= 9000:  # before converting: year 1 or 9999 with an offset overflows
        raise _Invalid("invalid_timestamp", "timestamp must be between the years 1970 and 9000")
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


class EventParser:
    """Validates the events of one batch, remembering what repeats across its events: team ids,
    and combinations of properties (each validated and turned into rollup dimensions once)."""

    def __init__(self, groupable: tuple[str, ...]) -> None:
        self.groupable = groupable
        self.team_keys: dict[str, str] = {}  # teamId as sent -> canonical text
        self.team_ids: dict[str, uuid.UUID] = {}  # canonical text -> UUID
        # tuple(properties.items()) -> Properties, only for properties whose values are all
        # strings: equal tuples of strings are the same values, whereas 1 == 1.0 == True as dict
        # keys.
        self._checked: dict[tuple[tuple[str, Any], ...], Properties] = {}
        self._none: Properties = ({}, dims_key({}), property_set_id({}), "")
        self._checked[()] = self._none  # properties {}: found like any checked combination

    def parse(self, index: int, raw: Any) -> ParsedEvent:
        """Check one event: a :class:`WireEvent` (its JSON types already known) or any JSON
        value.

        The usual event takes a short path here: a :class:`WireEvent` of a team already seen in
        the batch, with an ASCII event id and SKU, a quantity of digits, a timestamp in UTC and
        properties whose combination was checked already. For it, this makes the same checks as
        :meth:`check` with what msgspec already guaranteed left out (0.94 instead of 1.2 us per
        event). Anything else -- valid or not -- goes through :meth:`check`, which decides every
        other case and words every rejection, so both give the same result
        (tests/metering/test_event_parser.py)."""
        if type(raw) is WireEvent:
            event_id = raw.eventId
            sku = raw.sku
            quantity = raw.quantity
            team_key = self.team_keys.get(raw.teamId)
            if (
                team_key is not None
                and 0 < len(event_id) <= MAX_ID_LENGTH
                and event_id.isascii()
                and "\x00" not in event_id
                and 0 < len(sku) <= MAX_ID_LENGTH
                and sku.isascii()
                and "\x00" not in sku
                and type(quantity) is str
                and len(quantity) <= _QUANTITY_DIGITS
                and quantity.isdigit()
                and quantity.isascii()
                and "\x00" not in raw.timestamp  # see parse_timestamp
            ):
                try:
                    ts = datetime.fromisoformat(raw.timestamp)
                except ValueError:
                    return self.check(index, raw)
                units = int(quantity)
                if ts.tzinfo is UTC and 1970 <= ts.year <= 9000 and units <= MAX_QUANTITY:
                    properties = raw.properties
                    if properties is None:
                        return (index, team_key, event_id, sku, units, ts, self._none)
                    try:  # a dict, as decoded
                        known = self._checked.get(tuple(properties.items()))
                    except AttributeError:  # anything else, in a WireEvent built by hand
                        known = None
                    if known is not None:
                        return (index, team_key, event_id, sku, units, ts, known)
        return self.check(index, raw)

    def check(self, index: int, raw: Any) -> ParsedEvent:
        """Check one event, any JSON value (a :class:`WireEvent` is read the same way)."""
        if type(raw) is WireEvent:
            event_id: Any = raw.eventId
            team: Any = raw.teamId
            sku: Any = raw.sku
            quantity: Any = raw.quantity
            timestamp: Any = raw.timestamp
            properties: Any = raw.properties
        elif isinstance(raw, dict):
            event_id = raw.get("eventId")
            team = raw.get("teamId")
            sku = raw.get("sku")
            quantity = raw.get("quantity", _MISSING)
            timestamp = raw.get("timestamp")
            properties = raw.get("properties")
        else:
            raise _Invalid("invalid_event", "an event must be a JSON object")
        if not is_id(event_id):
            raise _Invalid(
                "invalid_event_id",
                "eventId must be a string of 1 to 200 characters (no NUL characters)",
            )
        team_key = self.team_keys.get(team) if isinstance(team, str) else None
        if team_key is None:
            team_key = self._team_key(team)
        if not is_id(sku):
            raise _Invalid(
                "invalid_sku", "sku must be a string of 1 to 200 characters (no NUL characters)"
            )
        if type(quantity) is str and quantity.isdigit() and quantity.isascii():
            quantity = whole_units(quantity)  # the usual "1200"
        elif quantity is _MISSING:
            raise _Invalid("invalid_quantity", "quantity is required")
        else:
            quantity = parse_quantity(quantity)
        ts = parse_timestamp(timestamp)
        # properties absent or null: none (false, "", 0 or [] are refused by properties())
        return (
            index,
            team_key,
            event_id,
            sku,
            quantity,
            ts,
            self._none if properties is None else self.properties(properties),
        )

    def _team_key(self, team: Any) -> str:
        team_id = team_uuid(team)
        if team_id is None:
            raise _Invalid("invalid_team_id", "teamId must be a team's UUID")
        key = self.team_keys[team] = str(team_id)
        self.team_ids[key] = team_id
        return key

    def properties(self, properties: Any) -> Properties:
        """Validate an event's properties (once per distinct combination of string values)."""
        if isinstance(properties, dict) and len(properties) <= MAX_PROPERTIES:
            try:
                items = tuple(properties.items())
                known = self._checked.get(items)
            except TypeError:  # an unhashable value (a list, an object): invalid, said below
                items, known = (), None
            if known is not None:
                return known
        else:
            raise _Invalid(
                "invalid_properties",
                f"properties must be an object of at most {MAX_PROPERTIES} keys",
            )
        all_strings = True
        for key, value in properties.items():
            if not isinstance(key, str) or len(key) > MAX_PROPERTY_KEY_LENGTH or not storable(key):
                raise _Invalid(
                    "invalid_properties",
                    f"property names are strings of at most {MAX_PROPERTY_KEY_LENGTH} characters "
                    "(no NUL characters)",
                )
            if type(value) is str:
                if len(value) > MAX_PROPERTY_LENGTH:
                    raise _Invalid(
                        "invalid_properties",
                        f"property {key!r} is longer than {MAX_PROPERTY_LENGTH} characters",
                    )
                if not storable(value):
                    raise _Invalid(
                        "invalid_properties",
                        f"property {key!r} holds a NUL character or invalid Unicode",
                    )
                continue
            all_strings = False
            if isinstance(value, bool):
                pass
            elif isinstance(value, int):
                if not _MIN_PROPERTY_INT <= value <= _MAX_PROPERTY_INT:
                    raise _Invalid("invalid_properties", f"property {key!r} exceeds 64 bits")
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise _Invalid(
                        "invalid_properties", f"property {key!r} must be a finite number"
                    )
            else:
                raise _Invalid("invalid_properties", f"property {key!r} must be a string or number")
        dims = dims_of(properties, self.groupable)
        key = dims_key(dims)
        if len(key) > MAX_DIMS_KEY_LENGTH or len(key.encode()) > MAX_DIMS_KEY_BYTES:
            raise _Invalid(
                "invalid_properties",
                f"the groupable properties ({', '.join(dims)}) take more than "
                f"{MAX_DIMS_KEY_LENGTH} characters or {MAX_DIMS_KEY_BYTES} bytes together "
                "(as JSON in UTF-8); shorten their values",
            )
        result = (properties, key, property_set_id(properties), cluster_of(properties))
        if all_strings:
            self._checked[items] = result
        return result


# --- what a batch adds to the aggregates ---------------------------------------------------------

# The bucket number is the quarter hour's (bucket_number); in the keys of coarser rollups, the
# number of their bucket's first quarter hour.
RollupKey = tuple[str, int, int, str]  # team key, bucket number, price version, dims key
VersionRollupKey = tuple[str, int, int]  # team key, bucket number, price version
LineKey = tuple[str, int, int, int, str]  # team key, year, month, price version, cluster
CycleKey = tuple[str, int, int]  # team key, year, month
Sums = list[int]  # [quantity, events]


@dataclass
class BatchSums:
    """What a batch's accepted events add to each aggregate table: rollups and rollups by version
    per bucket width (seconds), and cycle lines."""

    rollups: dict[int, dict[RollupKey, Sums]]
    version_rollups: dict[int, dict[VersionRollupKey, Sums]]
    lines: dict[LineKey, Sums]

    def negated(self) -> BatchSums:
        """The same sums taken away (what canceling the events takes back)."""

        def minus(sums: dict[Any, Sums]) -> dict[Any, Sums]:
            return {key: [-quantity, -count] for key, (quantity, count) in sums.items()}

        return BatchSums(
            {width: minus(sums) for width, sums in self.rollups.items()},
            {width: minus(sums) for width, sums in self.version_rollups.items()},
            minus(self.lines),
        )


def _add_sums(into: dict[Any, Sums], key: Any, quantity: int, count: int) -> None:
    sums = into.get(key)
    if sums is None:
        into[key] = [quantity, count]
    else:
        sums[0] += quantity
        sums[1] += count


def sum_accepted(events: Sequence[RatedEvent]) -> BatchSums:
    """The accepted events summed per rollup, per rollup by version, and per cycle line."""
    # Per quarter hour, price version, dims key AND cluster (cluster_of, kept with the event's
    # Properties): the cluster rides along as one more item of the key -- no more work per
    # event -- and is summed away below, once per such sum (a batch has ~100x fewer of them
    # than events).
    clustered: dict[tuple[str, int, int, str, str], Sums] = {}
    for team_key, _, ts, _, quantity, version_id, (_, key, _, cluster) in events:
        # bucket_number(ts), inlined: this loop runs once per event
        ckey = (
            team_key,
            (ts.toordinal() * 24 + ts.hour) * 4 + ts.minute // 15,
            version_id,
            key,
            cluster,
        )
        sums = clustered.get(ckey)
        if sums is None:
            clustered[ckey] = [quantity, 1]
        else:
            sums[0] += quantity
            sums[1] += 1
    quarters: dict[RollupKey, Sums] = {}
    lines: dict[LineKey, Sums] = {}
    months: dict[int, tuple[int, int]] = {}  # day number -> (year, month)
    for (team_key, number, version_id, key, cluster), (quantity, count) in clustered.items():
        _add_sums(quarters, (team_key, number, version_id, key), quantity, count)
        day = number // 96
        month = months.get(day)
        if month is None:
            start = bucket_start(number)
            month = months[day] = (start.year, start.month)
        _add_sums(lines, (team_key, month[0], month[1], version_id, cluster), quantity, count)
    rollups, version_rollups = rollup_sums(quarters)
    return BatchSums(rollups, version_rollups, lines)


def rollup_sums(
    quarters: dict[RollupKey, Sums],
) -> tuple[dict[int, dict[RollupKey, Sums]], dict[int, dict[VersionRollupKey, Sums]]]:
    """Every rollup table's sums, by bucket width, from the quarter-hour sums with properties:
    each width from the one before, each table by version from its table with properties."""
    rollups = {ROLLUP_WIDTHS[0]: quarters}
    finer = quarters
    for width in ROLLUP_WIDTHS[1:]:
        per = width // ROLLUP_WIDTHS[0]  # quarter hours per bucket
        coarser: dict[RollupKey, Sums] = {}
        for (team_key, number, version_id, key), (quantity, count) in finer.items():
            _add_sums(coarser, (team_key, number - number % per, version_id, key), quantity, count)
        rollups[width] = finer = coarser
    version_rollups: dict[int, dict[VersionRollupKey, Sums]] = {}
    for width, sums_of in rollups.items():
        by_version: dict[VersionRollupKey, Sums] = {}
        for (team_key, number, version_id, _), (quantity, count) in sums_of.items():
            _add_sums(by_version, (team_key, number, version_id), quantity, count)
        version_rollups[width] = by_version
    return rollups, version_rollups


# --- the writes ---------------------------------------------------------------------------------


def property_set_uuids(events: Sequence[RatedEvent]) -> dict[bytes, uuid.UUID]:
    """The events' property set ids (16 bytes, as Properties keeps them) as UUIDs, for the
    statements that bind them as such: once per set, not per event."""
    return {id_: uuid.UUID(bytes=id_) for id_ in {e[6][2] for e in events}}


class Writer(Protocol):
    """The statements of one batch. Every method receives rows sorted by key and must write them
    in that order (the lock order that keeps concurrent batches from deadlocking)."""

    def add_property_sets(self, session: Session, sets: Sequence[tuple[bytes, Properties]]) -> None:
        """Insert the sets not stored yet (ON CONFLICT DO NOTHING), by id (16 bytes)."""
        ...

    def insert_events(
        self, session: Session, events: Sequence[RatedEvent], now: datetime
    ) -> set[int]:
        """Insert with ON CONFLICT DO NOTHING; the positions (in ``events``) NOT inserted."""
        ...

    def add_to_rollups(
        self, session: Session, rollups: Sequence[tuple[RollupKey, Sums]], *, width: int
    ) -> None:
        """The rollups with properties of that bucket width (ROLLUPS_BY_WIDTH)."""
        ...

    def add_to_version_rollups(
        self, session: Session, rollups: Sequence[tuple[VersionRollupKey, Sums]], *, width: int
    ) -> None:
        """The rollups by version of that bucket width (VERSION_ROLLUPS_BY_WIDTH)."""
        ...

    def add_to_lines(
        self, session: Session, lines: Sequence[tuple[LineKey, Sums]]
    ) -> dict[LineKey, int]:
        """Upsert the deltas; each line's quantity after the upsert."""
        ...

    def set_line_amounts(
        self, session: Session, amounts: Sequence[tuple[LineKey, int]]
    ) -> None: ...

    def add_to_cycles(self, session: Session, spend: Sequence[tuple[CycleKey, int]]) -> None: ...


class CoreWriter:
    """SQLAlchemy Core, for any database (SQLite's path)."""

    def add_property_sets(self, session: Session, sets: Sequence[tuple[bytes, Properties]]) -> None:
        stmt = dialect_insert(session)(UsagePropertySet).on_conflict_do_nothing(
            index_elements=["id"]
        )
        rows = [{"id": uuid.UUID(bytes=id_), "properties": props[0]} for id_, props in sets]
        session.execute(stmt, rows)

    def insert_events(
        self, session: Session, events: Sequence[RatedEvent], now: datetime
    ) -> set[int]:
        insert = dialect_insert(session)
        stmt = (
            insert(UsageEvent)
            .on_conflict_do_nothing(index_elements=["event_id", "team_id"])
            .returning(UsageEvent.team_id, UsageEvent.event_id)
        )
        team_ids = {e[0]: uuid.UUID(e[0]) for e in events}
        set_ids = property_set_uuids(events)
        rows = [
            {
                "team_id": team_ids[team_key],
                "event_id": event_id,
                "ts": ts,
                "quantity": quantity,
                "price_version_id": version_id,
                "property_set_id": set_ids[properties[2]],
                "ingested_at": now,
            }
            for team_key, event_id, ts, _, quantity, version_id, properties in events
        ]
        inserted = {(str(team_id), event_id) for team_id, event_id in session.execute(stmt, rows)}
        return {i for i, e in enumerate(events) if (e[0], e[1]) not in inserted}

    @staticmethod
    def _add_sums(
        session: Session, table: type[Any], keys: list[str], rows: list[dict[str, Any]]
    ) -> None:
        stmt = dialect_insert(session)(table)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=keys,
                set_={
                    "quantity": table.quantity + stmt.excluded.quantity,
                    "events": table.events + stmt.excluded.events,
                },
            ),
            rows,
        )

    def add_to_rollups(
        self, session: Session, rollups: Sequence[tuple[RollupKey, Sums]], *, width: int
    ) -> None:
        rows = [
            {
                "team_id": uuid.UUID(team),
                "bucket_start": bucket_start(number),
                "price_version_id": version_id,
                "dims_key": key,
                "quantity": quantity,
                "events": count,
            }
            for (team, number, version_id, key), (quantity, count) in rollups
        ]
        keys = ["team_id", "bucket_start", "price_version_id", "dims_key"]
        self._add_sums(session, ROLLUPS_BY_WIDTH[width], keys, rows)

    def add_to_version_rollups(
        self, session: Session, rollups: Sequence[tuple[VersionRollupKey, Sums]], *, width: int
    ) -> None:
        rows = [
            {
                "team_id": uuid.UUID(team),
                "bucket_start": bucket_start(number),
                "price_version_id": version_id,
                "quantity": quantity,
                "events": count,
            }
            for (team, number, version_id), (quantity, count) in rollups
        ]
        keys = ["team_id", "bucket_start", "price_version_id"]
        self._add_sums(session, VERSION_ROLLUPS_BY_WIDTH[width], keys, rows)

    def add_to_lines(
        self, session: Session, lines: Sequence[tuple[LineKey, Sums]]
    ) -> dict[LineKey, int]:
        # One statement per line: a batch touches few lines, and this way each returns its own
        # new quantity on every database.
        new_quantities: dict[LineKey, int] = {}
        insert = dialect_insert(session)
        for key, (quantity, count) in lines:
            team, year, month, version_id, cluster = key
            stmt = insert(CycleLine).values(
                team_id=uuid.UUID(team),
                year=year,
                month=month,
                price_version_id=version_id,
                cluster_name=cluster,
                quantity=quantity,
                events=count,
                amount_cents=0,
            )
            new_quantities[key] = session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["team_id", "year", "month", "price_version_id", "cluster_name"],
                    set_={
                        "quantity": CycleLine.quantity + stmt.excluded.quantity,
                        "events": CycleLine.events + stmt.excluded.events,
                    },
                ).returning(CycleLine.quantity)
            ).scalar_one()
        return new_quantities

    def set_line_amounts(self, session: Session, amounts: Sequence[tuple[LineKey, int]]) -> None:
        session.connection().execute(
            update(CycleLine)
            .where(
                CycleLine.team_id == bindparam("t"),
                CycleLine.year == bindparam("y"),
                CycleLine.month == bindparam("m"),
                CycleLine.price_version_id == bindparam("v"),
                CycleLine.cluster_name == bindparam("c"),
            )
            .values(amount_cents=bindparam("a")),
            [
                {
                    "t": uuid.UUID(team),
                    "y": year,
                    "m": month,
                    "v": version_id,
                    "c": cluster,
                    "a": amount,
                }
                for (team, year, month, version_id, cluster), amount in amounts
            ],
        )

    def add_to_cycles(self, session: Session, spend: Sequence[tuple[CycleKey, int]]) -> None:
        stmt = dialect_insert(session)(BillingCycle)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["team_id", "year", "month"],
                set_={"spend_cents": BillingCycle.spend_cents + stmt.excluded.spend_cents},
            ),
            [
                {"team_id": uuid.UUID(team), "year": year, "month": month, "spend_cents": delta}
                for (team, year, month), delta in spend
            ],
        )


class PostgresWriter:
    """The events by binary COPY; one statement per other table, the rows as one JSONB array
    parameter (json for the property sets; see the module docstring).

    ``WITH ORDINALITY ... ORDER BY n`` makes PostgreSQL write the rows in the order they were sent
    (sorted by key): the lock order. The statements' texts are constant, so psycopg prepares them
    on each connection after a few uses.
    """

    # Run when the COPY found stored events (insert_events). The CASE returns the positions that
    # were not inserted (events stored before, or committed first by a concurrent batch) -- and
    # when the count of inserted rows says there are none, skips that anti-join altogether
    # (PostgreSQL runs init plans lazily). The document is parsed once, when the parameter is
    # bound, and unpacked a second time only for the anti-join.
    EVENTS = """
        WITH inserted AS (
            INSERT INTO usage_events (team_id, event_id, ts, quantity, price_version_id,
                                      property_set_id, ingested_at)
            SELECT (e->>0)::uuid, e->>1, (e->>2)::timestamptz, (e->>3)::bigint, (e->>4)::bigint,
                   (e->>5)::uuid, %(now)s::timestamptz
            FROM jsonb_array_elements(%(events)t) WITH ORDINALITY AS b(e, n) ORDER BY n
            ON CONFLICT (event_id, team_id) DO NOTHING
            RETURNING team_id, event_id
        )
        SELECT CASE WHEN (SELECT count(*) FROM inserted) = %(count)s::bigint THEN '{}'::bigint[]
               ELSE ARRAY(
                   SELECT n - 1 FROM jsonb_array_elements(%(events)t) WITH ORDINALITY AS b(e, n)
                   WHERE NOT EXISTS (SELECT FROM inserted i WHERE i.team_id = (e->>0)::uuid
                                                              AND i.event_id = e->>1)
                   ORDER BY n) END
    """
    COPY_EVENTS = (
        "COPY usage_events (team_id, event_id, ts, quantity, price_version_id, property_set_id,"
        " ingested_at) FROM STDIN (FORMAT BINARY)"
    )
    COPY_TYPES = ("bytea", "text", "timestamptz", "int8", "int8", "bytea", "timestamptz")
    # Run before the events, in id order (the lock order: a set new to both of two concurrent
    # batches makes the second wait for the first). A json document, not jsonb: e->1 is then the
    # properties' text as orjson wrote it, which the json column keeps (jsonb would print a float
    # sent as 1e16 back as an integer; migration 0011).
    PROPERTY_SETS = """
        INSERT INTO usage_property_sets (id, properties)
        SELECT (e->>0)::uuid, e->1
        FROM json_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (id) DO NOTHING
    """
    # {table}: a table of ROLLUPS_BY_WIDTH.
    ROLLUPS = """
        INSERT INTO {table} AS r (team_id, bucket_start, price_version_id, dims_key, quantity,
                                  events)
        SELECT (e->>0)::uuid, (e->>1)::timestamptz, (e->>2)::bigint, e->>3,
               (e->>4)::bigint, (e->>5)::bigint
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, bucket_start, price_version_id, dims_key) DO UPDATE
        SET quantity = r.quantity + excluded.quantity, events = r.events + excluded.events
    """
    # {table}: a table of VERSION_ROLLUPS_BY_WIDTH.
    VERSION_ROLLUPS = """
        INSERT INTO {table} AS r (team_id, bucket_start, price_version_id, quantity, events)
        SELECT (e->>0)::uuid, (e->>1)::timestamptz, (e->>2)::bigint, (e->>3)::bigint,
               (e->>4)::bigint
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, bucket_start, price_version_id) DO UPDATE
        SET quantity = r.quantity + excluded.quantity, events = r.events + excluded.events
    """
    LINES = """
        INSERT INTO cycle_lines AS c (team_id, year, month, price_version_id, cluster_name,
                                      quantity, events, amount_cents)
        SELECT (e->>0)::uuid, (e->>1)::bigint, (e->>2)::bigint, (e->>3)::bigint, e->>4,
               (e->>5)::bigint, (e->>6)::bigint, 0
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, year, month, price_version_id, cluster_name) DO UPDATE
        SET quantity = c.quantity + excluded.quantity, events = c.events + excluded.events
        RETURNING c.team_id::text, c.year, c.month, c.price_version_id, c.cluster_name,
                  c.quantity
    """
    # The lines are locked already (by LINES, in key order), so this join's order is harmless.
    AMOUNTS = """
        UPDATE cycle_lines AS c SET amount_cents = (e->>5)::bigint
        FROM jsonb_array_elements(%(rows)t) AS e
        WHERE c.team_id = (e->>0)::uuid AND c.year = (e->>1)::bigint
          AND c.month = (e->>2)::bigint AND c.price_version_id = (e->>3)::bigint
          AND c.cluster_name = e->>4
    """
    CYCLES = """
        INSERT INTO billing_cycles AS c (team_id, year, month, spend_cents)
        SELECT (e->>0)::uuid, (e->>1)::bigint, (e->>2)::bigint, (e->>3)::bigint
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, year, month) DO UPDATE
        SET spend_cents = c.spend_cents + excluded.spend_cents
    """

    @staticmethod
    def _document(rows: Sequence[Sequence[Any]]) -> Jsonb:
        # Serialized by orjson when psycopg sends it, straight to bytes (no str copy), and sent
        # in text format (the %(...)t placeholders). orjson writes datetimes as RFC 3339 with
        # their offset (+00:00: all of ours are UTC).
        return Jsonb(rows, dumps=orjson.dumps)

    def add_property_sets(self, session: Session, sets: Sequence[tuple[bytes, Properties]]) -> None:
        rows = [(uuid.UUID(bytes=id_), props[0]) for id_, props in sets]
        document = Json(rows, dumps=orjson.dumps)
        session.connection().exec_driver_sql(self.PROPERTY_SETS, {"rows": document})

    def insert_events(
        self, session: Session, events: Sequence[RatedEvent], now: datetime
    ) -> set[int]:
        """A binary ``COPY`` of the batch inside a savepoint; if any event is stored already (a
        retry, or a concurrent batch that committed it first: the unique key makes the COPY
        wait for that batch, then fail), the savepoint is rolled back and :attr:`EVENTS` sorts
        the batch out event by event.

        Why: the usual batch holds no stored event, and PostgreSQL copies rows for about half the
        CPU of ``INSERT ... ON CONFLICT`` (which inserts row by row, each with its speculative
        insertion step, after unpacking and casting the JSONB document): 4.5-4.7 vs 9.7 us per
        event, measured alone with usage_events' key and index (bench/results/ingest.md).
        psycopg's C code formats the binary rows. A retried batch fails at its first stored
        event, so it costs little more than before; only a batch whose stored events come late
        in key order pays for part of a COPY twice (and leaves those copied rows dead, for
        vacuum).
        """
        # Binary COPY fields are read by the columns' own types; "bytea" in COPY_TYPES only makes
        # psycopg send bytes as they are -- in C, where its uuid dumper is Python: a team id's
        # 16 bytes, once per team, and a property set's id, once per combination (Properties).
        # Registering psycopg's bytes dumper makes it the one used for "bytea" (by default that
        # is the Python dumper of its DB-API Binary wrapper, 0.35 us more per row).
        team_ids = {team: uuid.UUID(team).bytes for team in {e[0] for e in events}}
        try:
            with session.begin_nested():
                # session.connection() inside the nested transaction is what emits SAVEPOINT.
                driver = session.connection().connection.driver_connection
                with driver.cursor() as cursor:  # type: ignore[union-attr]
                    cursor.adapters.register_dumper(bytes, BytesBinaryDumper)
                    with cursor.copy(self.COPY_EVENTS) as copy:
                        copy.set_types(self.COPY_TYPES)
                        write_row = copy.write_row
                        for team, id_, ts, _, qty, version, props in events:
                            write_row((team_ids[team], id_, ts, qty, version, props[2], now))
            return set()
        except UniqueViolation:
            pass
        set_ids = property_set_uuids(events)
        document = self._document(
            [
                (team, id_, ts, qty, version, set_ids[props[2]])
                for team, id_, ts, _, qty, version, props in events
            ]
        )
        not_inserted = (
            session.connection()
            .exec_driver_sql(self.EVENTS, {"events": document, "now": now, "count": len(events)})
            .scalar_one()
        )
        return set(not_inserted)

    def add_to_rollups(
        self, session: Session, rollups: Sequence[tuple[RollupKey, Sums]], *, width: int
    ) -> None:
        document = self._document(
            [
                (team, bucket_start(number), version_id, key, quantity, count)
                for (team, number, version_id, key), (quantity, count) in rollups
            ]
        )
        table = ROLLUPS_BY_WIDTH[width].__tablename__
        session.connection().exec_driver_sql(self.ROLLUPS.format(table=table), {"rows": document})

    def add_to_version_rollups(
        self, session: Session, rollups: Sequence[tuple[VersionRollupKey, Sums]], *, width: int
    ) -> None:
        document = self._document(
            [
                (team, bucket_start(number), version_id, quantity, count)
                for (team, number, version_id), (quantity, count) in rollups
            ]
        )
        table = VERSION_ROLLUPS_BY_WIDTH[width].__tablename__
        session.connection().exec_driver_sql(
            self.VERSION_ROLLUPS.format(table=table), {"rows": document}
        )

    def add_to_lines(
        self, session: Session, lines: Sequence[tuple[LineKey, Sums]]
    ) -> dict[LineKey, int]:
        document = self._document([(*key, *sums) for key, sums in lines])
        result = session.connection().exec_driver_sql(self.LINES, {"rows": document})
        return {
            (team, int(year), int(month), int(version_id), cluster): int(quantity)
            for team, year, month, version_id, cluster, quantity in result
        }

    def set_line_amounts(self, session: Session, amounts: Sequence[tuple[LineKey, int]]) -> None:
        document = self._document([(*key, amount) for key, amount in amounts])
        session.connection().exec_driver_sql(self.AMOUNTS, {"rows": document})

    def add_to_cycles(self, session: Session, spend: Sequence[tuple[CycleKey, int]]) -> None:
        document = self._document([(*key, delta) for key, delta in spend])
        session.connection().exec_driver_sql(self.CYCLES, {"rows": document})


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
        with cyclic_gc_paused():
            return self._ingest(session, settings, raw_events)

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
        prices: dict[int, int],
    ) -> None:
        MeteringService.add_sums(session, writer, sum_accepted(events), prices)

    @staticmethod
    def add_sums(
        session: Session,
        writer: Writer,
        sums: BatchSums,
        prices: dict[int, int],
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
            old_amount = round_to_cents(Pico((new_quantity - quantity) * price))
            new_amount = round_to_cents(Pico(new_quantity * price))
            if new_amount != old_amount:
                amounts.append((key, new_amount))
            cycle = (team, year, month)
            spend[cycle] = spend.get(cycle, 0) + new_amount - old_amount
        if amounts:
            writer.set_line_amounts(session, amounts)
        # Every touched cycle is upserted, also with a zero delta: a cycle row exists once the
        # team has usage in that month.
        writer.add_to_cycles(session, sorted(spend.items(), key=itemgetter(0)))


metering_service = MeteringService()
