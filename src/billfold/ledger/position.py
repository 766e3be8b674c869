"""The credit position of a team: what credit it has and how its open cycles draw on it.

Usage is rated into billing cycles (``billing_cycles.spend_cents``); credit pays each open cycle's
spend first, oldest cycle first, and what credit does not cover is postpaid. Nothing here is cached
beyond the ledger's own balance row, so the position is exact as of the last committed batch:

    credit_used(c)  = min(credit available to c, spend(c))
    credit_left     = posted credit - sum of credit_used over open cycles

At cycle close the cycle's ``credit_used`` becomes an immutable SPEND ledger entry and its postpaid
rest becomes the invoice, so closed cycles no longer appear here.

The rows are read by :meth:`LedgerService.credit_position` (ledger/service.py); this module
is the rule alone.

Promotional credit can expire. Reading the position first books the expiry of any grant that fell
due (in the caller's transaction; see LedgerService.expire_due), so no position -- the balance, the
preview, the spend check, cycle close -- ever counts expired credit. When nothing is due that costs
nothing: the account row read for the posted credit also says when the next grant falls due.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from billfold.kit.money import Cents


@dataclass(frozen=True)
class CyclePosition:
    year: int
    month: int
    spend: Cents  # whole spend of the cycle (sum of its rounded lines)
    credit_available: Cents  # credit there was for this cycle before its own spend
    credit_used: Cents  # the part of spend paid by credit
    postpaid: Cents  # spend - credit_used: what the cycle's invoice will bill


@dataclass(frozen=True)
class CreditPosition:
    team_id: uuid.UUID
    posted_credit: Cents  # sum of the ledger entries
    cycles: tuple[CyclePosition, ...]  # open cycles, oldest first; the current one always present
    credit_left: Cents

    def cycle(self, year: int, month: int) -> CyclePosition:
        for cycle in self.cycles:
            if (cycle.year, cycle.month) == (year, month):
                return cycle
        return CyclePosition(year, month, Cents(0), self.credit_left, Cents(0), Cents(0))


def allocate_credit(
    team_id: uuid.UUID, credit: Cents, spends: dict[tuple[int, int], Cents], now: datetime
) -> CreditPosition:
    """The rule itself, on rows already read: credit pays open cycles oldest first; the current
    cycle is always present. (The spend check reads the same rows in one statement and calls this.)
    """
    spends = dict(spends)
    spends.setdefault((now.year, now.month), Cents(0))
    available = credit
    cycles = []
    for (year, month), spend in sorted(spends.items()):
        used = min(max(available, Cents(0)), spend)
        cycles.append(CyclePosition(year, month, spend, available, used, spend - used))
        available = available - used
    return CreditPosition(team_id, credit, tuple(cycles), available)
