"""``billfold auto-top-up set | show | charge``: a team's auto top-up, from the command line."""

from __future__ import annotations

from typing import Annotated

import typer

from billfold.autotopup.schemas import AutoTopupRequest, auto_topup_config, auto_topup_out
from billfold.autotopup.service import auto_topup_service
from billfold.config import get_settings
from billfold.kit.cli import JsonOpt, console, fail, parse_team_id, print_json, show, transaction
from billfold.kit.cli import validated as validated_input
from billfold.kit.db import make_engine, make_sessionmaker

auto_topup_app = typer.Typer(no_args_is_help=True, help="Auto top-up of prepaid credit.")


@auto_topup_app.command("set")
def set_command(
    team_id: str,
    enabled: Annotated[bool, typer.Option("--enabled/--disabled", help="On or off.")] = True,
    threshold: Annotated[
        int | None, typer.Option("--threshold", help="Top up when credit falls below (cents).")
    ] = None,
    amount: Annotated[int | None, typer.Option("--amount", help="Charge this (cents).")] = None,
    target: Annotated[
        int | None, typer.Option("--target", help="Or top up to this level (cents).")
    ] = None,
    monthly_limit: Annotated[
        int | None,
        typer.Option("--monthly-limit", help="At most this much a calendar month (cents)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace a team's auto top-up settings (as ``PUT /admin/v1/teams/{id}/auto-top-up``)."""
    team = parse_team_id(team_id)
    body = validated_input(
        AutoTopupRequest,
        {
            "enabled": enabled,
            "thresholdCents": threshold,
            "amountCents": amount,
            "targetCents": target,
            "monthlyLimitCents": monthly_limit,
        },
        {
            "thresholdCents": "--threshold",
            "amountCents": "--amount",
            "targetCents": "--target",
            "monthlyLimitCents": "--monthly-limit",
        },
    )
    settings = get_settings()
    with transaction(settings) as session:
        out = auto_topup_out(auto_topup_service.set(session, team, auto_topup_config(body)))
    show(out, as_json)


@auto_topup_app.command("show")
def show_command(team_id: str, as_json: JsonOpt = False) -> None:
    """A team's auto top-up settings and where it stands this month."""
    team = parse_team_id(team_id)
    with transaction() as session:
        out = auto_topup_out(auto_topup_service.get(session, team))
    show(out, as_json)


@auto_topup_app.command("charge")
def charge_command(as_json: JsonOpt = False) -> None:
    """Charge the pending auto top-ups now: one round of the servers' charger."""
    from billfold.autotopup.charger import charge_due
    from billfold.payments.providers import ProviderMisconfigured, close_provider, make_provider

    settings = get_settings()
    try:
        provider = make_provider(settings)
    except ProviderMisconfigured as exc:
        fail("provider_misconfigured", str(exc), exit_code=2)
    engine = make_engine(settings.database_url, pool_size=2)
    try:
        sessions = make_sessionmaker(engine, settings=settings)
        topups = charge_due(sessions, sessions, provider, settings)
    finally:
        engine.dispose()
        close_provider(provider)
    rows = [{"topupId": str(t.id), "teamId": str(t.team_id), "status": t.status} for t in topups]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        console.print(f"{row['topupId']}  {row['teamId']}  {row['status']}")
    console.print(f"{len(rows)} auto top-up(s) charged")
