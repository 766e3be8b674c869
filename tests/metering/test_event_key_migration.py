"""Migration 0009: usage_events keyed by (event_id, team_id), event ids in byte order on
PostgreSQL. The stored events survive it both ways, the key still refuses a repeat, and ingestion
on the new key goes on counting a stored event as a duplicate."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from billfold.kit.clock import frozen
from billfold.kit.db import make_engine
from billfold.migrate import upgrade
from tests.conftest import _make_api, downgrade, event, unique_sku

NOW = datetime(2036, 3, 20, 12, 0, tzinfo=UTC)


def stored(engine: Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT team_id, event_id, quantity FROM usage_events"))
        return sorted((str(team), event_id, quantity) for team, event_id, quantity in rows)


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
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO usage_events (team_id, event_id, ts, sku, quantity, "
                    "price_version_id, properties, ingested_at) SELECT team_id, event_id, ts, "
                    "sku, quantity, price_version_id, properties, ingested_at FROM usage_events "
                    "WHERE event_id = :e"
                ),
                {"e": event_id},
            )
    except IntegrityError:
        return True
    return False


def test_the_event_key_migrates_both_ways_and_keeps_every_event(fresh_url: str) -> None:
    engine = make_engine(fresh_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        upgrade(engine)
        downgrade(engine, "0008")
        assert key_and_collation(engine) == (["team_id", "event_id"], None)
        backend = "postgresql" if postgres else "sqlite"
        with frozen(NOW):
            for api in _make_api(fresh_url, backend):
                sku = unique_sku("key")
                api.set_price(sku, "0.000003", "2036-01-01T00:00:00Z")
                teams = [api.create_team(), api.create_team()]
                ids = ["b", "B", "é", "𝄞", "req_0f", "req_f0"]
                batch = [
                    event(team, sku, n + 1, "2036-03-20T10:00:00Z", event_id=i)
                    for n, i in enumerate(ids)
                    for team in teams
                ]
                assert api.ingest(batch)["accepted"] == len(batch)
                before = stored(engine)
                assert len(before) == len(batch)
                assert key_and_collation(engine)[0] == ["team_id", "event_id"]  # still 0008

                upgrade(engine)
                assert key_and_collation(engine) == (
                    ["event_id", "team_id"],
                    "C" if postgres else None,
                )
                assert stored(engine) == before
                assert repeat_refused(engine, "é")
                # The app on the new key: a stored event is a duplicate, a new one lands.
                again = [batch[0], event(teams[0], sku, 1, "2036-03-20T11:00:00Z", event_id="new")]
                assert api.ingest(again) == {"accepted": 1, "duplicates": 1, "rejected": []}
                after = stored(engine)

                downgrade(engine, "0008")
                assert key_and_collation(engine) == (["team_id", "event_id"], None)
                assert stored(engine) == after
                assert repeat_refused(engine, "𝄞")
                upgrade(engine)
    finally:
        engine.dispose()
