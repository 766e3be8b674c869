"""partitioned usage storage on PostgreSQL: month partitions, the usage_event_keys key table

Revision ID: 0023
Revises: 0022

PostgreSQL only (SQLite: nothing changes). The design: docs/scale.md.

* ``usage_events``: range-partitioned by ``ts`` (UTC months), without its primary key
  ``(event_id, team_id)``; index ``(team_id, ts)`` as before;
* ``usage_event_keys`` (new): ``(id_digest, month)`` primary key -- the MD5 of the team id's
  bytes and the event id, as a uuid -- and the event's ``ts``, range-partitioned by ``month``; an event within a day of a month boundary has a shadow key in
  the neighbouring month too;
* the six rollup tables: range-partitioned by ``bucket_start``, keys, indexes and foreign keys
  as before.

Every table is copied in this transaction: its old table renamed (with its indexes and
constraints), the partitioned one created under the old name with a partition for every month
from the oldest row to two months ahead, rows copied, the old table dropped. Interrupted, nothing
changed; run again, it starts over. Databases too large for that: docs/scale.md ("Migration
0023") describes the online backfill and the short switch. Downgrade copies back into plain
tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from alembic import op
from sqlalchemy import text
from sqlalchemy.engine import Connection

revision: str = "0023"
down_revision: str | Sequence[str] | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENTS = "usage_events"
KEYS = "usage_event_keys"
ROLLUPS = (
    "usage_rollups",
    "usage_rollups_by_version",
    "usage_rollups_hourly",
    "usage_rollups_hourly_by_version",
    "usage_rollups_daily",
    "usage_rollups_daily_by_version",
)
COLUMN = {EVENTS: "ts", KEYS: "month", **{t: "bucket_start" for t in ROLLUPS}}
OLD = "_pre0023"


def _month_add(month: tuple[int, int], n: int) -> tuple[int, int]:
    index = month[0] * 12 + month[1] - 1 + n
    return index // 12, index % 12 + 1


def _bound(table: str, month: tuple[int, int]) -> str:
    if COLUMN[table] == "month":
        return f"{month[0]:04d}-{month[1]:02d}-01"
    return f"{month[0]:04d}-{month[1]:02d}-01 00:00:00+00"


def _create_partitions(c: Connection, table: str, months: set[tuple[int, int]]) -> None:
    for month in sorted(months):
        following = _month_add(month, 1)
        name = f"{table}_p{month[0]:04d}{month[1]:02d}"
        c.execute(
            text(
                f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM"
                f" ('{_bound(table, month)}') TO ('{_bound(table, following)}')"
            )
        )


def _definitions(
    c: Connection, table: str
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(name, type, definition) of the table's constraints; (name, definition) of its indexes
    that back no constraint."""
    constraints = [
        (name, kind, definition)
        for name, kind, definition in c.execute(
            text(
                "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = to_regclass(:t) AND contype IN ('p', 'u', 'f') ORDER BY conname"
            ),
            {"t": table},
        )
    ]
    indexes = [
        (name, definition)
        for name, definition in c.execute(
            text(
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x"
                " JOIN pg_class i ON i.oid = x.indexrelid"
                " WHERE x.indrelid = to_regclass(:t)"
                " AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.oid"
                "                 AND k.conrelid = x.indrelid)"
                " ORDER BY i.relname"
            ),
            {"t": table},
        )
    ]
    return constraints, indexes


def _set_aside(
    c: Connection, table: str
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Rename a table, its constraints and indexes out of the way; their definitions."""
    constraints, indexes = _definitions(c, table)
    for name, kind, _ in constraints:
        if kind in ("p", "u"):  # renames its index too
            c.execute(text(f"ALTER TABLE {table} RENAME CONSTRAINT {name} TO {name}{OLD}"))
        else:
            c.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {name}"))
    for name, _ in indexes:
        c.execute(text(f"ALTER INDEX {name} RENAME TO {name}{OLD}"))
    c.execute(text(f"ALTER TABLE {table} RENAME TO {table}{OLD}"))
    return constraints, indexes


def _recreate(
    c: Connection,
    table: str,
    constraints: list[tuple[str, str, str]],
    indexes: list[tuple[str, str]],
    partition_by: str | None,
) -> None:
    suffix = f" PARTITION BY RANGE ({partition_by})" if partition_by else ""
    c.execute(text(f"CREATE TABLE {table} (LIKE {table}{OLD} INCLUDING DEFAULTS){suffix}"))
    for name, _, definition in constraints:
        c.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"))
    for _, definition in indexes:
        c.execute(text(definition))


def _months(c: Connection, table: str, column: str) -> set[tuple[int, int]]:
    """The months holding rows, the current one and the next two."""
    now = datetime.now(UTC)
    months = {_month_add((now.year, now.month), n) for n in range(3)}
    rows = c.execute(
        text(f"SELECT DISTINCT date_trunc('month', {column} AT TIME ZONE 'UTC') FROM {table}")  # noqa: S608
    )
    months.update((start.year, start.month) for (start,) in rows)
    return months


def _columns(c: Connection, table: str) -> str:
    names = c.execute(
        text(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum"
        ),
        {"t": table},
    ).scalars()
    return ", ".join(names)


KEY_MONTHS = """
    INSERT INTO usage_event_keys (id_digest, month, ts)
    SELECT md5(uuid_send(e.team_id) || convert_to(e.event_id, 'UTF8'))::uuid, k.month, e.ts
    FROM usage_events e,
         LATERAL (SELECT date_trunc('month', e.ts AT TIME ZONE 'UTC') AS start) s,
         LATERAL (
             SELECT s.start::date AS month
             UNION ALL
             SELECT (s.start - interval '1 month')::date
             WHERE e.ts AT TIME ZONE 'UTC' - s.start < interval '1 day'
             UNION ALL
             SELECT (s.start + interval '1 month')::date
             WHERE s.start + interval '1 month' - e.ts AT TIME ZONE 'UTC' < interval '1 day'
         ) k
"""


def upgrade() -> None:
    c = op.get_bind()
    if c.dialect.name != "postgresql":
        return
    for table in (EVENTS, *ROLLUPS):
        column = COLUMN[table]
        months = _months(c, table, column)
        constraints, indexes = _set_aside(c, table)
        if table == EVENTS:
            # The de-duplication key moves to usage_event_keys.
            constraints = [k for k in constraints if k[1] != "p"]
        _recreate(c, table, constraints, indexes, column)
        _create_partitions(c, table, months)
        columns = _columns(c, table)
        c.execute(text(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}{OLD}"))  # noqa: S608
        c.execute(text(f"DROP TABLE {table}{OLD}"))
        if table == EVENTS:
            c.execute(
                text(
                    "CREATE TABLE usage_event_keys ("
                    " id_digest UUID NOT NULL,"
                    " month DATE NOT NULL,"
                    " ts TIMESTAMP WITH TIME ZONE NOT NULL,"
                    " CONSTRAINT usage_event_keys_pkey PRIMARY KEY (id_digest, month)"
                    ") PARTITION BY RANGE (month)"
                )
            )
            # Shadow keys reach one month further on each side.
            around = {_month_add(m, n) for m in months for n in (-1, 0, 1)}
            _create_partitions(c, KEYS, around)
            _create_partitions(c, EVENTS, around - months)
            c.execute(text(KEY_MONTHS))
    # Every month has partitions of every table (metering/partitions.py creates months whole).
    by_table: dict[str, set[tuple[int, int]]] = {}
    for table in COLUMN:
        by_table[table] = {
            (int(name[-6:-2]), int(name[-2:]))
            for (name,) in c.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = to_regclass(:t)"
                ),
                {"t": table},
            )
        }
    every = set().union(*by_table.values())
    for table, have in by_table.items():
        _create_partitions(c, table, every - have)


def downgrade() -> None:
    c = op.get_bind()
    if c.dialect.name != "postgresql":
        return
    for table in (EVENTS, *ROLLUPS):
        constraints, indexes = _set_aside(c, table)
        _recreate(c, table, constraints, indexes, None)
        if table == EVENTS:
            c.execute(
                text(
                    "ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey"
                    " PRIMARY KEY (event_id, team_id)"
                )
            )
        columns = _columns(c, table)
        c.execute(text(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}{OLD}"))  # noqa: S608
        c.execute(text(f"DROP TABLE {table}{OLD}"))  # and its partitions
    c.execute(text("DROP TABLE usage_event_keys"))
