"""The wire of auto top-up (operator-api.md, "Auto top-up")."""

from __future__ import annotations

from pydantic import StrictBool

from billfold.autotopup.service import AutoTopupConfig, AutoTopupView
from billfold.kit.money import Cents
from billfold.kit.schemas import Int64, WireModel


class AutoTopupRequest(WireModel):
    """``PUT .../auto-top-up``: the whole settings. On: ``thresholdCents``,
    ``monthlyLimitCents`` and one of ``amountCents`` (a fixed amount) and ``targetCents`` (top up
    to that level). Off: the figures may be left out."""

    enabled: StrictBool
    threshold_cents: Int64 | None = None
    amount_cents: Int64 | None = None
    target_cents: Int64 | None = None
    monthly_limit_cents: Int64 | None = None


def auto_topup_config(body: AutoTopupRequest) -> AutoTopupConfig:
    def cents(value: int | None) -> Cents | None:
        return None if value is None else Cents(value)

    return AutoTopupConfig(
        enabled=body.enabled,
        threshold=cents(body.threshold_cents),
        amount=cents(body.amount_cents),
        target=cents(body.target_cents),
        monthly_limit=cents(body.monthly_limit_cents),
    )


class AutoTopupOut(WireModel):
    """The settings as set (unset figures are left out) and where the team stands."""

    team_id: str
    enabled: bool
    threshold_cents: Int64 | None = None
    amount_cents: Int64 | None = None
    target_cents: Int64 | None = None
    monthly_limit_cents: Int64 | None = None
    consecutive_failures: int
    """Auto top-ups that failed in a row; the third turns auto top-up off."""
    disabled_reason: str | None = None
    """``consecutive_failures`` when Billfold turned it off; left out otherwise."""
    month_to_date_cents: Int64
    """Succeeded and pending auto top-ups of this calendar month (UTC): what counts against
    ``monthlyLimitCents``."""
    pending_topup_id: str | None = None
    """The pending auto top-up, while one waits to be charged."""


def auto_topup_out(view: AutoTopupView) -> AutoTopupOut:
    return AutoTopupOut(
        team_id=str(view.team_id),
        enabled=view.enabled,
        threshold_cents=view.threshold,
        amount_cents=view.amount,
        target_cents=view.target,
        monthly_limit_cents=view.monthly_limit,
        consecutive_failures=view.consecutive_failures,
        disabled_reason=view.disabled_reason or None,
        month_to_date_cents=view.month_to_date,
        pending_topup_id=str(view.pending.id) if view.pending is not None else None,
    )
