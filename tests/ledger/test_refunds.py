"""Refunds of purchases (sandbox): money back to the card, a REFUND change of +amount."""

from __future__ import annotations

from typing import Any

import pytest

from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, SandboxProvider
from tests.conftest import Api
from tests.ledger.conftest import balance, entries, top_up


def refund(api: Api, team_id: str, invoice_id: str, body: dict[str, Any]) -> Any:
    return api.admin("POST", f"/admin/v1/teams/{team_id}/purchases/{invoice_id}/refund", json=body)


def bought(api: Api, cents: int = 2500) -> tuple[str, dict[str, str], str]:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
    response = top_up(api, team_id, headers, cents)
    assert response.status_code == 200, response.text
    return team_id, headers, response.json()["change"]["invoiceId"]


def state(api: Api, team_id: str, sandbox: SandboxProvider) -> tuple[Any, ...]:
    return (
        [(e.kind, e.credit_cents) for e in entries(api, team_id)],
        sandbox.total_charged(),
    )


def test_refund_part_then_the_rest_once_each(api: Api, sandbox: SandboxProvider) -> None:
    team_id, headers, invoice_id = bought(api)
    charged = sandbox.total_charged()
    first = refund(
        api, team_id, invoice_id, {"amount": "1000", "reason": "r", "idempotencyKey": "r1"}
    )
    assert first.status_code == 201, first.text
    change = first.json()
    assert change["changeOrigin"] == "REFUND" and change["amount"] == {"val": "1000"}
    assert sandbox.total_charged() == charged - 1000
    replay = refund(api, team_id, invoice_id, {"amount": "1000", "idempotencyKey": "r1"})
    assert replay.status_code == 200 and replay.json() == change
    assert sandbox.total_charged() == charged - 1000
    rest = refund(api, team_id, invoice_id, {"idempotencyKey": "r2"})
    assert rest.status_code == 201 and rest.json()["amount"] == {"val": "1500"}
    assert sandbox.total_charged() == charged - 2500
    assert [(e.kind, e.credit_cents) for e in entries(api, team_id)] == [
        ("purchase", 2500),
        ("refund", -1000),
        ("refund", -1500),
    ]
    origins = [c["changeOrigin"] for c in balance(api, team_id, headers)["changes"]]
    assert origins.count("REFUND") == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"amount": "2501", "idempotencyKey": "x"}, "refund_exceeds_purchase"),
        ({"amount": "0", "idempotencyKey": "x"}, "invalid_refund_amount"),
        ({"amount": "-5", "idempotencyKey": "x"}, "invalid_refund_amount"),
        ({"amount": "abc", "idempotencyKey": "x"}, None),
        ({"amount": "100"}, None),
        ({"amount": "100", "idempotencyKey": ""}, None),
    ],
)
def test_bad_refunds_are_400_and_change_nothing(
    api: Api, sandbox: SandboxProvider, body: dict[str, Any], code: str | None
) -> None:
    team_id, _, invoice_id = bought(api)
    before = state(api, team_id, sandbox)
    response = refund(api, team_id, invoice_id, body)
    assert response.status_code == 400, response.text
    if code is not None:
        assert response.json()["code"] == code
    assert state(api, team_id, sandbox) == before


def test_more_than_the_credit_left_is_400(api: Api, sandbox: SandboxProvider) -> None:
    team_id, _, invoice_id = bought(api)
    taken = api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/credits",
        json={"amount": "-2000", "reason": "used", "idempotencyKey": "adj"},
    )
    assert taken.status_code == 201, taken.text
    before = state(api, team_id, sandbox)
    response = refund(api, team_id, invoice_id, {"amount": "1000", "idempotencyKey": "x"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "refund_exceeds_credit"
    assert state(api, team_id, sandbox) == before


def test_unknown_or_other_teams_purchase_is_404(api: Api, sandbox: SandboxProvider) -> None:
    team_id, _, invoice_id = bought(api)
    other = api.create_team()
    before = state(api, team_id, sandbox)
    for team, invoice in ((other, invoice_id), (team_id, "inv_nope")):
        response = refund(api, team, invoice, {"idempotencyKey": "x"})
        assert response.status_code == 404, response.text
    assert state(api, team_id, sandbox) == before


def test_a_key_reused_for_another_amount_is_409(api: Api, sandbox: SandboxProvider) -> None:
    team_id, _, invoice_id = bought(api)
    assert (
        refund(api, team_id, invoice_id, {"amount": "100", "idempotencyKey": "k"}).status_code
        == 201
    )
    before = state(api, team_id, sandbox)
    response = refund(api, team_id, invoice_id, {"amount": "200", "idempotencyKey": "k"})
    assert response.status_code == 409, response.text
    assert state(api, team_id, sandbox) == before
