"""metering: usage_events.price_version_id without a foreign key

Revision ID: 0004
Revises: 0003

The foreign key cost PostgreSQL a lookup and a KEY SHARE lock on the price version row for every
inserted event (~25% of ingestion's insert). Ingestion only writes ids of versions it read in the
same transaction, versions are never deleted, and the batch's rollups and cycle lines -- which keep
their foreign keys -- carry the same ids (see metering/models.py).

SQLite cannot drop a constraint in place: the table is copied without it (batch mode). Its foreign
keys are unnamed, so the naming convention gives the reflected one a name to drop by.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_POSTGRES_NAME = "usage_events_price_version_id_fkey"  # PostgreSQL's name for 0001's constraint
_SQLITE_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_SQLITE_NAME = "fk_usage_events_price_version_id_price_versions"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_POSTGRES_NAME, "usage_events", type_="foreignkey")
        return
    with op.batch_alter_table(
        "usage_events", recreate="always", naming_convention=_SQLITE_NAMING
    ) as batch_op:
        batch_op.drop_constraint(_SQLITE_NAME, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(
            _POSTGRES_NAME, "usage_events", "price_versions", ["price_version_id"], ["id"]
        )
        return
    with op.batch_alter_table("usage_events", recreate="always") as batch_op:
        batch_op.create_foreign_key(_SQLITE_NAME, "price_versions", ["price_version_id"], ["id"])
