"""Bucket maths of usage analytics: local time units, aligned in any IANA time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

MAX_POINTS = 10_000


ROLLUP_SECONDS = 900


QUARTER = timedelta(seconds=ROLLUP_SECONDS)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Added to epoch seconds before integer division in SQL, so the division never sees a negative
# number (SQL truncates toward zero, we want floor). A multiple of every partition width.
_EPOCH_SHIFT = 86_400 * 10**6


# date_bin's origin for local partitions, minus the UTC offset: a UTC midnight (so a whole number
# of days and hours from any other) before every bucket a query can read (MIN_YEAR), so every
# bucket is after it.
_BIN_ORIGIN = datetime(1800, 1, 1, tzinfo=UTC)


# Offsets are sampled this often over the data's span to find DST transitions (they are months
# apart in every real zone; a miss would only cost a slower, still exact, re-read).
_OFFSET_SAMPLE = timedelta(hours=6)


class TimeUnit(StrEnum):
    MONTH = "TIME_UNIT_MONTH"
    CALENDAR_WEEK = "TIME_UNIT_CALENDAR_WEEK"
    DAY = "TIME_UNIT_DAY"
    HOUR = "TIME_UNIT_HOUR"
    QUARTER_HOUR = "TIME_UNIT_QUARTER_HOUR"
    MINUTE = "TIME_UNIT_MINUTE"
    SECOND = "TIME_UNIT_SECOND"
    NONE = "TIME_UNIT_NONE"


# proto numbers (xai.shared.analytics.TimeUnit), accepted as proto3 JSON parsers do
_UNIT_NUMBERS = {
    1: TimeUnit.MONTH,
    2: TimeUnit.CALENDAR_WEEK,
    3: TimeUnit.DAY,
    4: TimeUnit.HOUR,
    5: TimeUnit.QUARTER_HOUR,
    6: TimeUnit.MINUTE,
    7: TimeUnit.SECOND,
    8: TimeUnit.NONE,
}


_FIXED_STEP = {TimeUnit.QUARTER_HOUR: 900, TimeUnit.MINUTE: 60, TimeUnit.SECOND: 1}


_RAW_UNITS = (TimeUnit.MINUTE, TimeUnit.SECOND)


class TooManyBuckets(Exception):
    pass


def floor_to(at: datetime, seconds: int) -> datetime:
    step = timedelta(seconds=seconds)
    return EPOCH + ((at - EPOCH) // step) * step


def ceil_to(at: datetime, seconds: int) -> datetime:
    floored = floor_to(at, seconds)
    return floored if floored == at else floored + timedelta(seconds=seconds)


def bucket_starts(
    unit: TimeUnit, zone: ZoneInfo, start: datetime, end: datetime, limit: int = MAX_POINTS
) -> list[datetime]:
    """UTC starts of the buckets covering [start, end), the first aligned at or before start.

    Raises TooManyBuckets when more than ``limit`` would be needed (without building them).
    """
    if unit is TimeUnit.NONE:
        return [start]
    if unit in _FIXED_STEP:
        seconds = _FIXED_STEP[unit]
        first = floor_to(start, seconds)
        if (end - first) / timedelta(seconds=seconds) > limit:
            raise TooManyBuckets
        step = timedelta(seconds=seconds)
        return [first + i * step for i in range(-(-(end - first) // step))]
    if unit is TimeUnit.HOUR:
        return _hour_starts(zone, start, end, limit)
    return _calendar_starts(unit, zone, start, end, limit)


def _hour_key(at: datetime, zone: ZoneInfo) -> tuple[int, int, int, int, timedelta | None]:
    local = at.astimezone(zone)
    return (local.year, local.month, local.day, local.hour, local.utcoffset())


def _hour_starts(zone: ZoneInfo, start: datetime, end: datetime, limit: int) -> list[datetime]:
    # A bucket is a run of quarter hours with the same local wall hour *and* offset: so the hour
    # repeated at a fall-back is two buckets, and a half-hour DST shift (Australia/Lord_Howe)
    # gives a half-hour bucket, as a wall clock shows them.
    if (end - start) > 2 * limit * timedelta(hours=1):
        raise TooManyBuckets
    at = floor_to(start, ROLLUP_SECONDS)
    key = _hour_key(at, zone)
    for _ in range(8):
        if _hour_key(at - QUARTER, zone) != key:
            break
        at -= QUARTER
    starts: list[datetime] = []
    last_key = None
    while at < end:
        key = _hour_key(at, zone)
        if key != last_key:
            if len(starts) == limit:
                raise TooManyBuckets
            starts.append(at)
            last_key = key
        at += QUARTER
    return starts


def _calendar_starts(
    unit: TimeUnit, zone: ZoneInfo, start: datetime, end: datetime, limit: int
) -> list[datetime]:
    day = start.astimezone(zone).date()
    if unit is TimeUnit.CALENDAR_WEEK:
        day -= timedelta(days=day.weekday())
    elif unit is TimeUnit.MONTH:
        day = day.replace(day=1)
    starts: list[datetime] = []
    while True:
        # Local midnight (fold=0: where midnight falls in a DST gap this is the first instant
        # of the day; where it repeats, its first occurrence).
        begin = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
        if starts and begin >= end:
            break
        if not starts or begin > starts[-1]:  # a skipped day (Pacific/Apia 2011) is no bucket
            if len(starts) == limit:
                raise TooManyBuckets
            starts.append(begin)
        day = _next_period(day, unit)
    return starts


def _next_period(day: date, unit: TimeUnit) -> date:
    if unit is TimeUnit.DAY:
        return day + timedelta(days=1)
    if unit is TimeUnit.CALENDAR_WEEK:
        return day + timedelta(days=7)
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def offset_segments(zone: ZoneInfo, first: datetime, last: datetime) -> list[tuple[datetime, int]]:
    """``(from, UTC offset in seconds)`` for each stretch of constant offset in [first, last],
    to the quarter hour (rollup buckets start on quarter hours; so do all of today's offsets)."""

    def offset(at: datetime) -> int:
        delta = at.astimezone(zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    segments = [(first, offset(first))]
    at = first
    while at < last:
        following = min(at + _OFFSET_SAMPLE, last)
        if offset(following) != segments[-1][1]:
            low, high = at, following  # offset(low) is the current one, offset(high) is not
            while high - low > QUARTER:
                middle = low + ((high - low) // QUARTER // 2) * QUARTER
                if offset(middle) == segments[-1][1]:
                    low = middle
                else:
                    high = middle
            segments.append((high, offset(high)))
            if offset(following) != segments[-1][1]:  # two changes within one sample
                segments.append((following, offset(following)))
        at = following
    return segments
