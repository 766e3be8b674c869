"""Operator API of the price book."""

from __future__ import annotations

from fastapi import Path, Response

from billfold.kit.errors import Conflict
from billfold.kit.http import DbSession, read_only
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.pricing.schemas import (
    SKU_PATTERN,
    PriceList,
    PriceVersionOut,
    SetPriceRequest,
    price_list_out,
    version_out,
)
from billfold.pricing.service import pricing_service
from billfold.teams.auth import Operator

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


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
    return price_list_out(pricing_service.list(session))
