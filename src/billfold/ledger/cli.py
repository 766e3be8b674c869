"""``billfold credits ...``: grant credit, show a balance, expire due grants, resolve top-ups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from billfold.config import get_settings
from billfold.kit.cli import (
    JsonOpt,
    bad_input,
    console,
    dump,
    emit,
    parse_team_id,
    print_json,
    transaction,
)
from billfold.kit.clock import utc_now
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.ledger.position import credit_position
from billfold.ledger.schemas import CreditSummary

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
    from billfold.ledger.endpoints import entry_out
    from billfold.ledger.service import ledger_service

    team = parse_team_id(team_id)
    expiry = _parse_time(expires_at)
    with transaction() as session:
        entry, _ = ledger_service.grant(
            session,
            team,
            amount=amount,
            reason=reason,
            idempotency_key=idempotency_key,
            expires_at=expiry,
        )
        out = entry_out(entry)
    emit(out, as_json, ["entryId", "kind", "amount", "reason", "idempotencyKey", "expiresAt"])


@credits_app.command("balance")
def balance(team_id: str, as_json: JsonOpt = False) -> None:
    """Show a team's credit and its balance changes as the team sees them (spec sign: credit < 0).

    Pending top-ups are shown as they are; ``billfold credits resolve-pending`` resolves them.
    """
    from billfold.ledger.service import ledger_service
    from billfold.teams.service import team_service

    team = parse_team_id(team_id)
    with transaction() as session:
        team_service.get(session, team)
        listing = ledger_service.balance(session, team)
        position = credit_position(session, team, utc_now())
        summary = CreditSummary(
            team_id=str(team),
            posted_credit=position.posted_credit,
            credit_left=position.credit_left,
            changes=listing.changes,
            total=listing.total,
        )
    if as_json:
        print_json(dump(summary))
        return
    emit(
        listing.changes,
        False,
        ["createTime", "changeOrigin", "topupStatus", "amount", "invoiceNumber"],
    )
    console.print(
        f"credit left {summary.credit_left} cents (posted {summary.posted_credit}); "
        f"total {summary.total.val}"
    )


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


@credits_app.command("resolve-pending")
def resolve_pending(
    team_id: Annotated[str | None, typer.Option("--team", help="One team (default: all).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Resolve top-ups left TO_CHARGE (a provider timeout or a crash) by asking the provider.

    A charge the provider made is settled (purchase entry + receipt invoice); a top-up the
    provider never saw is charged again with the same idempotency key once it is over a minute old.
    """
    from billfold.ledger.service import topup_service
    from billfold.payments.sandbox import SandboxProvider

    settings = get_settings()
    team = parse_team_id(team_id) if team_id is not None else None
    provider = SandboxProvider.for_database(settings.database_url)
    provider.install()
    engine = make_engine(settings.database_url, pool_size=2)
    try:
        topups = topup_service.resolve_pending(
            make_sessionmaker(engine), provider, team, limit=limit
        )
    finally:
        engine.dispose()
        provider.engine.dispose()
    rows = [{"topupId": str(t.id), "teamId": str(t.team_id), "status": t.status} for t in topups]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        console.print(f"{row['topupId']}  {row['teamId']}  {row['status']}")
    console.print(f"{len(rows)} pending top-up(s) examined")
