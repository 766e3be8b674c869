"""Test harness: every API test runs against the app on SQLite and on PostgreSQL.

Each test session migrates one fresh SQLite file and one fresh PostgreSQL database (created here,
dropped at the end); tests isolate themselves by creating their own teams. PostgreSQL's URL comes
from ``BILLFOLD_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
When PostgreSQL is unreachable its tests are skipped locally, but under ``CI=true`` the run fails.

``pytest --pgbouncer`` runs only the tests that use PostgreSQL, and runs them through a private
PgBouncer in transaction mode (tests/pg_servers.py): the PostgreSQL URLs the fixtures hand out
(``postgres_url``, ``fresh_postgres_url``, ``fresh_url``'s PostgreSQL variant, the ``api``
fixture's) go through it, every app and engine is made for it
(``BILLFOLD_DATABASE_POOL_MODE=transaction``), and the spend cache LISTENs on the server itself
(the URL with PgBouncer's port swapped back). .ci/run does that pass once after the full suite.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, make_url, text

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.clock import frozen
from billfold.kit.db import make_engine, normalize_database_url
from billfold.migrate import alembic_config, upgrade
from billfold.payments.sandbox import SandboxProvider
from tests.log_secrets import captured_logs, scan
from tests.pg_servers import Missing, PgBouncer, start_pgbouncer

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

POSTGRES_URL = os.environ.get(
    "BILLFOLD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
OPERATOR_TOKEN = "test-operator-token"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_SERVER = make_url(normalize_database_url(POSTGRES_URL))
_VIA_PGBOUNCER: list[PgBouncer] = []  # the --pgbouncer run's PgBouncer, once started


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pgbouncer",
        action="store_true",
        help="run only the PostgreSQL tests, through a private PgBouncer in transaction mode",
    )


def _via_pgbouncer(config: pytest.Config) -> bool:
    return bool(config.getoption("--pgbouncer", default=False))


def pytest_configure(config: pytest.Config) -> None:
    if not _via_pgbouncer(config):
        return
    # Every Settings of the run (apps, CLIs, tests' own) and every engine a test makes itself.
    os.environ["BILLFOLD_DATABASE_POOL_MODE"] = "transaction"
    for made in (make_engine, SandboxProvider.for_database.__func__):  # type: ignore[attr-defined]
        assert made.__kwdefaults__ is not None
        made.__kwdefaults__["pool_mode"] = "transaction"
    listen_url = Settings.listen_url

    def direct_listen_url(self: Settings) -> str:
        # The spend cache LISTENs on a session connection: the server itself.
        return listen_url(self) if self.listen_database_url else direct_url(listen_url(self))

    Settings.listen_url = direct_listen_url  # type: ignore[method-assign]
    # Settings refuse a transaction pool mode without a listen URL: tests build their own.
    Settings.database_problem = lambda self: None  # type: ignore[method-assign]


def direct_url(url: str) -> str:
    """``url``, a database on the test server, not through the --pgbouncer run's PgBouncer (a
    session connection: for the spend cache's LISTEN)."""
    if _VIA_PGBOUNCER:
        return url.replace(f":{_VIA_PGBOUNCER[0].port}/", f":{_SERVER.port or 5432}/")
    return url


def _uses_postgres(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & {"postgres_url", "fresh_postgres_url", "postgres_api", "pgbouncer"}:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "postgres" in callspec.params.values()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _via_pgbouncer(config):
        return
    keep = [item for item in items if _uses_postgres(item)]
    config.hook.pytest_deselected(items=[item for item in items if not _uses_postgres(item)])
    items[:] = keep


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[PgBouncer]:
    """A private PgBouncer in transaction mode in front of the test server (tests/pg_servers.py).
    Without the program: skipped locally, a failure under CI=true."""
    try:
        bouncer = start_pgbouncer(
            _SERVER.host or "127.0.0.1", _SERVER.port or 5432, _SERVER.username or "postgres"
        )
    except Missing as missing:
        if IN_CI:
            pytest.fail(f"{missing} (CI=true: PgBouncer tests must run)", pytrace=False)
        pytest.skip(str(missing))
    try:
        yield bouncer
    finally:
        bouncer.stop()


def _routed(request: pytest.FixtureRequest, url: str) -> str:
    """``url`` through the run's PgBouncer under --pgbouncer, else as it is."""
    if not _via_pgbouncer(request.config):
        return url
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    if not _VIA_PGBOUNCER:
        _VIA_PGBOUNCER.append(bouncer)
    return bouncer.url(url)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every log line of the run (of this process: each xdist worker checks its own) is captured
    and, when the session ends, scanned for secrets (tests/log_secrets.py): one fails the run."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    path = tmp_path_factory.getbasetemp() / f"logs-{worker}.jsonl"
    with captured_logs(path):
        yield
    problems = scan(path, literals=(OPERATOR_TOKEN,))
    if problems:
        shown = "\n".join(problems[:20])
        pytest.fail(f"a secret was logged ({len(problems)} lines of {path}):\n{shown}")


def _postgres_admin_engine() -> Engine:
    return create_engine(normalize_database_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session (dropped afterwards)."""
    admin = _postgres_admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        message = f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    with _scratch_database(admin, "billfold_test") as url:
        url = _routed(request, url)
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    admin.dispose()


@contextmanager
def _scratch_database(admin: Engine, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server: its URL, dropped on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield normalize_database_url(POSTGRES_URL).rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("db") / "billfold.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own, not migrated (for tests that run migrations down and up)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("postgres_url")  # skips (or fails in CI) without PostgreSQL
    admin = _postgres_admin_engine()
    try:
        with _scratch_database(admin, "billfold_test_migration") as url:
            yield _routed(request, url)
    finally:
        admin.dispose()


@pytest.fixture
def fresh_postgres_url(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own, not migrated (for PostgreSQL-only tests: they
    run, never skip, in CI)."""
    admin = _postgres_admin_engine()
    try:
        with _scratch_database(admin, "billfold_test_pg") as url:
            yield _routed(request, url)
    finally:
        admin.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


class Api:
    """The app through HTTP, with helpers that build real objects through the operator API."""

    def __init__(self, client: TestClient, backend: str, url: str) -> None:
        self.client = client
        self.backend = backend
        self.url = url
        self.operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", self.operator)
        return self.client.request(method, path, **kwargs)

    def create_team(self, name: str = "Acme") -> str:
        response = self.admin("POST", "/admin/v1/teams", json={"name": name})
        assert response.status_code == 201, response.text
        return str(response.json()["teamId"])

    def create_key(self, team_id: str, acls: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": "test"}
        if acls is not None:
            body["acls"] = acls
        response = self.admin("POST", f"/admin/v1/teams/{team_id}/management-keys", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def team_with_key(self, acls: list[str] | None = None) -> tuple[str, dict[str, str]]:
        team_id = self.create_team()
        key = self.create_key(team_id, acls)
        return team_id, {"Authorization": f"Bearer {key['apiKey']}"}

    def set_price(
        self,
        sku: str,
        unit_price: str,
        effective_from: str = "2026-01-01T00:00:00Z",
        description: str | None = None,
        unit_type: str = "Prompt text tokens",
    ) -> dict[str, Any]:
        response = self.admin(
            "PUT",
            f"/admin/v1/prices/{sku}",
            json={
                "description": description or f"Chat {sku}",
                "unitType": unit_type,
                "unitPrice": unit_price,
                "effectiveFrom": effective_from,
            },
        )
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def ingest(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        response = self.admin("POST", "/admin/v1/usage-events", json={"events": events})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def create_key_headers(self, team_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.create_key(team_id)['apiKey']}"}

    def add_card(
        self, team_id: str, number: str = "4242424242424242", default: bool = True
    ) -> dict[str, Any]:
        response = self.admin(
            "POST",
            f"/admin/v1/teams/{team_id}/payment-methods",
            json={"cardNumber": number, "expMonth": 12, "expYear": 2035, "makeDefault": default},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


def _make_api(url: str, backend: str, *, deliver_webhooks: bool = True) -> Iterator[Api]:
    settings = Settings(
        database_url=url,
        admin_token=OPERATOR_TOKEN,
        # Webhooks to the tests' loopback receivers, retried within seconds, not hours.
        webhooks_allow_http=True,
        webhook_retry_schedule="1,1",
        webhook_poll_seconds=0.1,
        # One app serves every test of a worker: its budgets would be spent by the suite itself
        # (tests/kit/test_rate_limits.py builds apps of its own with small budgets).
        rate_limit=False,
        # Off for apps on databases a test migrates down while the app runs: a deliverer polling
        # the outbox would hold locks on the tables the downgrade drops.
        webhooks_deliver=deliver_webhooks,
        auto_topup_poll_seconds=0.05,  # the auto top-up charger, within a test's patience
        # An access line a request, for the run's check that no log line holds a secret.
        log_format="json",
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, backend, url)


@pytest.fixture(scope="session")
def sqlite_api(sqlite_url: str) -> Iterator[Api]:
    yield from _make_api(sqlite_url, "sqlite")


@pytest.fixture(scope="session")
def postgres_api(postgres_url: str) -> Iterator[Api]:
    yield from _make_api(postgres_url, "postgresql")


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest) -> Api:
    """The app on each database in turn."""
    fixture: Api = request.getfixturevalue(f"{request.param}_api")
    return fixture


def at(text: str) -> datetime:
    """``"2031-01-20T10:00:00"`` as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@contextmanager
def frozen_at(text: str) -> Iterator[None]:
    """Freeze Billfold's clock (kit.clock) at a UTC time given as text."""
    with frozen(at(text)):
        yield


def unique_sku(prefix: str = "sku") -> str:
    """SKUs are global: each test prices its own so tests stay independent."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def put_cent_price(client: TestClient, sku: str) -> None:
    """Price ``sku`` at 1 cent a unit from 2026 on, as the operator (a client of the app)."""
    response = client.put(
        f"/admin/v1/prices/{sku}",
        json={
            "description": "chat",
            "unitType": "Prompt text tokens",
            "unitPrice": "0.01",
            "effectiveFrom": "2026-01-01T00:00:00Z",
        },
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert response.status_code in (200, 201), response.text


def event(
    team_id: str,
    sku: str,
    quantity: int | str,
    timestamp: str,
    event_id: str | None = None,
    **properties: str,
) -> dict[str, Any]:
    return {
        "eventId": event_id or f"evt-{uuid.uuid4().hex}",
        "teamId": team_id,
        "sku": sku,
        "quantity": str(quantity),
        "timestamp": timestamp,
        "properties": properties,
    }


@pytest.fixture
def sandbox(api: Api) -> SandboxProvider:
    provider: SandboxProvider = api.client.app.state.payment_provider  # type: ignore[attr-defined]
    return provider
