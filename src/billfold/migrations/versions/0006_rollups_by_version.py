"""metering: usage_rollups_by_version, the rollups without property dimensions

Revision ID: 0006
Revises: 0005

Analytics reads this table when a query needs no event property (metering/models.py): a month of a
busy team is ~10x fewer rows than in ``usage_rollups``. It is backfilled here from
``usage_rollups`` summed over ``dims_key``, and from now on ingestion writes both in the same
transaction.

Upgrading: stop the previous version's ingesters first (``billfold serve`` migrates before it
serves, so a rolling restart of several hosts is the case to watch). A batch that an old process
commits after this migration lands in ``usage_rollups`` only, and analytics without properties
would not show it. On PostgreSQL the backfill takes a SHARE lock on ``usage_rollups``, so batches
still in flight when it starts are waited for and included; new batches wait until the migration
commits (the backfill reads every rollup row once: seconds for millions of rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billfold.kit.db

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_rollups_by_version",
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_start", billfold.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "price_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["price_version_id"], ["price_versions.id"]),
        sa.PrimaryKeyConstraint("team_id", "bucket_start", "price_version_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE usage_rollups IN SHARE MODE")
    # Same rows and sums as ingestion would have written; ORDER BY inserts in key order (cheaper
    # B-tree appends on PostgreSQL). SQLite's sum() of integers raises on overflow rather than
    # turning into a float, and PostgreSQL's sum(bigint) is numeric, so an overflow fails the
    # cast into the bigint column instead of being stored wrong.
    op.execute(
        """
        INSERT INTO usage_rollups_by_version
            (team_id, bucket_start, price_version_id, quantity, events)
        SELECT team_id, bucket_start, price_version_id, sum(quantity), sum(events)
        FROM usage_rollups
        GROUP BY team_id, bucket_start, price_version_id
        ORDER BY team_id, bucket_start, price_version_id
        """
    )
    if op.get_bind().dialect.name == "postgresql":
        # Statistics now, not at autovacuum's next visit: without them the planner expects a
        # handful of rows per team and sorts instead of hashing (about 2x slower analytics).
        op.execute("ANALYZE usage_rollups_by_version")


def downgrade() -> None:
    op.drop_table("usage_rollups_by_version")
