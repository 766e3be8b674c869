"""Usage tables. Both grow with usage and are keyed so they can be range-partitioned by time.

* ``usage_events``: one row per accepted event. The primary key ``(event_id, team_id)`` is the
  exactly-once guarantee (event id first: see :class:`UsageEvent`). For PostgreSQL range
  partitioning by ``ts`` the key would have to include the partition column; the documented path
  (docs/architecture.md) is to partition by ``ts`` and keep the de-duplication key in a companion
  table -- not needed at the sizes we run today. An event's properties are a
  ``property_set_id`` into ``usage_property_sets`` (one row per distinct combination, see
  :class:`UsagePropertySet`), and it has no SKU: its price version names it (migration 0010).
  ``price_version_id`` has no foreign key (migration 0004 dropped it): the check cost PostgreSQL a
  lookup and a KEY SHARE row lock on the price version for every inserted event (~25% of the
  insert). Nothing is lost: ingestion writes only ids of versions it read in the same
  transaction, versions are never deleted, and the same ids go into the batch's rollups and cycle
  lines, whose foreign keys are checked -- once per rollup, not once per event.
* ``usage_rollups``: per team, 15-minute bucket, price version and group dimensions, summed in the
  same transaction as the events. Every read path (analytics, preview, spend check) reads rollups
  or the per-cycle lines, never raw events, so their cost does not grow with the event count.
  15 minutes, because every real time zone offset is a multiple of 15 minutes: day and hour buckets
  in any IANA zone are unions of whole rollup buckets. Like ``usage_events`` (and for the same
  reason: a lookup and a KEY SHARE lock per new row, a quarter of its upsert), it and its hourly
  twin have no foreign key to ``price_versions`` (migration 0008), and no index by price
  version: they hold one row per property combination, ~10x the rows of the tables by version,
  which have both and are written by the same batch with the same version ids.
* ``usage_rollups_by_version``: the same sums without the property dimensions -- per team,
  15-minute bucket and price version, i.e. ``usage_rollups`` summed over ``dims_key`` (written by
  the same statements' batch, in the same transaction, so the two always agree). A month of a busy
  team is ~10x fewer rows here (one per price version per bucket instead of one per property
  combination), which is what analytics reads when a query groups and filters by price attributes
  only (description, unit type, SKU) -- the common case. Same 15-minute buckets, for the same
  reason as above.
* ``usage_rollups_hourly`` / ``_hourly_by_version`` and ``usage_rollups_daily`` /
  ``_daily_by_version``: the two tables above summed per UTC hour and per UTC day (same batch,
  same transaction). A local hour or day of every zone whose UTC offset is a whole number of hours
  -- nearly all of them -- is a union of UTC hours, and in ``UTC``/``Etc/GMT`` (what dashboards
  send) a day, week or month is a union of UTC days. So analytics reads each range from the
  coarsest table whose buckets no requested bucket boundary cuts, and only the ragged ends from
  the finer ones (metering/analytics.py): a month of a busy team by day in ``Etc/GMT`` is ~30
  rows per price version (and property combination) whether the team sent a thousand events or a
  billion. The tables by width: :data:`ROLLUPS_BY_WIDTH`, :data:`VERSION_ROLLUPS_BY_WIDTH`. The
  coarser tables with properties keep no ``dims`` column either: ``dims_key`` is its JSON.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, ForeignKey, Index, PrimaryKeyConstraint, String
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billfold.kit.db import Base, BigInt

# Event ids compare byte by byte on PostgreSQL (the "C" collation, not the database's): they are
# opaque, and a B-tree insert compares ~30 keys -- with the database's locale each comparison
# goes through strcoll. Byte order is also Python's str order, which the batch's lock order uses.
EventId = String(200).with_variant(String(200, collation="C"), "postgresql")


class UsageEvent(Base):
    """One accepted event. The primary key ``(event_id, team_id)`` is exactly once; event id
    first (migration 0009): the ids are random, so the first column decides nearly every
    comparison of a B-tree insert, where the team id first (equal within a team) cost one more
    comparison at each step. With the "C" collation, a COPY into the keyed table ran 1.1x as fast
    in sorted 10,000-row batches as ingestion sends them, 1.15-1.25x unsorted
    (bench/results/ingest.md, "Round 5"). Reads by team use ``(team_id, ts)``."""

    __tablename__ = "usage_events"
    __table_args__ = (
        PrimaryKeyConstraint("event_id", "team_id", name="usage_events_pkey"),
        Index("ix_usage_events_team_ts", "team_id", "ts"),
    )

    team_id: Mapped[uuid.UUID]
    event_id: Mapped[str] = mapped_column(EventId)
    ts: Mapped[datetime]
    quantity: Mapped[int]
    # The price version names the SKU; no foreign key (see the module docstring).
    price_version_id: Mapped[int] = mapped_column(BigInt)
    # The event's properties, stored once per distinct combination (UsagePropertySet); no
    # foreign key, for the same reason as price_version_id.
    property_set_id: Mapped[uuid.UUID]
    ingested_at: Mapped[datetime]
    # Set when the event is canceled (metering/cancellation.py, migration 0012): the row stays, so
    # its id stays used, and every reader of raw events leaves it out. Ingestion never writes it.
    canceled_at: Mapped[datetime | None]

    # Read-only (ingestion writes both tables with Core statements); joined by id, no foreign key.
    property_set: Mapped[UsagePropertySet] = relationship(
        primaryjoin="foreign(UsageEvent.property_set_id) == UsagePropertySet.id", viewonly=True
    )


class UsageCancellation(Base):
    """The append-only record of a canceled event: what it took back (quantity at its price
    version, at its time), when and why. An event is canceled once; an id can have several
    records only if its event was compacted, sent again and canceled again."""

    __tablename__ = "usage_cancellations"
    __table_args__ = (Index("ix_usage_cancellations_team_event", "team_id", "event_id"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id"))
    event_id: Mapped[str] = mapped_column(EventId)
    ts: Mapped[datetime]
    price_version_id: Mapped[int] = mapped_column(BigInt, ForeignKey("price_versions.id"))
    quantity: Mapped[int]
    reason: Mapped[str] = mapped_column(String(500))
    canceled_at: Mapped[datetime]


class UsagePropertySet(Base):
    """One distinct combination of event properties (migration 0010). Its id is the digest of
    the properties' canonical JSON (:func:`metering.service.property_set_id`), so ingestion knows
    it without asking the database, and concurrent ingesters agree on it: each batch adds the
    sets of its events with ``ON CONFLICT DO NOTHING``, in id order (the lock order), before the
    events. Rows are never changed nor deleted (retention deletes events only): an id, once
    committed, names its properties forever.

    Why not the JSON in every event, as before: a platform's events repeat a few combinations
    (API key x model x cluster), and the JSONB value was ~60 of a row's ~200 bytes and 7 % of
    PostgreSQL's CPU during ingestion (jsonb_recv). With a 16-byte id instead (and without the
    SKU, which the price version names), a COPY into the table with its key and index runs
    1.11-1.27x as fast, ingestion's PostgreSQL CPU per event fell from 5.8 to 4.8 us, and the heap
    from 211 to 135 MB per million events (bench/results/ingest.md, "Round 6"). Properties are
    dimensions: a value that is different in every event (a request id) would make one set per
    event here.
    """

    __tablename__ = "usage_property_sets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # json, not jsonb, on PostgreSQL: it keeps the numbers as they were sent (migration 0011),
    # as rollups keep their text and as SQLite's JSON does.
    properties: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(sqlite.JSON(), "sqlite"))


class RollupWithDims:
    """The columns of a rollup table with property dimensions (one per bucket width). No foreign
    key and no index on ``price_version_id`` (see the module docstring)."""

    if TYPE_CHECKING:
        __tablename__: str  # each table's own

    team_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)  # the bucket's start
    price_version_id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    # Canonical JSON of the groupable properties' text values (metering.service.dims_key), so one
    # row per distinct combination; readers parse it back into the properties.
    dims_key: Mapped[str] = mapped_column(String(1000), primary_key=True)
    quantity: Mapped[int]
    events: Mapped[int]


class RollupByVersion:
    """The columns of a rollup table without property dimensions (one per bucket width)."""

    if TYPE_CHECKING:
        __tablename__: str  # each table's own

    team_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)  # the bucket's start
    price_version_id: Mapped[int] = mapped_column(ForeignKey("price_versions.id"), primary_key=True)
    quantity: Mapped[int]
    events: Mapped[int]


class UsageRollup(RollupWithDims, Base):
    __tablename__ = "usage_rollups"


class UsageRollupByVersion(RollupByVersion, Base):
    """``usage_rollups`` without the property dimensions (see the module docstring).

    Analytics reads it by ``(team_id, bucket_start)`` ranges (the primary key); the index by
    price version serves setting a price (is usage after ``effectiveFrom`` rated already?) and
    costs ingestion a write per new row -- here, not on the ~10x more rows of ``usage_rollups``.
    """

    __tablename__ = "usage_rollups_by_version"
    __table_args__ = (
        Index("ix_usage_rollups_by_version_price_version", "price_version_id", "bucket_start"),
    )


class UsageRollupHourly(RollupWithDims, Base):
    """``usage_rollups`` summed per UTC hour."""

    __tablename__ = "usage_rollups_hourly"


class UsageRollupHourlyByVersion(RollupByVersion, Base):
    """``usage_rollups_by_version`` summed per UTC hour."""

    __tablename__ = "usage_rollups_hourly_by_version"


class UsageRollupDaily(RollupWithDims, Base):
    """``usage_rollups`` summed per UTC day (from 00:00 UTC)."""

    __tablename__ = "usage_rollups_daily"


class UsageRollupDailyByVersion(RollupByVersion, Base):
    """``usage_rollups_by_version`` summed per UTC day (from 00:00 UTC)."""

    __tablename__ = "usage_rollups_daily_by_version"


# The rollup tables by the width of their buckets in seconds, finest first (also the order in
# which a batch writes them).
ROLLUPS_BY_WIDTH: dict[int, type[RollupWithDims]] = {
    900: UsageRollup,
    3600: UsageRollupHourly,
    86_400: UsageRollupDaily,
}
VERSION_ROLLUPS_BY_WIDTH: dict[int, type[RollupByVersion]] = {
    900: UsageRollupByVersion,
    3600: UsageRollupHourlyByVersion,
    86_400: UsageRollupDailyByVersion,
}
ROLLUP_WIDTHS = tuple(ROLLUPS_BY_WIDTH)
