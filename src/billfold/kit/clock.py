"""The one clock of Billfold.

Every "now" in the code comes from :func:`utc_now`, so tests can freeze or move time with
:func:`frozen` instead of patching ``datetime`` in many modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_frozen_at: datetime | None = None


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    if _frozen_at is not None:
        return _frozen_at
    return datetime.now(UTC)


@contextmanager
def frozen(at: datetime) -> Iterator[None]:
    """Freeze :func:`utc_now` at ``at`` (aware) for the duration of the block."""
    global _frozen_at
    if at.tzinfo is None:
        raise ValueError("frozen() needs an aware datetime")
    previous, _frozen_at = _frozen_at, at.astimezone(UTC)
    try:
        yield
    finally:
        _frozen_at = previous


def to_utc(value: datetime) -> datetime:
    """Convert an aware datetime to UTC; naive datetimes are a programming error."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: Billfold handles aware UTC times only")
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and at most 6 fractional digits, as the wire wants."""
    value = to_utc(value)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"
