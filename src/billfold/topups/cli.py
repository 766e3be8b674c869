"""``billfold credits balance`` and ``billfold credits resolve-pending`` (the ``credits`` group is
the ledger's; these commands read or settle purchases).
"""

from __future__ import annotations

from typing import Annotated

import typer

from billfold.config import get_settings
from billfold.kit.cli import (
    JsonOpt,
    console,
    dump,
    emit,
    parse_team_id,
    print_json,
    transaction,
)
from billfold.kit.clock import utc_now
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.ledger.cli import credits_app
from billfold.ledger.schemas import CreditSummary
from billfold.ledger.service import ledger_service
from billfold.topups.balance import prepaid_balance_service


@credits_app.command("balance")
def balance(team_id: str, as_json: JsonOpt = False) -> None:
    """Show a team's credit and its balance changes as the team sees them (spec sign: credit < 0).

    Pending top-ups are shown as they are; ``billfold credits resolve-pending`` resolves them.
    """
    from billfold.teams.service import team_service

    team = parse_team_id(team_id)
    with transaction() as session:
        team_service.get(session, team)
        listing = prepaid_balance_service.balance(session, team)
        position = ledger_service.credit_position(session, team, utc_now())
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
    from billfold.payments.sandbox import SandboxProvider
    from billfold.topups.service import topup_service

    settings = get_settings()
    team = parse_team_id(team_id) if team_id is not None else None
    provider = SandboxProvider.for_database(
        settings.database_url, pool_mode=settings.database_pool_mode
    )
    provider.install()
    engine = make_engine(settings.database_url, pool_size=2, pool_mode=settings.database_pool_mode)
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
