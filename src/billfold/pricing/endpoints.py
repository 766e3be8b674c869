"""Operator API of the price book."""

from __future__ import annotations

from fastapi import Path, Response

from billfold.kit.errors import Conflict
from billfold.kit.http import DbSession, read_only
from billfold.kit.money import Pico, format_usd_price
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.pricing.models import PriceVersion
from billfold.pricing.schemas import (
    SKU_PATTERN,
    PriceList,
    PriceVersionOut,
    SetPriceRequest,
    SkuOut,
)
from billfold.pricing.service import pricing_service
from billfold.teams.auth import Operator

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


def version_out(version: PriceVersion) -> PriceVersionOut:
    return PriceVersionOut(
        version_id=str(version.id),
        sku=version.sku,
        description=version.description,
        unit_type=version.unit_type,
        unit_price=format_usd_price(Pico(version.unit_price_pico)),
        effective_from=version.effective_from,
        create_time=version.created_at,
    )


@admin_router.put(
    "/admin/v1/prices/{sku}", response_model=PriceVersionOut, responses=error_responses(Conflict)
)
def set_price(
    body: SetPriceRequest,
    session: DbSession,
    response: Response,
    sku: str = Path(min_length=1, max_length=200, pattern=SKU_PATTERN),
) -> PriceVersionOut:
    version, created = pricing_service.set_price(
        session,
        sku,
        description=body.description,
        unit_type=body.unit_type,
        unit_price=str(body.unit_price),
        effective_from=body.effective_from,
    )
    response.status_code = 201 if created else 200
    return version_out(version)


@admin_router.get("/admin/v1/prices", response_model=PriceList)
@read_only
def list_prices(session: DbSession) -> PriceList:
    book = pricing_service.list(session)
    return PriceList(
        skus=[SkuOut(sku=sku, versions=[version_out(v) for v in vs]) for sku, vs in book.items()]
    )
