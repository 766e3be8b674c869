"""Spending limits: the team's soft limit, the operator's hard limit, and the effective one.

A limit caps the *postpaid* spend of the current cycle only; credit is always used first and is
never limited. The spend check (:func:`spend_decision`) is a pure function of the limits and the
credit position, both read from committed rows, so every process answers the same.

Lowering the hard limit below a team's soft limit leaves the soft limit as the team set it:
``effective`` is the minimum of the two anyway, and when the operator raises the hard limit again
the team's own choice applies again. Until then ``softSl`` may read above ``effectiveHardSl``.
"""

from __future__ import annotations

from dataclasses import dataclass

from billfold.config import Settings
from billfold.kit.money import Cents
from billfold.ledger.position import CreditPosition
from billfold.teams.models import Team

REASON_OK = "ok"
REASON_PREPAID_EXHAUSTED = "prepaid_exhausted"
REASON_LIMIT_REACHED = "spending_limit_reached"
REASONS = (REASON_OK, REASON_PREPAID_EXHAUSTED, REASON_LIMIT_REACHED)


@dataclass(frozen=True)
class SpendingLimits:
    hard_override: Cents | None  # set per team by the operator
    hard_auto: Cents  # the operator's default (BILLFOLD_DEFAULT_HARD_LIMIT_CENTS)
    effective_hard: Cents
    soft: Cents  # the team's own; 0 when never set
    soft_set: bool
    effective: Cents  # what postpaid spend of a cycle may reach


def spending_limits(team: Team, settings: Settings) -> SpendingLimits:
    return limits_of(team.soft_limit_cents, team.hard_limit_override_cents, settings)


def limits_of(
    soft_cents: Cents | None, hard_cents: Cents | None, settings: Settings
) -> SpendingLimits:
    """The limits from a team's two columns (``None``: not set)."""
    auto = Cents(settings.default_hard_limit_cents)
    override = hard_cents
    effective_hard = override if override is not None else auto
    soft_set = soft_cents is not None
    soft = soft_cents or Cents(0)
    effective = min(soft, effective_hard) if soft_set else effective_hard
    return SpendingLimits(override, auto, effective_hard, soft, soft_set, effective)


@dataclass(frozen=True)
class SpendDecision:
    """May the team spend right now, and how much room is left (all in cents)."""

    allowed: bool
    reason: str
    prepaid_remaining: Cents  # credit left now (never below 0)
    postpaid_remaining: Cents  # effective limit minus this cycle's postpaid spend (never below 0)
    cycle_spend: Cents  # the whole spend of the current cycle, credit-paid part included
    postpaid_spend: Cents  # the part of it that credit did not pay
    effective_limit: Cents


def spend_decision(
    limits: SpendingLimits, position: CreditPosition, year: int, month: int
) -> SpendDecision:
    """The gateway's answer for the cycle ``year``-``month`` (the current one).

    Allowed while credit is left or the cycle's postpaid spend is below the effective limit. A team
    is blocked the moment a batch takes it to the limit (the check reads the cycle row that batch
    updated in its own transaction), and at once when a limit is lowered below its spend.
    """
    cycle = position.cycle(year, month)
    prepaid_remaining = Cents(max(position.credit_left, 0))
    postpaid_remaining = Cents(max(limits.effective - cycle.postpaid, 0))
    allowed = prepaid_remaining > 0 or postpaid_remaining > 0
    if allowed:
        reason = REASON_OK
    elif limits.effective == 0:
        reason = REASON_PREPAID_EXHAUSTED  # credit only, and the credit is gone
    else:
        reason = REASON_LIMIT_REACHED
    return SpendDecision(
        allowed=allowed,
        reason=reason,
        prepaid_remaining=prepaid_remaining,
        postpaid_remaining=postpaid_remaining,
        cycle_spend=cycle.spend,
        postpaid_spend=cycle.postpaid,
        effective_limit=limits.effective,
    )
