"""The per-request transaction: read-only endpoints neither take nor wait for write locks."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.conftest import Api


def test_read_only_endpoint_does_not_wait_for_a_writer(api: Api) -> None:
    team_id, headers = api.team_with_key()
    app = api.client.app  # type: ignore[attr-defined]
    writer = app.state.sessionmaker()
    try:
        # An open write transaction: on SQLite it holds the database's only write lock.
        writer.execute(text("UPDATE teams SET name = name WHERE id IS NULL"))
        started = time.monotonic()
        response = api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers)
        assert response.status_code == 200
        assert time.monotonic() - started < 5
    finally:
        writer.rollback()
        writer.close()


def test_read_only_sessions_refuse_writes_on_postgres(postgres_api: Api) -> None:
    app = postgres_api.client.app  # type: ignore[attr-defined]
    with app.state.read_sessionmaker() as session, pytest.raises(DBAPIError):
        session.execute(text("UPDATE teams SET name = name"))
