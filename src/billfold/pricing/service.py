"""The price book: immutable versions per SKU; the version in force at a time rates usage."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.cycles.periods import is_closed, month_of
from billfold.kit.clock import rfc3339, to_utc, utc_now
from billfold.kit.errors import Conflict, InvalidField
from billfold.kit.money import Pico, parse_usd_price
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


class RatedUsage(Protocol):
    """Where a price version's rated usage lies (implemented by ``metering.rated.RolledUpUsage``;
    pricing sits below metering, so it is handed in: billfold/wiring.py)."""

    def rated_span(
        self, session: Session, version_id: int, after: datetime
    ) -> tuple[datetime, datetime] | None:
        """The first and last 15-minute bucket start of the version's rated usage in buckets
        starting after ``after``; None when there is none."""
        ...


class PricingService:
    def __init__(self) -> None:
        self._rated: RatedUsage | None = None

    def use(self, rated: RatedUsage) -> None:
        """Wire in where usage is rated (billfold/wiring.py does, for the app and the CLI)."""
        self._rated = rated

    @property
    def rated(self) -> RatedUsage:
        if self._rated is None:
            raise RuntimeError("pricing is not wired to metering: import billfold.wiring")
        return self._rated

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
                if same:  # idempotent, also once its month is closed: it changes nothing
                    return version, False
                raise Conflict(
                    "a different version of this SKU already starts at effectiveFrom; "
                    "versions are immutable, add one with a later effectiveFrom",
                    code="price_version_exists",
                    field="effectiveFrom",
                )
        year, month = month_of(effective_from)
        if is_closed(session, year, month):
            # A closed month further into the new version's interval needs no rule of its own:
            # its usage there is rated usage (refused below); without any, no invoice changes.
            raise Conflict(
                f"effectiveFrom falls in {year}-{month:02d}, a closed billing cycle",
                code="cycle_closed",
                field="effectiveFrom",
            )
        earlier = [v for v in existing if v.effective_from < effective_from]
        later = [v for v in existing if v.effective_from > effective_from]
        until = later[0].effective_from if later else None
        if earlier:
            self._refuse_rewriting_rated_usage(session, earlier[-1], effective_from, until)
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

    def _refuse_rewriting_rated_usage(
        self,
        session: Session,
        before: PriceVersion,
        effective_from: datetime,
        until: datetime | None,
    ) -> None:
        """A new version may not change the price of usage that is already rated.

        It would rate the events from ``effective_from`` until the next version (``until``),
        which are rated now with the version in force before it (``before``): only ``before``'s
        rated usage at or after ``effective_from`` is in the way. Events before the SKU's first
        version are not rated at all (``unknown_sku``), so a version earlier than every other
        one never is. Rollup buckets are 15 minutes wide: a bucket that ends after
        ``effective_from`` may hold an event at or after it.
        """
        horizon = effective_from - timedelta(minutes=15)
        rated = self.rated.rated_span(session, before.id, horizon)
        if rated is None:
            return
        first, last = rated
        start, end = max(to_utc(first), effective_from), to_utc(last) + timedelta(minutes=15)
        span = f"until {rfc3339(until)}" if until is not None else "from then on"
        raise Conflict(
            f"a version at effectiveFrom would be in force {span} and re-price usage from "
            f"{rfc3339(start)} to {rfc3339(end)}, already rated with version {before.id} "
            f"(in force since {rfc3339(before.effective_from)}); choose an effectiveFrom at or "
            f"after {rfc3339(end)}",
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
