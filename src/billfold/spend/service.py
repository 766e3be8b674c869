"""Spending limits and the spend check: may a team spend now?"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import (
    Engine,
)
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.cycles.periods import month_end, month_start
from billfold.figures.watch import watch
from billfold.kit.clock import utc_now
from billfold.kit.db import (
    transaction,
)
from billfold.kit.errors import (
    InvalidField,
    ResourceNotFound,
)
from billfold.kit.money import Cents
from billfold.ledger.position import (
    allocate_credit,
)
from billfold.ledger.service import ledger_service
from billfold.spend.limits import (
    SpendDecision,
    SpendingLimits,
    limits_of,
    spend_decision,
    spending_limits,
)
from billfold.spend.reader import _EPOCH, _SPEND_CHECK, SpendRow, _spend_reader
from billfold.teams.service import team_service


class SpendSnapshot(NamedTuple):
    """A spend check's answer and when it holds unless the team's rows change: from the start of
    the month until the next (a new cycle) or the next grant expiry, whichever comes first (a
    start too, because tests move clocks backwards). ``decision`` is None when
    an expiry is due now (the ledger books it first, see ``spend_status_booking_expiry``)."""

    decision: SpendDecision | None
    valid_from: datetime
    valid_until: datetime


class SpendService:
    def limits(self, session: Session, settings: Settings, team_id: uuid.UUID) -> SpendingLimits:
        return spending_limits(team_service.get(session, team_id), settings)

    def set_soft_limit(
        self, session: Session, settings: Settings, team_id: uuid.UUID, desired: Cents
    ) -> Cents:
        """The team's own limit (§10). It may not exceed the effective hard limit.

        The team row is locked so the check against the hard limit holds until commit (an
        operator lowering the hard limit at the same moment waits, or is waited for).
        """
        field = "desiredSoftSpendingLimit.val"
        if desired < 0:
            raise InvalidField(field, "must not be negative")
        team = team_service.get(session, team_id, for_update=True)
        limits = spending_limits(team, settings)
        if desired > limits.effective_hard:
            raise InvalidField(
                field,
                f"must not exceed the hard spending limit (effectiveHardSl) of "
                f"{limits.effective_hard} cents",
                code="above_hard_limit",
            )
        watch.moved(
            session, team_id, limits_before=(team.soft_limit_cents, team.hard_limit_override_cents)
        )
        team.soft_limit_cents = desired
        return desired

    def set_hard_limit(
        self, session: Session, settings: Settings, team_id: uuid.UUID, amount: Cents | None
    ) -> SpendingLimits:
        """The operator's per-team hard limit; ``None`` falls back to ``hardSlAuto``.

        A soft limit above the new hard limit is kept as the team set it (see limits.py); the
        effective limit is the lower of the two at once.
        """
        if amount is not None and amount < 0:
            raise InvalidField("amount", "must not be negative (null removes the override)")
        team = team_service.get(session, team_id, for_update=True)
        watch.moved(
            session, team_id, limits_before=(team.soft_limit_cents, team.hard_limit_override_cents)
        )
        team.hard_limit_override_cents = amount
        return spending_limits(team, settings)

    def spend_status(
        self, session: Session, settings: Settings, team_id: uuid.UUID
    ) -> SpendDecision:
        """May the team spend now? Three indexed reads: the team, its credit account, and its
        open cycles -- rows that ingestion updates in the batch's own transaction, so the answer
        is exact as of the last committed batch, in every process, without a cache."""
        team = team_service.get(session, team_id)
        now = utc_now()
        position = ledger_service.credit_position(session, team_id, now)
        return spend_decision(spending_limits(team, settings), position, now.year, now.month)

    def reads_inline(self, engine: Engine) -> bool:
        """May the spend check's one-statement read run on the event loop instead of a worker
        thread? On PostgreSQL: its reader never waits for a connection (it opens one when none is
        idle), and the indexed read (~65 us) costs less than the hop to a thread and back. Not on
        SQLite: a read there takes the database write lock and may wait for it.
        """
        return engine.dialect.name == "postgresql"

    def spend_snapshot(
        self, engine: Engine, settings: Settings, team_id: uuid.UUID
    ) -> SpendSnapshot:
        """:meth:`spend_status` in one round trip, for the gateway's per-request check.

        The same answer from the same committed rows, read by one statement (one snapshot, more
        consistent than three); on PostgreSQL through the check's own connections
        (:class:`_SpendReader`). Its decision is None when a grant's expiry is due: the ledger
        must book it before the credit is read, in a transaction
        (:meth:`spend_status_booking_expiry`).
        """
        now = utc_now()
        rows: Sequence[SpendRow]
        if engine.dialect.name == "postgresql":
            rows = _spend_reader(engine).read(team_id, now)
        else:
            with engine.connect() as connection:
                result = connection.execute(_SPEND_CHECK, {"team_id": team_id, "now": now})
                rows = [tuple(row) for row in result]
        return self._spend_snapshot(rows, settings, team_id, now)

    def spend_status_booking_expiry(
        self, sessions: sessionmaker[Session], settings: Settings, team_id: uuid.UUID
    ) -> SpendDecision:
        """:meth:`spend_status` in a transaction of its own (the position books due expiries)."""
        with transaction(sessions) as session:
            return self.spend_status(session, settings, team_id)

    def _spend_snapshot(
        self, rows: Sequence[SpendRow], settings: Settings, team_id: uuid.UUID, now: datetime
    ) -> SpendSnapshot:
        if not rows:
            raise ResourceNotFound(f"team {team_id} not found", code="team_not_found")
        soft, hard, credit, expiry_due, next_expiry_us = rows[0][:5]
        # Nothing but a new month or an expiry changes the answer without a write to these rows.
        valid_from, valid_until = month_start(now.year, now.month), month_end(now.year, now.month)
        if next_expiry_us is not None:
            valid_until = min(valid_until, _EPOCH + timedelta(microseconds=next_expiry_us))
        if expiry_due:
            # credit expires now: the ledger books that before anyone reads it
            return SpendSnapshot(None, valid_from, valid_until)
        spends = {
            (r[5], r[6]): r[7] or Cents(0) for r in rows if r[5] is not None and r[6] is not None
        }
        position = allocate_credit(team_id, credit or Cents(0), spends, now)
        limits = limits_of(soft, hard, settings)
        decision = spend_decision(limits, position, now.year, now.month)
        return SpendSnapshot(decision, valid_from, valid_until)


spend_service = SpendService()
