"""metering: an event's properties stored once per distinct combination; no SKU per event

Revision ID: 0010
Revises: 0009

``usage_events.properties`` (JSON) becomes ``property_set_id``, the id of a row of the new table
``usage_property_sets``; ``usage_events.sku`` goes (the price version names it). Why:
metering/models.py, :class:`UsagePropertySet`.

A set's id is the digest of its properties' canonical JSON, the same function ingestion uses
(metering/service.py, ``property_set_id``; a test checks they agree). Existing events are
mapped through a scratch table of their distinct stored values, so the events are read once
whatever their number: on PostgreSQL by a hash join of the JSONB values, on SQLite by an index
on the text. Two stored values with the same canonical JSON share a set.

Downgrade puts both columns back, filled from the sets and the price versions.
PostgreSQL rewrites nothing for the dropped columns (they become invisible; space comes back as
rows are updated or the table is rewritten) but fills the new one in an UPDATE of every row, and
the ALTERs hold an exclusive lock on ``usage_events``: stop ingesters first on a big table.
SQLite copies the table (batch mode).
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
        sa.Column("raw", _JSON, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
    )
    if not postgres:  # PostgreSQL hash-joins; SQLite looks each event's value up
        op.create_index(f"ix_{_MAP}_raw", _MAP, ["raw"])
    sets = sa.table(
        "usage_property_sets", sa.column("id", sa.Uuid()), sa.column("properties", _JSON)
    )
    # The stored values as text, written back as they were read (CAST on PostgreSQL), so they
    # equal the events' own values; parsed only to compute the set.
    if postgres:
        read = "SELECT DISTINCT properties::text FROM usage_events"
        write = "INSERT INTO usage_property_set_map (raw, id) VALUES (CAST(:raw AS jsonb), :id)"
        fill = (
            "UPDATE usage_events AS e SET property_set_id = m.id "
            "FROM usage_property_set_map AS m WHERE e.properties = m.raw"
        )
    else:
        read = "SELECT DISTINCT properties FROM usage_events"
        write = "INSERT INTO usage_property_set_map (raw, id) VALUES (:raw, :id)"
        fill = (
            "UPDATE usage_events SET property_set_id = (SELECT m.id FROM usage_property_set_map"
            " AS m WHERE m.raw = usage_events.properties)"
        )
    add_to_map = sa.text(write).bindparams(sa.bindparam("id", type_=sa.Uuid()))
    seen: set[uuid.UUID] = set()
    for page in bind.exec_driver_sql(read, execution_options={"yield_per": _PAGE}).partitions():
        mapped = []
        new_sets = []
        for (text,) in page:
            properties = orjson.loads(text)
            set_id = _set_id(properties)
            mapped.append({"raw": text, "id": set_id})
            if set_id not in seen:
                seen.add(set_id)
                new_sets.append({"id": set_id, "properties": properties})
        bind.execute(add_to_map, mapped)
        if new_sets:
            bind.execute(sets.insert(), new_sets)
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
