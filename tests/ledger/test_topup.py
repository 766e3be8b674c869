"""Top-ups (spec §12) and the balance (spec §11), through HTTP on both databases."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from billfold.invoicing.models import Invoice, InvoiceLine
from billfold.kit.clock import frozen, utc_now
from billfold.payments.sandbox import (
    CARD_ALWAYS_SUCCEEDS,
    CARD_DECLINED,
    CARD_INSUFFICIENT_FUNDS,
    CARD_TIMEOUT,
)
from billfold.topups.models import Topup
from billfold.topups.service import PENDING_RETRY_AFTER, topup_service
from tests.conftest import Api, event, unique_sku
from tests.ledger.conftest import (
    assert_consistent,
    assert_no_nulls,
    assert_nothing_happened,
    assert_posted_and_live,
    balance,
    charged,
    charges,
    entries,
    frozen_at,
    session_of,
    top_up,
    topups,
)

CHANGE_FIELDS = {
    "teamId",
    "changeOrigin",
    "topupStatus",
    "amount",
    "invoiceId",
    "invoiceNumber",
    "createTime",
    "createTs",
    "spendBpKeyYear",
    "spendBpKeyMonth",
    "paymentProcessor",
}


def test_purchase_is_negative_credit_with_a_receipt_invoice(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
    response = top_up(api, team_id, headers, 2500)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"change"}
    change = body["change"]
    assert_no_nulls(change)
    assert set(change) <= CHANGE_FIELDS  # strict clients reject unknown fields
    assert change["teamId"] == team_id
    assert change["changeOrigin"] == "PURCHASE"
    assert change["topupStatus"] == "SUCCEEDED"
    assert change["amount"] == {"val": "-2500"}  # a $25 purchase (spec §1)
    assert change["createTime"].endswith("Z") and change["createTs"] == change["createTime"]
    assert change["paymentProcessor"]["kind"] == "EXTERNAL"
    assert change["paymentProcessor"]["externalParty"] == "sandbox"
    assert change["paymentProcessor"]["externalInvoiceId"].startswith("ch_")
    assert "spendBpKeyYear" not in change

    with session_of(api) as session:
        invoice = session.get(Invoice, change["invoiceId"])
        assert invoice is not None
        (topup,) = session.scalars(select(Topup).where(Topup.team_id == uuid.UUID(team_id)))
        lines = list(
            session.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id))
        )
    assert invoice.number == change["invoiceNumber"]
    assert (invoice.kind, invoice.status, invoice.dedupe_key) == (
        "prepaid",
        "PAID",
        f"prepaid:{topup.id}",
    )
    assert (invoice.subtotal_cents, invoice.tax_cents, invoice.total_cents) == (2500, 0, 2500)
    assert [(line.num_units, line.amount_cents) for line in lines] == [(1, 2500)]

    listing = balance(api, team_id, headers)
    assert listing == {"changes": [change], "total": {"val": "-2500"}}
    (entry,) = entries(api, team_id)
    assert (entry.kind, entry.credit_cents, entry.idempotency_key) == (
        "purchase",
        2500,
        f"topup:{topup.id}",
    )
    assert entry.invoice_id == invoice.id and entry.topup_id == topup.id
    assert [(c.idempotency_key, c.amount) for c in charges(api, team_id)] == [(str(topup.id), 2500)]
    assert assert_consistent(api, team_id) == 2500


def test_the_sign_of_the_amount_is_ignored(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    response = top_up(api, team_id, headers, "-700")
    assert response.status_code == 200, response.text
    assert response.json()["change"]["amount"] == {"val": "-700"}
    assert charged(api, team_id) == 700
    assert balance(api, team_id, headers)["total"] == {"val": "-700"}


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("zero", {"amount": {"val": "0"}}, "invalid_argument"),
    ("minus zero", {"amount": {"val": "-0"}}, "invalid_argument"),
    ("decimal string", {"amount": {"val": "12.5"}}, "invalid_argument"),
    ("float", {"amount": {"val": 12.5}}, "invalid_argument"),
    ("not a number", {"amount": {"val": "ten"}}, "invalid_argument"),
    ("missing val", {"amount": {}}, "invalid_argument"),
    ("missing amount", {}, "invalid_argument"),
    ("amount not an object", {"amount": "2500"}, "invalid_argument"),
    ("below the minimum", {"amount": {"val": "499"}}, "amount_out_of_range"),
    ("above the maximum", {"amount": {"val": "1000001"}}, "amount_out_of_range"),
    ("beyond int64", {"amount": {"val": "99999999999999999999"}}, "invalid_argument"),
]


@pytest.mark.parametrize(("case", "body", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_amounts_are_400_and_change_nothing(api: Api, case: str, body: Any, code: str) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/prepaid/top-up", headers=headers, json=body
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert response.json()["error"]
    assert_nothing_happened(api, team_id)
    assert balance(api, team_id, headers) == {"changes": [], "total": {"val": "0"}}


def test_malformed_json_is_400(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/prepaid/top-up",
        headers={**headers, "Content-Type": "application/json"},
        content=b'{"amount": {"val": "2500"',
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"
    assert_nothing_happened(api, team_id)


def test_no_default_payment_method_is_400(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = top_up(api, team_id, headers, 2500, key="k1")
    assert response.status_code == 400
    assert response.json()["code"] == "no_default_payment_method"
    assert_nothing_happened(api, team_id)
    # Nothing was stored under the key: after adding a card the same key tops up.
    api.add_card(team_id)
    assert top_up(api, team_id, headers, 2500, key="k1").status_code == 200
    assert charged(api, team_id) == 2500


def test_bad_idempotency_key_is_400(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    response = top_up(api, team_id, headers, 2500, key="x" * 256)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_idempotency_key"
    assert_nothing_happened(api, team_id)


def test_auth(api: Api) -> None:
    team_id, headers = api.team_with_key(["team-token:endpoint:BillingRead"])
    api.add_card(team_id)
    response = top_up(api, team_id, headers, 2500)
    assert response.status_code == 403
    assert_nothing_happened(api, team_id)
    other_team, other_headers = api.team_with_key()
    assert top_up(api, team_id, other_headers, 2500).status_code == 403
    assert (
        api.client.get(
            f"/v1/billing/teams/{team_id}/prepaid/balance", headers=other_headers
        ).status_code
        == 403
    )
    assert top_up(api, team_id, {}, 2500).status_code == 401
    bad_id = api.client.get("/v1/billing/teams/not-a-uuid/prepaid/balance", headers=headers)
    assert (bad_id.status_code, bad_id.json()["code"]) == (400, "invalid_uuid")
    assert_nothing_happened(api, team_id)
    assert_nothing_happened(api, other_team)


@pytest.mark.parametrize(
    ("card", "code"),
    [(CARD_DECLINED, "card_declined"), (CARD_INSUFFICIENT_FUNDS, "insufficient_funds")],
)
def test_declined_card_is_402_and_listed_but_not_counted(api: Api, card: str, code: str) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, card)
    response = top_up(api, team_id, headers, 2500)
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["code"] == code and body["error"]
    change = body["change"]
    assert_no_nulls(change)
    assert (change["changeOrigin"], change["topupStatus"], change["amount"]) == (
        "PURCHASE",
        "FAILED_TO_CHARGE",
        {"val": "-2500"},
    )
    assert "invoiceId" not in change and "invoiceNumber" not in change
    assert entries(api, team_id) == []
    assert charged(api, team_id) == 0  # the attempt was declined: no money moved
    listing = balance(api, team_id, headers)
    assert listing == {"changes": [change], "total": {"val": "0"}}
    (topup,) = topups(api, team_id)
    assert (topup.status, topup.failure_code) == ("FAILED_TO_CHARGE", code)
    # A new attempt is a new purchase (the failed one is not pending).
    assert top_up(api, team_id, headers, 2500).status_code == 402
    assert len(topups(api, team_id)) == 2
    assert_consistent(api, team_id)


def test_same_key_same_body_charges_once(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    first = top_up(api, team_id, headers, 2500, key="order-1")
    second = top_up(api, team_id, headers, 2500, key="order-1")
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert len(charges(api, team_id)) == 1 and charged(api, team_id) == 2500
    assert len(entries(api, team_id)) == 1
    # The sign is ignored, so "-2500" is the same request.
    assert top_up(api, team_id, headers, -2500, key="order-1").json() == first.json()

    reused = top_up(api, team_id, headers, 3000, key="order-1")
    assert reused.status_code == 409
    assert reused.json()["code"] == "idempotency_key_reused"
    assert charged(api, team_id) == 2500 and len(entries(api, team_id)) == 1
    assert len(topups(api, team_id)) == 1

    other = top_up(api, team_id, headers, 2500, key="order-2")
    assert other.status_code == 200
    assert other.json()["change"]["invoiceId"] != first.json()["change"]["invoiceId"]
    assert charged(api, team_id) == 5000
    assert balance(api, team_id, headers)["total"] == {"val": "-5000"}
    assert assert_consistent(api, team_id) == 5000


def test_same_key_after_a_decline_answers_402_again_without_charging(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_DECLINED)
    first = top_up(api, team_id, headers, 2500, key="k")
    second = top_up(api, team_id, headers, 2500, key="k")
    assert first.status_code == second.status_code == 402
    assert second.json() == first.json()
    assert len(charges(api, team_id)) == 1
    assert len(topups(api, team_id)) == 1


def test_provider_timeout_is_pending_then_resolved_exactly_once(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_TIMEOUT)
    sandbox = api.client.app.state.payment_provider  # type: ignore[attr-defined]
    response = top_up(api, team_id, headers, 2500)
    assert response.status_code == 202, response.text
    change = response.json()["change"]
    assert (change["topupStatus"], change["amount"]) == ("TO_CHARGE", {"val": "-2500"})
    assert "invoiceId" not in change
    (topup,) = topups(api, team_id)
    assert topup.status == "TO_CHARGE"
    assert entries(api, team_id) == []
    # The charge did happen at the provider; only its answer was lost.
    found = sandbox.find_charge(str(topup.id))
    assert found is not None and found.succeeded

    listing = balance(api, team_id, headers)  # resolves it
    (resolved,) = listing["changes"]
    assert resolved["topupStatus"] == "SUCCEEDED" and resolved["invoiceNumber"]
    assert resolved["createTime"] == change["createTime"]
    assert listing["total"] == {"val": "-2500"}
    for _ in range(3):
        assert balance(api, team_id, headers)["total"] == {"val": "-2500"}
    assert len(entries(api, team_id)) == 1
    assert [c.amount for c in charges(api, team_id)] == [2500]
    assert assert_consistent(api, team_id) == 2500


def test_without_a_key_a_pending_purchase_is_returned_not_charged_again(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_TIMEOUT)
    first = top_up(api, team_id, headers, 2500)
    assert first.status_code == 202
    again = top_up(api, team_id, headers, 9900)
    # That pending purchase is answered (resolved meanwhile), no second charge.
    assert again.status_code == 200, again.text
    assert "idempotent-replayed" not in again.headers  # no key was sent: not a replay
    change = again.json()["change"]
    assert (change["amount"], change["topupStatus"]) == ({"val": "-2500"}, "SUCCEEDED")
    assert change["createTime"] == first.json()["change"]["createTime"]
    assert len(topups(api, team_id)) == 1 and len(charges(api, team_id)) == 1
    assert len(entries(api, team_id)) == 1


def test_with_a_key_a_pending_purchase_does_not_block_another(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_TIMEOUT)
    assert top_up(api, team_id, headers, 2500, key="a").status_code == 202
    second = top_up(api, team_id, headers, 3000, key="b")
    assert second.status_code == 202  # a new top-up (this card always times out)
    assert second.json()["change"]["amount"] == {"val": "-3000"}
    assert len(topups(api, team_id)) == 2
    # The first was settled on the way (the keyed call resolved what the provider had answered).
    assert [t.status for t in topups(api, team_id)] == ["SUCCEEDED", "TO_CHARGE"]
    # Replaying "b" resolves it and answers like a first call would have.
    replay = top_up(api, team_id, headers, 3000, key="b")
    assert replay.status_code == 200
    assert replay.json()["change"]["topupStatus"] == "SUCCEEDED"
    assert balance(api, team_id, headers)["total"] == {"val": "-5500"}
    assert charged(api, team_id) == 5500 and len(entries(api, team_id)) == 2


def test_a_charge_lost_before_the_provider_is_retried_with_the_same_key(api: Api) -> None:
    """A crash between the pending commit and the charge: the provider never saw the top-up."""
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    settings = api.client.app.state.settings  # type: ignore[attr-defined]
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    start = utc_now().replace(microsecond=0)
    with frozen(start):
        topup, existing = topup_service._begin(
            sessions, settings, uuid.UUID(team_id), 1200, None, "crash-test"
        )
        assert not existing
        listing = balance(api, team_id, headers)
    # Young: its request may still be charging it, so only the provider is asked.
    assert [c["topupStatus"] for c in listing["changes"]] == ["TO_CHARGE"]
    assert listing["total"] == {"val": "0"}
    assert charges(api, team_id) == []
    with frozen(start + PENDING_RETRY_AFTER + timedelta(seconds=1)):
        listing = balance(api, team_id, headers)
    assert [c["topupStatus"] for c in listing["changes"]] == ["SUCCEEDED"]
    assert [(c.idempotency_key, c.amount) for c in charges(api, team_id)] == [(str(topup.id), 1200)]
    assert listing["total"] == {"val": "-1200"}
    assert len(entries(api, team_id)) == 1


def test_resolve_pending_from_the_cli(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from billfold.cli import app
    from billfold.config import get_settings

    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_TIMEOUT)
    assert top_up(api, team_id, headers, 2500).status_code == 202
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["credits", "resolve-pending", "--team", team_id])
        assert result.exit_code == 0, result.output
        again = CliRunner().invoke(app, ["credits", "resolve-pending", "--team", team_id])
        assert again.exit_code == 0 and "0 pending" in again.output
    finally:
        get_settings.cache_clear()
    assert "SUCCEEDED" in result.output
    assert [t.status for t in topups(api, team_id)] == ["SUCCEEDED"]
    assert len(entries(api, team_id)) == 1 and charged(api, team_id) == 2500


def test_postpaid_only_team_has_an_empty_balance(api: Api) -> None:
    team_id, headers = api.team_with_key()
    assert balance(api, team_id, headers) == {"changes": [], "total": {"val": "0"}}


def test_usage_draws_credit_down_live_and_the_balance_stays_posted(api: Api) -> None:
    """Mid-cycle the balance is the posted ledger (no SPEND change for the open cycle, spec §11);
    the live credit is the preview's (§8). Cycle close posts the SPEND (tests/ledger/
    test_posted_balance.py)."""
    sku = unique_sku()
    api.set_price(sku, "0.000003")
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    with frozen_at("2035-06-10T12:00:00"):
        assert top_up(api, team_id, headers, 2500).status_code == 200
        api.ingest([event(team_id, sku, 1_000_000, "2035-06-10T11:00:00Z")])  # $3.00
        # 2500 of credit posted; 2500 - 300 spent left live.
        listing = assert_posted_and_live(api, team_id, headers, posted=2500, left=2200)
    assert listing["total"] == {"val": "-2500"}
    (purchase,) = listing["changes"]
    assert_no_nulls(listing)
    assert purchase["changeOrigin"] == "PURCHASE"
    assert purchase["amount"] == {"val": "-2500"}

    # Usage beyond the credit: credit pays what it can, the rest is postpaid (not in this ledger).
    with frozen_at("2035-06-11T12:00:00"):
        api.ingest([event(team_id, sku, 10_000_000, "2035-06-11T11:00:00Z")])  # $30.00
        listing = assert_posted_and_live(api, team_id, headers, posted=2500, left=0)
    assert [c["changeOrigin"] for c in listing["changes"]] == ["PURCHASE"]
    # The posted credit is untouched until the cycle closes.
    assert assert_consistent(api, team_id) == 2500
    assert [e.kind for e in entries(api, team_id)] == ["purchase"]
