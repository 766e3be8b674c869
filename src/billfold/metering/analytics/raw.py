"""Analytics from raw ``usage_events``: sums per time slice (MINUTE and SECOND buckets, the
rollup rebuild) and the values of single events (MIN, MAX, VAR, STD, percentiles), exact,
within the raw-event retention window. Their cost grows with the events in the range.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Context, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Interval,
    Select,
    case,
    cast,
    func,
    literal,
    null,
    select,
)
from sqlalchemy.orm import Session

from billfold.kit.money import PICO_PER_USD, pico_to_usd_float
from billfold.metering.analytics.buckets import (
    _BIN_ORIGIN,
    _EPOCH_SHIFT,
)
from billfold.metering.analytics.fields import PERCENTILES, Aggregation
from billfold.metering.analytics.query import (
    ValueSpec,
)
from billfold.metering.models import (
    UsageEvent,
    UsagePropertySet,
)

# Rows of per-event values one query may read from raw events (each a distinct quantity of one
# price version and property set in one time slice): bounds the memory and time of such a query.
MAX_EVENT_VALUES = 1_000_000


def _zero(spec: ValueSpec) -> int | float:
    """A bucket without usage: 0 for every aggregation (no events have no mean, extreme or
    spread; the wire's doubles have no null), as a float where the value is one."""
    integral = spec.aggregation in (Aggregation.COUNT, Aggregation.COUNT_DISTINCT) or (
        spec.name == "num_units"
        and spec.aggregation not in (Aggregation.AVG, Aggregation.VAR, Aggregation.STD)
    )
    return 0 if integral else 0.0


def _per_event(spec: ValueSpec, seen: Counter[tuple[int, int]] | None) -> int | float:
    """MIN, MAX, VAR, STD or a percentile of the events' own values, exact: computed over the
    integers (pico-dollars for usd), turned into a float once."""
    usd = spec.name == "usd"
    values: Counter[int] = Counter()
    for (quantity, price), events in (seen or {}).items():
        values[quantity * price if usd else quantity] += events
    if not values:  # the rollups saw usage the raw events do not hold (see docs)
        return _zero(spec)
    agg = spec.aggregation
    if agg in (Aggregation.VAR, Aggregation.STD):
        # Population variance (the events of the bucket are all its events, not a sample):
        # (n * sum(x^2) - sum(x)^2) / n^2, in integers; dollars^2 for usd.
        n = sum(values.values())
        s1 = sum(x * k for x, k in values.items())
        s2 = sum(x * x * k for x, k in values.items())
        numerator, denominator = n * s2 - s1 * s1, n * n * (PICO_PER_USD**2 if usd else 1)
        if agg is Aggregation.VAR:
            return numerator / denominator  # correctly rounded
        return float((Decimal(numerator) / Decimal(denominator)).sqrt(_SQRT_CONTEXT))
    if agg is Aggregation.MIN:
        value = min(values)
    elif agg is Aggregation.MAX:
        value = max(values)
    else:
        value = _nearest_rank(values, PERCENTILES[agg])
    return pico_to_usd_float(value) if usd else value


# Enough digits that the square root, rounded once more to a float, is the float nearest to the
# exact one (but in cases ~10^-40 apart from a tie).
_SQRT_CONTEXT = Context(prec=60)


def _nearest_rank(values: Counter[int], share: Fraction) -> int:
    """The smallest value with at least ``share`` of the events at or below it: a value some
    event has (PostgreSQL's percentile_disc), exact."""
    n = sum(values.values())
    rank = max(1, -(-share.numerator * n // share.denominator))  # ceil(share * n)
    below = 0
    for value in sorted(values):
        below += values[value]
        if below >= rank:
            return value
    raise AssertionError("rank beyond the events")  # pragma: no cover


def raw_event_sums(
    session: Session,
    team_id: uuid.UUID,
    start: datetime,
    end: datetime,
    step: int,
    *,
    with_properties: bool,
) -> Iterator[tuple[int, int, int, int, dict[str, Any]]]:
    """A team's raw events in ``[start, end)``, canceled ones left out, summed per
    ``step``-second part of the time since 1970 and price version (and property set, with
    ``with_properties``): ``(part, price version id, quantity, events, properties)``, the
    properties ``{}`` without ``with_properties``. MINUTE and SECOND analytics read this, and so
    do the rollup rebuild (metering/rebuild.py) and the cancellation (metering/cancellation.py)."""
    e = UsageEvent
    second = _epoch_seconds(session, e.ts)
    inner = (
        select(
            (second // step if step > 1 else second).label("part"),
            e.price_version_id.label("version"),
            e.quantity,
            e.property_set_id,
        )
        .where(e.team_id == team_id, e.ts >= start, e.ts < end, e.canceled_at.is_(None))
        .subquery()
    )
    keys = [inner.c.part, inner.c.version]
    if with_properties:
        keys.append(inner.c.property_set_id)
    grouped = (
        select(*keys, func.sum(inner.c.quantity).label("quantity"), func.count().label("n"))
        .group_by(*keys)
        .subquery()
    )
    stmt = select(grouped.c.part, grouped.c.version, grouped.c.quantity, grouped.c.n)
    if with_properties:
        # Each group's properties from its set, once per group rather than per event (outer: an
        # event whose set is missing still counts, without properties).
        s = UsagePropertySet
        stmt = stmt.add_columns(s.properties).outerjoin(s, s.id == grouped.c.property_set_id)
    row: Any
    for row in session.execute(stmt):
        properties = (row[4] if with_properties else None) or {}
        yield int(row[0]), int(row[1]), int(row[2]), int(row[3]), properties


class TooManyEventValues(Exception):
    pass


def raw_event_values(
    session: Session,
    team_id: uuid.UUID,
    start: datetime,
    end: datetime,
    step: int,
    *,
    with_properties: bool,
    extremes: bool,
    limit: int,
) -> list[tuple[int, int, dict[str, Any], list[tuple[int, int]]]]:
    """A team's raw events in ``[start, end)``, canceled ones left out, per ``step``-second part
    of the time since 1970 (a single part 0 with ``step`` 0), price version (and property set,
    with ``with_properties``): ``(part, price version id, properties, [(quantity, events)])`` --
    every distinct quantity with its number of events, or with ``extremes`` only the smallest and
    the largest (each with 1).

    The database groups, and finds the extremes; the variance and percentiles are computed by the
    caller in Python ints: SQLite has neither, and a sum of squared quantities (up to 10^24 each)
    overflows its int64. Raises TooManyEventValues when more than ``limit`` rows would come back.
    """
    e = UsageEvent
    second = _epoch_seconds(session, e.ts)
    part: ColumnElement[int] = second // step if step > 1 else second
    if step == 0:  # one part
        part = literal(0, BigInteger)
    inner = (
        select(
            part.label("part"),
            e.price_version_id.label("version"),
            e.quantity.label("quantity"),
            e.property_set_id.label("set_id"),
        )
        .where(e.team_id == team_id, e.ts >= start, e.ts < end, e.canceled_at.is_(None))
        .subquery()
    )
    keys = [inner.c.part, inner.c.version, inner.c.set_id if with_properties else null()]
    grouping = keys[:3] if with_properties else keys[:2]
    stmt: Select[Any]
    if extremes:  # (smallest, largest)
        stmt = select(*keys, func.min(inner.c.quantity), func.max(inner.c.quantity)).group_by(
            *grouping
        )
    else:  # (quantity, events)
        stmt = select(*keys, inner.c.quantity, func.count()).group_by(*grouping, inner.c.quantity)
    rows: Sequence[Any] = session.execute(stmt.limit(limit + 1)).all()
    if len(rows) > limit:
        raise TooManyEventValues
    slices: dict[tuple[int, int, Any], list[tuple[int, int]]] = {}
    for part_, version, set_id, first, second_ in rows:
        quantities = slices.setdefault((int(part_), int(version), set_id), [])
        if extremes:
            quantities += [(int(first), 1), (int(second_), 1)]
        else:
            quantities.append((int(first), int(second_)))
    sets: dict[Any, dict[str, Any]] = {}
    if with_properties:
        wanted = sorted({set_id for _, _, set_id in slices})
        s = UsagePropertySet
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            for set_id, properties in session.execute(
                select(s.id, s.properties).where(s.id.in_(chunk))
            ):
                sets[set_id] = properties
    # an event whose set is missing still counts, without properties
    return [
        (part_, version, sets.get(set_id) or {}, quantities)
        for (part_, version, set_id), quantities in slices.items()
    ]


def _has_date_bin(session: Session) -> bool:
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and (dialect.server_version_info or (0,)) >= (14,)


def _local_part(
    session: Session,
    column: Any,
    segments: list[tuple[datetime, int]],
    offset: ColumnElement[Any],
    seconds: int,
) -> ColumnElement[Any]:
    """The local hour or day (``seconds`` wide) of a rollup bucket at its segment's UTC offset: a
    value that two buckets of one segment share exactly when they are in the same local hour or
    day (so, grouped together with the offset, a partition).

    On PostgreSQL 14+ that is ``date_bin`` with an origin shifted by the offset: timestamp
    arithmetic in integers, where epoch seconds (``extract`` gives a numeric since 14) cost ~2x
    more per row -- half the query's time for a busy month. Elsewhere, epoch seconds.
    """
    if not _has_date_bin(session):
        return (_epoch_seconds(session, column) + offset + _EPOCH_SHIFT) // seconds
    origins = [
        literal(_BIN_ORIGIN - timedelta(seconds=utc_offset), DateTime(timezone=True))
        for _, utc_offset in segments
    ]
    origin: ColumnElement[Any] = (
        origins[0]
        if len(segments) == 1
        else case(
            *[(column < segments[i + 1][0], origins[i]) for i in range(len(segments) - 1)],
            else_=origins[-1],
        )
    )
    return func.date_bin(literal(timedelta(seconds=seconds), Interval()), column, origin)


def _epoch_seconds(session: Session, column: Any) -> ColumnElement[int]:
    """Whole seconds since 1970 (floored) of a UTC timestamp column, per dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), BigInteger)
    # SQLite stores naive UTC text ("2026-11-10 10:01:59.999600"). strftime('%s') rounds it to
    # the millisecond first (to 10:02:00), so the fraction is cut off before: the whole seconds.
    return cast(func.strftime("%s", func.substr(column, 1, 19)), BigInteger)
