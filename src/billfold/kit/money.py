"""Money: integer cents on the wire and in the ledger, integer pico-dollars inside rating.

Units
-----
* :data:`Cents` -- integer USD cents. Every stored or billed amount (ledger entries, invoice line
  amounts, limits, balances) is in cents.
* :data:`Pico` -- integer 10^-12 USD. Unit prices are decimals with up to 12 places, so a unit price
  is an exact integer number of pico-dollars, and ``quantity * unit_price`` is an exact integer too.
  Rated usage is carried in pico-dollars until it becomes an invoice line.
* Wire "price units" (``unitPrice`` of invoice lines) are 10^-10 USD (1/100,000,000 of a cent).

The type checker keeps the units apart (``kit/units.pyi``): ``Cents + Pico``, ``Cents < Pico``,
``Pico * Pico``, an amount times a float, or a ``Pico`` passed for ``Cents`` are mypy errors;
``Pico * quantity`` stays ``Pico``, ``Cents + Cents`` stays ``Cents``. At run time both are
``NewType`` over int (``kit/units.py``): ``Cents(x)`` returns ``x`` itself, so the hot paths pay
nothing. Units change only here (:func:`round_to_cents`, :func:`cents_to_pico`) or where a bare
int gets its unit, at the database or wire boundary (``Cents(body.amount)``).

Rounding happens in exactly one place: :func:`round_to_cents`, applied once per invoice line (the
exact pico total of one SKU at one price version in one cluster in one cycle) and once for a
cycle's VAT (invoicing/vat.py computes the exact VAT in pico-dollars and rounds it here). Totals
are sums of rounded lines, so lines always add up to totals. No float ever carries an amount that
is stored or billed; the only floats are the dollar values of usage analytics, which the wire
format defines as JSON numbers.
"""

from __future__ import annotations

import re
from decimal import Decimal

from billfold.kit.units import Cents as Cents
from billfold.kit.units import Pico as Pico

PICO_PER_CENT = 10**10
PICO_PER_USD = 10**12
PICO_PER_PRICE_UNIT = 100  # wire price unit = 10^-10 USD
PRICE_DECIMALS = 12
INT64_MAX = 2**63 - 1
# $1,000,000 per unit. With at most 10^12 units per event (metering), one event costs at most
# 10^30 pico = 10^20 cents; sums are bounded again where they are stored.
MAX_UNIT_PRICE = 10**18


def round_to_cents(amount: Pico) -> Cents:
    """The one rounding rule: pico-dollars to cents, half up (amounts are never negative here).

    Half up is what customers and accountants expect on an invoice line ($0.005 -> $0.01).
    """
    quotient, remainder = divmod(int(amount), PICO_PER_CENT)
    if remainder * 2 >= PICO_PER_CENT:
        quotient += 1
    return Cents(quotient)


def cents_to_pico(amount: Cents) -> Pico:
    return Pico(int(amount) * PICO_PER_CENT)


# ASCII digits, an optional fraction: "0.000003", "12", "1.50".
_PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.([0-9]+))?")


def parse_usd_price(text: str) -> Pico:
    """Parse a decimal USD unit price with at most 12 decimals into exact pico-dollars.

    Raises ``ValueError`` with a sentence fit for an API error.
    """
    if not isinstance(text, str):
        raise ValueError('must be a decimal string such as "0.000003"')
    stripped = text.strip()
    match = _PLAIN_DECIMAL.fullmatch(stripped)
    if match is None:
        if _PLAIN_DECIMAL.fullmatch(stripped.removeprefix("-")):
            raise ValueError("must not be negative")
        # not what Decimal() alone would refuse: "1_000", "1e-6", "NaN" or other scripts' digits
        raise ValueError('must be a plain decimal string such as "0.000003"')
    if len((match.group(1) or "").rstrip("0")) > PRICE_DECIMALS:  # trailing zeros are no places
        raise ValueError(f"has more than {PRICE_DECIMALS} decimals")
    pico = int(Decimal(stripped) * PICO_PER_USD)
    if pico > MAX_UNIT_PRICE:
        raise ValueError("is above the largest unit price, $1,000,000")
    return Pico(pico)


def format_usd_price(amount: Pico) -> str:
    """Pico-dollars back to the canonical decimal USD string (no trailing zeros, no exponent)."""
    value = Decimal(int(amount)) / PICO_PER_USD
    text = format(value.normalize(), "f")
    return text


def pico_to_price_units(amount: Pico) -> int:
    """A unit price in the wire's price unit (10^-10 USD, an invoice line's ``unitPrice``).

    Not a second money rounding: it shows a *unit price* (12 decimals of USD) in a unit with 10,
    half up, and nothing is ever computed, summed or billed from the result -- the line's amount
    is ``round_to_cents`` of the exact pico total.
    """
    quotient, remainder = divmod(int(amount), PICO_PER_PRICE_UNIT)
    return quotient + (1 if remainder * 2 >= PICO_PER_PRICE_UNIT else 0)


def pico_to_usd_float(amount: int) -> float:
    """Dollars as a float, for usage analytics values only (the wire defines them as numbers)."""
    return float(Decimal(amount) / PICO_PER_USD)
