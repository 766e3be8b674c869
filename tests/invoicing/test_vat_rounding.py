"""VAT goes through the one rounding rule (kit.money.round_to_cents) and rounds as it did before.

Until issue 15 VAT had a rounding of its own: half up on the exact rational ``amount * rate /
100``. It now computes the VAT in pico-dollars (floored when the rate has more than 8 decimals)
and rounds that with ``round_to_cents``. ``_vat_before`` is the old function, kept verbatim as
the reference: the two must agree on every amount and rate, exact halves included.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from billfold.invoicing.vat import vat_cents
from billfold.kit.money import Cents


def _vat_before(amount: int, rate: Decimal) -> int:
    numerator, denominator = rate.as_integer_ratio()
    quotient, remainder = divmod(int(amount) * numerator, denominator * 100)
    if remainder * 2 >= denominator * 100:
        quotient += 1
    return quotient


amounts = st.integers(min_value=0, max_value=10**18)
# Percentages from 0 to 100 with up to 20 decimals: beyond the 8 that make the pico VAT exact.
rates = st.builds(
    lambda units, places, fraction: (
        Decimal(f"{units}.{fraction:0{places}d}") if places else Decimal(units)
    ),
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=10**20 - 1),
).filter(lambda r: r <= 100)


@given(amount=amounts, rate=rates)
@example(amount=50, rate=Decimal("19"))  # 9.5 cents: a tie, up
@example(amount=5, rate=Decimal("10"))  # 0.5 cents: a tie, up
@example(amount=1, rate=Decimal("49.99999999"))  # just under half a cent, exact in pico
@example(amount=1, rate=Decimal("49.999999999999999999"))  # just under, below a pico
@example(amount=1, rate=Decimal("50.000000000000000001"))  # just over half a cent
@example(amount=3, rate=Decimal("7.7"))
@example(amount=10**18, rate=Decimal("100"))
def test_vat_rounds_as_before_through_round_to_cents(amount: int, rate: Decimal) -> None:
    assert vat_cents(Cents(amount), rate) == _vat_before(amount, rate)


def test_a_rate_past_eight_decimals() -> None:
    # the VAT in pico-dollars is not a whole number here: the floored case
    deep = Decimal("12.123456789012")
    assert deep.as_integer_ratio()[1] > 10**8
    assert vat_cents(Cents(10**9), deep) == _vat_before(10**9, deep)
