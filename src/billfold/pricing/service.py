"""The price book: immutable versions per SKU; the version in force at a time rates usage."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.invoicing.periods import is_closed, month_of
from billfold.kit.clock import utc_now
from billfold.kit.errors import Conflict, InvalidField
from billfold.kit.money import Pico, parse_usd_price
from billfold.metering.models import UsageRollupByVersion
from billfold.pricing.models import PriceVersion


@dataclass(frozen=True)
class PriceBook:
    """The versions of some SKUs, loaded once per batch; ``version_at`` is a binary search."""

    versions: dict[str, list[PriceVersion]]

    def version_at(self, sku: str, at: datetime) -> PriceVersion | None:
        versions = self.versions.get(sku)
        if not versions:
            return None
        index = bisect.bisect_right([v.effective_from for v in versions], at) - 1
        return versions[index] if index >= 0 else None


class PricingService:
    def set_price(
        self,
        session: Session,
        sku: str,
        *,
        description: str,
        unit_type: str,
        unit_price: str,
        effective_from: datetime | None,
    ) -> tuple[PriceVersion, bool]:
        """Add a version (or find the identical one). Returns ``(version, created)``."""
        try:
            price = parse_usd_price(unit_price)
        except ValueError as exc:
            raise InvalidField("unitPrice", str(exc)) from None
        now = utc_now()
        if effective_from is None:
            effective_from = now
        elif effective_from.tzinfo is None:
            raise InvalidField("effectiveFrom", "needs a time zone, e.g. 2026-11-01T00:00:00Z")
        year, month = month_of(effective_from)
        if is_closed(session, year, month):
            raise Conflict(
                f"effectiveFrom falls in {year}-{month:02d}, a closed billing cycle",
                code="cycle_closed",
                field="effectiveFrom",
            )
        # Serialize writers of one SKU (PostgreSQL row locks; SQLite is serialized already).
        existing = list(
            session.scalars(
                select(PriceVersion)
                .where(PriceVersion.sku == sku)
                .order_by(PriceVersion.effective_from)
                .with_for_update()
            )
        )
        for version in existing:
            if version.effective_from == effective_from:
                same = (
                    version.description == description
                    and version.unit_type == unit_type
                    and version.unit_price_pico == price
                )
                if same:
                    return version, False
                raise Conflict(
                    "a different version of this SKU already starts at effectiveFrom; "
                    "versions are immutable, add one with a later effectiveFrom",
                    code="price_version_exists",
                    field="effectiveFrom",
                )
        self._refuse_rewriting_rated_usage(session, existing, effective_from)
        version = PriceVersion(
            sku=sku,
            description=description,
            unit_type=unit_type,
            unit_price_pico=price,
            effective_from=effective_from,
            created_at=now,
        )
        session.add(version)
        session.flush()
        return version, True

    @staticmethod
    def _refuse_rewriting_rated_usage(
        session: Session, existing: list[PriceVersion], effective_from: datetime
    ) -> None:
        """A new version may not change the price of usage that is already rated."""
        if not existing:
            return
        # Rollup buckets are 15 minutes wide; a bucket that ends after effective_from may hold
        # an event at or after it.
        horizon = effective_from - timedelta(minutes=15)
        rated = session.scalar(
            select(UsageRollupByVersion.bucket_start)
            .where(
                UsageRollupByVersion.price_version_id.in_([v.id for v in existing]),
                UsageRollupByVersion.bucket_start > horizon,
            )
            .order_by(UsageRollupByVersion.bucket_start.desc())
            .limit(1)
        )
        if rated is not None:
            raise Conflict(
                "usage at or after effectiveFrom is already rated with an earlier version; "
                f"choose an effectiveFrom after {rated + timedelta(minutes=15):%Y-%m-%dT%H:%M:%SZ}",
                code="usage_already_rated",
                field="effectiveFrom",
            )

    def list(self, session: Session) -> dict[str, list[PriceVersion]]:
        versions = session.scalars(
            select(PriceVersion).order_by(PriceVersion.sku, PriceVersion.effective_from)
        )
        book: dict[str, list[PriceVersion]] = {}
        for version in versions:
            book.setdefault(version.sku, []).append(version)
        return book

    def book_for(self, session: Session, skus: Iterable[str]) -> PriceBook:
        wanted = sorted(set(skus))
        book: dict[str, list[PriceVersion]] = {}
        if wanted:
            for version in session.scalars(
                select(PriceVersion)
                .where(PriceVersion.sku.in_(wanted))
                .order_by(PriceVersion.sku, PriceVersion.effective_from)
            ):
                book.setdefault(version.sku, []).append(version)
        return PriceBook(book)


def unit_price(version: PriceVersion) -> Pico:
    return Pico(version.unit_price_pico)


pricing_service = PricingService()
