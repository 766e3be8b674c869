"""Stripe as the payment provider, against localstripe (a stateful fake of Stripe's API).

One localstripe per test session (per xdist worker), on a free loopback port, started from this
venv (``localstripe`` is a dev extra) through tests/localstripe_server.py and stopped at the end.
The Stripe apps are session-scoped, one per database, on the same databases as the ``api``
fixture: each Stripe test runs once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from billfold.config import Settings
from tests.conftest import OPERATOR_TOKEN, Api, TestClient, create_app
from tests.served import free_port

SECRET_KEY = "sk_test_billfold"
PUBLISHABLE_KEY = "pk_test_billfold"
WEBHOOK_SECRET = "whsec_test_billfold"
SERVER = Path(__file__).resolve().parent.parent / "localstripe_server.py"

# localstripe's test cards (Stripe's own numbers)
SUCCEEDS = "4242424242424242"
CHARGE_DECLINED = "4000000000000341"  # attaches; every charge is declined
DECLINED_ON_ATTACH = "4000000000000002"
INSUFFICIENT_ON_ATTACH = "4000000000009995"
NEEDS_AUTHENTICATION = "4000002500003155"


def run_localstripe() -> Iterator[str]:
    """The base URL of a fresh localstripe, stopped when the generator ends (the fixtures of
    this package and of tests/console_browser yield from it)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError("localstripe exited on start")
            try:
                auth = {"Authorization": f"Bearer {SECRET_KEY}"}
                if httpx.get(base + "/v1/customers", headers=auth, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("localstripe did not start")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def localstripe() -> Iterator[str]:
    """The base URL of a fresh localstripe."""
    yield from run_localstripe()


class StripeApi(Api):
    """The app with Stripe as its provider, and a client of the fake Stripe (as Stripe.js)."""

    def __init__(self, client: TestClient, backend: str, url: str, stripe_base: str) -> None:
        super().__init__(client, backend, url)
        self.stripe_base = stripe_base
        self.stripe = stripe.StripeClient(SECRET_KEY, base_addresses={"api": stripe_base})

    def payment_method(self, number: str = SUCCEEDS) -> str:
        """A PaymentMethod made client-side, as Stripe.js would: its id."""
        method = self.stripe.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
            }
        )
        return str(method.id)

    def attach(self, team_id: str, number: str = SUCCEEDS) -> Any:
        return self.admin(
            "POST",
            f"/admin/v1/teams/{team_id}/payment-methods",
            json={"providerPaymentMethodId": self.payment_method(number)},
        )

    def add_card(
        self, team_id: str, number: str = SUCCEEDS, default: bool = True
    ) -> dict[str, Any]:
        response = self.admin(
            "POST",
            f"/admin/v1/teams/{team_id}/payment-methods",
            json={"providerPaymentMethodId": self.payment_method(number), "makeDefault": default},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def intents(self, customer: str) -> list[Any]:
        """The customer's PaymentIntents (localstripe lists them all: filtered here)."""
        every = self.stripe.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
        return [intent for intent in every if intent.customer == customer]


def stripe_settings(url: str, stripe_base: str, **extra: Any) -> Settings:
    return Settings(
        database_url=url,
        admin_token=OPERATOR_TOKEN,
        payment_provider="stripe",
        stripe_secret_key=SECRET_KEY,
        stripe_publishable_key=PUBLISHABLE_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=stripe_base,
        **extra,
    )


def _make(url: str, backend: str, stripe_base: str) -> Iterator[StripeApi]:
    app = create_app(stripe_settings(url, stripe_base))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield StripeApi(client, backend, url, stripe_base)


@pytest.fixture(scope="session")
def stripe_sqlite_api(sqlite_url: str, localstripe: str) -> Iterator[StripeApi]:
    yield from _make(sqlite_url, "sqlite", localstripe)


@pytest.fixture(scope="session")
def stripe_postgres_api(postgres_url: str, localstripe: str) -> Iterator[StripeApi]:
    yield from _make(postgres_url, "postgresql", localstripe)


@pytest.fixture(params=["sqlite", "postgres"])
def stripe_api(request: pytest.FixtureRequest) -> StripeApi:
    """The app with Stripe (localstripe) as its provider, on each database in turn."""
    fixture: StripeApi = request.getfixturevalue(f"stripe_{request.param}_api")
    return fixture
