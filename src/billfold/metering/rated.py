"""Where usage is rated, for the price book (pricing.service.RatedUsage)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold.kit.clock import to_utc
from billfold.metering.models import UsageRollupByVersion


class RolledUpUsage:
    """Rated usage as the rollups by version keep it: in 15-minute buckets."""

    def rated_span(
        self, session: Session, version_id: int, after: datetime
    ) -> tuple[datetime, datetime] | None:
        first, last = session.execute(
            select(
                func.min(UsageRollupByVersion.bucket_start),
                func.max(UsageRollupByVersion.bucket_start),
            ).where(
                UsageRollupByVersion.price_version_id == version_id,
                UsageRollupByVersion.bucket_start > after,
            )
        ).one()
        if first is None or last is None:
            return None
        return to_utc(first), to_utc(last)


rated_usage = RolledUpUsage()
