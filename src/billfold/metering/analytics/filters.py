"""The filter grammar of usage analytics: ``field:value``, ``NOT``, comparisons, ``OR``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from billfold.kit.errors import InvalidField
from billfold.metering.analytics.fields import Field, _lookup_field

# Conditions in all filters of one request: each is decided once per (price version, property
# combination) read, so the cap bounds the filtering work whatever the filter strings hold.
MAX_CONDITIONS = 1_000


@dataclass(frozen=True)
class Condition:
    field: Field
    op: Literal["=", ">", ">=", "<", "<="]
    operand: str
    number: Decimal | None
    negated: bool

    def matches(self, value: str) -> bool:
        return self._holds(value) != self.negated

    def _holds(self, value: str) -> bool:
        if self.op == "=":
            return value == self.operand
        assert self.number is not None
        number = _number(value)
        if number is None:  # a non-numeric value never satisfies a numeric comparison
            return False
        if self.op == ">":
            return number > self.number
        if self.op == ">=":
            return number >= self.number
        if self.op == "<":
            return number < self.number
        return number <= self.number


# One filter string: alternatives joined by " OR ", each a conjunction joined by " AND ".
Filter = tuple[tuple[Condition, ...], ...]


def parse_filter(
    text: str, fields: dict[str, Field], path: str, budget: int = MAX_CONDITIONS
) -> Filter:
    """One filter string: ``[NOT ]field:[op]value`` conditions joined by ``AND`` inside
    alternatives joined by ``OR`` (AND binds tighter). ``op`` is one of ``> >= < <=`` (numeric)
    or none (equality). An empty filter string is ignored.

    Keywords are the upper-case words ``OR``, ``AND``, ``NOT`` standing alone (between
    whitespace) outside quotes; a value may be double-quoted to hold them, spaces or a leading
    operator character (``\\"`` escapes a quote, ``\\\\`` a backslash). Every other shape is a 400
    ``invalid_filter`` naming the filter, never a silently different filter: a keyword with
    nothing before or after it (``model:a OR``, ``OR model:a``, ``model:a OR  OR model:b``), a
    condition without a field or without a value (``model:`` -- write ``model:""`` for events
    without the property), ``NOT`` alone, a comparison with something that is not a number, a
    value starting with ``=`` or ``!`` (not operators here; use ``NOT``), stray quotes.
    More than ``budget`` conditions is a 400 ``too_many_conditions``.
    """
    if not text.strip():
        return ()
    return tuple(
        tuple(_parse_condition(condition, fields, path) for condition in alternative)
        for alternative in _split_filter(text, path, budget)
    )


_JOINERS = ("OR", "AND")


def _split_filter(text: str, path: str, budget: int) -> list[list[str]]:
    """The raw condition texts of a filter, as alternatives (split at ``OR``) of conjunctions
    (split at ``AND``); the keywords count only as whole words outside quotes."""
    alternatives: list[list[str]] = [[]]
    previous: str | None = None  # the keyword before the current condition
    start = 0  # where the current condition's text begins
    quoted = False
    i = 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 2
                continue
            quoted = char != '"'
            i += 1
            continue
        if char == '"':
            quoted = True
            i += 1
            continue
        keyword = _keyword_at(text, i)
        if keyword is None:
            i += 1
            continue
        condition = text[start:i]
        if not condition.strip():
            where = f"between {previous!r} and {keyword!r}" if previous else f"before {keyword!r}"
            raise _bad_filter(path, f"no condition {where} in {text!r}")
        alternatives[-1].append(condition)
        budget = _spend_condition(budget, path)
        if keyword == "OR":
            alternatives.append([])
        previous = keyword
        i = start = i + len(keyword)
    if quoted:
        raise _bad_filter(path, f"unterminated quote in {text!r}")
    last = text[start:]
    if not last.strip():
        raise _bad_filter(path, f"no condition after {previous!r} in {text!r}")
    alternatives[-1].append(last)
    _spend_condition(budget, path)
    return alternatives


def _spend_condition(budget: int, path: str) -> int:
    """One more condition out of the request's budget: refused as soon as it is exceeded, so an
    absurdly long filter is not parsed to its end."""
    if budget <= 0:
        raise InvalidField(
            path,
            f"the filters hold more than {MAX_CONDITIONS} conditions in all",
            code="too_many_conditions",
        )
    return budget - 1


def _keyword_at(text: str, i: int) -> str | None:
    """``OR`` or ``AND`` standing alone at ``i`` (whitespace or an end on both sides)."""
    if i > 0 and not text[i - 1].isspace():
        return None
    for keyword in _JOINERS:
        end = i + len(keyword)
        if text.startswith(keyword, i) and (end == len(text) or text[end].isspace()):
            return keyword
    return None


_SHAPES = "write field:value, NOT field:value or field:>number"


def _parse_condition(text: str, fields: dict[str, Field], path: str) -> Condition:
    condition = text.strip()
    negated = condition == "NOT" or (condition.startswith("NOT") and condition[3].isspace())
    if negated:
        condition = condition[3:].strip()
        if not condition:
            raise _bad_filter(path, f"NOT needs a condition after it; {_SHAPES}")
    name, colon, rest = condition.partition(":")
    name = name.strip()
    if not colon or '"' in name or any(c.isspace() for c in name):
        raise _bad_filter(path, f"{text.strip()!r} is not a condition; {_SHAPES}")
    if not name:
        raise _bad_filter(path, f"{text.strip()!r} has no field before ':'; {_SHAPES}")
    field = _lookup_field(fields, name, path)
    rest = rest.strip()
    op: Literal["=", ">", ">=", "<", "<="] = "="
    for candidate in (">=", "<=", ">", "<"):
        if rest.startswith(candidate):
            op = candidate
            rest = rest[len(candidate) :].strip()
            break
    operand = _operand(rest, name, op, path)
    number = None
    if op != "=":
        number = _number(operand)
        if number is None:
            raise _bad_filter(path, f"{name}:{op} needs a number, not {rest!r}")
    return Condition(field, op, operand, number, negated)


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)


def _operand(text: str, name: str, op: str, path: str) -> str:
    """The value of a condition: quoted (exactly one quoted string) or bare (not empty, no
    quotes, not starting with an operator character that is not one)."""
    if text.startswith('"'):
        match = _QUOTED.fullmatch(text)
        if match is None:
            raise _bad_filter(path, f"bad quoting in {text!r}; quote the whole value")
        return re.sub(r"\\(.)", r"\1", match.group(1), flags=re.DOTALL)
    if '"' in text:
        raise _bad_filter(path, f"a quote inside the value {text!r}; quote the whole value")
    if not text:
        if op != "=":
            raise _bad_filter(path, f"{name}:{op} needs a number")
        raise _bad_filter(
            path, f'{name}: has no value; write {name}:"" to match events without {name}'
        )
    if op == "=" and text[0] in "=!":
        raise _bad_filter(
            path,
            f"the value {text!r} of {name} starts with an operator this filter syntax does not "
            f"have; write "
            f"{name}:value, NOT {name}:value, {name}:>number (>=, <, <=), or quote a value "
            f"that starts with {text[0]!r}",
        )
    return text


def _bad_filter(path: str, message: str) -> InvalidField:
    return InvalidField(path, message, code="invalid_filter")


# A plain decimal number, as in a comparison: no NaN, infinities, underscores or spaces.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _number(text: str) -> Decimal | None:
    """The number ``text`` writes, or None -- also for one whose exponent Decimal cannot hold
    (beyond about 10^18 either way): such a value never satisfies a comparison, and such an
    operand is refused like any other that is not a number."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None
