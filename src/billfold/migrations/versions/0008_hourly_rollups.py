"""metering: usage_rollups_hourly and usage_rollups_hourly_by_version, the rollups per UTC hour

Revision ID: 0008
Revises: 0007

Analytics reads these for hours, days, weeks and months in zones with whole-hour offsets
(metering/models.py): a quarter of the rows of the quarter-hour tables. Both are backfilled here
from the quarter-hour tables, and from now on ingestion writes all four in the same transaction.

Upgrading: as for 0006, stop the previous version's ingesters first. A batch that an old process
commits after this migration lands in the quarter-hour tables only, and hourly reads would not
show it. On PostgreSQL the backfill takes SHARE locks on the quarter-hour tables, so batches in
flight when it starts are waited for and included, and new ones wait until it commits.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

import billfold.kit.db

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns(*, dims: bool) -> list[SchemaItem]:
    columns: list[SchemaItem] = [
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_start", billfold.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "price_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
    ]
    if dims:
        columns.append(sa.Column("dims_key", sa.String(length=1000), nullable=False))
    return [
        *columns,
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["price_version_id"], ["price_versions.id"]),
        sa.PrimaryKeyConstraint(
            "team_id", "bucket_start", "price_version_id", *(["dims_key"] if dims else [])
        ),
    ]


def upgrade() -> None:
    op.create_table("usage_rollups_hourly", *_columns(dims=True))
    op.create_table("usage_rollups_hourly_by_version", *_columns(dims=False))
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("LOCK TABLE usage_rollups, usage_rollups_by_version IN SHARE MODE")
        # The UTC hour whatever the session's TimeZone (date_trunc of a timestamptz truncates in
        # it: a +05:30 server would otherwise give half hours).
        hour = "date_trunc('hour', bucket_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:
        # SQLite keeps UTC times as 'YYYY-MM-DD HH:MM:SS.ffffff' text (SQLAlchemy's format).
        hour = "substr(bucket_start, 1, 13) || ':00:00.000000'"
    # Sums as in 0006: an overflow fails the insert instead of being stored wrong. The statement
    # is built from the constants below only.
    for table, source, dims in (
        ("usage_rollups_hourly", "usage_rollups", ", dims_key"),
        ("usage_rollups_hourly_by_version", "usage_rollups_by_version", ""),
    ):
        op.execute(
            f"""
            INSERT INTO {table} (team_id, bucket_start, price_version_id{dims}, quantity, events)
            SELECT team_id, {hour}, price_version_id{dims}, sum(quantity), sum(events)
            FROM {source}
            GROUP BY team_id, {hour}, price_version_id{dims}
            ORDER BY team_id, {hour}, price_version_id{dims}
            """  # noqa: S608 -- names from this file only
        )
        if postgres:  # statistics now, not at autovacuum's next visit (see 0006)
            op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    op.drop_table("usage_rollups_hourly_by_version")
    op.drop_table("usage_rollups_hourly")
