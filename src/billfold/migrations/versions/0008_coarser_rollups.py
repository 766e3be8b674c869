"""metering: hourly and daily rollups; the rollups with properties lose their price-version key

Revision ID: 0008
Revises: 0007

* ``usage_rollups_hourly`` / ``_hourly_by_version`` and ``usage_rollups_daily`` /
  ``_daily_by_version``: the quarter-hour rollups summed per UTC hour and per UTC day, which
  analytics reads for whatever part of a range their buckets fit (metering/models.py).
  Backfilled here, hours from quarter hours and days from hours; from now on ingestion writes all
  six in the same transaction.
* ``usage_rollups`` (one row per property combination, ~10x the rows of the tables by version)
  drops its foreign key to ``price_versions``, its index by price version and its ``dims``
  column: the key cost every new row a lookup and a KEY SHARE lock (a quarter of the upsert), as
  it did for ``usage_events`` (0004); the index moves to ``usage_rollups_by_version``, written by
  the same batch with the same version ids, where setting a price looks for rated usage; and
  ``dims`` repeated ``dims_key``, the canonical JSON of the same object, which readers parse.

Upgrading: as for 0006, stop the previous version's ingesters first; a batch that an old process
sends after this migration fails (it still writes ``usage_rollups.dims``) and has to be sent
again. On PostgreSQL the backfill takes SHARE locks on the quarter-hour tables, so batches in
flight when it starts are waited for and included, and new ones wait until it commits.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import SchemaItem

import billfold.kit.db

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL's name for 0001's foreign key; SQLite's are unnamed, so a naming convention gives the
# reflected one a name to drop by (as in 0004).
_POSTGRES_FK = "usage_rollups_price_version_id_fkey"
_SQLITE_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_SQLITE_FK = "fk_usage_rollups_price_version_id_price_versions"
_OLD_INDEX = ("ix_usage_rollups_price_version", "usage_rollups")
_NEW_INDEX = ("ix_usage_rollups_by_version_price_version", "usage_rollups_by_version")
_DIMS_TYPE = (
    sa.JSON()
    .with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    .with_variant(sqlite.JSON(), "sqlite")
)


def _columns(*, dims: bool) -> list[SchemaItem]:
    columns: list[SchemaItem] = [
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_start", billfold.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "price_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
    ]
    if dims:  # no foreign key, as usage_rollups
        columns.append(sa.Column("dims_key", sa.String(length=1000), nullable=False))
    else:
        columns.append(sa.ForeignKeyConstraint(["price_version_id"], ["price_versions.id"]))
    return [
        *columns,
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "team_id", "bucket_start", "price_version_id", *(["dims_key"] if dims else [])
        ),
    ]


def upgrade() -> None:
    for width in ("hourly", "daily"):
        op.create_table(f"usage_rollups_{width}", *_columns(dims=True))
        op.create_table(f"usage_rollups_{width}_by_version", *_columns(dims=False))
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("LOCK TABLE usage_rollups, usage_rollups_by_version IN SHARE MODE")
        # The UTC hour and day whatever the session's TimeZone (date_trunc of a timestamptz
        # truncates in it: a +05:30 server would otherwise give half hours).
        hour = "date_trunc('hour', bucket_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        day = "date_trunc('day', bucket_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:
        # SQLite keeps UTC times as 'YYYY-MM-DD HH:MM:SS.ffffff' text (SQLAlchemy's format).
        hour = "substr(bucket_start, 1, 13) || ':00:00.000000'"
        day = "substr(bucket_start, 1, 10) || ' 00:00:00.000000'"
    # Sums as in 0006: an overflow fails the insert instead of being stored wrong. The statement
    # is built from the constants below only.
    for table, source, start, dims in (
        ("usage_rollups_hourly", "usage_rollups", hour, ", dims_key"),
        ("usage_rollups_hourly_by_version", "usage_rollups_by_version", hour, ""),
        ("usage_rollups_daily", "usage_rollups_hourly", day, ", dims_key"),
        ("usage_rollups_daily_by_version", "usage_rollups_hourly_by_version", day, ""),
    ):
        op.execute(
            f"""
            INSERT INTO {table} (team_id, bucket_start, price_version_id{dims}, quantity, events)
            SELECT team_id, {start}, price_version_id{dims}, sum(quantity), sum(events)
            FROM {source}
            GROUP BY team_id, {start}, price_version_id{dims}
            ORDER BY team_id, {start}, price_version_id{dims}
            """  # noqa: S608 -- names from this file only
        )
        if postgres:  # statistics now, not at autovacuum's next visit (see 0006)
            op.execute(f"ANALYZE {table}")

    op.create_index(_NEW_INDEX[0], _NEW_INDEX[1], ["price_version_id", "bucket_start"])
    op.drop_index(*_OLD_INDEX)
    if postgres:
        op.drop_constraint(_POSTGRES_FK, "usage_rollups", type_="foreignkey")
        op.drop_column("usage_rollups", "dims")
        return
    with op.batch_alter_table(
        "usage_rollups", recreate="always", naming_convention=_SQLITE_NAMING
    ) as batch_op:
        batch_op.drop_constraint(_SQLITE_FK, type_="foreignkey")
        batch_op.drop_column("dims")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("usage_rollups", sa.Column("dims", _DIMS_TYPE, nullable=True))
    op.execute(
        "UPDATE usage_rollups SET dims = CAST(dims_key AS jsonb)"
        if postgres
        else "UPDATE usage_rollups SET dims = json(dims_key)"
    )
    if postgres:
        op.alter_column("usage_rollups", "dims", nullable=False)
        op.create_foreign_key(
            _POSTGRES_FK, "usage_rollups", "price_versions", ["price_version_id"], ["id"]
        )
    else:
        with op.batch_alter_table("usage_rollups", recreate="always") as batch_op:
            batch_op.alter_column("dims", existing_type=_DIMS_TYPE, nullable=False)
            batch_op.create_foreign_key(_SQLITE_FK, "price_versions", ["price_version_id"], ["id"])
    op.create_index(_OLD_INDEX[0], _OLD_INDEX[1], ["price_version_id", "bucket_start"])
    op.drop_index(*_NEW_INDEX)
    for width in ("daily", "hourly"):
        op.drop_table(f"usage_rollups_{width}_by_version")
        op.drop_table(f"usage_rollups_{width}")
