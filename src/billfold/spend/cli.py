"""``billfold limit ...`` and ``billfold spend-status``."""

from __future__ import annotations

from typing import Annotated

import typer

from billfold.config import get_settings
from billfold.kit.cli import (
    JsonOpt,
    bad_input,
    emit,
    parse_team_id,
    show,
    transaction,
)
from billfold.kit.money import Cents
from billfold.spend.service import spend_service

limit_app = typer.Typer(no_args_is_help=True, help="Spending limits.")


_LIMIT_COLUMNS = ["hardSlOverride", "hardSlAuto", "effectiveHardSl", "softSl", "effectiveSl"]


@limit_app.command("show")
def limit_show(team_id: str, as_json: JsonOpt = False) -> None:
    """A team's spending limits, as the Billing Management API shows them."""
    from billfold.spend.schemas import limits_out

    settings = get_settings()
    with transaction(settings) as session:
        limits = spend_service.limits(session, settings, parse_team_id(team_id))
    emit(limits_out(limits), as_json, _LIMIT_COLUMNS)


@limit_app.command("hard")
def limit_hard(
    team_id: str,
    amount: Annotated[
        int | None, typer.Option("--amount", min=0, help="The team's hard limit in cents.")
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove the override (back to the default).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set (--amount CENTS) or remove (--clear) a team's hard spending limit."""
    from billfold.spend.schemas import limits_out

    if (amount is None) == (not clear):
        bad_input("give exactly one of --amount CENTS or --clear", field="--amount")
    settings = get_settings()
    with transaction(settings) as session:
        limits = spend_service.set_hard_limit(
            session,
            settings,
            parse_team_id(team_id),
            None if clear or amount is None else Cents(amount),
        )
    emit(limits_out(limits), as_json, _LIMIT_COLUMNS)


def spend_status(team_id: str, as_json: JsonOpt = False) -> None:
    """May the team spend now? The gateway's spend check (``GET .../spend-status``)."""
    from billfold.spend.schemas import spend_status_out

    settings = get_settings()
    team = parse_team_id(team_id)
    with transaction(settings) as session:
        out = spend_status_out(spend_service.spend_status(session, settings, team))
    show(out, as_json)
