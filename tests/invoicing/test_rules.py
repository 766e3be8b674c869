"""The rules behind the numbers, as properties: VAT rounding and the spend decision."""

from __future__ import annotations

import uuid
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from billfold.config import Settings
from billfold.invoicing.vat import format_rate, vat_cents, vat_rate
from billfold.kit.errors import ServiceUnavailable
from billfold.kit.money import Cents
from billfold.ledger.position import CreditPosition, CyclePosition
from billfold.spend.limits import SpendingLimits, spend_decision

rates = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)


@given(amount=st.integers(min_value=0, max_value=10**15), rate=rates)
def test_vat_is_the_exact_product_rounded_half_up_once(amount: int, rate: Decimal) -> None:
    exact = Decimal(amount) * rate / 100
    expected = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert vat_cents(amount, rate) == expected


def test_vat_examples_and_configuration() -> None:
    assert vat_cents(50, Decimal("19")) == 10  # 9.5 -> 10
    assert vat_cents(49, Decimal("19")) == 9  # 9.31
    assert vat_cents(0, Decimal("19")) == 0
    settings = Settings(vat_rates="DE=19,fr=20.50, GB = 20")
    assert vat_rate(settings, "de") == Decimal("19")
    assert vat_rate(settings, "FR") == Decimal("20.50")
    assert vat_rate(settings, "GB") == Decimal("20")
    assert vat_rate(settings, "US") == 0
    assert vat_rate(settings, "") == 0
    assert format_rate(Decimal("20.50")) == "20.5" and format_rate(Decimal("20")) == "20"
    for bad in ("DE=abc", "DE=-1", "DE=101", "DE=NaN"):
        try:
            vat_rate(Settings(vat_rates=bad), "DE")
        except ServiceUnavailable as exc:
            assert exc.code == "misconfigured"
        else:
            raise AssertionError(bad)


def _position(credit: int, spend: int) -> CreditPosition:
    used = min(max(credit, 0), spend)
    cycle = CyclePosition(2030, 5, Cents(spend), Cents(credit), Cents(used), Cents(spend - used))
    return CreditPosition(uuid.uuid4(), Cents(credit), (cycle,), Cents(credit - used))


def _limits(effective: int) -> SpendingLimits:
    return SpendingLimits(
        None, Cents(100_000), Cents(100_000), Cents(effective), True, Cents(effective)
    )


@given(
    credit=st.integers(min_value=-1000, max_value=10**6),
    spend=st.integers(min_value=0, max_value=10**6),
    limit=st.integers(min_value=0, max_value=10**6),
)
def test_spend_decision(credit: int, spend: int, limit: int) -> None:
    decision = spend_decision(_limits(limit), _position(credit, spend), 2030, 5)
    credit_left = max(credit - min(max(credit, 0), spend), 0)
    postpaid = spend - min(max(credit, 0), spend)
    assert decision.prepaid_remaining == credit_left >= 0
    assert decision.postpaid_remaining == max(limit - postpaid, 0)
    assert decision.cycle_spend == spend and decision.postpaid_spend == postpaid
    assert decision.allowed == (credit_left > 0 or postpaid < limit)
    if decision.allowed:
        assert decision.reason == "ok"
    else:
        assert decision.reason == ("prepaid_exhausted" if limit == 0 else "spending_limit_reached")
