"""The per-request transaction: read-only endpoints neither take nor wait for write locks; a flow
that commits in steps (kit.http.Steps) holds none while the outside world is called."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from billfold.kit.db import transaction
from billfold.kit.http import DbSession, RequestTransactionEnded, Steps
from billfold.payments.provider import ChargeResult
from billfold.payments.sandbox import SandboxProvider
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


# --- kit.http.Steps: the second way, for money that waits on the outside world ----------------


class _ProbingProvider:
    """The app's provider, probing the database each time a card is charged: is the transaction
    that authenticated the request still open? (Everything else is the sandbox's.)"""

    def __init__(self, inner: SandboxProvider, engine: Engine) -> None:
        self.inner = inner
        self.engine = engine
        self.probes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def charge(self, *args: Any, **kwargs: Any) -> ChargeResult:
        self.probes.append(self._probe())
        return self.inner.charge(*args, **kwargs)

    def _probe(self) -> str:
        if self.engine.dialect.name == "sqlite":
            # Another writer: takes the database's only write lock at once, or fails at once.
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("PRAGMA busy_timeout=0")
                try:
                    cursor.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    return f"write lock held: {exc}"
                cursor.execute("ROLLBACK")
                return "free"
            finally:
                cursor.execute("PRAGMA busy_timeout=30000")
                raw.close()
        # PostgreSQL: the request's connection would sit "idle in transaction" after the key
        # lookup of its authentication.
        with self.engine.connect() as connection:
            held = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
                    " AND query ILIKE '%management_keys%'"
                )
            ).scalar_one()
        return "free" if held == 0 else f"{held} authentication transaction(s) open"


def test_a_top_up_holds_no_request_transaction_while_the_card_is_charged(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    app = api.client.app  # type: ignore[attr-defined]
    sandbox = app.state.payment_provider
    probing = _ProbingProvider(sandbox, app.state.engine)
    # Not monkeypatch: it cannot restore an attribute of Starlette's State (it reads the instance
    # __dict__, finds nothing and deletes the attribute on undo).
    app.state.payment_provider = probing
    try:
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/prepaid/top-up",
            headers=headers,
            json={"amount": {"val": "2500"}},
        )
    finally:
        app.state.payment_provider = sandbox
    assert response.status_code == 200, response.text
    assert probing.probes == ["free"]


def test_the_request_session_cannot_be_used_after_steps(api: Api) -> None:
    app: FastAPI = api.client.app  # type: ignore[assignment]
    seen: list[str] = []

    def misuse(steps: Steps, session: DbSession) -> None:
        with transaction(steps) as step:  # the flow's own transactions work
            step.execute(text("SELECT 1"))
        try:
            session.execute(text("SELECT 1"))
        except RequestTransactionEnded:
            seen.append("refused")
            raise

    path = f"/test-steps-misuse-{api.backend}"
    app.add_api_route(path, misuse, methods=["POST"])
    try:
        response = api.client.post(path)
    finally:  # the app is shared: other tests walk its routes
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != path]
        app.openapi_schema = None
    assert response.status_code == 500
    assert response.json()["code"] == "internal"
    assert seen == ["refused"]
    # The refused use left nothing open: a writer gets the database at once.
    with app.state.sessionmaker() as session:
        session.execute(text("UPDATE teams SET name = name WHERE id IS NULL"))
        session.commit()
