"""``billfold price set|list``"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from billfold.kit.cli import JsonOpt, emit, transaction
from billfold.pricing.schemas import version_out
from billfold.pricing.service import pricing_service

price_app = typer.Typer(no_args_is_help=True, help="The price book.")


@price_app.command("set")
def price_set(
    sku: str,
    unit_price: Annotated[str, typer.Option("--unit-price", help="USD per unit, e.g. 0.000003.")],
    description: Annotated[str, typer.Option("--description", help="Shown on invoice lines.")],
    unit_type: Annotated[str, typer.Option("--unit-type", help="e.g. 'Prompt text tokens'.")],
    effective_from: Annotated[
        datetime | None,
        typer.Option(
            "--effective-from",
            help="UTC; default now.",
            formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"],
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a price version of a SKU."""
    from datetime import UTC

    if effective_from is not None and effective_from.tzinfo is None:
        effective_from = effective_from.replace(tzinfo=UTC)
    with transaction() as session:
        version, _ = pricing_service.set_price(
            session,
            sku,
            description=description,
            unit_type=unit_type,
            unit_price=unit_price,
            effective_from=effective_from,
        )
        out = version_out(version)
    emit(
        out, as_json, ["sku", "versionId", "unitPrice", "effectiveFrom", "description", "unitType"]
    )


@price_app.command("list")
def price_list(as_json: JsonOpt = False) -> None:
    """Every SKU with its versions."""
    with transaction() as session:
        rows = [
            version_out(v) for versions in pricing_service.list(session).values() for v in versions
        ]
    emit(
        rows, as_json, ["sku", "versionId", "unitPrice", "effectiveFrom", "description", "unitType"]
    )
