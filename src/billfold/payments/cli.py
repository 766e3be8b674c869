"""``billfold card add``: a card for a team, through the configured (sandbox) provider."""

from __future__ import annotations

from typing import Annotated

import typer

from billfold.config import get_settings
from billfold.kit.cli import JsonOpt, parse_team_id, show, transaction, validated

card_app = typer.Typer(no_args_is_help=True, help="Payment cards of teams (sandbox provider).")


@card_app.command("add")
def card_add(
    team_id: str,
    number: Annotated[str, typer.Option("--number", help="e.g. 4242424242424242 (sandbox).")],
    exp_month: Annotated[int, typer.Option("--exp-month", help="1-12")],
    exp_year: Annotated[int, typer.Option("--exp-year", help="e.g. 2030")],
    make_default: Annotated[
        bool,
        typer.Option(
            "--default", help="Make it the default method (a team's first card always is)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a card, as ``POST /admin/v1/teams/{team_id}/payment-methods`` does.

    Sandbox numbers: 4242424242424242 succeeds, 4000000000000002 is declined, 4000000000009995
    has insufficient funds, 4000000000000119 times out once. The full number is never stored.
    """
    from billfold.payments.endpoints import add_payment_method
    from billfold.payments.sandbox import SandboxProvider
    from billfold.payments.schemas import AddCardRequest

    team = str(parse_team_id(team_id))
    body: AddCardRequest = validated(
        AddCardRequest,
        {
            "cardNumber": number,
            "expMonth": exp_month,
            "expYear": exp_year,
            "makeDefault": make_default,
        },
        {"cardNumber": "--number", "expMonth": "--exp-month", "expYear": "--exp-year"},
    )
    settings = get_settings()
    provider = SandboxProvider.for_database(
        settings.database_url, pool_mode=settings.database_pool_mode
    )
    try:
        provider.install()
        with transaction(settings) as session:
            out = add_payment_method(team, body, session, provider)
    finally:
        provider.engine.dispose()
    show(out, as_json, omit=["billingInfo"])
