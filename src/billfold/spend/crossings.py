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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.config import Settings, get_settings
from billfold.cycles.models import BillingCycle
from billfold.figures.watch import CreditChange, CreditListener, TeamMoves
from billfold.kit.clock import utc_now
from billfold.kit.db import SETTINGS_INFO, dialect_insert
from billfold.kit.money import Cents
from billfold.ledger.models import CreditAccount
from billfold.ledger.position import allocate_credit
from billfold.outbox.events import (
    CREDIT_DEPLETED,
    CREDIT_LOW,
    SPEND_BLOCKED,
    SPEND_THRESHOLD_REACHED,
    SPEND_UNBLOCKED,
)
from billfold.outbox.writer import enqueue
from billfold.spend.limits import limits_of, spend_decision
from billfold.spend.models import TeamAlertState
from billfold.teams.alerts import DEFAULT_THRESHOLDS_PERCENT
from billfold.teams.models import Team, TeamAlertSettings


@dataclass
class _Figures:
    """One team's rows, as read."""

    soft: Cents | None
    hard: Cents | None
    balance: Cents
    spends: dict[tuple[int, int], Cents]
    thresholds: tuple[int, ...]
    low_credit: Cents | None
    state: TeamAlertState | None


@dataclass(frozen=True)
class _View:
    """Where a team stands on each line."""

    credit: Cents
    postpaid: Cents
    effective: Cents
    blocked: bool
    reason: str
    reached: frozenset[int]  # thresholds at or under the postpaid spend
    low: bool  # credit below the low-credit threshold
    above_low: bool  # credit above it (re-arms credit.low); True without a threshold
    depleted: bool  # credit at or below zero


@dataclass(frozen=True)
class _Prior:
    blocked: bool
    credit_low: bool
    depleted: bool
    fired: frozenset[int]  # thresholds fired in the current cycle


def _view(
    team_id: uuid.UUID,
    settings: Settings,
    now: datetime,
    f: _Figures,
    *,
    balance: Cents,
    spends: dict[tuple[int, int], Cents],
    limits: tuple[Cents | None, Cents | None],
) -> _View:
    position = allocate_credit(team_id, balance, spends, now)
    decision = spend_decision(
        limits_of(limits[0], limits[1], settings), position, now.year, now.month
    )
    credit, postpaid, effective = (
        position.credit_left,
        decision.postpaid_spend,
        decision.effective_limit,
    )
    reached = (
        frozenset(t for t in f.thresholds if postpaid * 100 >= t * effective)
        if effective > 0
        else frozenset()
    )
    low = f.low_credit is not None and credit < f.low_credit
    above_low = f.low_credit is None or credit > f.low_credit
    return _View(
        credit,
        postpaid,
        effective,
        not decision.allowed,
        decision.reason,
        reached,
        low,
        above_low,
        credit <= 0,
    )


def _derived(before: _View) -> _Prior:
    """Where a team with no state row stood: its figures before the write."""
    return _Prior(before.blocked, before.low, before.depleted, before.reached)


def _prior(state: TeamAlertState | None, before: _View, now: datetime) -> _Prior:
    if state is None:
        return _derived(before)
    same_cycle = (state.cycle_year, state.cycle_month) == (now.year, now.month)
    fired = frozenset(state.thresholds_fired) if same_cycle else before.reached
    return _Prior(state.blocked, state.credit_low, state.depleted, fired)


@dataclass(frozen=True)
class _Outcome:
    events: tuple[tuple[str, dict[str, Any]], ...]
    blocked: bool
    credit_low: bool
    depleted: bool
    fired: frozenset[int]


def _cycle(now: datetime) -> dict[str, int]:
    return {"year": now.year, "month": now.month}


def _outcome(prior: _Prior, after: _View, low_credit: Cents | None, now: datetime) -> _Outcome:
    """The events from ``prior`` to ``after``, and the state after them."""
    events: list[tuple[str, dict[str, Any]]] = []
    spend = {
        "billingCycle": _cycle(now),
        "postpaidSpend": str(after.postpaid),
        "effectiveSpendingLimit": str(after.effective),
    }
    for percent in sorted(after.reached - prior.fired):
        events.append((SPEND_THRESHOLD_REACHED, {**spend, "thresholdPercent": percent}))
    if after.blocked != prior.blocked:
        data = {**spend, "creditLeft": str(after.credit)}
        if after.blocked:
            events.append((SPEND_BLOCKED, {**data, "reason": after.reason}))
        else:
            events.append((SPEND_UNBLOCKED, data))
    credit_low = prior.credit_low
    if not credit_low and after.low:
        credit_low = True
        events.append(
            (CREDIT_LOW, {"creditLeft": str(after.credit), "lowCreditCents": str(low_credit)})
        )
    elif credit_low and after.above_low:
        credit_low = False  # re-armed
    depleted = prior.depleted
    if not depleted and after.depleted:
        depleted = True
        events.append((CREDIT_DEPLETED, {"creditLeft": str(after.credit)}))
    elif depleted and not after.depleted:
        depleted = False  # re-armed
    return _Outcome(tuple(events), after.blocked, credit_low, depleted, prior.fired | after.reached)


class CrossingDetector:
    """The figure watch's detector (``wiring.py``: ``watch.use(crossing_detector)``)."""

    def detect(
        self,
        session: Session,
        moves: Mapping[uuid.UUID, TeamMoves],
        listeners: Sequence[CreditListener],
    ) -> None:
        settings: Settings = session.info.get(SETTINGS_INFO) or get_settings()
        now = utc_now()
        team_ids = sorted(moves)
        figures = self._read(session, team_ids)
        lowered: list[CreditChange] = []
        crossing: list[uuid.UUID] = []
        for team_id in team_ids:
            f = figures.get(team_id)
            if f is None:
                continue  # the team is gone
            before, after = self._before_after(team_id, settings, now, f, moves[team_id])
            if after.credit < before.credit:
                lowered.append(CreditChange(team_id, before.credit, after.credit))
            outcome = _outcome(_prior(f.state, before, now), after, f.low_credit, now)
            if outcome.events or (f.state is not None and self._changed(f.state, outcome, now)):
                crossing.append(team_id)
        if crossing:
            self._fire(session, settings, now, crossing, moves, figures)
        if lowered:
            for listener in listeners:
                listener.credit_lowered(session, lowered)

    @staticmethod
    def _before_after(
        team_id: uuid.UUID, settings: Settings, now: datetime, f: _Figures, move: TeamMoves
    ) -> tuple[_View, _View]:
        after = _view(
            team_id, settings, now, f, balance=f.balance, spends=f.spends, limits=(f.soft, f.hard)
        )
        before_spends = {
            cycle: Cents(spend - move.spend_deltas.get(cycle, 0))
            for cycle, spend in f.spends.items()
        }
        before = _view(
            team_id,
            settings,
            now,
            f,
            balance=Cents(f.balance - move.credit_delta),
            spends=before_spends,
            limits=move.limits_before or (f.soft, f.hard),
        )
        return before, after

    @staticmethod
    def _changed(state: TeamAlertState, outcome: _Outcome, now: datetime) -> bool:
        return (
            state.blocked != outcome.blocked
            or state.credit_low != outcome.credit_low
            or state.depleted != outcome.depleted
            or (
                (state.cycle_year, state.cycle_month) != (now.year, now.month)
                and bool(outcome.fired)
            )
        )

    def _fire(
        self,
        session: Session,
        settings: Settings,
        now: datetime,
        team_ids: list[uuid.UUID],
        moves: Mapping[uuid.UUID, TeamMoves],
        first: dict[uuid.UUID, _Figures],
    ) -> None:
        """Lock the teams' state rows (created from their figures before the write when
        missing), read their figures again under the lock, and fire what they still cross."""
        insert = dialect_insert(session)
        rows = []
        for team_id in team_ids:
            if first[team_id].state is None:
                before, _ = self._before_after(
                    team_id, settings, now, first[team_id], moves[team_id]
                )
                prior = _derived(before)
                rows.append(
                    {
                        "team_id": team_id,
                        "blocked": prior.blocked,
                        "credit_low": prior.credit_low,
                        "depleted": prior.depleted,
                        "cycle_year": now.year,
                        "cycle_month": now.month,
                        "thresholds_fired": sorted(prior.fired),
                        "updated_at": now,
                    }
                )
        if rows:
            session.execute(
                insert(TeamAlertState).on_conflict_do_nothing(index_elements=["team_id"]), rows
            )
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
            before, after = self._before_after(team_id, settings, now, f, moves[team_id])
            outcome = _outcome(_prior(state, before, now), after, f.low_credit, now)
            for type_, data in outcome.events:
                enqueue(session, type_, team_id, data)
            state.blocked = outcome.blocked
            state.credit_low = outcome.credit_low
            state.depleted = outcome.depleted
            state.cycle_year, state.cycle_month = now.year, now.month
            state.thresholds_fired = sorted(outcome.fired)
            state.updated_at = now
        session.flush()

    @staticmethod
    def _read(session: Session, team_ids: list[uuid.UUID]) -> dict[uuid.UUID, _Figures]:
        """Every team's figures in one statement: one row per open cycle (or one with no cycle)."""
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
                TeamAlertState,
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
            .execution_options(populate_existing=True)
        ).all()
        figures: dict[uuid.UUID, _Figures] = {}
        for team_id, soft, hard, balance, year, month, spend, thresholds, low, state in rows:
            f = figures.get(team_id)
            if f is None:
                f = figures[team_id] = _Figures(
                    soft,
                    hard,
                    Cents(balance or 0),
                    {},
                    DEFAULT_THRESHOLDS_PERCENT if thresholds is None else tuple(thresholds),
                    low,
                    state,
                )
            if year is not None and month is not None:
                f.spends[(year, month)] = Cents(spend or 0)
        return figures


crossing_detector = CrossingDetector()
