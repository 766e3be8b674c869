"""VAT on the postpaid part of a cycle: the rate by billing country, rounded once, half up
(by kit.money.round_to_cents, the one rounding rule)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from billfold.config import Settings
from billfold.kit.errors import (
    ServiceUnavailable,
)
from billfold.kit.money import PICO_PER_CENT, Cents, Pico, round_to_cents


def vat_rate(settings: Settings, country: str) -> Decimal:
    """The VAT percentage for a billing country (``BILLFOLD_VAT_RATES``); 0 when none is set."""
    text = settings.vat_table().get(country.strip().upper()) if country else None
    if not text:
        return Decimal(0)
    try:
        rate = Decimal(text)
    except InvalidOperation:
        rate = Decimal(-1)
    if not rate.is_finite() or not 0 <= rate <= 100:
        raise ServiceUnavailable(
            f"BILLFOLD_VAT_RATES: {country}={text!r} is not a percentage between 0 and 100",
            code="misconfigured",
        )
    return rate


def format_rate(rate: Decimal) -> str:
    return format(rate.normalize(), "f")


def vat_cents(amount: Cents, rate: Decimal) -> Cents:
    """VAT on ``amount`` cents at ``rate`` percent: the exact VAT in pico-dollars, rounded to
    cents once by :func:`kit.money.round_to_cents` (half up), like an invoice line.

    ``amount * rate / 100`` cents is the rational ``amount * n / d`` with ``rate = n / d``
    (``Decimal.as_integer_ratio``, exact). In pico-dollars that is ``amount * n * 10^8 / d``: an
    integer while the rate has at most 8 decimals (VAT rates have one or two). Otherwise it is
    floored to whole pico-dollars, which cannot change the cent it rounds to: half a cent is a
    whole number of pico-dollars (5 * 10^9), and for a real x and an integer h, floor(x) >= h
    exactly when x >= h -- so the rounding sees the same cent and the same side of the half.
    (tests/invoicing/test_vat_rounding.py checks this against the exact rational rounding.)
    """
    numerator, denominator = rate.as_integer_ratio()
    exact_pico = Pico(amount * numerator * (PICO_PER_CENT // 100) // denominator)
    return round_to_cents(exact_pico)
