"""Credit lots: which credit a debit consumed, so that an expiring grant loses only its unused rest.

The ledger stores amounts, not lots; lots are re-derived here by replaying a team's entries in
booking order (``seq``). Pure functions, no database: the service feeds them the entries.

* Every entry that adds credit (purchase, grant, refund, positive adjustment) is a lot.
* A debit consumes the lots with the **soonest expiry first** (lots that never expire last; equal
  expiries in booking order). The customer keeps the longest-lived credit.
* An ``expiry`` entry names its grant (``reference`` = the grant's entry id) and takes exactly its
  unused rest. What an expired grant still holds after that is credit that open cycles' usage
  already drew before the expiry: it is reserved for that usage, so only SPEND entries (the usage,
  booked at cycle close) consume it; other debits (negative adjustments, expiries) take only credit
  that has not expired.
* A debit larger than the lots it may consume leaves a deficit, repaid by the next lots. The
  service never books such a debit (adjustments and expiries are bounded by the credit left); the
  rule only keeps the replay total and the cached balance equal whatever happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from billfold.kit.money import Cents


class EntryLike(Protocol):
    """What the replay reads of a ledger entry (LedgerEntry satisfies it)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def kind(self) -> str: ...

    @property
    def credit_cents(self) -> Cents: ...

    @property
    def expires_at(self) -> datetime | None: ...

    @property
    def reference(self) -> str: ...

    @property
    def seq(self) -> int: ...


_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass
class Lot:
    entry_id: uuid.UUID
    kind: str
    seq: int
    amount: Cents
    expires_at: datetime | None
    remaining: Cents
    expired: bool = False  # an expiry entry for it has been booked

    def order(self) -> tuple[datetime, int]:
        """Consumption order: soonest expiry first, never-expiring last, then booking order."""
        return (self.expires_at or _NEVER, self.seq)


@dataclass
class Lots:
    lots: dict[uuid.UUID, Lot]
    deficit: Cents  # debit not covered by any lot (never positive in a healthy ledger)

    def total(self) -> Cents:
        return sum((lot.remaining for lot in self.lots.values()), Cents(0)) - self.deficit

    def unused_at_expiry(self, grant_id: uuid.UUID, live_used: Cents) -> Cents:
        """The rest of ``grant_id`` that expires, given the credit open cycles drew before it.

        ``live_used`` (credit used by open cycles' usage up to the expiry) is not booked yet: it is
        allocated over the lots in consumption order, exactly as the SPEND entries will be at cycle
        close, and the grant expires with what that allocation leaves it.
        """
        grant = self.lots[grant_id]
        ahead = sum(
            (
                lot.remaining
                for lot in self.lots.values()
                if lot.remaining > 0 and lot.order() < grant.order()
            ),
            Cents(0),
        )
        drawn = min(grant.remaining, max(live_used - ahead, Cents(0)))
        return grant.remaining - drawn


def replay(entries: Iterable[EntryLike]) -> Lots:
    """The lots after every entry, in booking order."""
    lots: dict[uuid.UUID, Lot] = {}
    deficit = Cents(0)
    for entry in sorted(entries, key=lambda e: e.seq):
        amount = entry.credit_cents
        if entry.kind == "expiry":
            lot = lots[uuid.UUID(entry.reference)]
            lot.remaining += amount  # amount <= 0: exactly the unused rest at booking
            lot.expired = True
        elif amount > 0:
            repaid = min(deficit, amount)
            deficit -= repaid
            lots[entry.id] = Lot(
                entry.id, entry.kind, entry.seq, amount, entry.expires_at, amount - repaid
            )
        elif amount < 0:
            need = -amount
            for lot in sorted(lots.values(), key=Lot.order):
                if need == 0:
                    break
                if lot.remaining <= 0 or (lot.expired and entry.kind != "spend"):
                    continue
                taken = min(lot.remaining, need)
                lot.remaining -= taken
                need -= taken
            deficit += need
    return Lots(lots, deficit)


def unexpired_grants(lots: Lots) -> list[Lot]:
    """Grants with an expiry that no expiry entry has closed yet, soonest first."""
    return sorted(
        (
            lot
            for lot in lots.lots.values()
            if lot.kind == "grant" and lot.expires_at is not None and not lot.expired
        ),
        key=Lot.order,
    )
