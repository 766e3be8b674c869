"""Importing usage from files (JSON Lines or CSV) in constant memory: records are read,
checked and sent in batches, to the database directly or to a server's API.
"""

from __future__ import annotations

import codecs
import csv
import heapq
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import orjson
from pydantic_core import from_json
from sqlalchemy.exc import SQLAlchemyError

from billfold.config import Settings
from billfold.kit.cli import bad_input
from billfold.kit.db import make_engine, make_sessionmaker, transaction
from billfold.kit.errors import BillfoldError
from billfold.metering.events import json_keeping_lone_surrogates
from billfold.metering.service import IngestResult, Rejection, metering_service

Format = Literal["jsonl", "csv"]


REQUIRED_COLUMNS = ("eventId", "teamId", "sku", "quantity", "timestamp")


MAX_LINE_BYTES = 1024 * 1024


# A valid event nests 2 levels (the event, its properties). Deeper lines are not read: the
# server's parser refuses a body nested deeper than 200 levels as a whole (a batch wraps its
# events in 2 more), so with --url one such line would stop the import.
MAX_LINE_DEPTH = 32


HTTP_ATTEMPTS = 5


HTTP_BACKOFF_SECONDS = 1.0  # doubled after each failed attempt, at most 30 s


_OVERLONG = "\x00billfold-overlong-line\x00"  # stands in for a CSV line too long to read


@dataclass(frozen=True)
class Unreadable:
    """A line that never became an event."""

    code: str
    error: str


Record = tuple[int, Any]  # (line number, event object or Unreadable)


class ImportStopped(Exception):
    """The import cannot go on (a bad header, the database or the server failed)."""


def _lines(stream: BinaryIO, on_bytes: Callable[[int], None]) -> Iterator[tuple[bytes, bool]]:
    """Physical lines, each at most MAX_LINE_BYTES; ``(line, True)`` for one that was longer
    (its rest is read and dropped, never held)."""
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        on_bytes(len(raw))
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while True:
                rest = stream.readline(MAX_LINE_BYTES)
                on_bytes(len(rest))
                if not rest or rest.endswith(b"\n"):
                    break
            yield b"", True
            continue
        yield raw, False


_TOO_LONG = Unreadable("line_too_long", f"the line is longer than {MAX_LINE_BYTES} bytes")


_TOO_DEEP = Unreadable("invalid_json", f"the JSON nests deeper than {MAX_LINE_DEPTH} levels")


_OUT_OF_RANGE = Unreadable(
    "invalid_json", "a number is beyond the range of a float (about 1.8e308)"
)


def _parse_json(text: bytes | str) -> Any:
    """A JSON value as the server parses a request body (pydantic-core; raises ValueError), or
    why it cannot be sent as read: :data:`_TOO_DEEP`, or :data:`_OUT_OF_RANGE` for a number the
    parser made infinite (no JSON writer writes it back as the number it was)."""
    try:
        value = from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        if str(exc).startswith("recursion limit exceeded"):  # deeper than the parser goes
            return _TOO_DEEP
        # As the server (metering/endpoints.py): the standard library's reader takes an escaped
        # lone surrogate, which the service then rejects with its event's code (an eventId's is
        # invalid_event_id), instead of the line being invalid_json.
        try:
            value = json_keeping_lone_surrogates(text)
        except (ValueError, RecursionError):
            raise exc from None
    return _unsendable(value, MAX_LINE_DEPTH) or value


def _unsendable(value: Any, levels: int) -> Unreadable | None:
    """What in ``value`` cannot be sent: containers nested more than ``levels`` deep, or an
    infinite float."""
    if isinstance(value, dict):
        children: Iterable[Any] = value.values()
    elif isinstance(value, list):
        children = value
    elif isinstance(value, float) and not math.isfinite(value):
        return _OUT_OF_RANGE
    else:
        return None
    if levels <= 0:
        return _TOO_DEEP
    for child in children:
        if (found := _unsendable(child, levels - 1)) is not None:
            return found
    return None


def jsonl_records(stream: BinaryIO, on_bytes: Callable[[int], None]) -> Iterator[Record]:
    for number, (raw, overlong) in enumerate(_lines(stream, on_bytes), start=1):
        if overlong:
            yield number, _TOO_LONG
            continue
        text = raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw
        if not text.strip():
            continue
        try:
            yield number, _parse_json(text)
        except ValueError as exc:
            yield number, Unreadable("invalid_json", f"not valid JSON: {exc}")


def csv_records(stream: BinaryIO, on_bytes: Callable[[int], None]) -> Iterator[Record]:
    def texts() -> Iterator[str]:
        for number, (raw, overlong) in enumerate(_lines(stream, on_bytes), start=1):
            if overlong:
                yield _OVERLONG + "\n"
                continue
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            # surrogateescape keeps bad bytes visible, so such a row is rejected, not altered
            yield raw.decode("utf-8", errors="surrogateescape")

    reader = csv.reader(texts(), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportStopped(f"line 1: the CSV header cannot be read: {exc}") from None
    if "" in header:  # a property needs a name (a trailing comma makes one without)
        raise ImportStopped(f"line 1: column {header.index('') + 1} of the CSV header has no name")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing or len(set(header)) != len(header):
        raise ImportStopped(
            f"line 1: the CSV header needs the columns {', '.join(REQUIRED_COLUMNS)} once each"
            + (f" (missing: {', '.join(missing)})" if missing else " (a column is repeated)")
        )
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, Unreadable("invalid_csv", f"the CSV row cannot be read: {exc}")
            continue
        if row == [_OVERLONG]:
            yield start, _TOO_LONG
        elif not any(cell.strip() for cell in row):
            continue
        elif len(row) != len(header):
            yield (
                start,
                Unreadable(
                    "invalid_csv",
                    f"expected {len(header)} fields as in the header, found {len(row)}",
                ),
            )
        elif any(_has_bad_bytes(cell) for cell in row):
            yield start, Unreadable("invalid_utf8", "the row is not valid UTF-8")
        else:
            yield start, _csv_event(header, row)


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _csv_event(header: list[str], row: list[str]) -> Any:
    event: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    columns: dict[str, str] = {}
    for name, cell in zip(header, row, strict=True):
        if name in REQUIRED_COLUMNS:
            event[name] = cell.strip()
        elif name == "properties":
            if cell.strip():
                try:
                    parsed = _parse_json(cell)
                except ValueError:
                    parsed = None
                if isinstance(parsed, Unreadable):
                    return parsed
                if not isinstance(parsed, dict):
                    return Unreadable("invalid_properties", "properties must be a JSON object")
                properties.update(parsed)
        elif cell != "":
            columns[name] = cell
    properties.update(columns)
    event["properties"] = properties
    return event


@dataclass(frozen=True, order=True)
class LineRejection:
    line: int
    event_id: str
    code: str
    error: str


@dataclass
class ImportTotals:
    keep: int
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    # the `keep` rejections with the lowest line numbers, as a max-heap on the line
    _first: list[tuple[int, LineRejection]] = field(default_factory=list)

    def reject(self, rejection: LineRejection) -> None:
        self.rejected += 1
        if self.keep <= 0:
            return
        item = (-rejection.line, rejection)
        if len(self._first) < self.keep:
            heapq.heappush(self._first, item)
        elif rejection.line < -self._first[0][0]:
            heapq.heapreplace(self._first, item)

    @property
    def first_rejections(self) -> list[LineRejection]:
        return sorted(r for _, r in self._first)

    def as_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejections": [
                {"line": r.line, "eventId": r.event_id, "code": r.code, "error": r.error}
                for r in self.first_rejections
            ],
        }


class Sink(Protocol):
    def __call__(self, events: list[Any]) -> IngestResult: ...


def ingest_records(
    records: Iterable[Record],
    sink: Sink,
    totals: ImportTotals,
    *,
    batch_size: int,
    after_batch: Callable[[ImportTotals], None] | None = None,
) -> ImportTotals:
    """Send records to ``sink`` in batches; memory holds one batch and ``totals.keep``
    rejections. ``totals`` is the caller's, so it still tells what was done if a batch fails."""
    batch: list[Any] = []
    lines: list[int] = []

    def flush() -> None:
        if not batch:
            return
        result = sink(batch)
        totals.accepted += result.accepted
        totals.duplicates += result.duplicates
        for rejection in result.rejected:
            totals.reject(
                LineRejection(
                    lines[rejection.index], rejection.event_id, rejection.code, rejection.error
                )
            )
        batch.clear()
        lines.clear()
        if after_batch is not None:
            after_batch(totals)

    for number, record in records:
        totals.lines += 1
        if isinstance(record, Unreadable):
            totals.reject(LineRejection(number, "", record.code, record.error))
            continue
        batch.append(record)
        lines.append(number)
        if len(batch) >= batch_size:
            flush()
    flush()
    return totals


class DirectSink:
    """Each batch through the metering service in a transaction of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(
            settings.database_url, pool_size=1, pool_mode=settings.database_pool_mode
        )
        self.sessions = make_sessionmaker(self.engine)

    def __call__(self, events: list[Any]) -> IngestResult:
        try:
            with transaction(self.sessions) as session:
                return metering_service.ingest(session, self.settings, events)
        except (BillfoldError, SQLAlchemyError) as exc:
            raise ImportStopped(f"the database refused a batch: {exc}") from exc

    def close(self) -> None:
        self.engine.dispose()


class HttpSink:
    """Each batch as one ``POST /admin/v1/usage-events`` to a running server.

    Connection errors, 429 and 5xx answers are retried (a batch is idempotent by event ids; the
    events of an attempt whose answer was lost come back as duplicates)."""

    def __init__(self, url: str, token: str, *, timeout: float = 120) -> None:
        import httpx

        self.client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=timeout,
        )

    def __call__(self, events: list[Any]) -> IngestResult:
        import httpx

        try:
            body = orjson.dumps({"events": events})
        except TypeError:  # an integer beyond 64 bits or a lone surrogate, which the server
            # rejects with its event alone; escaped (ASCII), since UTF-8 cannot carry a surrogate
            body = json.dumps({"events": events}, allow_nan=False).encode()
        problem = ""
        for attempt in range(HTTP_ATTEMPTS):
            if attempt:
                time.sleep(min(HTTP_BACKOFF_SECONDS * 2 ** (attempt - 1), 30))
            try:
                response = self.client.post("/admin/v1/usage-events", content=body)
            except httpx.TransportError as exc:
                problem = f"cannot reach the server: {exc}"
                continue
            if response.status_code == 200:
                answer = response.json()
                return IngestResult(
                    accepted=int(answer["accepted"]),
                    duplicates=int(answer["duplicates"]),
                    rejected=[
                        Rejection(r["index"], r.get("eventId", ""), r["code"], r["error"])
                        for r in answer["rejected"]
                    ],
                )
            problem = f"the server answered {response.status_code}: {response.text[:500]}"
            if response.status_code != 429 and response.status_code < 500:
                break
        raise ImportStopped(problem)

    def close(self) -> None:
        self.client.close()


def _format_of(path: str, given: str | None) -> Format:
    if given is not None:
        if given not in ("jsonl", "csv"):
            bad_input("use jsonl or csv", field="--format")
        return "jsonl" if given == "jsonl" else "csv"
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    bad_input(
        "cannot tell the format from the file name; pass --format jsonl or --format csv",
        field="--format",
    )
