"""VAT on the postpaid part of a cycle: the rate by billing country, rounded once, half up."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from billfold.config import Settings
from billfold.kit.errors import (
    ServiceUnavailable,
)
from billfold.kit.money import Cents


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


def vat_cents(amount: int, rate: Decimal) -> Cents:
    """VAT on ``amount`` cents at ``rate`` percent, rounded once, half up, computed exactly.

    Half up, like every rounding in Billfold (kit.money.round_to_cents): the exact product
    ``amount * rate / 100`` is a fraction; a remainder of half a cent or more rounds up.
    """
    numerator, denominator = rate.as_integer_ratio()
    quotient, remainder = divmod(int(amount) * numerator, denominator * 100)
    if remainder * 2 >= denominator * 100:
        quotient += 1
    return Cents(quotient)
