"""``billfold audit list``: the audit trail, as ``GET /admin/v1/audit-events`` answers it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from billfold.audit.schemas import audit_page_out
from billfold.audit.service import Cursor, audit_service
from billfold.kit.cli import JsonOpt, bad_input, dump, emit, parse_team_id, print_json, transaction

audit_app = typer.Typer(no_args_is_help=True, help="The audit trail of writes.")


@audit_app.command("list")
def list_events(
    team: Annotated[str | None, typer.Option("--team", help="Only this team's events.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From this RFC 3339 time on (inclusive).")
    ] = None,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=1000)] = 100,
    page_token: Annotated[str, typer.Option("--page-token")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Recorded writes, oldest first (HTTP requests and CLI commands, with who and when)."""
    team_id = parse_team_id(team, "--team") if team is not None else None
    start = _since(since) if since is not None else None
    with transaction() as session:
        after = Cursor.parse(page_token) if page_token else None
        events = audit_service.list(
            session, team_id=team_id, since=start, after=after, limit=page_size + 1
        )
        page = audit_page_out(events, page_size)
    if as_json:
        print_json(dump(page))
        return
    emit(
        page.events,
        False,
        ["time", "actorKind", "actorId", "teamId", "action", "requestId", "status"],
    )
    if page.next_page_token:
        typer.echo(f"next page: --page-token {page.next_page_token}")


def _since(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        bad_input("must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z", field="--since")
    if parsed.tzinfo is None:
        bad_input("must carry a zone, e.g. 2026-11-01T00:00:00Z", field="--since")
    return parsed
