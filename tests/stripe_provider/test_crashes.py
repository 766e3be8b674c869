"""kill -9 between the steps of a Stripe charge: a retry finds the same PaymentIntent.

The server runs as a real process (tests/served.py). ``BILLFOLD_TEST_CRASH_AT`` makes it end itself
with ``os._exit(9)`` -- no cleanup, no commit, as ``kill -9`` -- at a named point
(payments/faults.py): between creating the PaymentIntent (its id committed) and confirming it, or
between confirming it and committing the outcome. After a restart, exactly one PaymentIntent has
succeeded at localstripe and exactly one purchase is in the ledger.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.invoicing.models import Invoice
from billfold.kit.db import make_engine
from billfold.ledger.models import LedgerEntry
from billfold.migrate import upgrade
from billfold.teams.models import Team
from billfold.topups.models import Topup
from tests.conftest import _postgres_admin_engine, _scratch_database
from tests.served import start_serve, wait_healthy
from tests.stripe_provider.conftest import PUBLISHABLE_KEY, SECRET_KEY, SUCCEEDS, WEBHOOK_SECRET

TOKEN = "crash-operator-token"


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        yield str(request.getfixturevalue("postgres_url"))
        return
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url


def serve(
    url: str, localstripe: str, tmp_path: Path, **extra: str
) -> tuple[subprocess.Popen[str], str]:
    process, base = start_serve(
        url,
        1,
        tmp_path,
        ADMIN_TOKEN=TOKEN,
        PAYMENT_PROVIDER="stripe",
        STRIPE_SECRET_KEY=SECRET_KEY,
        STRIPE_PUBLISHABLE_KEY=PUBLISHABLE_KEY,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_API_BASE=localstripe,
        **extra,
    )
    wait_healthy(base, process)
    return process, base


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=30)


def team_with_card(
    http: httpx.Client, client: stripe.StripeClient, name: str
) -> tuple[str, dict[str, str]]:
    """A team on the served process with a management key and a localstripe card attached as
    its default (the Stripe.js way: the PaymentMethod made at Stripe, attached by its id)."""
    team_id = str(http.post("/admin/v1/teams", json={"name": name}).json()["teamId"])
    key = http.post(f"/admin/v1/teams/{team_id}/management-keys", json={"name": "k"})
    method = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": SUCCEEDS, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        }
    )
    attached = http.post(
        f"/admin/v1/teams/{team_id}/payment-methods",
        json={"providerPaymentMethodId": method.id},
    )
    assert attached.status_code == 201, attached.text
    return team_id, {"Authorization": f"Bearer {key.json()['apiKey']}"}


@pytest.mark.parametrize("point", ["topup_after_create", "topup_after_confirm"])
def test_kill_9_mid_top_up_charges_once(
    database: str, localstripe: str, tmp_path: Path, point: str
) -> None:
    client = stripe.StripeClient(SECRET_KEY, base_addresses={"api": localstripe})
    operator = {"Authorization": f"Bearer {TOKEN}"}
    process, base = serve(database, localstripe, tmp_path, TEST_CRASH_AT=point)
    try:
        with httpx.Client(base_url=base, headers=operator, timeout=30) as http:
            team_id, headers = team_with_card(http, client, "crash")
            with pytest.raises(httpx.HTTPError):
                http.post(
                    f"/v1/billing/teams/{team_id}/prepaid/top-up",
                    headers={**headers, "Idempotency-Key": "crash-1"},
                    json={"amount": {"val": "2500"}},
                )
        assert process.wait(timeout=30) == 9  # it died at the crash point
    finally:
        stop(process)

    engine = make_engine(database)
    try:
        with Session(engine) as session:
            customer = session.scalars(
                select(Team.stripe_customer_id).where(Team.id == uuid.UUID(team_id))
            ).one()
            (topup,) = session.scalars(select(Topup).where(Topup.team_id == uuid.UUID(team_id)))
        assert topup.status == "TO_CHARGE" and topup.provider_charge_id.startswith("pi_")
        (intent,) = [
            i
            for i in client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
            if i.customer == customer
        ]
        assert intent.id == topup.provider_charge_id
        expected = "requires_confirmation" if point == "topup_after_create" else "succeeded"
        assert intent.status == expected

        process, base = serve(database, localstripe, tmp_path)
        try:
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                if point == "topup_after_create":
                    # The client retries with its key: the stored PaymentIntent is confirmed.
                    again = http.post(
                        f"/v1/billing/teams/{team_id}/prepaid/top-up",
                        headers={"Idempotency-Key": "crash-1"},
                        json={"amount": {"val": "2500"}},
                    )
                    assert again.status_code == 200, again.text
                    assert again.json()["change"]["topupStatus"] == "SUCCEEDED"
                else:
                    # Reading the balance resolves the pending top-up from its PaymentIntent.
                    body = http.get(f"/v1/billing/teams/{team_id}/prepaid/balance").json()
                    statuses = [c.get("topupStatus") for c in body["changes"]]
                    assert "SUCCEEDED" in statuses and "TO_CHARGE" not in statuses
        finally:
            stop(process)

        intents = [
            i
            for i in client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
            if i.customer == customer
        ]
        assert [(i.id, i.status) for i in intents] == [(topup.provider_charge_id, "succeeded")]
        with Session(engine) as session:
            purchases = list(
                session.scalars(
                    select(LedgerEntry).where(
                        LedgerEntry.team_id == uuid.UUID(team_id), LedgerEntry.kind == "purchase"
                    )
                )
            )
        assert [(p.credit_cents, p.reference) for p in purchases] == [
            (2500, topup.provider_charge_id)
        ]
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test alone: closing a real past month must not close it for others."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_url")  # skips (or fails in CI) without PostgreSQL
        admin = _postgres_admin_engine()
        try:
            with _scratch_database(admin, "billfold_test_crash") as url:
                engine = make_engine(url)
                upgrade(engine)
                engine.dispose()
                yield url
        finally:
            admin.dispose()
        return
    url = f"sqlite:///{tmp_path / 'crash-close.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url


@pytest.mark.parametrize("point", ["invoice_after_create", "invoice_after_confirm"])
def test_kill_9_mid_cycle_close_charges_once(
    own_database: str, localstripe: str, tmp_path: Path, point: str
) -> None:
    client = stripe.StripeClient(SECRET_KEY, base_addresses={"api": localstripe})
    operator = {"Authorization": f"Bearer {TOKEN}"}
    today = datetime.now(UTC)
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    process, base = serve(own_database, localstripe, tmp_path, TEST_CRASH_AT=point)
    try:
        with httpx.Client(base_url=base, headers=operator, timeout=30) as http:
            team_id, _ = team_with_card(http, client, "close")
            sku = f"crash-{uuid.uuid4().hex[:8]}"
            priced = http.put(
                f"/admin/v1/prices/{sku}",
                json={
                    "description": "crash",
                    "unitType": "tokens",
                    "unitPrice": "0.01",
                    "effectiveFrom": f"{year - 1}-01-01T00:00:00Z",
                },
            )
            assert priced.status_code in (200, 201), priced.text
            stamp = f"{year}-{month:02d}-15T10:00:00Z"
            usage = {"eventId": "e1", "teamId": team_id, "sku": sku, "quantity": "1234"}
            ingested = http.post(
                "/admin/v1/usage-events", json={"events": [{**usage, "timestamp": stamp}]}
            )
            assert ingested.json()["accepted"] == 1, ingested.text
            with pytest.raises(httpx.HTTPError):
                http.post("/admin/v1/billing-cycles/close", json={"year": year, "month": month})
        assert process.wait(timeout=30) == 9
    finally:
        stop(process)

    process, base = serve(own_database, localstripe, tmp_path)
    try:
        with httpx.Client(base_url=base, headers=operator, timeout=30) as http:
            again = http.post("/admin/v1/billing-cycles/close", json={"year": year, "month": month})
            assert again.status_code == 200, again.text
    finally:
        stop(process)

    engine = make_engine(own_database)
    try:
        with Session(engine) as session:
            customer = session.scalars(
                select(Team.stripe_customer_id).where(Team.id == uuid.UUID(team_id))
            ).one()
            (invoice,) = session.scalars(
                select(Invoice).where(
                    Invoice.team_id == uuid.UUID(team_id), Invoice.kind == "monthly"
                )
            )
        intents = [
            i
            for i in client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
            if i.customer == customer
        ]
        assert [(i.status, i.amount) for i in intents] == [("succeeded", 1234)]
        assert invoice.status == "PAID" and invoice.provider_charge_id == intents[0].id
        assert [(a["successful"], a["chargeId"]) for a in invoice.charge_attempts] == [
            (True, intents[0].id)
        ]
    finally:
        engine.dispose()
