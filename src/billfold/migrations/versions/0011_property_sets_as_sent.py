"""metering: a property set keeps its numbers as they were sent (PostgreSQL: json, not jsonb)

Revision ID: 0011
Revises: 0010

On PostgreSQL, ``usage_property_sets.properties`` was JSONB, which stores a number as a decimal
and prints it back normalised: a float sent as ``1e16`` or ``1.5e300`` came back as an integer
of 17 or 301 digits, and ``-0.0`` as ``0.0``. Rollups keep the text of each value as it was sent
(``str()`` of the parsed JSON: ``1e+16``), so raw-event analytics (MINUTE and SECOND, which read
the sets) grouped and filtered such values under another label than every other time unit --
and than SQLite, whose JSON column keeps the text. The column becomes ``json``, which keeps the
text it is given; ingestion writes it as orjson writes the values as sent.

The sets stored before are repaired where the digest tells how: a set's id is the digest of its
properties' canonical JSON as sent (metering/service.py, ``property_set_id``), so for a set
whose stored value no longer gives its id, the numbers that JSONB may have rewritten (an integer
of 1e16 or more, which may have been a float; a zero, which may have been ``-0.0``) are tried in
their other form until the digest matches; the matching form is stored, and a set no form
matches is left as it is and counted in a warning. Sets that migration 0010 made from events
stored before it were digested in the normalised form already and match as they are (so their
numbers keep JSONB's form: nothing tells a float sent as 1e16 from an integer there). The table
holds one row per distinct combination of properties, read in pages.

Stop ingestion (or restart every process with it: ``billfold serve`` migrates on start) when
running it: a process of the code before it would go on writing new sets as jsonb text.

SQLite: nothing to do (its JSON is text). Downgrade: back to JSONB (normalising again).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# At most this many forms are tried per set (2 per number that JSONB may have rewritten: an
# integer of 1e16 or more, or a zero).
_MAX_TRIES = 1024
_PAGE = 1000
log = logging.getLogger("alembic.runtime.migration")


def _set_id(properties: dict[str, Any]) -> uuid.UUID:
    """metering.service.property_set_id as of this revision (kept here: a migration must not
    change when the application does)."""
    canonical = orjson.dumps(properties, option=orjson.OPT_SORT_KEYS)
    return uuid.UUID(bytes=hashlib.blake2b(canonical, digest_size=16).digest())


def _is_set(properties: dict[str, Any], set_id: uuid.UUID) -> bool:
    try:
        return _set_id(properties) == set_id
    except TypeError:  # an integer beyond 64 bits: never sent as such (ingestion refuses it)
        return False


def _other_forms(value: Any) -> list[Any]:
    """What a number JSONB gave back may have been sent as, besides itself. orjson writes a float
    below 1e16 with a point or an exponent that JSONB keeps as a fraction (1e15 as
    1000000000000000.0, 1e-7 as 0.0000001), so only an integer of 1e16 or more can have been a
    float (1e16 came back as 10000000000000000), and only a zero may have been -0.0."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int) and abs(value) >= 10**16:
        try:
            return [float(value)]
        except OverflowError:  # beyond any float: it was an integer
            return []
    if isinstance(value, float) and value == 0:
        return [-value]
    return []


def _candidates(properties: dict[str, Any]) -> Iterator[dict[str, Any]]:
    choices = [[value, *_other_forms(value)] for value in properties.values()]
    for values in itertools.islice(itertools.product(*choices), _MAX_TRIES):
        yield dict(zip(properties, values, strict=True))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE usage_property_sets ALTER COLUMN properties TYPE json USING properties::json"
    )
    # Only sets holding a number can have been rewritten (the pattern is a cheap first sieve);
    # read in pages, as a per-event property makes one set per event.
    read = "SELECT id, properties::text FROM usage_property_sets WHERE properties::text ~ '[0-9]'"
    repair = sa.text(
        "UPDATE usage_property_sets SET properties = CAST(:properties AS json) WHERE id = :id"
    ).bindparams(sa.bindparam("id", type_=sa.Uuid()))
    unmatched = 0
    for page in bind.exec_driver_sql(read, execution_options={"yield_per": _PAGE}).partitions():
        repaired = []
        for set_id, text in page:
            stored = json.loads(text)  # not orjson: it reads an integer beyond 64 bits as a float
            if not isinstance(stored, dict) or _is_set(stored, set_id):
                continue
            for candidate in _candidates(stored):
                if _is_set(candidate, set_id):
                    repaired.append({"id": set_id, "properties": orjson.dumps(candidate).decode()})
                    break
            else:
                unmatched += 1
        if repaired:
            bind.execute(repair, repaired)
    if unmatched:  # more than _MAX_TRIES forms, or a set written some other way: left as stored
        log.warning("0011: %d property sets do not digest to their id; left as stored", unmatched)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE usage_property_sets ALTER COLUMN properties TYPE jsonb USING properties::jsonb"
    )
