from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, StringConstraints

from billfold.kit.money import Pico, format_usd_price
from billfold.kit.schemas import AwareUtc, UtcDateTime, WireModel
from billfold.pricing.models import PriceVersion


def _price_text(value: Any) -> str:
    # A float has already lost the exact price; only decimal strings (or whole numbers) are taken.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('must be a decimal string such as "0.000003"')
    return str(value)


# Letters, digits and . _ : - and spaces ("grok-4 prompt tokens"), starting with a letter or digit.
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._: -]*$"


class SetPriceRequest(WireModel):
    description: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
    ]
    unit_type: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ]
    unit_price: Annotated[str, BeforeValidator(_price_text)]
    effective_from: AwareUtc | None = None


class PriceVersionOut(WireModel):
    version_id: str
    sku: str
    description: str
    unit_type: str
    unit_price: str
    effective_from: UtcDateTime
    create_time: UtcDateTime


class SkuOut(WireModel):
    sku: str
    versions: list[PriceVersionOut]


class PriceList(WireModel):
    skus: list[SkuOut]


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


def price_list_out(book: dict[str, list[PriceVersion]]) -> PriceList:
    """The price book: each SKU with its versions."""
    return PriceList(
        skus=[SkuOut(sku=sku, versions=[version_out(v) for v in vs]) for sku, vs in book.items()]
    )
