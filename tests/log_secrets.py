"""The whole test run's log lines, checked for secrets (the issue's "no secret in any log line").

``tests/conftest.py`` writes every record of Billfold's loggers (``billfold.*``, the access line
of every request included: the suite's apps log JSON) and of uvicorn's, at DEBUG, into one file
per pytest process (per xdist worker), formatted as in production (``kit.logs.JsonFormatter``).
When the session ends the file is scanned for the shapes of secrets; a match fails the run.
Served subprocesses (``tests/served.py``) are not in it: their output holds what a person is
meant to read once (the generated operator token); tests/kit/test_request_logs.py checks their
JSON log lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from billfold.kit.logs import JsonFormatter

LOGGERS = ("billfold", "uvicorn", "uvicorn.access", "uvicorn.error")

SECRET_SHAPES = {
    "management key": re.compile(r"xai-[A-Za-z0-9_-]{20,}"),
    "operator token": re.compile(r"bfop_[A-Za-z0-9_-]{20,}"),
    "webhook secret": re.compile(r"whsec_[A-Za-z0-9+/=]{16,}"),
    "Stripe secret key": re.compile(r"\b[sr]k_(?:test|live)_[A-Za-z0-9]{6,}"),
    # A card number: 13-19 digits starting 3-6 (spaces or dashes allowed), standing alone (not
    # inside an id or a longer number), that pass Luhn's check (below).
    "card number": re.compile(r"(?<![\w.])[3-6]\d{3}(?:[ -]?\d){9,15}(?![\w.])"),
}


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def secrets_in(line: str, literals: tuple[str, ...] = ()) -> list[str]:
    """The kinds of secret ``line`` holds (empty: none)."""
    found = [literal_kind for literal, literal_kind in _literals(literals) if literal in line]
    for kind, shape in SECRET_SHAPES.items():
        for match in shape.finditer(line):
            text = match.group()
            if kind == "card number" and not _luhn(re.sub(r"[ -]", "", text)):
                continue
            found.append(kind)
            break
    return found


def _literals(literals: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for literal in literals:
        yield literal, "configured secret"


def scan(path: Path, literals: tuple[str, ...] = ()) -> list[str]:
    """Each line of the capture that holds a secret, as ``line N: kinds`` (never the secret)."""
    problems = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            kinds = secrets_in(line, literals)
            if kinds:
                problems.append(f"line {number}: {', '.join(sorted(set(kinds)))}")
    return problems


class _WithExtras(JsonFormatter):
    """The production JSON line, and every extra the record carries (a secret passed as an
    ``extra`` is a leak too, even if today's formatter drops it)."""

    _PLAIN = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in self._PLAIN}
        return f"{line} {extras!r}" if extras else line


@contextmanager
def captured_logs(path: Path, names: tuple[str, ...] = LOGGERS) -> Iterator[Path]:
    """Every record of the loggers ``names``, DEBUG and up, into ``path`` for the duration."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_WithExtras())
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()
