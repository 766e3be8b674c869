"""What an invoice document shows, as plain data, and how its money is written (from integer
cents and pico-dollars, never a float). render.py lays it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Party:
    name: str
    address: tuple[str, ...]
    tax_id: str
    email: str = ""


@dataclass(frozen=True)
class SheetLine:
    description: str
    cluster_name: str
    unit_type: str
    num_units: int
    unit_price_pico: int
    amount_cents: int


@dataclass(frozen=True)
class Sheet:
    """Everything an invoice document shows, as of its finalization."""

    invoice_id: str
    number: str
    kind: str  # monthly | prepaid
    status: str
    created_at: datetime
    due_at: datetime
    cycle_year: int
    cycle_month: int
    seller: Party
    buyer: Party
    lines: tuple[SheetLine, ...]
    usage_cents: int
    credits_applied_cents: int
    subtotal_cents: int
    vat_rate: str
    tax_cents: int
    total_cents: int


def money(cents: int) -> str:
    """``123456`` -> ``"$1,234.56"``; ``-5`` -> ``"-$0.05"``: exact, from the integer."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}.{rest:02d}"


def unit_price(pico: int) -> str:
    """A unit price in pico-dollars as exact USD, at least two decimals: ``"$0.0000025"``."""
    sign = "-" if pico < 0 else ""
    dollars, rest = divmod(abs(pico), 10**12)
    decimals = f"{rest:012d}".rstrip("0").ljust(2, "0")
    return f"{sign}${dollars:,}.{decimals}"


def units(count: int) -> str:
    return f"{count:,}"
