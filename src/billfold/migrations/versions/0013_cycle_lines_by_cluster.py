"""invoicing: a cycle line per SKU, price version AND cluster (``cycle_lines.cluster_name``)

Revision ID: 0013
Revises: 0012

Upstream's invoice lines carry ``clusterName``: a line per SKU, price version and cluster. The
line's cluster is the events' ``clusterName`` property when it is a string, ``""`` otherwise
(metering/service.py, ``cluster_of``), whether or not the property is groupable. The column is
added with the default ``""`` and joins the primary key (its last column, so the key's order,
which is ingestion's lock order, stays the same up to the version).

Lines of OPEN cycles are split by cluster from their raw events (not canceled, read per team and
month; each property set's cluster once): each clustered share moves to its own line, the rest
(events without a cluster, or compacted past the retention window, whose cluster no one knows any
more) stays on the ``""`` line. Each line's amount is the one rounding of its exact total
(kit.money.round_to_cents), so the cycle's ``spend_cents`` moves by the difference and stays the
sum of its lines. Without the split, canceling an event stored before 0013 would take its usage
from a cluster line that does not hold it. Closed cycles keep their lines as invoiced (the
invoice holds its own lines).

PostgreSQL adds the column with a constant default without rewriting the table and rebuilds the
key's index; SQLite copies the table (batch mode).

Downgrade merges the lines of each version back into one: quantities and event counts summed;
for an open cycle the amount is rounded once again from the summed quantity and the cycle's
spend moves by the difference (it stays the sum of its lines, what the spend check reads); for a
closed cycle the amounts are summed (what was invoiced, and the cycle's spend, stay as they are).
"""

from __future__ import annotations

import uuid
import warnings
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from billfold.kit.db import JSONType, UTCDateTime
from billfold.kit.money import Pico, round_to_cents

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "cycle_lines_pkey"  # PostgreSQL's name for 0001's key, and the models' name for both
_KEY = ["team_id", "year", "month", "price_version_id"]

_lines = sa.table(
    "cycle_lines",
    sa.column("team_id", sa.Uuid()),
    sa.column("year", sa.BigInteger()),
    sa.column("month", sa.BigInteger()),
    sa.column("price_version_id", sa.BigInteger()),
    sa.column("cluster_name", sa.String()),
    sa.column("quantity", sa.BigInteger()),
    sa.column("events", sa.BigInteger()),
    sa.column("amount_cents", sa.BigInteger()),
)
_cycles = sa.table(
    "billing_cycles",
    sa.column("team_id", sa.Uuid()),
    sa.column("year", sa.BigInteger()),
    sa.column("month", sa.BigInteger()),
    sa.column("spend_cents", sa.BigInteger()),
    sa.column("closed_at", UTCDateTime()),
)
_events = sa.table(
    "usage_events",
    sa.column("team_id", sa.Uuid()),
    sa.column("ts", UTCDateTime()),
    sa.column("quantity", sa.BigInteger()),
    sa.column("price_version_id", sa.BigInteger()),
    sa.column("property_set_id", sa.Uuid()),
    sa.column("canceled_at", UTCDateTime()),
)
_sets = sa.table(
    "usage_property_sets", sa.column("id", sa.Uuid()), sa.column("properties", JSONType)
)
_prices = sa.table(
    "price_versions",
    sa.column("id", sa.BigInteger()),
    sa.column("unit_price_pico", sa.BigInteger()),
)


def _cluster_of(properties: object) -> str:
    # metering.service.cluster_of as of 0013 (a migration keeps its own copy of the rule).
    value = properties.get("clusterName") if isinstance(properties, dict) else None
    return value if type(value) is str else ""


def _unit_price(bind: sa.Connection, version_id: int) -> int:
    price = bind.execute(
        sa.select(_prices.c.unit_price_pico).where(_prices.c.id == version_id)
    ).scalar_one()
    return int(price)


def _month_of(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _line_where(
    team_id: uuid.UUID, year: int, month: int, version_id: int
) -> sa.ColumnElement[bool]:
    return sa.and_(
        _lines.c.team_id == team_id,
        _lines.c.year == year,
        _lines.c.month == month,
        _lines.c.price_version_id == version_id,
    )


def _split_open_lines(bind: sa.Connection) -> None:
    clusters: dict[uuid.UUID, str] = {}
    open_cycles = bind.execute(
        sa.select(_cycles.c.team_id, _cycles.c.year, _cycles.c.month).where(
            _cycles.c.closed_at.is_(None)
        )
    ).all()
    for team_id, year, month in open_cycles:
        start, end = _month_of(int(year), int(month))
        e = _events.c
        rows = bind.execute(
            sa.select(
                e.price_version_id, e.property_set_id, sa.func.sum(e.quantity), sa.func.count()
            )
            .where(e.team_id == team_id, e.ts >= start, e.ts < end, e.canceled_at.is_(None))
            .group_by(e.price_version_id, e.property_set_id)
        ).all()
        unknown = {set_id for _, set_id, _, _ in rows if set_id not in clusters}
        if unknown:
            for set_id, properties in bind.execute(
                sa.select(_sets.c.id, _sets.c.properties).where(_sets.c.id.in_(sorted(unknown)))
            ):
                clusters[set_id] = _cluster_of(properties)
        # version -> cluster -> [quantity, events], only clustered usage
        shares: dict[int, dict[str, list[int]]] = defaultdict(dict)
        for version_id, set_id, quantity, count in rows:
            cluster = clusters.get(set_id, "")
            if cluster:
                share = shares[int(version_id)].setdefault(cluster, [0, 0])
                share[0] += int(quantity)
                share[1] += int(count)
        delta = 0
        for version_id, by_cluster in sorted(shares.items()):
            where = _line_where(team_id, int(year), int(month), version_id)
            line = bind.execute(
                sa.select(_lines.c.quantity, _lines.c.events, _lines.c.amount_cents).where(where)
            ).one_or_none()
            if line is None:
                continue
            rest_quantity = int(line.quantity) - sum(q for q, _ in by_cluster.values())
            rest_events = int(line.events) - sum(n for _, n in by_cluster.values())
            if rest_quantity < 0 or rest_events < 0:
                continue  # the events do not add up to the line: leave it as it is
            price = _unit_price(bind, version_id)
            amounts = 0
            for cluster, (quantity, count) in sorted(by_cluster.items()):
                amount = round_to_cents(Pico(quantity * price))
                amounts += amount
                bind.execute(
                    _lines.insert().values(
                        team_id=team_id,
                        year=year,
                        month=month,
                        price_version_id=version_id,
                        cluster_name=cluster,
                        quantity=quantity,
                        events=count,
                        amount_cents=amount,
                    )
                )
            if rest_events == 0:
                bind.execute(_lines.delete().where(where, _lines.c.cluster_name == ""))
            else:
                rest_amount = round_to_cents(Pico(rest_quantity * price))
                amounts += rest_amount
                bind.execute(
                    _lines.update()
                    .where(where, _lines.c.cluster_name == "")
                    .values(quantity=rest_quantity, events=rest_events, amount_cents=rest_amount)
                )
            delta += amounts - int(line.amount_cents)
        if delta:
            bind.execute(
                _cycles.update()
                .where(
                    _cycles.c.team_id == team_id,
                    _cycles.c.year == year,
                    _cycles.c.month == month,
                )
                .values(spend_cents=_cycles.c.spend_cents + delta)
            )


def _merge_lines(bind: sa.Connection) -> None:
    c = _lines.c
    groups = bind.execute(
        sa.select(
            c.team_id,
            c.year,
            c.month,
            c.price_version_id,
            sa.func.sum(c.quantity),
            sa.func.sum(c.events),
            sa.func.sum(c.amount_cents),
        )
        .group_by(c.team_id, c.year, c.month, c.price_version_id)
        .having(sa.func.max(c.cluster_name) != "")
    ).all()
    for team_id, year, month, version_id, quantity, count, amounts in groups:
        cycle = sa.and_(
            _cycles.c.team_id == team_id, _cycles.c.year == year, _cycles.c.month == month
        )
        closed = bind.execute(sa.select(_cycles.c.closed_at).where(cycle)).scalar_one_or_none()
        amount = int(amounts)
        if closed is None:
            amount = round_to_cents(Pico(int(quantity) * _unit_price(bind, int(version_id))))
            if amount != int(amounts):
                bind.execute(
                    _cycles.update()
                    .where(cycle)
                    .values(spend_cents=_cycles.c.spend_cents + amount - int(amounts))
                )
        bind.execute(_lines.delete().where(_line_where(team_id, year, month, version_id)))
        bind.execute(
            _lines.insert().values(
                team_id=team_id,
                year=year,
                month=month,
                price_version_id=version_id,
                cluster_name="",
                quantity=int(quantity),
                events=int(count),
                amount_cents=amount,
            )
        )


def _rekey_sqlite(columns: list[str], *, add: bool) -> None:
    # SQLAlchemy warns that the copied columns' primary-key flags and the new key differ -- the
    # very point of the copy; the new key is the one that holds.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*_alembic_tmp_cycle_lines.*primary_key")
        with op.batch_alter_table("cycle_lines", recreate="always") as batch_op:
            if add:
                batch_op.add_column(
                    sa.Column("cluster_name", sa.String(200), server_default="", nullable=False)
                )
            else:
                batch_op.drop_column("cluster_name")
            batch_op.create_primary_key(_NAME, columns)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE cycle_lines ADD COLUMN cluster_name varchar(200) DEFAULT '' NOT NULL, "
            f"DROP CONSTRAINT {_NAME}, "
            f"ADD CONSTRAINT {_NAME} PRIMARY KEY ({', '.join([*_KEY, 'cluster_name'])})"
        )
    else:
        _rekey_sqlite([*_KEY, "cluster_name"], add=True)
    _split_open_lines(bind)


def downgrade() -> None:
    bind = op.get_bind()
    _merge_lines(bind)
    if bind.dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE cycle_lines DROP CONSTRAINT {_NAME}, DROP COLUMN cluster_name, "
            f"ADD CONSTRAINT {_NAME} PRIMARY KEY ({', '.join(_KEY)})"
        )
    else:
        _rekey_sqlite(_KEY, add=False)
