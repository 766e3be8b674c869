"""The wire of spending limits and the spend check."""

from __future__ import annotations

from typing import ClassVar

from billfold.kit.schemas import Cent, Int64, WireModel, cent
from billfold.spend.limits import SpendDecision, SpendingLimits


class SpendingLimitsOut(WireModel):
    hard_sl_override: Cent | None = None  # left out when the operator has not set one
    hard_sl_auto: Cent
    effective_hard_sl: Cent
    soft_sl: Cent
    effective_sl: Cent


class SpendingLimitsResponse(WireModel):
    spending_limits: SpendingLimitsOut


class SetSoftLimitRequest(WireModel):
    desired_soft_spending_limit: Cent


class SetSoftLimitResponse(WireModel):
    this_bp_soft_spending_limit: Cent


class SetHardLimitRequest(WireModel):
    # Required but nullable: ``{"amount": null}`` removes the override, ``{}`` is a 400.
    keep_nulls: ClassVar[bool] = True
    amount: Int64 | None


class SpendStatusOut(WireModel):
    allowed: bool
    reason: str
    prepaid_remaining: Cent
    postpaid_remaining: Cent
    cycle_spend: Cent
    postpaid_spend: Cent
    effective_spending_limit: Cent


def limits_out(limits: SpendingLimits) -> SpendingLimitsOut:
    return SpendingLimitsOut(
        hard_sl_override=None if limits.hard_override is None else cent(limits.hard_override),
        hard_sl_auto=cent(limits.hard_auto),
        effective_hard_sl=cent(limits.effective_hard),
        soft_sl=cent(limits.soft),
        effective_sl=cent(limits.effective),
    )


def spend_status_out(decision: SpendDecision) -> SpendStatusOut:
    return SpendStatusOut(
        allowed=decision.allowed,
        reason=decision.reason,
        prepaid_remaining=cent(decision.prepaid_remaining),
        postpaid_remaining=cent(decision.postpaid_remaining),
        cycle_spend=cent(decision.cycle_spend),
        postpaid_spend=cent(decision.postpaid_spend),
        effective_spending_limit=cent(decision.effective_limit),
    )
