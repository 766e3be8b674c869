"""The overview page's figures, each from the service the API answers with:

* credits remaining: the preview's statement (``statement_service.preview``, what
  ``GET .../postpaid/invoice/preview`` shows): ``-prepaidCredits - |prepaidCreditsUsed|``, i.e. the
  credit there was for this cycle less the part of its usage credit paid;
* this month's spend and its postpaid part: the same statement (``amountBeforeVat``,
  ``amountBeforeVatLimited``); the limits: ``spending_limits`` (``.../spending-limits``);
* blocked and why: ``spend_service.spend_status``, the spend check's decision;
* the runway: the usage analytics' dollars of the last 7 days (``usage_analytics``, what
  ``POST .../usage`` answers) against the credits remaining;
* the latest invoices: ``invoicing_service.list_invoices``.

The bar and the runway are pure functions of those figures (``limit_bar``, ``runway``), so their
edges are tested without a database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.invoicing.service import InvoiceFilter, InvoiceWithLines, invoicing_service
from billfold.invoicing.statement import statement_service
from billfold.kit.clock import utc_now
from billfold.kit.money import Cents
from billfold.metering.analytics.buckets import TimeUnit
from billfold.metering.analytics.fields import Aggregation
from billfold.metering.analytics.query import AnalyticsQuery, ValueSpec
from billfold.metering.analytics.reader import usage_analytics
from billfold.spend.limits import (
    REASON_LIMIT_REACHED,
    REASON_PREPAID_EXHAUSTED,
    SpendDecision,
    SpendingLimits,
)
from billfold.spend.service import spend_service

RUNWAY_DAYS = 7
LATEST_INVOICES = 5


@dataclass(frozen=True)
class LimitBar:
    """Postpaid spend of the month against the effective hard limit, with the soft limit marked.

    Percentages are of the scale (the hard limit), clamped to 0-100, as text for SVG attributes.
    ``scale`` 0: the team may not spend postpaid at all (prepaid only): no bar is drawn.
    """

    postpaid: Cents
    scale: Cents  # the effective hard limit: the bar's 100 %
    soft: Cents | None  # the team's soft limit, when set
    effective: Cents  # what postpaid spend may reach: min(soft, hard)
    filled_percent: str
    soft_percent: str | None
    state: str  # "ok" | "near" (>= 80 % of the effective limit) | "reached" | "prepaid-only"

    @property
    def remaining(self) -> Cents:
        return Cents(max(self.effective - self.postpaid, 0))


def _percent(part: int, whole: int) -> str:
    if whole <= 0:
        return "0"
    value = min(max(Decimal(part) * 100 / Decimal(whole), Decimal(0)), Decimal(100))
    return format(value.quantize(Decimal("0.01"), rounding=ROUND_FLOOR).normalize(), "f")


def limit_bar(limits: SpendingLimits, postpaid: Cents) -> LimitBar:
    soft = limits.soft if limits.soft_set else None
    scale = limits.effective_hard
    if scale <= 0:
        state = "prepaid-only"
    elif postpaid >= limits.effective:
        state = "reached"
    elif postpaid * 5 >= limits.effective * 4:
        state = "near"
    else:
        state = "ok"
    return LimitBar(
        postpaid=postpaid,
        scale=scale,
        soft=soft,
        effective=limits.effective,
        filled_percent=_percent(postpaid, scale),
        soft_percent=None if soft is None or scale <= 0 else _percent(soft, scale),
        state=state,
    )


@dataclass(frozen=True)
class Runway:
    """How long the credits remaining last at the last 7 days' rate.

    ``kind``: "days" (``days`` is set: about N days, 0 meaning less than a day), "no-usage"
    (nothing spent in 7 days: the credit is not being drawn down), "no-credit" (nothing left;
    ``postpaid`` says whether usage goes on postpaid)."""

    kind: str
    days: int | None
    spent_7d_usd: float
    postpaid: bool


def runway(credits_remaining: Cents, spent_7d_usd: float, postpaid_allowed: bool) -> Runway:
    """``credits_remaining / (spent in 7 days / 7)`` in whole days, rounded down."""
    if credits_remaining <= 0:
        return Runway("no-credit", None, spent_7d_usd, postpaid_allowed)
    spent_cents = Decimal(repr(float(spent_7d_usd))) * 100
    if spent_cents <= 0:
        return Runway("no-usage", None, spent_7d_usd, postpaid_allowed)
    days = int(Decimal(int(credits_remaining)) * RUNWAY_DAYS / spent_cents)
    return Runway("days", days, spent_7d_usd, postpaid_allowed)


@dataclass(frozen=True)
class Blocked:
    reason: str  # the spend check's reason code
    message: str


def blocked(decision: SpendDecision, limits: SpendingLimits) -> Blocked | None:
    if decision.allowed:
        return None
    if decision.reason == REASON_PREPAID_EXHAUSTED:
        message = (
            "The prepaid credit is used up and this team may not spend postpaid (its spending "
            "limit is $0). Buy credits to resume."
        )
    elif decision.reason == REASON_LIMIT_REACHED:
        message = (
            "This month's postpaid spend has reached the spending limit. Raise the soft limit "
            "(up to the hard limit) or buy credits to resume."
        )
    else:
        message = "Requests are refused: " + decision.reason.replace("_", " ") + "."
    return Blocked(decision.reason, message)


@dataclass(frozen=True)
class Overview:
    year: int
    month: int
    credits_remaining: Cents
    cycle_spend: Cents
    credit_paid: Cents
    postpaid: Cents
    limits: SpendingLimits
    bar: LimitBar
    blocked: Blocked | None
    runway: Runway
    invoices: list[InvoiceWithLines]


def spent_in_last_days(
    session: Session, settings: Settings, team_id: uuid.UUID, days: int
) -> float:
    """Dollars of usage in the last ``days`` days (up to now), from usage analytics."""
    now = utc_now()
    query = AnalyticsQuery(
        team_id=team_id,
        zone=ZoneInfo("UTC"),
        unit=TimeUnit.NONE,
        start=now - timedelta(days=days),
        end=now,
        values=(ValueSpec("usd", Aggregation.SUM),),
        group_by=(),
        filters=(),
    )
    result = usage_analytics.run(session, settings, query)
    return float(sum(float(values[0]) for series in result.series for _, values in series.points))


def overview(session: Session, settings: Settings, team_id: uuid.UUID) -> Overview:
    preview = statement_service.preview(session, settings, team_id)
    statement = preview.statement
    credits_remaining = Cents(statement.credit_available - statement.credit_used)
    decision = spend_service.spend_status(session, settings, team_id)
    spent = spent_in_last_days(session, settings, team_id, RUNWAY_DAYS)
    invoices = invoicing_service.list_invoices(session, team_id, InvoiceFilter())
    return Overview(
        year=statement.year,
        month=statement.month,
        credits_remaining=credits_remaining,
        cycle_spend=statement.usage,
        credit_paid=statement.credit_used,
        postpaid=statement.postpaid,
        limits=preview.limits,
        bar=limit_bar(preview.limits, statement.postpaid),
        blocked=blocked(decision, preview.limits),
        runway=runway(credits_remaining, spent, preview.limits.effective > 0),
        invoices=invoices[:LATEST_INVOICES],
    )
