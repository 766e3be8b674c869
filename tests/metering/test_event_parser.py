"""The event parser's short path for the usual event gives exactly what the full check gives.

``EventParser.parse`` answers the common, well-formed :class:`WireEvent` itself and hands every
other event to ``EventParser.check``; here both see the same sequences of events -- valid ones
and every kind of near miss -- and must agree on each result or rejection (and on what they
remember for the rest of the batch)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billfold.metering.events import MAX_QUANTITY, EventParser, _Invalid
from billfold.metering.schemas import WireEvent

GROUPABLE = ("apiKeyId", "model", "clusterName")
TEAM = uuid.UUID("0b6f1b2e-58c4-4a39-9d3f-4c1e1d3c2a10")

# The usual event: what the short path is for.
USUAL: dict[str, Any] = {
    "eventId": "evt-1",
    "teamId": str(TEAM),
    "sku": "grok-4-prompt",
    "quantity": "1200",
    "timestamp": "2026-11-24T10:00:00Z",
    "properties": {"apiKeyId": "k1", "model": "grok-4"},
}
# Each field's near misses of the short path: values it must hand to the full check, and values
# it may take itself.
NEAR: dict[str, list[Any]] = {
    "eventId": ["", "x" * 200, "x" * 201, "a\x00b", "é", "𝄞", "a\ud800", "evt-2"],
    "teamId": [str(TEAM).upper(), TEAM.hex, str(uuid.UUID(int=7)), "not-a-uuid", ""],
    "sku": ["", "x" * 200, "x" * 201, "a\x00b", "é", "𝄞", "a\ud800", "other"],
    "quantity": [
        "0",
        "007",
        str(MAX_QUANTITY),
        str(MAX_QUANTITY + 1),
        "1.0",
        "1.5",
        "",
        " 12",
        "-1",
        "١٢",
        "1e3",
        "12a",
        "9" * 5000,
        "0" * 5000 + "1",
        "9" * 5000 + ".0",
        12,
        1.0,
        -1,
    ],
    "timestamp": [
        "2026-11-24T10:00:00.123Z",
        "2026-11-24T10:00:00+00:00",
        "2026-11-24T11:00:00+01:00",
        "2026-11-24T10:00:00",
        "2026-11-24T10:00:00z",
        " 2026-11-24T10:00:00Z",
        "1969-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "9000-12-31T23:59:59Z",
        "9001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "yesterday",
        "",
        # Python 3.11's fromisoformat stops at a NUL: these read as 10:00 UTC unless refused
        "2026-11-24T10:00:00Z\x00",
        "2026-11-24T10:00:00\x00Z",
        "2026-11-24T10:00:00Z\x00junk",
    ],
    "properties": [
        None,
        {},
        False,  # the plain path's other falsy values: refused, not "no properties"
        "",
        0,
        [],
        {"model": "grok-4", "apiKeyId": "k1"},
        {"apiKeyId": "k1", "model": "grok-4", "tier": 2},
        {"apiKeyId": True, "model": "grok-4"},
        {"apiKeyId": 1, "model": "grok-4"},
        {"apiKeyId": "a\x00b", "model": "grok-4"},
        {"apiKeyId": "k1", "model": "x" * 201},
    ],
}


# Any value of each field's type, for batches of mixed events: the near misses and more.
ids = st.one_of(st.sampled_from(["evt-1", "req_0f", *NEAR["eventId"]]), st.text(max_size=12))
teams = st.sampled_from([str(TEAM), *NEAR["teamId"]])
quantities = st.one_of(
    st.sampled_from(["1200", *NEAR["quantity"]]),
    st.integers(min_value=-5, max_value=MAX_QUANTITY + 5),
    st.floats(allow_nan=True, allow_infinity=True),
)
timestamps = st.one_of(
    st.sampled_from(["2026-11-24T10:00:00Z", *NEAR["timestamp"]]),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
)
values = st.one_of(
    st.sampled_from(["k1", "k2", "grok-4", "", "a\x00b", "x" * 201]),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
properties = st.one_of(
    st.sampled_from([{"apiKeyId": "k1", "model": "grok-4"}, *NEAR["properties"]]),
    st.dictionaries(st.sampled_from([*GROUPABLE, "tier", "x" * 65]), values, max_size=4),
)
events = st.builds(
    WireEvent,
    eventId=ids,
    teamId=teams,
    sku=ids,
    quantity=quantities,
    timestamp=timestamps,
    properties=properties,
)


def outcome(parse: Any, index: int, event: Any) -> Any:
    """The parsed event (its time as text: == of aware datetimes ignores their zone), or the
    rejection."""
    try:
        parsed = parse(index, event)
    except _Invalid as exc:
        return (exc.code, exc.error)
    return (*parsed[:5], parsed[5].isoformat(), parsed[6])


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, near in NEAR.items() for value in near]
)
def test_each_near_miss_gets_the_full_checks_answer(name: str, value: Any) -> None:
    """After the usual event (its team and properties now known), the same event with one field
    changed; then the usual one again."""
    batch = [WireEvent(**USUAL), WireEvent(**{**USUAL, name: value}), WireEvent(**USUAL)]
    fast, full = EventParser(GROUPABLE), EventParser(GROUPABLE)
    for index, event in enumerate(batch):
        assert outcome(fast.parse, index, event) == outcome(full.check, index, event)


# The usual event with one field replaced by any value of its strategy: each near miss of the
# short path comes with everything else the short path needs.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "eventId": ids,
    "teamId": teams,
    "sku": ids,
    "quantity": quantities,
    "timestamp": timestamps,
    "properties": properties,
}
near_misses = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: FIELDS[name].map(lambda value: WireEvent(**{**USUAL, name: value}))
)
# Batches that start with the usual event or not, and repeat a few events (so teams and property
# combinations are known when they come again), among near misses and fresh events.
batches = st.lists(st.one_of(near_misses, events), min_size=1, max_size=6).flatmap(
    lambda pool: st.lists(
        st.one_of(st.sampled_from(pool), near_misses, events, st.just(WireEvent(**USUAL))),
        max_size=30,
    )
)


@settings(max_examples=300, deadline=None)
@given(batch=batches)
def test_the_short_path_agrees_with_the_full_check(batch: list[WireEvent]) -> None:
    fast, full = EventParser(GROUPABLE), EventParser(GROUPABLE)
    for index, event in enumerate(batch):
        assert outcome(fast.parse, index, event) == outcome(full.check, index, event)
    assert fast.team_keys == full.team_keys and fast.team_ids == full.team_ids


def _fields(event: WireEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__struct_fields__}


@pytest.mark.parametrize("timestamp", ["2026-11-24T10:00:00Z\x00", "2026-11-24T10:00:00Z\x00junk"])
def test_a_timestamp_with_a_nul_is_refused(timestamp: str) -> None:
    for parse in (EventParser(GROUPABLE).parse, EventParser(GROUPABLE).check):
        assert outcome(parse, 0, WireEvent(**{**USUAL, "timestamp": timestamp}))[0] == (
            "invalid_timestamp"
        )


@pytest.mark.parametrize("value", [False, "", 0, [], "x", 1.5])
def test_properties_that_are_not_an_object_are_refused(value: Any) -> None:
    # the falsy ones were taken for "no properties" by both paths
    for parse in (EventParser(GROUPABLE).parse, EventParser(GROUPABLE).check):
        assert outcome(parse, 0, WireEvent(**{**USUAL, "properties": value}))[0] == (
            "invalid_properties"
        )
    plain = {**USUAL, "properties": value}
    assert outcome(EventParser(GROUPABLE).parse, 0, plain)[0] == "invalid_properties"


def test_the_short_path_is_taken_for_the_usual_event() -> None:
    """Not a timing: the usual event, once its team and properties are known, never reaches the
    full check (which would make the short path pointless)."""
    parser = EventParser(GROUPABLE)
    usual = WireEvent(
        eventId="evt-1",
        teamId=str(TEAM),
        sku="grok-4-prompt",
        quantity="1200",
        timestamp="2026-11-24T10:00:00.250Z",
        properties={"apiKeyId": "k1", "model": "grok-4"},
    )
    first = parser.parse(0, usual)  # learns the team and the combination
    calls: list[int] = []
    check = parser.check

    def counted(index: int, raw: Any) -> Any:
        calls.append(index)
        return check(index, raw)

    parser.check = counted  # type: ignore[method-assign]
    assert parser.parse(1, usual)[1:] == first[1:]
    assert parser.parse(2, WireEvent(**{**_fields(usual), "properties": None}))[6] == parser._none
    assert parser.parse(3, WireEvent(**{**_fields(usual), "properties": {}}))[6] == parser._none
    assert calls == []
    assert first[5] == datetime(2026, 11, 24, 10, 0, 0, 250_000, tzinfo=UTC)
