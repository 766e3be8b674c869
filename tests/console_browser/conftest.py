"""The console in a real browser: Debian's ``chromium`` driven by Playwright, against ``billfold
serve`` (real uvicorn) on SQLite and on PostgreSQL.

* One served app per database per test session (per xdist worker; the browser tests live in one
  file, so ``--dist loadfile`` gives them to one worker), on the session's migrated databases;
  the tests isolate themselves by creating their own teams through the served operator API.
* One browser per session; each test gets a fresh context (its own cookies), so sessions never
  leak from one test to the next. Every request to anything but the served app is aborted and
  fails the test: the console ships every asset itself (docs/console.md).
* Playwright never downloads a browser here: it launches the system's chromium
  (``BILLFOLD_TEST_CHROMIUM``, default ``/usr/bin/chromium``). Without it the tests are skipped
  locally, but under ``CI=true`` the run fails (``.ci/run`` installs it), as PostgreSQL does.
* Screenshots of every page at 375 px and 1440 px go to ``.artifacts/screenshots/<db>/``
  (git-ignored; ``BILLFOLD_TEST_ARTIFACTS`` moves the root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import IN_CI, OPERATOR_TOKEN
from tests.served import start_serve, wait_healthy
from tests.stripe_provider.conftest import (
    PUBLISHABLE_KEY,
    SECRET_KEY,
    WEBHOOK_SECRET,
    run_localstripe,
)

CHROMIUM = os.environ.get("BILLFOLD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("BILLFOLD_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / ".artifacts")
)
WIDTHS = (375, 1440)
# The elements that reach beyond the screen's right edge (to say what to fix).
WIDER_THAN_SCREEN = """
[...document.querySelectorAll("body *")]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(-5)
  .map(e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
            (e.className && typeof e.className == "string" ? "." + e.className : ""))
"""


def _chromium_or_skip() -> str:
    path = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    if path:
        return path
    message = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    if IN_CI:
        pytest.fail(message + " (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium for the session (Playwright's sync API)."""
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Served:
    """``billfold serve`` on one database, with the operator API's helpers over HTTP."""

    backend: str  # "sqlite" | "postgres"
    base: str
    http: httpx.Client
    output: list[str] = field(default_factory=list)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def create_team(self, name: str = "Acme") -> str:
        response = self.admin("POST", "/admin/v1/teams", json={"name": name})
        assert response.status_code == 201, response.text
        return str(response.json()["teamId"])

    def create_key(self, team_id: str, acls: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": "console"}
        if acls is not None:
            body["acls"] = acls
        response = self.admin("POST", f"/admin/v1/teams/{team_id}/management-keys", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def add_card(self, team_id: str, number: str = "4242424242424242") -> dict[str, Any]:
        response = self.admin(
            "POST",
            f"/admin/v1/teams/{team_id}/payment-methods",
            json={"cardNumber": number, "expMonth": 12, "expYear": 2035, "makeDefault": True},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def customer(self, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The Billing Management API as the key's holder (the figures the pages must equal)."""
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)


def _serve(url: str, backend: str, tmp_path: Path, **settings: str) -> Iterator[Served]:
    process, base = start_serve(
        url, 1, tmp_path, ADMIN_TOKEN=OPERATOR_TOKEN, RATE_LIMIT="false", **settings
    )
    output: list[str] = []

    def drain() -> None:  # a full stdout pipe would stall the server
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        wait_healthy(base, process)
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            yield Served(backend, base, http, output)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def served_sqlite(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(sqlite_url, "sqlite", tmp_path_factory.mktemp("served-sqlite"))


@pytest.fixture(scope="session")
def served_postgres(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from _serve(postgres_url, "postgres", tmp_path_factory.mktemp("served-postgres"))


@pytest.fixture(scope="session")
def localstripe() -> Iterator[str]:
    """A fresh localstripe (tests/localstripe_server.py), as tests/stripe_provider starts it."""
    yield from run_localstripe()


@pytest.fixture(scope="session")
def served_stripe(localstripe: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app with Stripe (localstripe) as its provider, on a SQLite file of its own."""
    folder = tmp_path_factory.mktemp("served-stripe")
    yield from _serve(
        f"sqlite:///{folder / 'billfold.db'}",
        "stripe",
        folder,
        PAYMENT_PROVIDER="stripe",
        STRIPE_SECRET_KEY=SECRET_KEY,
        STRIPE_PUBLISHABLE_KEY=PUBLISHABLE_KEY,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_API_BASE=localstripe,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest) -> Served:
    """The served app on each database in turn (started once per session)."""
    fixture: Served = request.getfixturevalue(f"served_{request.param}")
    return fixture


@dataclass
class Tab:
    """One browser context (its own cookies) and its page, on one served app."""

    served: Served
    context: Any
    page: Any
    foreign: list[str]

    def go(self, path: str) -> Any:
        response = self.page.goto(self.served.base + path)
        assert response is not None
        return response

    def path(self) -> str:
        return urlsplit(self.page.url).path

    def screenshots(self, name: str) -> None:
        """The page at each width, full length, under .artifacts/screenshots/<db>/; and at the
        narrow width nothing may be wider than the screen (readable at 375 px)."""
        folder = ARTIFACTS / "screenshots" / self.served.backend
        folder.mkdir(parents=True, exist_ok=True)
        for width in WIDTHS:
            self.page.set_viewport_size({"width": width, "height": 900})
            self.page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
            if width == min(WIDTHS):
                overflow = self.page.evaluate(
                    "document.documentElement.scrollWidth - window.innerWidth"
                )
                wide = self.page.evaluate(WIDER_THAN_SCREEN) if overflow > 1 else []
                message = f"{name} is {overflow}px wider than {width}px: {wide}"
                assert overflow <= 1, message
        self.page.set_viewport_size({"width": 1440, "height": 900})


@pytest.fixture
def new_tab(browser: Any, served: Served) -> Iterator[Any]:
    """A factory of fresh contexts on ``served``; each fails its test if the page asked for
    anything beyond the served app (an asset from the network)."""
    yield from _tabs(browser, served)


def _tabs(browser: Any, served: Served, *allowed: str) -> Iterator[Any]:
    """Contexts on ``served`` that may reach only it and the ``allowed`` bases."""
    contexts: list[Tab] = []
    origins = {urlsplit(base).netloc for base in (served.base, *allowed)}

    def make() -> Tab:
        context = browser.new_context(
            viewport={"width": 1440, "height": 900}, accept_downloads=True
        )
        foreign: list[str] = []

        def guard(route: Any) -> None:
            if urlsplit(route.request.url).netloc in origins:
                route.continue_()
            else:
                foreign.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        context.set_default_timeout(10_000)
        tab = Tab(served, context, context.new_page(), foreign)
        contexts.append(tab)
        return tab

    yield make
    for tab in contexts:
        tab.context.close()
    for tab in contexts:
        assert not tab.foreign, f"the page asked the network for {tab.foreign}"


@pytest.fixture
def stripe_tab(browser: Any, served_stripe: Served, localstripe: str) -> Iterator[Tab]:
    """A tab on the Stripe-backed app, which may also reach localstripe (its Stripe.js and API:
    what js.stripe.com and api.stripe.com are in production)."""
    tabs = _tabs(browser, served_stripe, localstripe)
    make = next(tabs)
    yield make()
    next(tabs, None)


@pytest.fixture
def tab(new_tab: Any) -> Tab:
    made: Tab = new_tab()
    return made


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
