"""The prepaid balance of the Billing Management API (spec section 11): the posted ledger's
entries with the team's purchases in every state, newest first.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.invoicing.numbers import invoice_numbers
from billfold.kit.schemas import cent
from billfold.ledger.schemas import (
    SUCCEEDED,
    Change,
    PrepaidBalance,
)
from billfold.ledger.service import entry_change, ledger_service
from billfold.topups.models import Topup
from billfold.topups.schemas import topup_change


class PrepaidBalanceService:
    def balance(self, session: Session, team_id: uuid.UUID) -> PrepaidBalance:
        """The prepaid balance of spec §11: the *posted* ledger, as upstream. Newest first.

        ``changes`` are the ledger entries (purchases, grants, adjustments, expiries, refunds and
        the SPEND entry of each closed cycle, booked by cycle close) plus the failed and pending
        purchases, which are listed but do not count; ``total`` = -(posted credit). An open
        cycle's spend is not in it: credit that open cycles draw is posted only when the cycle
        closes, as one SPEND entry. The live figure (credit left now) is the preview's and the
        spend check's (ledger/position.py), never this one.
        """
        ledger_service.expire_due(session, team_id)  # so the posted credit holds no expired credit
        posted = ledger_service.posted_credit(session, team_id)
        topups = {t.id: t for t in session.scalars(select(Topup).where(Topup.team_id == team_id))}
        numbers = invoice_numbers(
            session, [t.invoice_id for t in topups.values() if t.invoice_id is not None]
        )
        dated: list[tuple[datetime, int, Change]] = []
        for entry in ledger_service.entries(session, team_id):
            if entry.credit_cents == 0:
                continue  # a grant that expired fully used: no change to show
            topup = topups.get(entry.topup_id) if entry.topup_id else None
            if topup is not None:
                change = topup_change(topup, numbers.get(topup.invoice_id or ""))
            else:
                change = entry_change(entry)
            dated.append((change.create_time, entry.seq, change))
        for topup in topups.values():
            if topup.status != SUCCEEDED:
                change = topup_change(topup, None)
                dated.append((change.create_time, 0, change))
        dated.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return PrepaidBalance(changes=[change for _, _, change in dated], total=cent(-posted))


prepaid_balance_service = PrepaidBalanceService()
