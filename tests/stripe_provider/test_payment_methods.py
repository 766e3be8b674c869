"""Stripe payment methods: attached by id (made client-side), copied locally, never raw numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from billfold.config import Settings
from tests.conftest import Api
from tests.stripe_provider.conftest import (
    CHARGE_DECLINED,
    DECLINED_ON_ATTACH,
    INSUFFICIENT_ON_ATTACH,
    SUCCEEDS,
    StripeApi,
)


def _team_state(api: Api, team_id: str, headers: dict[str, str]) -> object:
    return api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers).json()


def test_attach_copies_brand_last4_expiry_and_one_customer_per_team(stripe_api: StripeApi) -> None:
    team_id, headers = stripe_api.team_with_key()
    first = stripe_api.attach(team_id, SUCCEEDS)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["cardDetails"] == {
        "brand": "visa",
        "expMonth": "12",
        "expYear": "2035",
        "last4": "4242",
    }
    assert body["isDefault"] is True
    second = stripe_api.attach(team_id, CHARGE_DECLINED)
    assert second.status_code == 201, second.text
    listing = _team_state(stripe_api, team_id, headers)
    # makeDefault defaults to true: the newest is the default, listed first
    assert [m["cardDetails"]["last4"] for m in listing["paymentMethods"]] == ["0341", "4242"]
    # Both methods are attached to one Stripe Customer, which names the team.
    customers = [
        c
        for c in stripe_api.stripe.v1.customers.list(params={"limit": 100}).data
        if c.metadata.to_dict().get("billfold_team") == team_id
    ]
    assert len(customers) == 1
    attached = stripe_api.stripe.v1.payment_methods.list(
        params={"customer": customers[0].id, "type": "card"}
    ).data
    assert sorted(m.card.last4 for m in attached) == ["0341", "4242"]


@pytest.mark.parametrize("number", [DECLINED_ON_ATTACH, INSUFFICIENT_ON_ATTACH])
def test_a_card_declined_on_attach_is_402_and_changes_nothing(
    stripe_api: StripeApi, number: str
) -> None:
    team_id, headers = stripe_api.team_with_key()
    response = stripe_api.attach(team_id, number)
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["code"] == "card_declined"
    assert "card_declined" in body["error"]  # Stripe's decline code in the message
    assert _team_state(stripe_api, team_id, headers) == {"paymentMethods": []}


def test_a_raw_card_number_is_refused(stripe_api: StripeApi) -> None:
    team_id, headers = stripe_api.team_with_key()
    response = stripe_api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/payment-methods",
        json={"cardNumber": SUCCEEDS, "expMonth": 12, "expYear": 2035},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "raw_card_number_refused"
    assert response.json()["field"] == "cardNumber"
    assert _team_state(stripe_api, team_id, headers) == {"paymentMethods": []}


@pytest.mark.parametrize(
    "body",
    [{}, {"providerPaymentMethodId": ""}, {"providerPaymentMethodId": "pm_x;DROP"}],
)
def test_a_bad_attach_body_is_400_and_changes_nothing(
    stripe_api: StripeApi, body: dict[str, str]
) -> None:
    team_id, headers = stripe_api.team_with_key()
    response = stripe_api.admin("POST", f"/admin/v1/teams/{team_id}/payment-methods", json=body)
    assert response.status_code == 400, response.text
    assert _team_state(stripe_api, team_id, headers) == {"paymentMethods": []}


def test_an_unknown_payment_method_is_400(stripe_api: StripeApi) -> None:
    team_id, headers = stripe_api.team_with_key()
    response = stripe_api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/payment-methods",
        json={"providerPaymentMethodId": "pm_doesnotexist"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "providerPaymentMethodId"
    assert _team_state(stripe_api, team_id, headers) == {"paymentMethods": []}


def test_the_sandbox_refuses_a_provider_payment_method(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/payment-methods",
        json={"providerPaymentMethodId": "pm_123"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "provider_payment_method_unsupported"
    assert _team_state(api, team_id, headers) == {"paymentMethods": []}


def test_settings_name_what_stripe_lacks() -> None:
    assert Settings(payment_provider="sandbox").provider_problem() is None
    problem = Settings(payment_provider="stripe", stripe_secret_key="sk_test_x").provider_problem()
    assert problem == "BILLFOLD_PAYMENT_PROVIDER=stripe needs BILLFOLD_STRIPE_WEBHOOK_SECRET"
    problem = Settings(payment_provider="stripe").provider_problem()
    assert problem is not None and "BILLFOLD_STRIPE_SECRET_KEY" in problem


def test_serve_stops_with_one_line_when_stripe_lacks_a_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env |= {
        "BILLFOLD_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}",
        "BILLFOLD_PAYMENT_PROVIDER": "stripe",
        "BILLFOLD_STRIPE_SECRET_KEY": "sk_test_x",
    }
    done = subprocess.run(
        [sys.executable, "-m", "billfold", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "BILLFOLD_STRIPE_WEBHOOK_SECRET" in lines[0]
    assert not (tmp_path / "b.db").exists()  # stopped before touching the database


def test_setup_gives_a_client_secret_and_the_publishable_key(stripe_api: StripeApi) -> None:
    team_id, _ = stripe_api.team_with_key()
    response = stripe_api.admin("POST", f"/admin/v1/teams/{team_id}/payment-methods/setup")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"clientSecret", "publishableKey"}
    assert body["publishableKey"] == "pk_test_billfold"
    intent_id = body["clientSecret"].split("_secret_")[0]
    intent = stripe_api.stripe.v1.setup_intents.retrieve(intent_id)
    assert intent.usage == "off_session" and intent.metadata.to_dict() == {"billfold_team": team_id}


def test_setup_with_the_sandbox_is_400(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.admin("POST", f"/admin/v1/teams/{team_id}/payment-methods/setup")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "setup_unsupported"
    assert _team_state(api, team_id, headers) == {"paymentMethods": []}
