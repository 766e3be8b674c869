"""``billfold cycle ...`` and ``billfold limit ...``"""

from __future__ import annotations

from typing import Annotated

import typer

from billfold.config import get_settings
from billfold.kit.cli import JsonOpt, console, emit, parse_team_id, transaction

cycle_app = typer.Typer(no_args_is_help=True, help="Billing cycles.")
limit_app = typer.Typer(no_args_is_help=True, help="Spending limits.")

_LIMIT_COLUMNS = ["hardSlOverride", "hardSlAuto", "effectiveHardSl", "softSl", "effectiveSl"]


@cycle_app.command("close")
def cycle_close(
    year: Annotated[int, typer.Option("--year", min=2000, max=9999, help="e.g. 2026")],
    month: Annotated[int, typer.Option("--month", min=1, max=12, help="1-12")],
    as_json: JsonOpt = False,
) -> None:
    """Close a month: invoice every team with usage in it and charge their default card.

    Idempotent: running it again finalizes and charges nothing twice.
    """
    from billfold.invoicing.endpoints import close_summary_out
    from billfold.invoicing.service import invoicing_service
    from billfold.kit.db import make_engine, make_sessionmaker
    from billfold.kit.errors import BillfoldError
    from billfold.payments.sandbox import SandboxProvider

    settings = get_settings()
    engine = make_engine(settings.database_url, pool_size=2)
    provider = SandboxProvider.for_database(settings.database_url)
    provider.install()
    try:
        summary = invoicing_service.close_cycle(
            make_sessionmaker(engine), settings, provider, year, month
        )
    except BillfoldError as exc:
        console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(code=1) from None
    finally:
        engine.dispose()
        provider.engine.dispose()
    out = close_summary_out(summary)
    if as_json:
        typer.echo(out.model_dump_json(by_alias=True, exclude_none=True, indent=2))
        return
    emit(
        out.invoices,
        False,
        ["teamId", "invoiceNumber", "invoiceStatus", "usage", "creditsApplied", "tax", "total"],
    )
    t = out.totals
    console.print(
        f"{year}-{month:02d}: {t.invoices} invoices, total {t.total} cents "
        f"(paid {t.paid}, failed {t.failed}, pending {t.pending})"
    )


@limit_app.command("show")
def limit_show(team_id: str, as_json: JsonOpt = False) -> None:
    """A team's spending limits, as the Billing Management API shows them."""
    from billfold.invoicing.endpoints import limits_out
    from billfold.invoicing.service import invoicing_service

    settings = get_settings()
    with transaction(settings) as session:
        limits = invoicing_service.limits(session, settings, parse_team_id(team_id))
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
    from billfold.invoicing.endpoints import limits_out
    from billfold.invoicing.service import invoicing_service

    if (amount is None) == (not clear):
        raise typer.BadParameter("give exactly one of --amount CENTS or --clear")
    settings = get_settings()
    with transaction(settings) as session:
        limits = invoicing_service.set_hard_limit(
            session, settings, parse_team_id(team_id), None if clear else amount
        )
    emit(limits_out(limits), as_json, _LIMIT_COLUMNS)
