"""metering: usage_events keyed by (event_id, team_id), event ids in byte order on PostgreSQL

Revision ID: 0009
Revises: 0008

The exactly-once key was ``(team_id, event_id)``. Event ids are random (request ids), so a B-tree
insert lands anywhere in the key and compares ~30 keys on its way down; with the team id first,
every one of those comparisons compared two equal team ids before the event ids. Event id first,
the first column decides nearly every comparison. On PostgreSQL the column also gets the "C"
collation: event ids are opaque, and with the database's locale (even C.UTF-8) each comparison
goes through strcoll. Together, a COPY into a table with this key and the ``(team_id, ts)``
index ran 1.1x as fast in sorted 10,000-row batches as ingestion sends them, 1.15-1.25x unsorted
(bench/results/ingest.md, "Round 5"). Uniqueness is the same constraint: the same two columns.

Byte order is also the order of Python's ``str`` comparison (UTF-8 preserves code point order),
which the ingestion's lock order relies on (metering/service.py sorts a batch by event id, then
team).

PostgreSQL rebuilds the key's index (the table itself is not rewritten: same type, new collation);
it holds an exclusive lock on ``usage_events`` meanwhile, so stop ingesters first on a big table.
SQLite copies the table (batch mode): its key is part of the table's definition.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "usage_events_pkey"  # PostgreSQL's name for 0001's key, and the models' name for both


def _rekey(columns: list[str], collation: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        # One statement: the index is built once, for the new collation and column order.
        op.execute(
            f"ALTER TABLE usage_events DROP CONSTRAINT {_NAME}, "
            f"ALTER COLUMN event_id TYPE varchar(200) COLLATE {collation}, "
            f"ADD CONSTRAINT {_NAME} PRIMARY KEY ({', '.join(columns)})"
        )
        return
    with op.batch_alter_table("usage_events", recreate="always") as batch_op:
        batch_op.create_primary_key(_NAME, columns)


def upgrade() -> None:
    _rekey(["event_id", "team_id"], '"C"')


def downgrade() -> None:
    _rekey(["team_id", "event_id"], '"default"')
