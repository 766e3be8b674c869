"""Moves of a team's figures, noted by the writes, handled once per transaction, before commit.

A write that moves a team's spend, live credit or limits *notes* it on its session
(:meth:`FigureWatch.spend_added`, :meth:`FigureWatch.moved`): a few dict updates, no SQL. Just
before that transaction commits (SQLAlchemy's ``before_commit``, so still inside it), the watch
hands everything noted to the registered :class:`Detector` once (``spend/crossings.py``: it reads
the teams' figures in one statement, fires the crossing events into the outbox, and tells the
:class:`CreditListener` s of every team whose live credit fell). So an ingestion batch is handled
once per batch and per team, never per event; a flow that books several entries (cycle close:
the SPEND entry, then the cycle marked closed) is looked at once, in its final state; and what a
rolled-back transaction noted is forgotten with it.

Lower domains import only this module; ``wiring.py`` installs the detector (``watch.use``) and
any listener (``watch.listen``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from billfold.kit.money import Cents

_KEY = "billfold.figures.moves"


@dataclass(frozen=True, slots=True)
class CreditChange:
    """A team's live credit (``LedgerService.credit_position(...).credit_left``: posted credit
    less what its open cycles' usage used; never below zero through usage) before and after one
    transaction's writes, in cents."""

    team_id: uuid.UUID
    before: Cents
    after: Cents


class CreditListener(Protocol):
    """Told, inside the transaction of every write that LOWERED live credit (an ingestion batch,
    an adjustment, a refund, an expiry), each such team's credit before and after it.

    Runs before the commit, in the writer's transaction: what it adds commits (or rolls back)
    with the write. It must not commit. ``after`` is read in that transaction after the write
    (under the write's row locks); a credit write of another transaction that commits while this
    one runs may not be in it, so a listener that acts (a charge) locks its own row and re-reads
    what it needs (``LedgerService.credit_position``)."""

    def credit_lowered(self, session: Session, changes: Sequence[CreditChange]) -> None: ...


@dataclass
class TeamMoves:
    """What one transaction did to one team: its live credit moved by ``credit_delta`` (posted
    credit; a cycle close's SPEND entry is no move), its cycles' spend by ``spend_deltas``, and
    ``limits_before`` (soft, hard override) when its limits changed."""

    credit_delta: int = 0
    spend_deltas: dict[tuple[int, int], int] = field(default_factory=dict)
    limits_before: tuple[Cents | None, Cents | None] | None = None


class Detector(Protocol):
    """Handles a transaction's moves (``spend/crossings.py``), before its commit."""

    def detect(
        self,
        session: Session,
        moves: Mapping[uuid.UUID, TeamMoves],
        listeners: Sequence[CreditListener],
    ) -> None: ...


class FigureWatch:
    def __init__(self) -> None:
        self._detector: Detector | None = None
        self._listeners: list[CreditListener] = []

    # --- wiring ----------------------------------------------------------------------------------

    def use(self, detector: Detector | None) -> None:
        """Install the detector (``wiring.py``); ``None``: moves are noted and forgotten."""
        self._detector = detector

    def listen(self, listener: CreditListener) -> None:
        """Add a listener of lowered credit (``wiring.py``); idempotent."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def unlisten(self, listener: CreditListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # --- what writers note -----------------------------------------------------------------------

    @staticmethod
    def _moves(session: Session) -> dict[uuid.UUID, TeamMoves]:
        moves: dict[uuid.UUID, TeamMoves] | None = session.info.get(_KEY)
        if moves is None:
            moves = session.info[_KEY] = {}
        return moves

    def spend_added(
        self, session: Session, deltas: Iterable[tuple[uuid.UUID, int, int, int]]
    ) -> None:
        """An ingestion batch (or a cancellation) moved these cycles' spend: (team, year, month,
        cents). Per cycle, not per event."""
        moves = self._moves(session)
        for team_id, year, month, delta in deltas:
            team = moves.get(team_id)
            if team is None:
                team = moves[team_id] = TeamMoves()
            team.spend_deltas[(year, month)] = team.spend_deltas.get((year, month), 0) + delta

    def moved(
        self,
        session: Session,
        team_id: uuid.UUID,
        *,
        credit_delta: int = 0,
        limits_before: tuple[Cents | None, Cents | None] | None = None,
    ) -> None:
        """Any other write moved the team's figures: its posted credit by ``credit_delta``
        (a ledger entry), its limits (``limits_before``: the two columns before the change), or
        anything else (a cycle closed: no delta)."""
        moves = self._moves(session)
        team = moves.get(team_id)
        if team is None:
            team = moves[team_id] = TeamMoves()
        team.credit_delta += credit_delta
        if limits_before is not None and team.limits_before is None:
            team.limits_before = limits_before

    # --- the hook ----------------------------------------------------------------------------

    def run(self, session: Session) -> None:
        """Hand the noted moves to the detector (called before commit; also callable directly)."""
        moves = session.info.pop(_KEY, None)
        if moves and self._detector is not None:
            self._detector.detect(session, moves, tuple(self._listeners))


watch = FigureWatch()


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if _KEY in session.info:
        watch.run(session)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended (a rollback; a commit popped them already): its notes go
    # with it. A savepoint's end keeps them.
    if transaction.parent is None:
        session.info.pop(_KEY, None)
