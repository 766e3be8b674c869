"""``billfold payments reconcile``: settle charges and refunds pending too long; ``--check`` the
invariant."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from billfold.config import get_settings
from billfold.kit.cli import JsonOpt, console, fail, print_json
from billfold.kit.db import make_engine, make_sessionmaker

payments_app = typer.Typer(no_args_is_help=True, help="Charges at the payment provider.")


@payments_app.command("reconcile")
def reconcile_command(
    older_than: Annotated[
        int | None,
        typer.Option(
            "--older-than-seconds",
            min=0,
            help="Settle charges pending longer than this (default "
            "BILLFOLD_STRIPE_PENDING_AFTER_SECONDS, 300).",
        ),
    ] = None,
    check_too: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Then prove no credit lacks a succeeded PaymentIntent and no succeeded "
            "PaymentIntent lacks its ledger entry (Stripe only; exit 1 when they disagree).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Settle every top-up, invoice and refund pending at the provider longer than the threshold,
    by asking the provider (the servers do this every few minutes with Stripe)."""
    from billfold.payments.providers import ProviderMisconfigured, close_provider, make_provider
    from billfold.payments.stripe_provider import StripeProvider
    from billfold.settlement.reconcile import check, reconcile

    settings = get_settings()
    try:
        provider = make_provider(settings)
    except ProviderMisconfigured as exc:
        fail("provider_misconfigured", str(exc), exit_code=2)
    seconds = settings.stripe_pending_after_seconds if older_than is None else older_than
    engine = make_engine(settings.database_url, pool_size=2, pool_mode=settings.database_pool_mode)
    try:
        sessions = make_sessionmaker(engine)
        report = reconcile(sessions, provider, timedelta(seconds=seconds))
        problems: list[str] | None = None
        if check_too:
            if not isinstance(provider, StripeProvider):
                fail("not_stripe", "--check needs BILLFOLD_PAYMENT_PROVIDER=stripe")
            problems = check(sessions, provider)
    finally:
        engine.dispose()
        close_provider(provider)
    if as_json:
        body: dict[str, object] = {
            "examined": report.examined,
            "settled": report.settled,
            "stillPending": report.still_pending,
        }
        if problems is not None:
            body["problems"] = problems
        print_json(body)
    else:
        console.print(
            f"examined {report.examined}, settled {len(report.settled)}, "
            f"still pending {len(report.still_pending)}",
            highlight=False,
        )
        for line in [*report.settled, *report.still_pending, *(problems or [])]:
            console.print(f"  {line}", highlight=False)
    if problems:
        raise typer.Exit(code=1)
