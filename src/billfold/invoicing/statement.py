"""One piece of code states a cycle: the team's cycle lines and its credit position turned
into lines, usage, the credit-paid share, the postpaid rest and VAT. The preview shows the
statement of the current cycle; cycle close writes the statement of the closed month into
the invoice, so a preview and the invoice it becomes can never disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    select,
)
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.cycles.models import CycleLine
from billfold.cycles.periods import month_of
from billfold.invoicing.vat import vat_cents, vat_rate
from billfold.kit.clock import utc_now
from billfold.kit.errors import (
    ServiceUnavailable,
)
from billfold.kit.money import Cents, Pico
from billfold.ledger.service import ledger_service
from billfold.pricing.models import PriceVersion
from billfold.spend.limits import (
    SpendingLimits,
    spending_limits,
)
from billfold.teams.models import BillingInfo
from billfold.teams.service import team_service

# The statement reads the cycle's lines and its spend in two statements; under READ COMMITTED a
# batch may commit between them. They are read again until they agree (a batch commits in
# milliseconds, so a second read practically always does).
_CONSISTENT_READ_ATTEMPTS = 5


@dataclass(frozen=True)
class StatementLine:
    sku: str
    price_version_id: int
    cluster_name: str
    description: str
    unit_type: str
    unit_price_pico: Pico
    num_units: int
    amount_cents: Cents


@dataclass(frozen=True)
class CycleStatement:
    team_id: uuid.UUID
    year: int
    month: int
    lines: tuple[StatementLine, ...]
    usage: Cents  # sum of the line amounts = the cycle's spend
    credit_available: Cents  # credit there was for this cycle before its own spend
    credit_used: Cents  # the part of usage paid by credit
    postpaid: Cents  # usage - credit_used: the invoice's subtotal
    credit_left: Cents  # credit left now, after every open cycle
    vat_rate: Decimal
    vat: Cents

    @property
    def total(self) -> Cents:
        return self.postpaid + self.vat


@dataclass(frozen=True)
class Preview:
    statement: CycleStatement
    limits: SpendingLimits


class StatementService:
    def cycle_lines(
        self, session: Session, team_id: uuid.UUID, year: int, month: int
    ) -> list[StatementLine]:
        """One line per SKU, price version and cluster used in the cycle, from ``cycle_lines``:
        by SKU, then price version (in time order), then cluster name (``""``, no cluster,
        first). The preview and the invoice at close are this one list, so they agree line by
        line."""
        rows = session.execute(
            select(
                CycleLine.price_version_id,
                CycleLine.cluster_name,
                CycleLine.quantity,
                CycleLine.amount_cents,
                PriceVersion.sku,
                PriceVersion.description,
                PriceVersion.unit_type,
                PriceVersion.unit_price_pico,
            )
            .join(PriceVersion, PriceVersion.id == CycleLine.price_version_id)
            .where(CycleLine.team_id == team_id, CycleLine.year == year, CycleLine.month == month)
            .order_by(PriceVersion.sku, PriceVersion.effective_from, CycleLine.cluster_name)
        ).all()
        return [
            StatementLine(
                sku=r.sku,
                price_version_id=r.price_version_id,
                cluster_name=r.cluster_name,
                description=r.description,
                unit_type=r.unit_type,
                unit_price_pico=r.unit_price_pico,
                num_units=r.quantity,
                amount_cents=r.amount_cents,
            )
            for r in rows
        ]

    def billing_country(self, session: Session, team_id: uuid.UUID) -> str:
        country = session.scalar(select(BillingInfo.country).where(BillingInfo.team_id == team_id))
        return country or ""

    def statement(
        self,
        session: Session,
        settings: Settings,
        team_id: uuid.UUID,
        year: int,
        month: int,
        now: datetime,
    ) -> CycleStatement:
        """The cycle as it stands: lines, the credit split and VAT. Only for open cycles."""
        rate = vat_rate(settings, self.billing_country(session, team_id))
        for _ in range(_CONSISTENT_READ_ATTEMPTS):
            lines = self.cycle_lines(session, team_id, year, month)
            position = ledger_service.credit_position(session, team_id, now)
            cycle = position.cycle(year, month)
            usage = sum((line.amount_cents for line in lines), Cents(0))
            if usage == cycle.spend:
                break
        else:
            raise ServiceUnavailable(
                "this team's usage is being rated right now; retry", code="busy"
            )
        return CycleStatement(
            team_id=team_id,
            year=year,
            month=month,
            lines=tuple(lines),
            usage=usage,
            credit_available=Cents(max(cycle.credit_available, 0)),
            credit_used=cycle.credit_used,
            postpaid=cycle.postpaid,
            credit_left=Cents(max(position.credit_left, 0)),
            vat_rate=rate,
            vat=vat_cents(cycle.postpaid, rate),
        )

    def preview(self, session: Session, settings: Settings, team_id: uuid.UUID) -> Preview:
        """The running invoice of the current UTC month (§8), exact as of the last batch."""
        team = team_service.get(session, team_id)
        now = utc_now()
        year, month = month_of(now)
        statement = self.statement(session, settings, team_id, year, month, now)
        return Preview(statement=statement, limits=spending_limits(team, settings))


statement_service = StatementService()
