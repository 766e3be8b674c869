"""Migrations of ``usage_events``, each with events stored before it (written as the schema of
that time stored them), both ways, on both databases:

* 0009: the key ``(event_id, team_id)``, event ids in byte order on PostgreSQL. The events
  survive, the key still refuses a repeat, and the app on the new key counts a stored event as a
  duplicate.
* 0010: properties stored once per combination (``usage_property_sets``), no SKU per event. Each
  event keeps its properties, equal combinations share one set whatever their key order, the
  app's set ids are the migration's (an event with stored properties adds no set), raw-event
  analytics read the migrated properties, and downgrading restores the SKU and properties."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from billfold.kit.clock import frozen
from billfold.kit.db import JSONType, UTCDateTime, make_engine
from billfold.metering.events import property_set_id
from billfold.migrate import upgrade
from tests.conftest import Api, _make_api, downgrade, event, unique_sku

NOW = datetime(2036, 3, 20, 12, 0, tzinfo=UTC)
AT = datetime(2036, 3, 20, 10, 0, tzinfo=UTC)

# usage_events as revisions 0001-0009 had it
OLD_EVENTS = sa.table(
    "usage_events",
    sa.column("team_id", sa.Uuid()),
    sa.column("event_id", sa.String()),
    sa.column("ts", UTCDateTime()),
    sa.column("sku", sa.String()),
    sa.column("quantity", sa.BigInteger()),
    sa.column("price_version_id", sa.BigInteger()),
    sa.column("properties", JSONType),
    sa.column("ingested_at", UTCDateTime()),
)


@contextmanager
def migrated_app(url: str) -> Iterator[tuple[Engine, Api]]:
    """The schema at head and the app on it, frozen at NOW."""
    engine = make_engine(url)
    try:
        upgrade(engine)
        with frozen(NOW):
            backend = "postgresql" if "postgresql" in url else "sqlite"
            for api in _make_api(url, backend, deliver_webhooks=False):
                yield engine, api
    finally:
        engine.dispose()


def version_of(engine: Engine, sku: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT id FROM price_versions WHERE sku = :s"), {"s": sku}
            ).scalar_one()
        )


def store_old_events(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(OLD_EVENTS.insert(), [{"ingested_at": AT, **row} for row in rows])


def stored(engine: Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT team_id, event_id, quantity FROM usage_events"))
        return sorted((str(team), event_id, quantity) for team, event_id, quantity in rows)


def old_columns(engine: Engine) -> dict[str, tuple[str, dict[str, Any]]]:
    """event id -> (sku, properties), as 0009's schema holds them."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(OLD_EVENTS.c.event_id, OLD_EVENTS.c.sku, OLD_EVENTS.c.properties)
        )
        return {event_id: (sku, properties) for event_id, sku, properties in rows}


def key_and_collation(engine: Engine) -> tuple[list[str], str | None]:
    key = inspect(engine).get_pk_constraint("usage_events")["constrained_columns"]
    if engine.dialect.name != "postgresql":
        return key, None
    with engine.connect() as connection:
        collation = connection.execute(
            text(
                "SELECT collation_name FROM information_schema.columns "
                "WHERE table_name = 'usage_events' AND column_name = 'event_id'"
            )
        ).scalar_one_or_none()
    return key, collation


def repeat_refused(engine: Engine, event_id: str) -> bool:
    """Whether the database itself refuses a second copy of the stored events with this id."""
    columns = ", ".join(c["name"] for c in inspect(engine).get_columns("usage_events"))
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"INSERT INTO usage_events ({columns}) SELECT {columns} FROM usage_events "
                    "WHERE event_id = :e"
                ),
                {"e": event_id},
            )
    except IntegrityError:
        return True
    return False


def test_the_event_key_migrates_both_ways_and_keeps_every_event(fresh_url: str) -> None:
    with migrated_app(fresh_url) as (engine, api):
        postgres = engine.dialect.name == "postgresql"
        sku = unique_sku("key")
        api.set_price(sku, "0.000003", "2036-01-01T00:00:00Z")
        version = version_of(engine, sku)
        teams = [api.create_team(), api.create_team()]
        ids = ["b", "B", "é", "𝄞", "req_0f", "req_f0"]
        downgrade(engine, "0008")
        assert key_and_collation(engine) == (["team_id", "event_id"], None)
        store_old_events(
            engine,
            [
                {
                    "team_id": uuid.UUID(team),
                    "event_id": event_id,
                    "ts": AT,
                    "sku": sku,
                    "quantity": n + 1,
                    "price_version_id": version,
                    "properties": {},
                }
                for n, event_id in enumerate(ids)
                for team in teams
            ],
        )
        before = stored(engine)
        assert len(before) == len(ids) * len(teams)

        upgrade(engine, "0009")
        assert key_and_collation(engine) == (["event_id", "team_id"], "C" if postgres else None)
        assert stored(engine) == before
        assert repeat_refused(engine, "é")

        downgrade(engine, "0008")
        assert key_and_collation(engine) == (["team_id", "event_id"], None)
        assert stored(engine) == before
        assert repeat_refused(engine, "𝄞")

        upgrade(engine)
        assert key_and_collation(engine)[0] == ["event_id", "team_id"]
        # The app on the new key: a stored event is a duplicate, a new one lands.
        again = [
            event(teams[0], sku, 1, "2036-03-20T10:00:00Z", event_id="b"),
            event(teams[0], sku, 1, "2036-03-20T11:00:00Z", event_id="new"),
        ]
        assert api.ingest(again) == {"accepted": 1, "duplicates": 1, "rejected": []}
        assert len(stored(engine)) == len(before) + 1


# Properties as 0009 stored them: equal combinations in another key order, numbers, a boolean,
# characters JSON escapes and 4-byte ones, and values JSONB takes for equal (1, 1.0) that are
# different combinations (their text in rollups differs: "1", "1.0").
PROPERTIES: dict[str, dict[str, Any]] = {
    "none": {},
    "a": {"model": "grok-4", "apiKeyId": "k1"},
    "a-reordered": {"apiKeyId": "k1", "model": "grok-4"},
    "b": {"model": "grok-4", "apiKeyId": "k2", "tier": 2, "ratio": 1.5, "beta": True},
    "c": {"model": 'quote " and \\ and 𝄞', "clusterName": "é-1"},
    "int": {"model": "m1", "clusterName": 1},
    "float": {"model": "m1", "clusterName": 1.0},
    "bool": {"model": "m1", "clusterName": True},
}


def exactly(properties: dict[str, Any]) -> bytes:
    """Properties as comparable values that tell 1, 1.0 and true apart (== does not)."""
    return orjson.dumps(properties, option=orjson.OPT_SORT_KEYS)


def property_sets(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(text("SELECT count(*) FROM usage_property_sets")).scalar_one()
        )


def test_properties_move_to_property_sets_and_back(fresh_url: str) -> None:
    with migrated_app(fresh_url) as (engine, api):
        prompt, completion = unique_sku("props-p"), unique_sku("props-c")
        api.set_price(prompt, "0.000003", "2036-01-01T00:00:00Z")
        api.set_price(completion, "0.000015", "2036-01-01T00:00:00Z")
        versions = {prompt: version_of(engine, prompt), completion: version_of(engine, completion)}
        team_id, headers = api.team_with_key()
        downgrade(engine, "0009")
        old = [
            {
                "team_id": uuid.UUID(team_id),
                "event_id": f"{name}-{sku}",
                "ts": AT,
                "sku": sku,
                "quantity": 10 * (n + 1),
                "price_version_id": versions[sku],
                "properties": properties,
            }
            for n, (name, properties) in enumerate(PROPERTIES.items())
            for sku in (prompt, completion)
        ]
        store_old_events(engine, old)
        before = {e: (sku, exactly(p)) for e, (sku, p) in old_columns(engine).items()}
        assert {e: p for e, (_, p) in before.items()} == {
            row["event_id"]: exactly(row["properties"]) for row in old
        }

        upgrade(engine)
        columns = {c["name"] for c in inspect(engine).get_columns("usage_events")}
        assert {"sku", "properties"}.isdisjoint(columns) and "property_set_id" in columns
        assert not any(
            c["nullable"]
            for c in inspect(engine).get_columns("usage_events")
            if c["name"] == "property_set_id"
        )
        # every event keeps its properties; "a" and "a-reordered" share one set
        sets = sa.table(
            "usage_property_sets", sa.column("id", sa.Uuid()), sa.column("properties", JSONType)
        )
        events = sa.table(
            "usage_events",
            sa.column("event_id", sa.String()),
            sa.column("property_set_id", sa.Uuid()),
        )
        with engine.connect() as connection:
            moved = dict(
                connection.execute(
                    sa.select(events.c.event_id, sets.c.properties).join(
                        sets, sets.c.id == events.c.property_set_id
                    )
                ).all()
            )
        assert {e: exactly(p) for e, p in moved.items()} == {e: p for e, (_, p) in before.items()}
        assert property_sets(engine) == len(PROPERTIES) - 1

        # The app computes the same ids: stored combinations add no set, a new one does.
        assert (
            api.ingest(
                [
                    event(
                        team_id, prompt, 1, "2036-03-20T10:00:30Z", model="grok-4", apiKeyId="k1"
                    ),
                    event(team_id, prompt, 1, "2036-03-20T10:00:30Z"),
                ]
            )["accepted"]
            == 2
        )
        assert property_sets(engine) == len(PROPERTIES) - 1
        b = dict(PROPERTIES["b"])
        assert (
            api.ingest([{**event(team_id, prompt, 1, "2036-03-20T10:00:30Z"), "properties": b}])[
                "accepted"
            ]
            == 1
        )
        assert property_sets(engine) == len(PROPERTIES) - 1
        assert (
            api.ingest([event(team_id, prompt, 1, "2036-03-20T10:00:30Z", model="new")])["accepted"]
            == 1
        )
        assert property_sets(engine) == len(PROPERTIES)

        # Raw-event analytics (by minute) group the migrated events by their properties.
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/usage",
            headers=headers,
            json={
                "analyticsRequest": {
                    "timeRange": {
                        "startTime": "2036-03-20 10:00:00",
                        "endTime": "2036-03-20 10:01:00",
                        "timezone": "UTC",
                    },
                    "timeUnit": "TIME_UNIT_MINUTE",
                    "values": [{"name": "num_units", "aggregation": "AGGREGATION_SUM"}],
                    "groupBy": ["model"],
                    "filters": [],
                }
            },
        )
        assert response.status_code == 200, response.text
        totals = {
            tuple(s["group"]): s["dataPoints"][0]["values"][0]
            for s in response.json()["timeSeries"]
        }
        # 0009's events: "none" 10+10, "a" 20+20, "a-reordered" 30+30, "b" 40+40, "c" 50+50,
        # "int", "float", "bool" 60+60, 70+70, 80+80; the app's: one without properties, one of
        # "a", one of "b", one new.
        assert totals == {
            ("grok-4",): 40 + 60 + 80 + 2,
            ('quote " and \\ and 𝄞',): 100,
            ("m1",): 120 + 140 + 160,
            ("",): 20 + 1,
            ("new",): 1,
        }

        downgrade(engine, "0009")
        after = {e: (sku, exactly(p)) for e, (sku, p) in old_columns(engine).items()}
        assert {e: after[e] for e in before} == before
        assert "usage_property_sets" not in inspect(engine).get_table_names()
        upgrade(engine)


# Properties as sent, whose numbers JSONB printed back otherwise (1e16 as 10000000000000000,
# 1.5e300 as 301 digits, -0.0 as 0.0), and others it kept as they were.
AS_SENT: list[dict[str, Any]] = [
    {"n": 1e16},
    {"n": 1.5e300},
    {"n": -0.0},
    {"apiKeyId": "k1", "n": 1e16, "m": -0.0, "big": 1.5e300},
    {"n": 1, "f": 2.5, "t": True, "small": 1e-7, "u": 18446744073709551615},
    {"model": "1e16"},
    # many integers beside the float: only numbers JSONB can have rewritten are tried again
    {"a": 1e16, **{f"i{k}": k for k in range(12)}},
]


def set_texts(engine: Engine) -> dict[uuid.UUID, Any]:
    """Each set's properties as the column's text gives them (json.loads: integers stay
    integers, floats floats)."""
    cast = "properties::text" if engine.dialect.name == "postgresql" else "properties"
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT id, {cast} FROM usage_property_sets"))
        return {uuid.UUID(str(set_id)): json.loads(raw) for set_id, raw in rows}


def test_property_sets_get_their_numbers_back(fresh_url: str) -> None:
    engine = make_engine(fresh_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        upgrade(engine, "0010")
        # as 0010's app stored them (a JSONB document of the values as sent), and one set that
        # 0010's backfill made from an event stored normalised before it (its id is the
        # normalised form's, which nothing can tell from a float sent as 1e16)
        legacy = {"n": 10000000000000000}
        rows = [
            {"id": uuid.UUID(bytes=property_set_id(p)), "raw": orjson.dumps(p).decode()}
            for p in [*AS_SENT, legacy]
        ]
        value = "CAST(:raw AS jsonb)" if postgres else ":raw"
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"INSERT INTO usage_property_sets (id, properties) VALUES (:id, {value})"
                ).bindparams(sa.bindparam("id", type_=sa.Uuid())),
                rows,
            )
        at_0010 = set_texts(engine)
        if postgres:  # the normalisation this migration undoes
            assert at_0010[rows[0]["id"]] == {"n": 10000000000000000}
            assert at_0010[rows[2]["id"]] == {"n": 0.0}

        upgrade(engine)
        expected = {row["id"]: p for row, p in zip(rows, [*AS_SENT, legacy], strict=True)}
        after = set_texts(engine)
        assert {i: exactly(p) for i, p in after.items()} == {
            i: exactly(p) for i, p in expected.items()
        }
        assert str(after[rows[2]["id"]]["n"]) == "-0.0"
        if postgres:
            assert column_type(engine) == "json"
            downgrade(engine, "0010")
            assert column_type(engine) == "jsonb"
    finally:
        engine.dispose()


def column_type(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'usage_property_sets' AND column_name = 'properties'"
                )
            ).scalar_one()
        )


def test_cancellations_migrate_both_ways(fresh_url: str) -> None:
    """0012 down: the canceled events go (before it every stored event counts), the rest stay;
    up again: cancellations work."""
    with migrated_app(fresh_url) as (engine, api):
        sku = unique_sku("cancel")
        api.set_price(sku, "0.000003", "2036-01-01T00:00:00Z")
        team = api.create_team()
        events = [event(team, sku, n + 1, "2036-03-20T10:00:00Z", f"e{n}") for n in range(3)]
        assert api.ingest(events)["accepted"] == 3
        body = {"events": [{"teamId": team, "eventId": "e1"}]}
        assert api.admin("POST", "/admin/v1/usage-events/cancel", json=body).json()["canceled"] == 1

        downgrade(engine, "0011")
        with engine.connect() as connection:
            ids = connection.execute(text("SELECT event_id FROM usage_events")).scalars().all()
            assert sorted(ids) == ["e0", "e2"]
        assert "usage_cancellations" not in sa.inspect(engine).get_table_names()

        upgrade(engine)
        body = {"events": [{"teamId": team, "eventId": "e2"}]}
        assert api.admin("POST", "/admin/v1/usage-events/cancel", json=body).json()["canceled"] == 1
