"""An auto top-up through Stripe (localstripe): the charger creates the PaymentIntent with the
top-up's id as idempotency key, commits its id, confirms it; AUTO_PURCHASE with a receipt."""

from __future__ import annotations

from tests.autotopup.conftest import enable, events, settled
from tests.conftest import event, frozen_at, unique_sku
from tests.ledger.conftest import balance, entries, grant
from tests.stripe_provider.conftest import StripeApi
from tests.stripe_provider.test_topups import customer_of


def test_an_auto_top_up_through_stripe(stripe_api: StripeApi) -> None:
    api = stripe_api
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    customer = customer_of(api, team_id)
    assert grant(api, team_id, 2000).status_code == 201
    sku = unique_sku()
    api.set_price(sku, "0.01", "2064-01-01T00:00:00Z")
    with frozen_at("2064-02-10T12:00:00"):
        enable(api, team_id, thresholdCents="1000", amountCents="2500", monthlyLimitCents="10000")
        api.ingest([event(team_id, sku, 1500, "2064-02-10T11:00:00Z")])  # 500 left
        (topup,) = settled(api, team_id, 1)
        assert topup.status == "SUCCEEDED", (topup.failure_code, topup.failure_message)
        (intent,) = api.intents(customer)
        assert (intent.status, intent.amount, intent.id) == (
            "succeeded",
            2500,
            topup.provider_charge_id,
        )
        assert intent.metadata.to_dict() == {
            "billfold_team": team_id,
            "billfold_topup": str(topup.id),
        }
        (change,) = [
            c
            for c in balance(api, team_id, headers)["changes"]
            if c["changeOrigin"] == "AUTO_PURCHASE"
        ]
        assert change["topupStatus"] == "SUCCEEDED" and change["invoiceNumber"]
        assert change["paymentProcessor"] == {
            "kind": "STRIPE",
            "externalParty": "stripe",
            "externalInvoiceId": intent.id,
        }
        purchase = [e.credit_cents for e in entries(api, team_id) if e.kind == "purchase"]
        assert purchase == [2500]
        assert [e.type for e in events(api, team_id)] == ["auto_topup.succeeded"]
