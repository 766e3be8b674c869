"""Billing periods: UTC calendar months, and which of them are closed."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from billfold.cycles.models import ClosedPeriod
from billfold.kit.clock import to_utc

# Namespace of the PostgreSQL advisory locks that order usage ingestion against cycle close.
_PERIOD_LOCK_SPACE = 0x42F0


def month_of(at: datetime) -> tuple[int, int]:
    at = to_utc(at)
    return at.year, at.month


def month_start(year: int, month: int) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


def next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def month_end(year: int, month: int) -> datetime:
    """The first instant after the month (exclusive end)."""
    return month_start(*next_month(year, month))


def is_closed(session: Session, year: int, month: int) -> bool:
    return session.get(ClosedPeriod, (year, month)) is not None


def closed_months(session: Session) -> set[tuple[int, int]]:
    return {(p.year, p.month) for p in session.scalars(select(ClosedPeriod))}


def lock_months_shared(session: Session, months: set[tuple[int, int]]) -> None:
    """Writers of usage hold a shared lock on each month they touch until they commit.

    Cycle close takes the same locks exclusively (:func:`lock_month_exclusive`), so it waits for
    in-flight batches of that month and every later batch sees the month closed. On SQLite every
    write transaction is already serialized (BEGIN IMMEDIATE), so nothing is needed there.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    for year, month in sorted(months):
        session.execute(
            text("SELECT pg_advisory_xact_lock_shared(:space, :key)"),
            {"space": _PERIOD_LOCK_SPACE, "key": year * 100 + month},
        )


def lock_month_exclusive(session: Session, year: int, month: int) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text("SELECT pg_advisory_xact_lock(:space, :key)"),
        {"space": _PERIOD_LOCK_SPACE, "key": year * 100 + month},
    )
