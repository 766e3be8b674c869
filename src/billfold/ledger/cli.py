"""``billfold credits ...``: grant credit, show a balance, expire due grants, resolve top-ups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from billfold.kit.cli import (
    JsonOpt,
    bad_input,
    console,
    emit,
    parse_team_id,
    print_json,
    transaction,
)
from billfold.kit.clock import utc_now
from billfold.kit.money import Cents

credits_app = typer.Typer(no_args_is_help=True, help="Prepaid credits.")


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        bad_input(f"{value!r} is not an RFC 3339 time", field="--expires-at")
    if parsed.tzinfo is None:
        bad_input("give a zone, e.g. 2026-12-31T23:59:59Z", field="--expires-at")
    return parsed


@credits_app.command("grant")
def grant(
    team_id: str,
    amount: Annotated[
        int, typer.Option("--amount", help="Cents; negative takes credit back (adjustment).")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to the operator).")] = "",
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Retrying with the same key grants once."),
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="RFC 3339; the unused rest expires then.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant prepaid credit to a team (or take some back with a negative amount)."""
    from billfold.ledger.schemas import entry_out
    from billfold.ledger.service import ledger_service

    team = parse_team_id(team_id)
    expiry = _parse_time(expires_at)
    with transaction() as session:
        entry, _ = ledger_service.grant(
            session,
            team,
            amount=Cents(amount),
            reason=reason,
            idempotency_key=idempotency_key,
            expires_at=expiry,
        )
        out = entry_out(entry)
    emit(out, as_json, ["entryId", "kind", "amount", "reason", "idempotencyKey", "expiresAt"])


@credits_app.command("expire")
def expire(
    team_id: Annotated[
        str | None, typer.Option("--team", help="One team (default: every team with one due).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Book the expiry of grants that fell due. Reads do it too; this settles idle teams."""
    from billfold.ledger.service import ledger_service

    now = utc_now()
    if team_id is not None:
        teams = [parse_team_id(team_id)]
    else:
        with transaction() as session:
            teams = ledger_service.teams_with_due_expiries(session, now)
    booked = 0
    for team in teams:
        with transaction() as session:  # one team per transaction: short account locks
            booked += len(ledger_service.expire_due(session, team, now))
    if as_json:
        print_json({"expired": booked})
    else:
        console.print(f"{booked} grant(s) expired")
