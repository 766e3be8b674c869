"""``billfold cycle ...`` and ``billfold invoices ...``"""

from __future__ import annotations

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
    report,
    show,
    transaction,
)
from billfold.teams.cli import team_app

cycle_app = typer.Typer(no_args_is_help=True, help="Billing cycles.")


@cycle_app.command("close")
def cycle_close(
    year: Annotated[int, typer.Option("--year", min=2000, max=9999, help="e.g. 2026")],
    month: Annotated[int, typer.Option("--month", min=1, max=12, help="1-12")],
    as_json: JsonOpt = False,
) -> None:
    """Close a month: invoice every team with usage in it and charge their default card.

    Idempotent: running it again finalizes and charges nothing twice.
    """
    from billfold.invoicing.schemas import close_summary_out
    from billfold.invoicing.service import invoicing_service
    from billfold.kit.db import make_engine, make_sessionmaker
    from billfold.kit.errors import BillfoldError
    from billfold.payments.sandbox import SandboxProvider

    settings = get_settings()
    engine = make_engine(settings.database_url, pool_size=2, pool_mode=settings.database_pool_mode)
    provider = SandboxProvider.for_database(
        settings.database_url, pool_mode=settings.database_pool_mode
    )
    provider.install()
    try:
        summary = invoicing_service.close_cycle(
            make_sessionmaker(engine), settings, provider, year, month
        )
    except BillfoldError as exc:
        report(exc)
    finally:
        engine.dispose()
        provider.engine.dispose()
    out = close_summary_out(summary)
    if as_json:
        print_json(dump(out))
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


invoices_app = typer.Typer(no_args_is_help=True, help="Invoices (monthly and top-up receipts).")

_INVOICE_COLUMNS = [
    "invoiceId",
    "invoiceNumber",
    "createTime",
    "invoiceStatus",
    "subtotal",
    "tax",
    "total",
]
_LINE_COLUMNS = ["clusterName", "description", "unitType", "unitPrice", "numUnits", "amount"]


def _year_month(value: str, option: str) -> tuple[int, int]:
    year, _, month = value.partition("-")
    if not (len(year) == 4 and year.isdigit() and month.isdigit() and 1 <= int(month) <= 12):
        bad_input(f"{value!r} is not a month (YYYY-MM)", field=option)
    return int(year), int(month)


@invoices_app.command("list")
def invoices_list(
    team_id: str,
    since: Annotated[
        str | None, typer.Option("--since", help="YYYY-MM: that month's invoices and later.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A team's invoices, newest first, as ``GET /v1/billing/teams/{team_id}/invoices`` lists
    them (with ``--since``: as ``since.year``/``since.month`` filter them)."""
    from billfold.invoicing.schemas import invoice_out
    from billfold.invoicing.service import invoice_filter, invoicing_service
    from billfold.teams.service import team_service

    team = parse_team_id(team_id)
    year, month = _year_month(since, "--since") if since is not None else (None, None)
    with transaction() as session:
        team_service.get(session, team)
        wanted = invoice_filter(None, None, year, month, None)
        invoices = [invoice_out(i) for i in invoicing_service.list_invoices(session, team, wanted)]
    emit(invoices, as_json, _INVOICE_COLUMNS)


@invoices_app.command("show")
def invoices_show(invoice_id: str, as_json: JsonOpt = False) -> None:
    """One invoice with its lines, in the Billing Management API's shape."""
    from billfold.invoicing.schemas import invoice_out
    from billfold.invoicing.service import invoicing_service

    with transaction() as session:
        out = invoice_out(invoicing_service.get_invoice(session, invoice_id))
    show(out, as_json, omit=["lines", "chargerAttempts"])
    if not as_json:
        emit(out.lines, False, _LINE_COLUMNS)
        if out.charger_attempts:
            emit(out.charger_attempts, False, ["ticket", "successful", "paymentMethodId"])


@team_app.command("show")
def team_show(team_id: str, as_json: JsonOpt = False) -> None:
    """A team with its billing state, as ``GET /admin/v1/teams/{team_id}`` shows it."""
    from billfold.invoicing.schemas import team_billing_out
    from billfold.invoicing.service import invoicing_service

    settings = get_settings()
    team = parse_team_id(team_id)
    with transaction(settings) as session:
        out = team_billing_out(invoicing_service.team_billing(session, settings, team))
    show(out, as_json)
