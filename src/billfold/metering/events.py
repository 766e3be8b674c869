"""A usage event checked: its limits, the tuples events travel as, and the parser.

The usual event takes a short path through :meth:`EventParser.parse`; anything unusual
takes the full check (:meth:`EventParser.check`), which gives the same answer. See
metering/service.py for why the per-event code looks the way it does.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any, TypeGuard

import orjson

from billfold.metering.schemas import WireEvent

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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_keeping_lone_surrogates(text: bytes | str) -> Any:
    """JSON as the standard library reads it, which -- unlike msgspec and pydantic-core -- takes
    an escaped lone surrogate (``"bad\\ud800id"``): JSON can carry one, UTF-8 and the databases
    cannot. Such a string then fails the full check of its event (:func:`storable`), so that event
    is rejected alone instead of its whole batch or line. ``NaN`` and ``Infinity`` are refused
    (not JSON), as the fast parsers refuse them. Raises ValueError (or RecursionError)."""
    return json.loads(text, parse_constant=_refuse_constant)
