"""Spending limits: the team's soft limit, the operator's hard limit, and the effective one."""

from __future__ import annotations

from dataclasses import dataclass

from billfold.config import Settings
from billfold.kit.money import Cents
from billfold.teams.models import Team


@dataclass(frozen=True)
class SpendingLimits:
    hard_override: Cents | None  # set per team by the operator
    hard_auto: Cents  # the operator's default (BILLFOLD_DEFAULT_HARD_LIMIT_CENTS)
    effective_hard: Cents
    soft: Cents  # the team's own; 0 when never set
    soft_set: bool
    effective: Cents  # what postpaid spend of a cycle may reach


def spending_limits(team: Team, settings: Settings) -> SpendingLimits:
    auto = Cents(settings.default_hard_limit_cents)
    override = (
        None if team.hard_limit_override_cents is None else Cents(team.hard_limit_override_cents)
    )
    effective_hard = override if override is not None else auto
    soft_set = team.soft_limit_cents is not None
    soft = Cents(team.soft_limit_cents or 0)
    effective = Cents(min(soft, effective_hard)) if soft_set else effective_hard
    return SpendingLimits(override, auto, effective_hard, soft, soft_set, effective)
