"""Payment methods: sandbox cards added by the operator, listed and defaulted by the team."""

from __future__ import annotations

import pytest

from billfold.payments.sandbox import SandboxProvider, card_brand, luhn_ok
from tests.conftest import Api


def test_added_card_keeps_only_brand_last4_and_expiry(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info",
        headers=headers,
        json={
            "billingInfo": {"name": "Acme", "email": "a@acme.example", "address": {"country": "FR"}}
        },
    )
    added = api.add_card(team_id, "4242 4242 4242 4242")
    assert added["paymentMethodId"].startswith("pm_")
    assert added["cardDetails"] == {
        "brand": "visa",
        "expMonth": "12",
        "expYear": "2035",
        "last4": "4242",
    }
    assert "4242424242424242" not in str(added)
    assert added["isDefault"] is True  # the operator API says which is the default
    listing = api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers)
    assert listing.status_code == 200
    body = listing.json()
    assert "pendingPaymentMethod" not in body
    (method,) = body["paymentMethods"]
    assert method["paymentMethodId"] == added["paymentMethodId"]
    assert method["paymentType"] == "card"
    # The customer API sends only the upstream fields: no default marker (spec §6).
    assert set(method) == {
        "paymentMethodId",
        "billingInfo",
        "cardDetails",
        "paymentType",
        "addedTs",
    }
    assert method["addedTs"].endswith("Z")
    assert method["billingInfo"]["address"]["country"] == "FR"
    assert "usBankAccountDetails" not in method and "linkDetails" not in method


def test_no_methods_is_an_empty_list(api: Api) -> None:
    team_id, headers = api.team_with_key()
    body = api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers).json()
    assert body == {"paymentMethods": []}


def test_set_default_lists_it_first(api: Api) -> None:
    team_id, headers = api.team_with_key()
    first = api.add_card(team_id, "4242424242424242")
    second = api.add_card(team_id, "5555555555554444", default=False)
    assert second["cardDetails"]["brand"] == "mastercard"
    assert (first["isDefault"], second["isDefault"]) == (True, False)
    listed = api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers).json()
    assert [m["paymentMethodId"] for m in listed["paymentMethods"]] == [
        first["paymentMethodId"],
        second["paymentMethodId"],
    ]
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/payment-method/default",
        headers=headers,
        json={"paymentMethodId": second["paymentMethodId"]},
    )
    assert response.status_code == 200 and response.json() == {}
    listed = api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers).json()
    methods = listed["paymentMethods"]
    # The default is the one listed first (the customer API has no default marker).
    assert [m["paymentMethodId"] for m in methods] == [
        second["paymentMethodId"],
        first["paymentMethodId"],
    ]
    assert all("isDefault" not in m for m in methods)


def test_default_of_another_team_is_404_and_changes_nothing(api: Api) -> None:
    team_a, headers_a = api.team_with_key()
    mine = api.add_card(team_a)
    team_b = api.create_team()
    theirs = api.add_card(team_b)
    for method_id in (theirs["paymentMethodId"], "pm_doesnotexist"):
        response = api.client.post(
            f"/v1/billing/teams/{team_a}/payment-method/default",
            headers=headers_a,
            json={"paymentMethodId": method_id},
        )
        assert response.status_code == 404
        assert response.json()["code"] == "payment_method_not_found"
    listed = api.client.get(f"/v1/billing/teams/{team_a}/payment-method", headers=headers_a).json()
    assert [m["paymentMethodId"] for m in listed["paymentMethods"]] == [mine["paymentMethodId"]]


def test_read_only_key_cannot_set_default(api: Api) -> None:
    team_id, headers = api.team_with_key(acls=["team-token:endpoint:BillingRead"])
    method = api.add_card(team_id)
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/payment-method/default",
        headers=headers,
        json={"paymentMethodId": method["paymentMethodId"]},
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cardNumber": "4242424242424241", "expMonth": 12, "expYear": 2035}, "cardNumber"),
        ({"cardNumber": "4242424242424242", "expMonth": 13, "expYear": 2035}, "expMonth"),
        ({"cardNumber": "4242424242424242", "expMonth": 1, "expYear": 2020}, "expYear"),
        ({"cardNumber": "abc", "expMonth": 1, "expYear": 2035}, "cardNumber"),
        ({"expMonth": 1, "expYear": 2035}, "cardNumber"),
    ],
)
def test_bad_card_is_400_and_adds_nothing(api: Api, body: dict[str, object], field: str) -> None:
    team_id, headers = api.team_with_key()
    response = api.admin("POST", f"/admin/v1/teams/{team_id}/payment-methods", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    listed = api.client.get(f"/v1/billing/teams/{team_id}/payment-method", headers=headers).json()
    assert listed["paymentMethods"] == []


def test_sandbox_charges_decide_by_test_card(sandbox: SandboxProvider) -> None:
    from billfold.kit.money import Cents
    from billfold.payments.provider import CardInput, ProviderUnavailable

    ok = sandbox.setup_card("cus_x", CardInput("4242424242424242", 12, 2035))
    declined = sandbox.setup_card("cus_x", CardInput("4000000000000002", 12, 2035))
    poor = sandbox.setup_card("cus_x", CardInput("4000000000009995", 12, 2035))
    slow = sandbox.setup_card("cus_x", CardInput("4000000000000119", 12, 2035))
    result = sandbox.charge(
        "cus_x", ok.provider_ref, Cents(500), idempotency_key="k-ok", description=""
    )
    assert result.succeeded
    again = sandbox.charge(
        "cus_x", ok.provider_ref, Cents(500), idempotency_key="k-ok", description=""
    )
    assert again == result  # idempotent
    assert not sandbox.charge(
        "cus_x", declined.provider_ref, Cents(500), idempotency_key="k-d", description=""
    ).succeeded
    failed = sandbox.charge(
        "cus_x", poor.provider_ref, Cents(500), idempotency_key="k-p", description=""
    )
    assert failed.failure_code == "insufficient_funds"
    with pytest.raises(ProviderUnavailable):
        sandbox.charge(
            "cus_x", slow.provider_ref, Cents(700), idempotency_key="k-s", description=""
        )
    found = sandbox.find_charge("k-s")
    assert found is not None and found.succeeded and found.amount == 700


def test_card_helpers() -> None:
    assert luhn_ok("4242424242424242") and not luhn_ok("4242424242424241")
    assert card_brand("378282246310005") == "amex"
    assert card_brand("6011111111111117") == "discover"
    assert card_brand("3566002020360505") == "jcb"


def test_cards_of_a_team_share_one_provider_customer(api: Api) -> None:
    import uuid as uuid_module

    from billfold.payments.models import PaymentMethod
    from billfold.teams.models import Team

    team_id = api.create_team()
    api.add_card(team_id, "4242424242424242")
    api.add_card(team_id, "5555555555554444")
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        team = session.get(Team, uuid_module.UUID(team_id))
        assert team is not None and team.payment_customer_ref
        methods = session.query(PaymentMethod).filter_by(team_id=team.id).all()
        assert {m.provider_customer_ref for m in methods} == {team.payment_customer_ref}
