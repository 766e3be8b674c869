"""metering: an event's properties stored once per distinct combination; no SKU per event

Revision ID: 0010
Revises: 0009

``usage_events.properties`` (JSON) becomes ``property_set_id``, the id of a row of the new table
``usage_property_sets``; ``usage_events.sku`` goes (the price version names it). Why:
metering/models.py, :class:`UsagePropertySet`.

A set's id is the digest of its properties' canonical JSON, computed as ingestion computes it
(metering/service.py, ``property_set_id``; a test checks they agree). Existing events are
mapped through a scratch table of their distinct stored values, as text, so the events are read
once whatever their number: on PostgreSQL by a hash join on the JSONB's text (JSONB equality
would not do: it takes ``1`` and ``1.0`` for equal, which are two combinations here), on SQLite
by an index on the stored text. Two stored values with the same canonical JSON share a set. On
PostgreSQL, a number that JSONB stored in a normalised form (a float of 1e16 or more is printed
as an integer) gets the id of that form, so an event sent again with the original form would
get a set of its own, with the same values. The scratch table and the work grow with the number
of distinct stored values, which is small unless events carried a property unique to each
(a request id).

Upgrade: PostgreSQL takes an exclusive lock on ``usage_events`` with its first ALTER and holds
it until the migration commits -- through the backfill, an UPDATE of every row -- so ingestion
and the reads of raw events (fine-grained analytics, the ledger's credit used as of a moment)
wait meanwhile; the dropped columns are only hidden (space comes back as rows are rewritten).
SQLite copies the table (batch mode). Downgrade puts both columns back, filled from the sets
and the price versions (again an UPDATE of every row under the same lock), and drops the sets.
On a big table, stop ingestion and run ``billfold db upgrade`` alone first. Measured on the
benchmark machine (2 cores) with 1,000,000 events of 20 combinations: PostgreSQL 16.6 s up and
16.7 s down, SQLite 11.5 s up and 10.7 s down (``/tmp`` scripts, not committed).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = (
    sa.JSON()
    .with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    .with_variant(sqlite.JSON(), "sqlite")
)
_MAP = "usage_property_set_map"  # the scratch table: a stored value -> its set
_PAGE = 1000


def _set_id(properties: dict[str, Any]) -> uuid.UUID:
    """metering.service.property_set_id as of this revision (kept here: a migration must not
    change when the application does)."""
    canonical = orjson.dumps(properties, option=orjson.OPT_SORT_KEYS)
    return uuid.UUID(bytes=hashlib.blake2b(canonical, digest_size=16).digest())


def _fill_property_set_ids(bind: sa.Connection, postgres: bool) -> None:
    op.create_table(
        _MAP,
        # SQLite: declared like usage_events.properties, so both compare alike
        sa.Column("raw", sa.Text().with_variant(sqlite.JSON(), "sqlite"), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
    )
    if not postgres:  # PostgreSQL hash-joins; SQLite looks each event's value up
        op.create_index(f"ix_{_MAP}_raw", _MAP, ["raw"])
    sets = sa.table(
        "usage_property_sets", sa.column("id", sa.Uuid()), sa.column("properties", _JSON)
    )
    insert = postgresql.insert if postgres else sqlite.insert
    add_sets = insert(sets).on_conflict_do_nothing(index_elements=["id"])
    # Each distinct stored value as text, compared as text: parsed only to compute its set.
    if postgres:
        read = "SELECT DISTINCT properties::text FROM usage_events"
        fill = (
            "UPDATE usage_events AS e SET property_set_id = m.id "
            "FROM usage_property_set_map AS m WHERE e.properties::text = m.raw"
        )
    else:
        read = "SELECT DISTINCT properties FROM usage_events"
        fill = (
            "UPDATE usage_events SET property_set_id = (SELECT m.id FROM usage_property_set_map"
            " AS m WHERE m.raw = usage_events.properties)"
        )
    add_to_map = sa.text("INSERT INTO usage_property_set_map (raw, id) VALUES (:raw, :id)")
    add_to_map = add_to_map.bindparams(sa.bindparam("id", type_=sa.Uuid()))
    for page in bind.exec_driver_sql(read, execution_options={"yield_per": _PAGE}).partitions():
        mapped = []
        new_sets: dict[uuid.UUID, Any] = {}
        for (text,) in page:
            properties = orjson.loads(text)
            set_id = _set_id(properties)
            mapped.append({"raw": text, "id": set_id})
            new_sets[set_id] = properties
        bind.execute(add_to_map, mapped)
        bind.execute(add_sets, [{"id": i, "properties": p} for i, p in new_sets.items()])
    op.execute(fill)
    op.drop_table(_MAP)


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.create_table(
        "usage_property_sets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("properties", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="usage_property_sets_pkey"),
    )
    op.add_column("usage_events", sa.Column("property_set_id", sa.Uuid(), nullable=True))
    _fill_property_set_ids(bind, postgres)
    if postgres:
        op.execute(
            "ALTER TABLE usage_events ALTER COLUMN property_set_id SET NOT NULL, "
            "DROP COLUMN sku, DROP COLUMN properties"
        )
        return
    with op.batch_alter_table("usage_events", recreate="always") as batch_op:
        batch_op.alter_column("property_set_id", existing_type=sa.Uuid(), nullable=False)
        batch_op.drop_column("sku")
        batch_op.drop_column("properties")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("usage_events", sa.Column("sku", sa.String(length=200), nullable=True))
    op.add_column("usage_events", sa.Column("properties", _JSON, nullable=True))
    op.execute(
        "UPDATE usage_events SET "
        "sku = (SELECT v.sku FROM price_versions AS v WHERE v.id = usage_events.price_version_id),"
        " properties = (SELECT s.properties FROM usage_property_sets AS s"
        " WHERE s.id = usage_events.property_set_id)"
    )
    if postgres:
        op.execute(
            "ALTER TABLE usage_events ALTER COLUMN sku SET NOT NULL, "
            "ALTER COLUMN properties SET NOT NULL, DROP COLUMN property_set_id"
        )
    else:
        with op.batch_alter_table("usage_events", recreate="always") as batch_op:
            batch_op.alter_column("sku", existing_type=sa.String(length=200), nullable=False)
            batch_op.alter_column("properties", existing_type=_JSON, nullable=False)
            batch_op.drop_column("property_set_id")
    op.drop_table("usage_property_sets")
