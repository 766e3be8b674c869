"""Reconciliation: pending charges settled from their PaymentIntent; the invariant checked."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from billfold.cli import app as cli
from billfold.config import get_settings
from billfold.ledger.service import ledger_service
from billfold.payments.stripe_provider import StripeProvider
from billfold.settlement.reconcile import check, reconcile
from tests.ledger.conftest import session_of, topups
from tests.stripe_provider.conftest import SECRET_KEY, WEBHOOK_SECRET, StripeApi
from tests.stripe_provider.test_topups import customer_of, purchases
from tests.stripe_provider.test_webhooks import authenticate, pending_top_up


def _sessions(api: StripeApi):  # type: ignore[no-untyped-def]
    return api.client.app.state.sessionmaker  # type: ignore[attr-defined]


def _provider(api: StripeApi) -> StripeProvider:
    provider: StripeProvider = api.client.app.state.payment_provider  # type: ignore[attr-defined]
    return provider


def test_reconcile_settles_what_no_webhook_told_and_the_check_agrees(
    stripe_api: StripeApi,
) -> None:
    team_id, _, intent_id = pending_top_up(stripe_api)
    authenticate(stripe_api, intent_id, True)  # succeeded at Stripe; no webhook comes
    team = uuid.UUID(team_id)
    young = reconcile(
        _sessions(stripe_api), _provider(stripe_api), timedelta(hours=1), team_id=team
    )
    assert young.examined == 0  # younger than the threshold: maybe still in its request's hands
    assert check(_sessions(stripe_api), _provider(stripe_api), team_ids=[team]) == [
        f"succeeded PaymentIntent {intent_id} without its ledger entry "
        f"(top-up {topups(stripe_api, team_id)[0].id} is TO_CHARGE)"
    ]
    report = reconcile(_sessions(stripe_api), _provider(stripe_api), timedelta(0), team_id=team)
    assert report.examined == 1 and report.still_pending == []
    assert [t.status for t in topups(stripe_api, team_id)] == ["SUCCEEDED"]
    assert [e.credit_cents for e in purchases(stripe_api, team_id)] == [2500]
    assert check(_sessions(stripe_api), _provider(stripe_api), team_ids=[team]) == []
    again = reconcile(_sessions(stripe_api), _provider(stripe_api), timedelta(0), team_id=team)
    assert again.examined == 0


def test_the_check_finds_credit_without_a_payment_intent_and_the_reverse(
    stripe_api: StripeApi,
) -> None:
    team_id, _, intent_id = pending_top_up(stripe_api)
    team = uuid.UUID(team_id)
    # A PaymentIntent that names a Billfold top-up Billfold never recorded, and succeeded.
    stray = stripe_api.stripe.v1.payment_intents.create(
        params={
            "amount": 700,
            "currency": "usd",
            "customer": customer_of(stripe_api, team_id),
            "payment_method": stripe_api.stripe.v1.payment_methods.list(
                params={"customer": customer_of(stripe_api, team_id), "type": "card"}
            )
            .data[0]
            .id,
            "metadata": {"billfold_team": team_id, "billfold_topup": str(uuid.uuid4())},
        }
    )
    # (the 3-D Secure card needs authenticating: confirm, then pass it)
    stripe_api.stripe.v1.payment_intents.confirm(stray.id)
    authenticate(stripe_api, stray.id, True)
    # Credit naming a PaymentIntent that never succeeded.
    with session_of(stripe_api) as session, session.begin():
        ledger_service.append(
            session,
            team,
            kind="purchase",
            credit_cents=999,
            idempotency_key=f"forged:{team_id}",
            reference=intent_id,
            description="forged",
        )
    problems = check(_sessions(stripe_api), _provider(stripe_api), team_ids=[team])
    assert f"credit without a succeeded PaymentIntent: {intent_id}" in problems
    assert f"succeeded PaymentIntent {stray.id} of no top-up record" in problems
    assert len(problems) == 2


def test_the_reconcile_command(stripe_api: StripeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    team_id, _, intent_id = pending_top_up(stripe_api)
    authenticate(stripe_api, intent_id, True)
    for name, value in {
        "DATABASE_URL": stripe_api.url,
        "PAYMENT_PROVIDER": "stripe",
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_api.stripe_base,
    }.items():
        monkeypatch.setenv(f"BILLFOLD_{name}", value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli, ["payments", "reconcile", "--older-than-seconds", "0", "--json"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    (topup,) = topups(stripe_api, team_id)
    assert f"top-up {topup.id}: SUCCEEDED" in body["settled"]
    assert topup.status == "SUCCEEDED"
