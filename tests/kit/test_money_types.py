"""Cents and Pico are units mypy keeps apart (kit/units.pyi), at no cost at run time.

mypy runs on a snippet in which every line that must be an error says which one (``# E: code``);
the test asserts exactly those errors, so both a unit mix that slips through and a correct line
that stops type-checking fail it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

from billfold.kit.money import Cents, Pico, round_to_cents

SRC = Path(__file__).resolve().parents[2] / "src"

SNIPPET = """\
from billfold.kit.money import Cents, Pico, cents_to_pico, round_to_cents

c = Cents(150)
p = Pico(3)
quantity = 7


def charge(amount: Cents) -> None: ...


def rate(unit_price: Pico) -> Pico:
    return unit_price * quantity


# correct code
total: Cents = c + c - Cents(1)
refund: Cents = -c
line: Pico = p * quantity + quantity * p
exact: Pico = p + cents_to_pico(c)
rounded: Cents = round_to_cents(rate(p)) + c
ordered: bool = c < Cents(2) and p >= Pico(1) and c > 0
counted: Cents = sum([c, c], Cents(0))
cheapest: Cents = min(c, total)
charge(c)
charge(Cents(int("42")))
untyped: int = c + p.bit_length()

# unit mixes
c + p  # E: deprecated
p + c  # E: deprecated
c - p  # E: deprecated
p - c  # E: deprecated
p * p  # E: deprecated
p * c  # E: deprecated
c < p  # E: operator
c == p  # E: comparison-overlap
charge(p)  # E: arg-type
charge(5)  # E: arg-type
wrong: Cents = p  # E: assignment
dropped: Cents = c + 1  # E: assignment
rate(c)  # E: arg-type

# money is never a float
c + 0.5  # E: deprecated
c * 1.19  # E: deprecated
p * 0.5  # E: deprecated
p - 0.5  # E: deprecated
floating: Cents = 0.5 + c  # E: assignment
"""


def _expected(snippet: str) -> set[tuple[int, str]]:
    return {
        (number, match.group(1))
        for number, text in enumerate(snippet.splitlines(), start=1)
        if (match := re.search(r"# E: ([a-z-]+)$", text))
    }


def test_mypy_keeps_cents_and_pico_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    monkeypatch.setenv("MYPYPATH", str(SRC))
    out, err, _ = api.run(
        [
            "--config-file=",
            "--strict",
            "--enable-error-code=deprecated",
            "--python-version=3.11",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ]
    )
    assert err == ""
    found = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"^.*snippet\.py:(\d+): error: .*\[([a-z-]+)\]$", out, re.M)
    }
    assert found == _expected(SNIPPET), out
    assert len(_expected(SNIPPET)) == 18  # the parse of the markers found them all


def test_units_are_plain_ints_at_run_time() -> None:
    # No wrapper objects: a unit is the int itself, so typing amounts costs the hot paths nothing.
    amount = 12345
    assert Cents(amount) is amount
    assert Pico(amount) is amount
    assert type(round_to_cents(Pico(5 * 10**9))) is int
