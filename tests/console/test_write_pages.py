"""The write pages over HTTP (no browser), on SQLite and PostgreSQL: what the browser tests
(tests/console_browser) do not reach cheaply -- the pending top-up, a form posted twice, CSRF,
BillingWrite, another team's card."""

from __future__ import annotations

import re

from billfold.payments.sandbox import CARD_TIMEOUT
from tests.conftest import Api
from tests.console.helpers import csrf_of, signed_in, text_of

READ = "team-token:endpoint:BillingRead"


def flash_of(page: str) -> str:
    match = re.search(r'<div class="flash flash-(\w+)" role="status">(.*?)</div>', page, re.S)
    assert match, "no flash message"
    return f"{match.group(1)}: {' '.join(match.group(2).split())}"


def balance(api: Api, team: str, headers: dict[str, str]) -> dict[str, object]:
    response = api.client.get(f"/v1/billing/teams/{team}/prepaid/balance", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_top_up_pending_then_settled(api: Api) -> None:
    """The provider does not answer (the sandbox's timeout card): the outcome says pending; the
    next view of the credits page settles it with the provider, as the balance route does."""
    team, headers = api.team_with_key()
    api.add_card(team, CARD_TIMEOUT)
    client = signed_in(api, api.create_key(team)["apiKey"])
    form = client.get("/console/credits")
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form.text)
    assert key
    post = {"csrf_token": csrf_of(form.text), "amount": "30", "idempotency_key": key.group(1)}
    answer = client.post("/console/credits/top-up", data=post)
    assert answer.status_code == 303
    page = client.get("/console/credits").text
    assert flash_of(page).startswith("info: The top-up of $30.00 is pending")
    assert 'data-status="SUCCEEDED"' in page, "settled by the page's view"
    # The same form posted again (a reload of the POST) gives the first top-up, settled now.
    again = client.post("/console/credits/top-up", data=post)
    assert again.status_code == 303
    page = client.get("/console/credits").text
    assert flash_of(page).startswith("success: Added $30.00 of credit")
    changes = balance(api, team, headers)["changes"]
    assert isinstance(changes, list) and len(changes) == 1, "charged once"
    assert changes[0]["topupStatus"] == "SUCCEEDED"
    assert text_of(page, "posted-credit") == "$30.00"


def test_top_up_refusals_are_field_errors(api: Api) -> None:
    team, headers = api.team_with_key()
    client = signed_in(api, api.create_key(team)["apiKey"])
    token = csrf_of(client.get("/console/credits").text)
    no_card = client.post("/console/credits/top-up", data={"csrf_token": token, "amount": "50"})
    assert no_card.status_code == 400
    assert "default payment method" in text_of(no_card.text, "f-amount-error")
    api.add_card(team)
    too_small = client.post("/console/credits/top-up", data={"csrf_token": token, "amount": "1"})
    assert too_small.status_code == 400
    assert 'aria-invalid="true"' in too_small.text
    assert balance(api, team, headers)["changes"] == []


def test_forms_need_the_csrf_token_and_billing_write(api: Api) -> None:
    team, headers = api.team_with_key()
    writer = signed_in(api, api.create_key(team)["apiKey"])
    forged = writer.post("/console/limits/soft", data={"softLimit": "5"})
    assert forged.status_code == 403
    reader = signed_in(api, api.create_key(team, [READ])["apiKey"])
    token = csrf_of(reader.get("/console/limits").text)
    for path, data in (
        ("/console/limits/soft", {"softLimit": "5"}),
        ("/console/limits/alerts", {"spendThresholdsPercent": "10"}),
        ("/console/billing-info", {"name": "X", "email": "x@example.com", "country": "US"}),
        ("/console/credits/top-up", {"amount": "50"}),
        ("/console/payment-methods/cards", {"cardNumber": "4242424242424242"}),
        ("/console/payment-methods/default", {"payment_method_id": "pm_x"}),
    ):
        refused = reader.post(path, data={"csrf_token": token, **data})
        assert refused.status_code == 403, path
        assert "BillingWrite" in refused.text
    limits = api.client.get(
        f"/v1/billing/teams/{team}/postpaid/spending-limits", headers=headers
    ).json()
    assert limits["spendingLimits"]["softSl"]["val"] == "0"


def test_another_teams_card_cannot_be_made_default(api: Api) -> None:
    other, _ = api.team_with_key()
    foreign = api.add_card(other)["paymentMethodId"]
    team, headers = api.team_with_key()
    own = api.add_card(team)["paymentMethodId"]
    client = signed_in(api, api.create_key(team)["apiKey"])
    page = client.get("/console/payment-methods").text
    assert foreign not in page
    refused = client.post(
        "/console/payment-methods/default",
        data={"csrf_token": csrf_of(page), "payment_method_id": foreign},
    )
    assert refused.status_code == 404
    listed = api.client.get(f"/v1/billing/teams/{team}/payment-method", headers=headers).json()
    assert [m["paymentMethodId"] for m in listed["paymentMethods"]] == [own]
