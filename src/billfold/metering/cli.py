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

import json
import os
import sys
from datetime import date, timedelta
from typing import Annotated, Any, BinaryIO

import typer
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

from billfold.config import get_settings
from billfold.kit.cli import JsonOpt, bad_input, console, fail, parse_team_id, print_json
from billfold.kit.cli import transaction as cli_transaction
from billfold.kit.clock import rfc3339, utc_now
from billfold.kit.db import make_engine, make_sessionmaker, transaction
from billfold.kit.errors import BillfoldError
from billfold.metering import cancellation, rebuild, retention
from billfold.metering.events import storable
from billfold.metering.importing import (
    DirectSink,
    HttpSink,
    ImportStopped,
    ImportTotals,
    _format_of,
    csv_records,
    ingest_records,
    jsonl_records,
)
from billfold.metering.models import UsageEvent
from billfold.metering.schemas import MAX_REASON_LENGTH

usage_app = typer.Typer(no_args_is_help=True, help="Usage events.")

EXIT_REJECTED = 3
_progress_console = Console(stderr=True)


# --- reading files -----------------------------------------------------------------------------


# --- batching ----------------------------------------------------------------------------------


# --- commands ----------------------------------------------------------------------------------


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
    engine = make_engine(settings.database_url, pool_size=1, pool_mode=settings.database_pool_mode)
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
    engine = make_engine(settings.database_url, pool_size=1, pool_mode=settings.database_pool_mode)
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
