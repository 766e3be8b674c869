"""The writes of an ingestion batch: accepted events summed into rollup, line and cycle
deltas, and two writers of the same statements -- :class:`PostgresWriter` (binary COPY, one
JSON document per table) and :class:`CoreWriter` (SQLAlchemy Core, SQLite). See
metering/service.py for the order of the writes and the locks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from psycopg.errors import UniqueViolation
from psycopg.types.json import Json, Jsonb
from psycopg.types.string import BytesBinaryDumper
from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from billfold.cycles.models import BillingCycle, CycleLine
from billfold.kit.db import dialect_insert
from billfold.metering.events import Properties, RatedEvent
from billfold.metering.models import (
    ROLLUP_WIDTHS,
    ROLLUPS_BY_WIDTH,
    VERSION_ROLLUPS_BY_WIDTH,
    UsageEvent,
    UsagePropertySet,
)

BUCKET = timedelta(minutes=15)


def bucket_of(ts: datetime) -> datetime:
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


def bucket_number(ts: datetime) -> int:
    """The 15-minute bucket of a UTC time as an integer (5x cheaper than :func:`bucket_of`, and a
    cheaper dict key than a datetime)."""
    return (ts.toordinal() * 24 + ts.hour) * 4 + ts.minute // 15


def bucket_start(number: int) -> datetime:
    day, quarter = divmod(number, 96)
    return datetime.fromordinal(day).replace(tzinfo=UTC) + quarter * BUCKET


# The bucket number is the quarter hour's (bucket_number); in the keys of coarser rollups, the
# number of their bucket's first quarter hour.
RollupKey = tuple[str, int, int, str]  # team key, bucket number, price version, dims key


VersionRollupKey = tuple[str, int, int]  # team key, bucket number, price version


LineKey = tuple[str, int, int, int, str]  # team key, year, month, price version, cluster


CycleKey = tuple[str, int, int]  # team key, year, month


Sums = list[int]  # [quantity, events]


@dataclass
class BatchSums:
    """What a batch's accepted events add to each aggregate table: rollups and rollups by version
    per bucket width (seconds), and cycle lines."""

    rollups: dict[int, dict[RollupKey, Sums]]
    version_rollups: dict[int, dict[VersionRollupKey, Sums]]
    lines: dict[LineKey, Sums]

    def negated(self) -> BatchSums:
        """The same sums taken away (what canceling the events takes back)."""

        def minus(sums: dict[Any, Sums]) -> dict[Any, Sums]:
            return {key: [-quantity, -count] for key, (quantity, count) in sums.items()}

        return BatchSums(
            {width: minus(sums) for width, sums in self.rollups.items()},
            {width: minus(sums) for width, sums in self.version_rollups.items()},
            minus(self.lines),
        )


def _add_sums(into: dict[Any, Sums], key: Any, quantity: int, count: int) -> None:
    sums = into.get(key)
    if sums is None:
        into[key] = [quantity, count]
    else:
        sums[0] += quantity
        sums[1] += count


def sum_accepted(events: Sequence[RatedEvent]) -> BatchSums:
    """The accepted events summed per rollup, per rollup by version, and per cycle line."""
    # Per quarter hour, price version, dims key AND cluster (cluster_of, kept with the event's
    # Properties): the cluster rides along as one more item of the key -- no more work per
    # event -- and is summed away below, once per such sum (a batch has ~100x fewer of them
    # than events).
    clustered: dict[tuple[str, int, int, str, str], Sums] = {}
    for team_key, _, ts, _, quantity, version_id, (_, key, _, cluster) in events:
        # bucket_number(ts), inlined: this loop runs once per event
        ckey = (
            team_key,
            (ts.toordinal() * 24 + ts.hour) * 4 + ts.minute // 15,
            version_id,
            key,
            cluster,
        )
        sums = clustered.get(ckey)
        if sums is None:
            clustered[ckey] = [quantity, 1]
        else:
            sums[0] += quantity
            sums[1] += 1
    quarters: dict[RollupKey, Sums] = {}
    lines: dict[LineKey, Sums] = {}
    months: dict[int, tuple[int, int]] = {}  # day number -> (year, month)
    for (team_key, number, version_id, key, cluster), (quantity, count) in clustered.items():
        _add_sums(quarters, (team_key, number, version_id, key), quantity, count)
        day = number // 96
        month = months.get(day)
        if month is None:
            start = bucket_start(number)
            month = months[day] = (start.year, start.month)
        _add_sums(lines, (team_key, month[0], month[1], version_id, cluster), quantity, count)
    rollups, version_rollups = rollup_sums(quarters)
    return BatchSums(rollups, version_rollups, lines)


def rollup_sums(
    quarters: dict[RollupKey, Sums],
) -> tuple[dict[int, dict[RollupKey, Sums]], dict[int, dict[VersionRollupKey, Sums]]]:
    """Every rollup table's sums, by bucket width, from the quarter-hour sums with properties:
    each width from the one before, each table by version from its table with properties."""
    rollups = {ROLLUP_WIDTHS[0]: quarters}
    finer = quarters
    for width in ROLLUP_WIDTHS[1:]:
        per = width // ROLLUP_WIDTHS[0]  # quarter hours per bucket
        coarser: dict[RollupKey, Sums] = {}
        for (team_key, number, version_id, key), (quantity, count) in finer.items():
            _add_sums(coarser, (team_key, number - number % per, version_id, key), quantity, count)
        rollups[width] = finer = coarser
    version_rollups: dict[int, dict[VersionRollupKey, Sums]] = {}
    for width, sums_of in rollups.items():
        by_version: dict[VersionRollupKey, Sums] = {}
        for (team_key, number, version_id, _), (quantity, count) in sums_of.items():
            _add_sums(by_version, (team_key, number, version_id), quantity, count)
        version_rollups[width] = by_version
    return rollups, version_rollups


def property_set_uuids(events: Sequence[RatedEvent]) -> dict[bytes, uuid.UUID]:
    """The events' property set ids (16 bytes, as Properties keeps them) as UUIDs, for the
    statements that bind them as such: once per set, not per event."""
    return {id_: uuid.UUID(bytes=id_) for id_ in {e[6][2] for e in events}}


class Writer(Protocol):
    """The statements of one batch. Every method receives rows sorted by key and must write them
    in that order (the lock order that keeps concurrent batches from deadlocking)."""

    def add_property_sets(self, session: Session, sets: Sequence[tuple[bytes, Properties]]) -> None:
        """Insert the sets not stored yet (ON CONFLICT DO NOTHING), by id (16 bytes)."""
        ...

    def insert_events(
        self, session: Session, events: Sequence[RatedEvent], now: datetime
    ) -> set[int]:
        """Insert with ON CONFLICT DO NOTHING; the positions (in ``events``) NOT inserted."""
        ...

    def add_to_rollups(
        self, session: Session, rollups: Sequence[tuple[RollupKey, Sums]], *, width: int
    ) -> None:
        """The rollups with properties of that bucket width (ROLLUPS_BY_WIDTH)."""
        ...

    def add_to_version_rollups(
        self, session: Session, rollups: Sequence[tuple[VersionRollupKey, Sums]], *, width: int
    ) -> None:
        """The rollups by version of that bucket width (VERSION_ROLLUPS_BY_WIDTH)."""
        ...

    def add_to_lines(
        self, session: Session, lines: Sequence[tuple[LineKey, Sums]]
    ) -> dict[LineKey, int]:
        """Upsert the deltas; each line's quantity after the upsert."""
        ...

    def set_line_amounts(
        self, session: Session, amounts: Sequence[tuple[LineKey, int]]
    ) -> None: ...

    def add_to_cycles(self, session: Session, spend: Sequence[tuple[CycleKey, int]]) -> None: ...


class CoreWriter:
    """SQLAlchemy Core, for any database (SQLite's path)."""

    def add_property_sets(self, session: Session, sets: Sequence[tuple[bytes, Properties]]) -> None:
        stmt = dialect_insert(session)(UsagePropertySet).on_conflict_do_nothing(
            index_elements=["id"]
        )
        rows = [{"id": uuid.UUID(bytes=id_), "properties": props[0]} for id_, props in sets]
        session.execute(stmt, rows)

    def insert_events(
        self, session: Session, events: Sequence[RatedEvent], now: datetime
    ) -> set[int]:
        insert = dialect_insert(session)
        stmt = (
            insert(UsageEvent)
            .on_conflict_do_nothing(index_elements=["event_id", "team_id"])
            .returning(UsageEvent.team_id, UsageEvent.event_id)
        )
        team_ids = {e[0]: uuid.UUID(e[0]) for e in events}
        set_ids = property_set_uuids(events)
        rows = [
            {
                "team_id": team_ids[team_key],
                "event_id": event_id,
                "ts": ts,
                "quantity": quantity,
                "price_version_id": version_id,
                "property_set_id": set_ids[properties[2]],
                "ingested_at": now,
            }
            for team_key, event_id, ts, _, quantity, version_id, properties in events
        ]
        inserted = {(str(team_id), event_id) for team_id, event_id in session.execute(stmt, rows)}
        return {i for i, e in enumerate(events) if (e[0], e[1]) not in inserted}

    @staticmethod
    def _add_sums(
        session: Session, table: type[Any], keys: list[str], rows: list[dict[str, Any]]
    ) -> None:
        stmt = dialect_insert(session)(table)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=keys,
                set_={
                    "quantity": table.quantity + stmt.excluded.quantity,
                    "events": table.events + stmt.excluded.events,
                },
            ),
            rows,
        )

    def add_to_rollups(
        self, session: Session, rollups: Sequence[tuple[RollupKey, Sums]], *, width: int
    ) -> None:
        rows = [
            {
                "team_id": uuid.UUID(team),
                "bucket_start": bucket_start(number),
                "price_version_id": version_id,
                "dims_key": key,
                "quantity": quantity,
                "events": count,
            }
            for (team, number, version_id, key), (quantity, count) in rollups
        ]
        keys = ["team_id", "bucket_start", "price_version_id", "dims_key"]
        self._add_sums(session, ROLLUPS_BY_WIDTH[width], keys, rows)

    def add_to_version_rollups(
        self, session: Session, rollups: Sequence[tuple[VersionRollupKey, Sums]], *, width: int
    ) -> None:
        rows = [
            {
                "team_id": uuid.UUID(team),
                "bucket_start": bucket_start(number),
                "price_version_id": version_id,
                "quantity": quantity,
                "events": count,
            }
            for (team, number, version_id), (quantity, count) in rollups
        ]
        keys = ["team_id", "bucket_start", "price_version_id"]
        self._add_sums(session, VERSION_ROLLUPS_BY_WIDTH[width], keys, rows)

    def add_to_lines(
        self, session: Session, lines: Sequence[tuple[LineKey, Sums]]
    ) -> dict[LineKey, int]:
        # One statement per line: a batch touches few lines, and this way each returns its own
        # new quantity on every database.
        new_quantities: dict[LineKey, int] = {}
        insert = dialect_insert(session)
        for key, (quantity, count) in lines:
            team, year, month, version_id, cluster = key
            stmt = insert(CycleLine).values(
                team_id=uuid.UUID(team),
                year=year,
                month=month,
                price_version_id=version_id,
                cluster_name=cluster,
                quantity=quantity,
                events=count,
                amount_cents=0,
            )
            new_quantities[key] = session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["team_id", "year", "month", "price_version_id", "cluster_name"],
                    set_={
                        "quantity": CycleLine.quantity + stmt.excluded.quantity,
                        "events": CycleLine.events + stmt.excluded.events,
                    },
                ).returning(CycleLine.quantity)
            ).scalar_one()
        return new_quantities

    def set_line_amounts(self, session: Session, amounts: Sequence[tuple[LineKey, int]]) -> None:
        session.connection().execute(
            update(CycleLine)
            .where(
                CycleLine.team_id == bindparam("t"),
                CycleLine.year == bindparam("y"),
                CycleLine.month == bindparam("m"),
                CycleLine.price_version_id == bindparam("v"),
                CycleLine.cluster_name == bindparam("c"),
            )
            .values(amount_cents=bindparam("a")),
            [
                {
                    "t": uuid.UUID(team),
                    "y": year,
                    "m": month,
                    "v": version_id,
                    "c": cluster,
                    "a": amount,
                }
                for (team, year, month, version_id, cluster), amount in amounts
            ],
        )

    def add_to_cycles(self, session: Session, spend: Sequence[tuple[CycleKey, int]]) -> None:
        stmt = dialect_insert(session)(BillingCycle)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["team_id", "year", "month"],
                set_={"spend_cents": BillingCycle.spend_cents + stmt.excluded.spend_cents},
            ),
            [
                {"team_id": uuid.UUID(team), "year": year, "month": month, "spend_cents": delta}
                for (team, year, month), delta in spend
            ],
        )


class PostgresWriter:
    """The events by binary COPY; one statement per other table, the rows as one JSONB array
    parameter (json for the property sets; see the module docstring).

    ``WITH ORDINALITY ... ORDER BY n`` makes PostgreSQL write the rows in the order they were sent
    (sorted by key): the lock order. The statements' texts are constant, so psycopg prepares them
    on each connection after a few uses.
    """

    # Run when the COPY found stored events (insert_events). The CASE returns the positions that
    # were not inserted (events stored before, or committed first by a concurrent batch) -- and
    # when the count of inserted rows says there are none, skips that anti-join altogether
    # (PostgreSQL runs init plans lazily). The document is parsed once, when the parameter is
    # bound, and unpacked a second time only for the anti-join.
    EVENTS = """
        WITH inserted AS (
            INSERT INTO usage_events (team_id, event_id, ts, quantity, price_version_id,
                                      property_set_id, ingested_at)
            SELECT (e->>0)::uuid, e->>1, (e->>2)::timestamptz, (e->>3)::bigint, (e->>4)::bigint,
                   (e->>5)::uuid, %(now)s::timestamptz
            FROM jsonb_array_elements(%(events)t) WITH ORDINALITY AS b(e, n) ORDER BY n
            ON CONFLICT (event_id, team_id) DO NOTHING
            RETURNING team_id, event_id
        )
        SELECT CASE WHEN (SELECT count(*) FROM inserted) = %(count)s::bigint THEN '{}'::bigint[]
               ELSE ARRAY(
                   SELECT n - 1 FROM jsonb_array_elements(%(events)t) WITH ORDINALITY AS b(e, n)
                   WHERE NOT EXISTS (SELECT FROM inserted i WHERE i.team_id = (e->>0)::uuid
                                                              AND i.event_id = e->>1)
                   ORDER BY n) END
    """
    COPY_EVENTS = (
        "COPY usage_events (team_id, event_id, ts, quantity, price_version_id, property_set_id,"
        " ingested_at) FROM STDIN (FORMAT BINARY)"
    )
    COPY_TYPES = ("bytea", "text", "timestamptz", "int8", "int8", "bytea", "timestamptz")
    # Run before the events, in id order (the lock order: a set new to both of two concurrent
    # batches makes the second wait for the first). A json document, not jsonb: e->1 is then the
    # properties' text as orjson wrote it, which the json column keeps (jsonb would print a float
    # sent as 1e16 back as an integer; migration 0011).
    PROPERTY_SETS = """
        INSERT INTO usage_property_sets (id, properties)
        SELECT (e->>0)::uuid, e->1
        FROM json_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (id) DO NOTHING
    """
    # {table}: a table of ROLLUPS_BY_WIDTH.
    ROLLUPS = """
        INSERT INTO {table} AS r (team_id, bucket_start, price_version_id, dims_key, quantity,
                                  events)
        SELECT (e->>0)::uuid, (e->>1)::timestamptz, (e->>2)::bigint, e->>3,
               (e->>4)::bigint, (e->>5)::bigint
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, bucket_start, price_version_id, dims_key) DO UPDATE
        SET quantity = r.quantity + excluded.quantity, events = r.events + excluded.events
    """
    # {table}: a table of VERSION_ROLLUPS_BY_WIDTH.
    VERSION_ROLLUPS = """
        INSERT INTO {table} AS r (team_id, bucket_start, price_version_id, quantity, events)
        SELECT (e->>0)::uuid, (e->>1)::timestamptz, (e->>2)::bigint, (e->>3)::bigint,
               (e->>4)::bigint
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, bucket_start, price_version_id) DO UPDATE
        SET quantity = r.quantity + excluded.quantity, events = r.events + excluded.events
    """
    LINES = """
        INSERT INTO cycle_lines AS c (team_id, year, month, price_version_id, cluster_name,
                                      quantity, events, amount_cents)
        SELECT (e->>0)::uuid, (e->>1)::bigint, (e->>2)::bigint, (e->>3)::bigint, e->>4,
               (e->>5)::bigint, (e->>6)::bigint, 0
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, year, month, price_version_id, cluster_name) DO UPDATE
        SET quantity = c.quantity + excluded.quantity, events = c.events + excluded.events
        RETURNING c.team_id::text, c.year, c.month, c.price_version_id, c.cluster_name,
                  c.quantity
    """
    # The lines are locked already (by LINES, in key order), so this join's order is harmless.
    AMOUNTS = """
        UPDATE cycle_lines AS c SET amount_cents = (e->>5)::bigint
        FROM jsonb_array_elements(%(rows)t) AS e
        WHERE c.team_id = (e->>0)::uuid AND c.year = (e->>1)::bigint
          AND c.month = (e->>2)::bigint AND c.price_version_id = (e->>3)::bigint
          AND c.cluster_name = e->>4
    """
    CYCLES = """
        INSERT INTO billing_cycles AS c (team_id, year, month, spend_cents)
        SELECT (e->>0)::uuid, (e->>1)::bigint, (e->>2)::bigint, (e->>3)::bigint
        FROM jsonb_array_elements(%(rows)t) WITH ORDINALITY AS b(e, n) ORDER BY n
        ON CONFLICT (team_id, year, month) DO UPDATE
        SET spend_cents = c.spend_cents + excluded.spend_cents
    """

    @staticmethod
    def _document(rows: Sequence[Sequence[Any]]) -> Jsonb:
        # Serialized by orjson when psycopg sends it, straight to bytes (no str copy), and sent
        # in text format (the %(...)t placeholders). orjson writes datetimes as RFC 3339 with
        # their offset (+00:00: all of ours are UTC).
        return Jsonb(rows, dumps=orjson.dumps)

    def add_property_sets(self, session: Session, sets: Sequence[tuple[bytes, Properties]]) -> None:
        rows = [(uuid.UUID(bytes=id_), props[0]) for id_, props in sets]
        document = Json(rows, dumps=orjson.dumps)
        session.connection().exec_driver_sql(self.PROPERTY_SETS, {"rows": document})

    def insert_events(
        self, session: Session, events: Sequence[RatedEvent], now: datetime
    ) -> set[int]:
        """A binary ``COPY`` of the batch inside a savepoint; if any event is stored already (a
        retry, or a concurrent batch that committed it first: the unique key makes the COPY
        wait for that batch, then fail), the savepoint is rolled back and :attr:`EVENTS` sorts
        the batch out event by event.

        Why: the usual batch holds no stored event, and PostgreSQL copies rows for about half the
        CPU of ``INSERT ... ON CONFLICT`` (which inserts row by row, each with its speculative
        insertion step, after unpacking and casting the JSONB document): 4.5-4.7 vs 9.7 us per
        event, measured alone with usage_events' key and index (bench/results/ingest.md).
        psycopg's C code formats the binary rows. A retried batch fails at its first stored
        event, so it costs little more than before; only a batch whose stored events come late
        in key order pays for part of a COPY twice (and leaves those copied rows dead, for
        vacuum).
        """
        # Binary COPY fields are read by the columns' own types; "bytea" in COPY_TYPES only makes
        # psycopg send bytes as they are -- in C, where its uuid dumper is Python: a team id's
        # 16 bytes, once per team, and a property set's id, once per combination (Properties).
        # Registering psycopg's bytes dumper makes it the one used for "bytea" (by default that
        # is the Python dumper of its DB-API Binary wrapper, 0.35 us more per row).
        team_ids = {team: uuid.UUID(team).bytes for team in {e[0] for e in events}}
        try:
            with session.begin_nested():
                # session.connection() inside the nested transaction is what emits SAVEPOINT.
                driver = session.connection().connection.driver_connection
                with driver.cursor() as cursor:  # type: ignore[union-attr]
                    cursor.adapters.register_dumper(bytes, BytesBinaryDumper)
                    with cursor.copy(self.COPY_EVENTS) as copy:
                        copy.set_types(self.COPY_TYPES)
                        write_row = copy.write_row
                        for team, id_, ts, _, qty, version, props in events:
                            write_row((team_ids[team], id_, ts, qty, version, props[2], now))
            return set()
        except UniqueViolation:
            pass
        set_ids = property_set_uuids(events)
        document = self._document(
            [
                (team, id_, ts, qty, version, set_ids[props[2]])
                for team, id_, ts, _, qty, version, props in events
            ]
        )
        not_inserted = (
            session.connection()
            .exec_driver_sql(self.EVENTS, {"events": document, "now": now, "count": len(events)})
            .scalar_one()
        )
        return set(not_inserted)

    def add_to_rollups(
        self, session: Session, rollups: Sequence[tuple[RollupKey, Sums]], *, width: int
    ) -> None:
        document = self._document(
            [
                (team, bucket_start(number), version_id, key, quantity, count)
                for (team, number, version_id, key), (quantity, count) in rollups
            ]
        )
        table = ROLLUPS_BY_WIDTH[width].__tablename__
        session.connection().exec_driver_sql(self.ROLLUPS.format(table=table), {"rows": document})

    def add_to_version_rollups(
        self, session: Session, rollups: Sequence[tuple[VersionRollupKey, Sums]], *, width: int
    ) -> None:
        document = self._document(
            [
                (team, bucket_start(number), version_id, quantity, count)
                for (team, number, version_id), (quantity, count) in rollups
            ]
        )
        table = VERSION_ROLLUPS_BY_WIDTH[width].__tablename__
        session.connection().exec_driver_sql(
            self.VERSION_ROLLUPS.format(table=table), {"rows": document}
        )

    def add_to_lines(
        self, session: Session, lines: Sequence[tuple[LineKey, Sums]]
    ) -> dict[LineKey, int]:
        document = self._document([(*key, *sums) for key, sums in lines])
        result = session.connection().exec_driver_sql(self.LINES, {"rows": document})
        return {
            (team, int(year), int(month), int(version_id), cluster): int(quantity)
            for team, year, month, version_id, cluster, quantity in result
        }

    def set_line_amounts(self, session: Session, amounts: Sequence[tuple[LineKey, int]]) -> None:
        document = self._document([(*key, amount) for key, amount in amounts])
        session.connection().exec_driver_sql(self.AMOUNTS, {"rows": document})

    def add_to_cycles(self, session: Session, spend: Sequence[tuple[CycleKey, int]]) -> None:
        document = self._document([(*key, delta) for key, delta in spend])
        session.connection().exec_driver_sql(self.CYCLES, {"rows": document})
