"""Crossing events: a team's figures crossed a line (a spend threshold, its limit, its low-credit
threshold, zero credit), detected from the write that crossed it, in that write's transaction.

The writes note what they moved on the figure watch (``figures/watch.py``); just before their
transaction commits, :meth:`CrossingDetector.detect` gets every team a transaction moved, once:

1. one statement reads each team's figures AFTER the write (limits, posted credit, open cycles'
   spend, its alert settings and its :class:`TeamAlertState`). The writes' own row locks are held
   (an ingestion batch's cycle rows, a ledger write's credit account, a limit change's team row),
   so two batches of one team read one after the other, each after the other's commit. BEFORE is
   the same figures less the transaction's own deltas (``before = after - delta``);
2. per team, pure arithmetic (no I/O): the position, the limits, the decision of the spend check
   (``spend_decision``) and the lines, before and after. Where the team stood is its state row,
   else (no event ever fired for it) its figures before the write. Nothing crossed -- the usual
   batch -- ends here: one read per transaction, not per event;
3. a team that crossed something is locked (its state row, ``FOR UPDATE``, created if missing),
   its figures are read again under that lock (a concurrent credit write may have committed in
   between), the events it still crosses against the locked state go into the outbox
   (``outbox.enqueue``), and the state row is updated. Two transactions crossing the same line
   therefore fire once: the second finds the line crossed in the row the first committed.

Then every :class:`~billfold.figures.watch.CreditListener` hears of the teams whose live credit
fell (auto top-up).

Lines, for the current cycle (UTC month):

* ``spend.threshold_reached``: postpaid spend >= t% of the effective limit, for each t of the
  team's thresholds (default 50, 80, 100); once per threshold per cycle (a limit raised and
  reached again does not repeat it). No threshold applies while the effective limit is 0.
* ``spend.blocked`` / ``spend.unblocked``: the spend check's answer (``spend_decision``) turned
  to "no" / "yes": the limit reached, or a credit-only team out of credit / a limit raised,
  credit added, a new cycle (seen by the first write of the new cycle, or its close).
* ``credit.low``: live credit < the team's ``lowCreditCents``; re-armed once credit is above it.
* ``credit.depleted``: live credit reached zero (or less); re-armed once it is above zero.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.config import Settings, get_settings
from billfold.cycles.models import BillingCycle
from billfold.figures.watch import CreditChange, CreditListener, TeamMoves
from billfold.kit.clock import utc_now
from billfold.kit.db import SETTINGS_INFO, dialect_insert
from billfold.kit.money import Cents
from billfold.ledger.models import CreditAccount
from billfold.outbox.events import (
    CREDIT_DEPLETED,
    CREDIT_LOW,
    SPEND_BLOCKED,
    SPEND_THRESHOLD_REACHED,
    SPEND_UNBLOCKED,
)
from billfold.outbox.writer import enqueue
from billfold.spend.limits import REASON_LIMIT_REACHED, REASON_PREPAID_EXHAUSTED
from billfold.spend.models import TeamAlertState
from billfold.teams.alerts import DEFAULT_THRESHOLDS_PERCENT
from billfold.teams.models import Team, TeamAlertSettings

Cycle = tuple[int, int]  # (year, month)


class _State(NamedTuple):
    """A team's ``team_alert_states`` row."""

    blocked: bool
    credit_low: bool
    depleted: bool
    cycle: Cycle
    fired: tuple[int, ...]


class _Figures(NamedTuple):
    """One team's rows, as read."""

    soft: int | None
    hard: int | None
    balance: int
    spends: dict[Cycle, int]
    thresholds: tuple[int, ...]  # ascending (teams/schemas.py)
    low_credit: int | None
    state: _State | None


def standing(
    balance: int,
    spends: Mapping[Cycle, int],
    soft: int | None,
    hard: int | None,
    default_hard: int,
    current: Cycle,
) -> tuple[int, int, int]:
    """(live credit, the current cycle's postpaid spend, the effective limit): the rule of
    ``ledger.position.allocate_credit`` (credit pays open cycles, oldest first) and
    ``spend.limits.limits_of``, in plain integers for the per-team loop of every batch
    (tests/spend/test_crossing_rule.py holds it to them)."""
    available = balance
    postpaid = 0
    for cycle in sorted(spends) if len(spends) > 1 else spends:
        spend = spends[cycle]
        used = min(available if available > 0 else 0, spend)
        available -= used
        if cycle == current:
            postpaid = spend - used
    effective_hard = hard if hard is not None else default_hard
    effective = effective_hard if soft is None or soft > effective_hard else soft
    return available, postpaid, effective


class _View(NamedTuple):
    """Where a team stands on each line."""

    credit: int
    postpaid: int
    effective: int
    blocked: bool  # what the spend check answers "no" to: no credit left and the limit reached
    reached: tuple[int, ...]  # the thresholds at or under the postpaid spend
    low: bool  # credit below the low-credit threshold
    above_low: bool  # credit above it (re-arms credit.low); True without a threshold
    depleted: bool  # credit at or below zero


def _view(f: _Figures, credit: int, postpaid: int, effective: int) -> _View:
    reached = (
        tuple(t for t in f.thresholds if postpaid * 100 >= t * effective) if effective > 0 else ()
    )
    low = f.low_credit
    return _View(
        credit,
        postpaid,
        effective,
        credit <= 0 and postpaid >= effective,
        reached,
        low is not None and credit < low,
        low is None or credit > low,
        credit <= 0,
    )


class _Prior(NamedTuple):
    blocked: bool
    credit_low: bool
    depleted: bool
    fired: frozenset[int]  # thresholds fired in the current cycle


def _prior(state: _State | None, before: _View, current: Cycle) -> _Prior:
    """Where the team stood: its state row, else (no event ever fired) its figures before."""
    if state is None:
        return _Prior(before.blocked, before.low, before.depleted, frozenset(before.reached))
    fired = state.fired if state.cycle == current else before.reached
    return _Prior(state.blocked, state.credit_low, state.depleted, frozenset(fired))


class _Outcome(NamedTuple):
    kinds: tuple[tuple[str, int | None], ...]  # (event type, threshold)
    blocked: bool
    credit_low: bool
    depleted: bool
    fired: frozenset[int]


def _outcome(prior: _Prior, after: _View) -> _Outcome:
    """The events from ``prior`` to ``after``, and where the team stands after them."""
    kinds: list[tuple[str, int | None]] = [
        (SPEND_THRESHOLD_REACHED, t) for t in after.reached if t not in prior.fired
    ]
    if after.blocked != prior.blocked:
        kinds.append((SPEND_BLOCKED if after.blocked else SPEND_UNBLOCKED, None))
    credit_low = prior.credit_low
    if not credit_low and after.low:
        credit_low = True
        kinds.append((CREDIT_LOW, None))
    elif credit_low and after.above_low:
        credit_low = False  # re-armed
    depleted = prior.depleted
    if not depleted and after.depleted:
        depleted = True
        kinds.append((CREDIT_DEPLETED, None))
    elif depleted and not after.depleted:
        depleted = False  # re-armed
    fired = prior.fired.union(after.reached) if after.reached else prior.fired
    return _Outcome(tuple(kinds), after.blocked, credit_low, depleted, fired)


def _event_data(
    kind: str, threshold: int | None, after: _View, f: _Figures, current: Cycle
) -> dict[str, Any]:
    if kind in (CREDIT_LOW, CREDIT_DEPLETED):
        data = {"creditLeft": str(after.credit)}
        if kind == CREDIT_LOW:
            data["lowCreditCents"] = str(f.low_credit)
        return data
    spend: dict[str, Any] = {
        "billingCycle": {"year": current[0], "month": current[1]},
        "postpaidSpend": str(after.postpaid),
        "effectiveSpendingLimit": str(after.effective),
    }
    if kind == SPEND_THRESHOLD_REACHED:
        spend["thresholdPercent"] = threshold
        return spend
    spend["creditLeft"] = str(after.credit)
    if kind == SPEND_BLOCKED:
        spend["reason"] = REASON_PREPAID_EXHAUSTED if after.effective == 0 else REASON_LIMIT_REACHED
    return spend


def _moved(state: _State, outcome: _Outcome, current: Cycle) -> bool:
    """Does the state row need writing although nothing fires (a re-arm, a new cycle)?"""
    return (
        state.blocked != outcome.blocked
        or state.credit_low != outcome.credit_low
        or state.depleted != outcome.depleted
        or (state.cycle != current and bool(outcome.fired))
    )


# One statement: each team's limits, posted credit, open cycles (one row each, or one row of
# NULLs), alert settings and state. On PostgreSQL the ids are ONE array parameter (an IN list of
# hundreds of placeholders costs psycopg more to convert than PostgreSQL to run).
_READ_PG = """
    SELECT t.id, t.soft_limit_cents, t.hard_limit_override_cents, ca.balance_cents,
           bc.year, bc.month, bc.spend_cents, a.spend_thresholds_percent, a.low_credit_cents,
           s.blocked, s.credit_low, s.depleted, s.cycle_year, s.cycle_month, s.thresholds_fired
    FROM teams t
    LEFT JOIN credit_accounts ca ON ca.team_id = t.id
    LEFT JOIN billing_cycles bc ON bc.team_id = t.id AND bc.closed_at IS NULL
    LEFT JOIN team_alert_settings a ON a.team_id = t.id
    LEFT JOIN team_alert_states s ON s.team_id = t.id
    WHERE t.id = ANY(%(ids)s)
"""


def lock_current_cycles(session: Session, team_ids: Sequence[uuid.UUID], current: Cycle) -> None:
    """Lock the teams' ``current`` cycle rows (PostgreSQL; rows that do not exist yet are not
    waited for). A write that is not a batch takes them before the rows of its own that a batch's
    credit listeners lock (auto top-up's settings row), in the order batches take them: cycle row
    first. The detector takes them again at commit (held already: free)."""
    if not team_ids or session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        select(BillingCycle.team_id)
        .where(
            BillingCycle.team_id.in_(sorted(team_ids)),
            BillingCycle.year == current[0],
            BillingCycle.month == current[1],
        )
        .order_by(BillingCycle.team_id)
        .with_for_update()
    ).all()


class CrossingDetector:
    """The figure watch's detector (``wiring.py``: ``watch.use(crossing_detector)``)."""

    def detect(
        self,
        session: Session,
        moves: Mapping[uuid.UUID, TeamMoves],
        listeners: Sequence[CreditListener],
    ) -> None:
        settings: Settings = session.info.get(SETTINGS_INFO) or get_settings()
        default_hard = settings.default_hard_limit_cents
        now = utc_now()
        current = (now.year, now.month)
        team_ids = sorted(moves)
        self._meet_batches(session, team_ids, moves, current)
        figures = self._read(session, team_ids)
        lowered: list[CreditChange] = []
        crossing: list[uuid.UUID] = []
        for team_id in team_ids:
            f = figures.get(team_id)
            if f is None:
                continue  # the team is gone
            before, after = self._before_after(f, moves[team_id], default_hard, current)
            if after.credit < before.credit:
                lowered.append(CreditChange(team_id, Cents(before.credit), Cents(after.credit)))
            outcome = _outcome(_prior(f.state, before, current), after)
            if outcome.kinds or (f.state is not None and _moved(f.state, outcome, current)):
                crossing.append(team_id)
        if crossing:
            self._fire(session, default_hard, now, crossing, moves, figures)
        if lowered:
            for listener in listeners:
                listener.credit_lowered(session, lowered)

    @staticmethod
    def _meet_batches(
        session: Session,
        team_ids: list[uuid.UUID],
        moves: Mapping[uuid.UUID, TeamMoves],
        current: Cycle,
    ) -> None:
        """A write that is not a batch of the current cycle (a ledger entry, a limit change, a
        close) locks the teams' current cycle rows before reading: a batch in flight holds
        them, so the write reads that batch's committed spend, and a batch that comes after
        reads the write's (it waits on the row until the write commits). Without that, each
        could read the figures without the other and miss a line only their sum crosses. On
        PostgreSQL (SQLite's writers are serialized already); rows that do not exist yet (the
        team's first batch of the month) are not waited for."""
        others = [t for t in team_ids if current not in moves[t].spend_deltas]
        lock_current_cycles(session, others, current)

    @staticmethod
    def _before_after(
        f: _Figures, move: TeamMoves, default_hard: int, current: Cycle
    ) -> tuple[_View, _View]:
        after = _view(f, *standing(f.balance, f.spends, f.soft, f.hard, default_hard, current))
        deltas = move.spend_deltas
        spends = (
            {cycle: spend - deltas.get(cycle, 0) for cycle, spend in f.spends.items()}
            if deltas
            else f.spends
        )
        soft, hard = move.limits_before or (f.soft, f.hard)
        before = _view(
            f, *standing(f.balance - move.credit_delta, spends, soft, hard, default_hard, current)
        )
        return before, after

    def _fire(
        self,
        session: Session,
        default_hard: int,
        now: datetime,
        team_ids: list[uuid.UUID],
        moves: Mapping[uuid.UUID, TeamMoves],
        first: dict[uuid.UUID, _Figures],
    ) -> None:
        """Lock the teams' state rows (created from their figures before the write when
        missing), read their figures again under the lock, and fire what they still cross."""
        current = (now.year, now.month)
        rows = []
        for team_id in team_ids:
            read = first[team_id]
            if read.state is None:
                before, _ = self._before_after(read, moves[team_id], default_hard, current)
                prior = _prior(None, before, current)
                rows.append(
                    {
                        "team_id": team_id,
                        "blocked": prior.blocked,
                        "credit_low": prior.credit_low,
                        "depleted": prior.depleted,
                        "cycle_year": current[0],
                        "cycle_month": current[1],
                        "thresholds_fired": sorted(prior.fired),
                        "updated_at": now,
                    }
                )
        if rows:
            insert = dialect_insert(session)
            session.execute(
                insert(TeamAlertState).on_conflict_do_nothing(index_elements=["team_id"]), rows
            )
        # In team order (the lock order); then the figures again: what committed while this
        # transaction waited for a lock is in them.
        states = {
            state.team_id: state
            for state in session.scalars(
                select(TeamAlertState)
                .where(TeamAlertState.team_id.in_(team_ids))
                .order_by(TeamAlertState.team_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        }
        figures = self._read(session, team_ids)
        for team_id in team_ids:
            f, state = figures.get(team_id), states.get(team_id)
            if f is None or state is None:
                continue
            before, after = self._before_after(f, moves[team_id], default_hard, current)
            locked = _State(
                state.blocked,
                state.credit_low,
                state.depleted,
                (state.cycle_year, state.cycle_month),
                tuple(state.thresholds_fired),
            )
            outcome = _outcome(_prior(locked, before, current), after)
            for kind, threshold in outcome.kinds:
                enqueue(session, kind, team_id, _event_data(kind, threshold, after, f, current))
            state.blocked = outcome.blocked
            state.credit_low = outcome.credit_low
            state.depleted = outcome.depleted
            state.cycle_year, state.cycle_month = current
            state.thresholds_fired = sorted(outcome.fired)
            state.updated_at = now
        session.flush()

    @staticmethod
    def _read(session: Session, team_ids: list[uuid.UUID]) -> dict[uuid.UUID, _Figures]:
        """Every team's figures in one statement: one row per open cycle (or one with no cycle)."""
        bind = session.get_bind()
        rows: Sequence[Sequence[Any]]
        if bind.dialect.name == "postgresql" and bind.dialect.driver == "psycopg":
            rows = session.connection().exec_driver_sql(_READ_PG, {"ids": team_ids}).all()
        else:
            rows = session.execute(
                select(
                    Team.id,
                    Team.soft_limit_cents,
                    Team.hard_limit_override_cents,
                    CreditAccount.balance_cents,
                    BillingCycle.year,
                    BillingCycle.month,
                    BillingCycle.spend_cents,
                    TeamAlertSettings.spend_thresholds_percent,
                    TeamAlertSettings.low_credit_cents,
                    TeamAlertState.blocked,
                    TeamAlertState.credit_low,
                    TeamAlertState.depleted,
                    TeamAlertState.cycle_year,
                    TeamAlertState.cycle_month,
                    TeamAlertState.thresholds_fired,
                )
                .select_from(Team)
                .outerjoin(CreditAccount, CreditAccount.team_id == Team.id)
                .outerjoin(
                    BillingCycle,
                    (BillingCycle.team_id == Team.id) & BillingCycle.closed_at.is_(None),
                )
                .outerjoin(TeamAlertSettings, TeamAlertSettings.team_id == Team.id)
                .outerjoin(TeamAlertState, TeamAlertState.team_id == Team.id)
                .where(Team.id.in_(team_ids))
            ).all()
        figures: dict[uuid.UUID, _Figures] = {}
        for row in rows:
            team_id = row[0]
            f = figures.get(team_id)
            if f is None:
                thresholds, low, blocked = row[7], row[8], row[9]
                f = figures[team_id] = _Figures(
                    row[1],
                    row[2],
                    row[3] or 0,
                    {},
                    DEFAULT_THRESHOLDS_PERCENT if thresholds is None else tuple(thresholds),
                    low,
                    None
                    if blocked is None
                    else _State(blocked, row[10], row[11], (row[12], row[13]), tuple(row[14])),
                )
            if row[4] is not None:
                f.spends[(row[4], row[5])] = row[6] or 0
        return figures


crossing_detector = CrossingDetector()
