"""``billfold usage ingest|compact|rebuild-rollups|cancel``

``ingest`` streams a JSON Lines or CSV file of any size in constant memory: it reads one line at a
time, keeps one batch of events (``--batch-size``, default 5,000) and the first rejections, and
sends each batch either straight to the metering service (one transaction per batch, like one
``POST /admin/v1/usage-events``) or, with ``--url``, to a running server. Event ids make every batch
idempotent, so an interrupted import is resumed by running the same command again: what was
already ingested comes back as duplicates.

File formats
    JSON Lines: one event object per line, as in the API (``eventId``, ``teamId``, ``sku``,
    ``quantity``, ``timestamp``, ``properties``); blank lines are skipped.
    CSV: a header row naming the columns ``eventId,teamId,sku,quantity,timestamp`` (required, any
    order), optionally ``properties`` (a JSON object), and any other column, which becomes a
    string property of that name (``apiKeyId``, ``model``, ``clusterName``, ...); an empty cell
    leaves the property out. A column wins over the same key in ``properties``. Every column
    needs a name (a header with a trailing comma stops the import).

A line that cannot be read (bad JSON, wrong CSV field count, longer than 1 MiB, not UTF-8, JSON
nested deeper than 32 levels, a number beyond a float's range such as 1e400) is a rejection with
its line number, like an event the service rejects; it never stops the import. Lines are parsed
by the server's own JSON parser (pydantic-core, as ``POST /admin/v1/usage-events`` reads a body
that is not a plain batch), so a file gives the same outcome straight into the database and with
``--url``: an integer beyond 64 bits stays an integer (and the service rejects it as a
property), and no line the reader passes can make the server refuse a whole batch.
Exit status: 0 when every line was accepted or a duplicate, 3 when some were rejected, 1 when the
import stopped (database or server error, bad CSV header): batches before it are committed.
"""

from __future__ import annotations

import codecs
import csv
import heapq
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal, Protocol

import orjson
import typer
from pydantic_core import from_json
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from billfold.config import Settings, get_settings
from billfold.kit.cli import JsonOpt, bad_input, console, fail, parse_team_id, print_json
from billfold.kit.cli import transaction as cli_transaction
from billfold.kit.clock import rfc3339, utc_now
from billfold.kit.db import make_engine, make_sessionmaker, transaction
from billfold.kit.errors import BillfoldError
from billfold.metering import cancellation, rebuild, retention
from billfold.metering.models import UsageEvent
from billfold.metering.schemas import MAX_REASON_LENGTH
from billfold.metering.service import IngestResult, Rejection, metering_service, storable

usage_app = typer.Typer(no_args_is_help=True, help="Usage events.")

Format = Literal["jsonl", "csv"]
REQUIRED_COLUMNS = ("eventId", "teamId", "sku", "quantity", "timestamp")
MAX_LINE_BYTES = 1024 * 1024
# A valid event nests 2 levels (the event, its properties). Deeper lines are not read: the
# server's parser refuses a body nested deeper than 200 levels as a whole (a batch wraps its
# events in 2 more), so with --url one such line would stop the import.
MAX_LINE_DEPTH = 32
EXIT_REJECTED = 3
HTTP_ATTEMPTS = 5
HTTP_BACKOFF_SECONDS = 1.0  # doubled after each failed attempt, at most 30 s
_OVERLONG = "\x00billfold-overlong-line\x00"  # stands in for a CSV line too long to read
_progress_console = Console(stderr=True)


# --- reading files -----------------------------------------------------------------------------


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
            value = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise exc from None
    return _unsendable(value, MAX_LINE_DEPTH) or value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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


# --- batching ----------------------------------------------------------------------------------


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
        self.engine = make_engine(settings.database_url, pool_size=1)
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


# --- commands ----------------------------------------------------------------------------------


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


@usage_app.command("ingest")
def ingest_file(
    file: Annotated[str, typer.Argument(help="A .jsonl or .csv file; '-' reads stdin.")],
    file_format: Annotated[
        str | None,
        typer.Option("--format", help="jsonl or csv (default: from the file's extension)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=10_000, help="Events per batch.")
    ] = 5_000,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Send to a running server (e.g. http://127.0.0.1:8000)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="BILLFOLD_ADMIN_TOKEN", help="Operator token (with --url)."),
    ] = None,
    show: Annotated[
        int, typer.Option("--show-rejections", min=0, help="How many rejections to list.")
    ] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Ingest usage events from a JSON Lines or CSV file, in batches, with a progress bar.

    Without --url, events go straight into the database (BILLFOLD_DATABASE_URL).

    One transaction per batch; running a file again is safe (ingested events are duplicates).

    Exit status 0: all accepted or duplicates; 3: some lines rejected; 1: the import stopped.
    """
    fmt = _format_of(file, file_format)
    sink: DirectSink | HttpSink
    if url is not None:
        if not token:
            bad_input("--url needs --token or BILLFOLD_ADMIN_TOKEN", field="--token")
        sink = HttpSink(url, token)
    else:
        sink = DirectSink(get_settings())
    stream: BinaryIO
    try:
        stream = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        sink.close()
        fail("file_unreadable", f"cannot read {file}: {exc.strerror}")
    size = None if file == "-" else os.fstat(stream.fileno()).st_size
    progress = Progress(
        TextColumn("[bold]ingesting[/bold]"),
        BarColumn(bar_width=20),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[counts]}"),
        console=_progress_console,
        transient=True,
    )
    task = progress.add_task("ingest", total=size, counts="")

    def advance(count: int) -> None:
        progress.advance(task, count)

    def show_counts(totals: ImportTotals) -> None:
        progress.update(
            task,
            counts=f"{totals.accepted:,} new, {totals.duplicates:,} dup, {totals.rejected:,} bad",
        )

    reader = jsonl_records if fmt == "jsonl" else csv_records
    totals = ImportTotals(keep=show)
    stopped: str | None = None
    try:
        with progress:
            ingest_records(
                reader(stream, advance),
                sink,
                totals,
                batch_size=batch_size,
                after_batch=show_counts,
            )
    except ImportStopped as exc:
        stopped = str(exc)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        sink.close()
    _report(file, totals, as_json, stopped)
    if stopped is not None:
        raise typer.Exit(code=1)
    if totals.rejected:
        raise typer.Exit(code=EXIT_REJECTED)


def _report(file: str, totals: ImportTotals, as_json: bool, stopped: str | None) -> None:
    if as_json:
        payload = {"file": file, **totals.as_json()}
        if stopped is not None:
            payload["stopped"] = stopped
        print_json(payload)
        return
    console.print(
        f"{file}: {totals.lines} lines, [green]{totals.accepted} accepted[/green], "
        f"{totals.duplicates} duplicates, "
        + (f"[red]{totals.rejected} rejected[/red]" if totals.rejected else "0 rejected")
    )
    for r in totals.first_rejections:
        console.print(
            f"  line {r.line}: {r.code}: {r.error}" + (f" ({r.event_id})" if r.event_id else "")
        )
    if totals.rejected > len(totals.first_rejections):
        console.print(f"  ... and {totals.rejected - len(totals.first_rejections)} more")
    if stopped is not None:
        console.print(
            f"[red]stopped[/red]: {stopped}\n  batches before this point are saved; run the same "
            "command again to resume (ingested events come back as duplicates)"
        )


@usage_app.command("compact")
def compact_events(
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=100_000, help="Events per transaction.")
    ] = 10_000,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete raw usage events older than BILLFOLD_USAGE_RETENTION_DAYS (plus one day).

    Rollups, cycle lines and invoices are kept: billing and analytics do not change.

    Ingestion refuses events older than the window, so none can be counted twice.

    One transaction per batch: safe to stop and run again.
    """
    settings = get_settings()
    older_than = retention.cutoff(settings, utc_now())
    engine = make_engine(settings.database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    deleted = 0
    try:
        with transaction(sessions) as session:
            teams = list(retention.team_ids(session))
        with Progress(console=_progress_console, transient=True) as progress:
            task = progress.add_task("compacting", total=len(teams))
            for team_id in teams:
                if dry_run:
                    with transaction(sessions) as session:
                        deleted += (
                            session.scalar(
                                select(func.count()).where(
                                    UsageEvent.team_id == team_id, UsageEvent.ts < older_than
                                )
                            )
                            or 0
                        )
                else:
                    deleted += retention.compact_team(sessions, team_id, older_than, batch_size)
                progress.advance(task)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(
            json.dumps(
                {"cutoff": rfc3339(older_than), "deleted": deleted, "dryRun": dry_run},
                indent=2,
            )
        )
    else:
        verb = "would delete" if dry_run else "deleted"
        console.print(f"{verb} {deleted} raw usage events older than {older_than:%Y-%m-%d %H:%M}Z")


def _utc_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        bad_input(f"{value!r} is not a date (YYYY-MM-DD)", field=option)


@usage_app.command("rebuild-rollups")
def rebuild_rollups(
    first: Annotated[
        str | None,
        typer.Option(
            "--from", help="First UTC day (YYYY-MM-DD; default: the first with all raw events)."
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="UTC day after the last one (YYYY-MM-DD; default: the day after the newest time"
            " ingestion accepts now).",
        ),
    ] = None,
    team: Annotated[
        str | None, typer.Option("--team", help="One team's id (default: all).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Compare only: report what differs, write nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the rollups with event properties from raw events, per team and UTC day.

    Run it after changing BILLFOLD_GROUPABLE_PROPERTIES on every process.

    Usage ingested before the change can then be grouped and filtered by the new set.

    Only days whose raw events are all kept (the retention window) can be rebuilt.

    Billing (rollups by version, cycle lines, invoices) is never written.

    One transaction per team-day; meanwhile, ingestion of that month waits. Safe to stop and rerun.

    Exit status 0: done (with --check: nothing differs); 1: stopped; 2: bad range or team.

    Exit status 3: with --check, rollups differ; or team-days left (events short of billed usage).
    """
    settings = get_settings()
    now = utc_now()
    first_day = _utc_day(first, "--from") or rebuild.first_rebuildable_day(settings, now)
    default_end = (now + timedelta(minutes=settings.future_tolerance_minutes)).date()
    end_day = _utc_day(end, "--to") or default_end + timedelta(days=1)
    team_id = parse_team_id(team) if team is not None else None
    engine = make_engine(settings.database_url, pool_size=1)
    if check and engine.dialect.name == "postgresql":
        # the events and the rows compared in one snapshot, without the month's lock
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    sessions = make_sessionmaker(engine)
    try:
        rebuild.check_range(settings, now, first_day, end_day)
        with transaction(sessions) as session:
            teams = list(rebuild.team_ids(session, team_id))
    except BillfoldError as exc:
        engine.dispose()
        if as_json:
            print_json(exc.body())
        else:
            console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(code=2) from None
    totals = rebuild.RebuildTotals()
    stopped: str | None = None
    try:
        with Progress(console=_progress_console, transient=True) as progress:
            task = progress.add_task("checking" if check else "rebuilding", total=len(teams))
            for tid in teams:
                with transaction(sessions) as session:
                    days = rebuild.days_with_usage(session, tid, first_day, end_day)
                for day in days:
                    with transaction(sessions) as session:
                        totals.add(
                            rebuild.rebuild_day(session, settings, tid, day, write=not check)
                        )
                progress.advance(task)
    except BillfoldError as exc:
        stopped = f"({exc.code}) {exc.message}"
    finally:
        engine.dispose()
    _rebuild_report(totals, first_day, end_day, check=check, as_json=as_json, stopped=stopped)
    if stopped is not None:
        raise typer.Exit(code=1)
    if totals.version_mismatches or (check and totals.changed_rows):
        raise typer.Exit(code=EXIT_REJECTED)


def _rebuild_report(
    totals: rebuild.RebuildTotals,
    first: date,
    end: date,
    *,
    check: bool,
    as_json: bool,
    stopped: str | None,
) -> None:
    left = [
        {"teamId": str(r.team_id), "day": r.day.isoformat(), "rows": r.version_mismatches}
        for r in totals.version_mismatches
    ]
    if as_json:
        payload: dict[str, Any] = {
            "from": first.isoformat(),
            "to": end.isoformat(),
            "check": check,
            "teamDays": totals.team_days,
            "changedTeamDays": totals.changed_team_days,
            "changedRows": totals.changed_rows,
            "notAddingUp": left,
        }
        if stopped is not None:
            payload["stopped"] = stopped
        print_json(payload)
        return
    verb = "differ" if check else "rebuilt"
    console.print(
        f"{first} to {end} (exclusive): {totals.team_days} team-days, "
        f"{totals.changed_team_days} {verb} ({totals.changed_rows} rollup rows)"
    )
    for item in left:
        console.print(
            f"  [yellow]left as it is[/yellow]: team {item['teamId']}, {item['day']}: its events "
            f"do not add up to its rollups by version ({item['rows']} rows differ)"
        )
    if stopped is not None:
        console.print(
            f"[red]stopped[/red]: {stopped}\n  team-days before this point are done; "
            "run the same command again to go on"
        )


@usage_app.command("cancel")
def cancel_events(
    team: Annotated[str, typer.Argument(help="The team's id.")],
    event_ids: Annotated[list[str], typer.Argument(help="Ids of the team's events to cancel.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (kept with each cancellation).")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Cancel usage events of open billing cycles: they stop counting everywhere.

    Their ids stay used: sending such an event again is a duplicate.

    Exit status 0: every event canceled (now or before); 3: some rejected (not found, closed
    cycle); 1: error.
    """
    team_id = str(parse_team_id(team))
    if len(reason) > MAX_REASON_LENGTH:
        bad_input(f"at most {MAX_REASON_LENGTH} characters", field="--reason")
    if not storable(reason):  # as the API's 400: bytes that are not UTF-8 (surrogateescape)
        bad_input("no NUL characters or invalid UTF-8", field="--reason")
    settings = get_settings()
    items = [{"teamId": team_id, "eventId": event_id} for event_id in event_ids]
    with cli_transaction(settings) as session:
        result = cancellation.cancellation_service.cancel(session, settings, items, reason)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "canceled": result.canceled,
                    "alreadyCanceled": result.already_canceled,
                    "rejected": [r.as_wire() for r in result.rejected],
                },
                indent=2,
            )
        )
    else:
        console.print(
            f"{result.canceled} canceled, {result.already_canceled} canceled before, "
            f"{len(result.rejected)} rejected"
        )
        for r in result.rejected:
            console.print(f"  {r.event_id}: {r.code}: {r.error}")
    if result.rejected:
        raise typer.Exit(code=EXIT_REJECTED)
