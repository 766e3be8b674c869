"""Refunds of purchases (sandbox): money back to the card, a REFUND change of +amount."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from billfold.kit.clock import utc_now
from billfold.kit.money import Cents
from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, SandboxProvider
from billfold.settlement.reconcile import reconcile
from billfold.topups.models import Refund, Topup
from tests.conftest import Api
from tests.ledger.conftest import balance, entries, grant, session_of, top_up


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


def test_refund_changes_are_external_in_the_sandbox_and_grants_stay_manual(
    api: Api, sandbox: SandboxProvider
) -> None:
    team_id, headers, invoice_id = bought(api)
    assert grant(api, team_id, 300, key="g").status_code in (200, 201)
    response = refund(api, team_id, invoice_id, {"amount": "700", "idempotencyKey": "r"})
    assert response.status_code == 201, response.text
    with session_of(api) as session:
        (charge_id,) = session.scalars(
            select(Topup.provider_charge_id).where(Topup.team_id == uuid.UUID(team_id))
        )
    processor = response.json()["paymentProcessor"]
    assert (processor["kind"], processor["externalInvoiceId"]) == ("EXTERNAL", charge_id)
    kinds = {
        c["changeOrigin"]: c["paymentProcessor"]["kind"]
        for c in balance(api, team_id, headers)["changes"]
    }
    assert kinds == {"PURCHASE": "EXTERNAL", "REFUND": "EXTERNAL", "MANUAL": "MANUAL"}


def pending_refund(api: Api, team_id: str, invoice_id: str, cents: int, key: str) -> uuid.UUID:
    """A refund row left PENDING, as a crash before the provider was asked leaves it."""
    with session_of(api) as session:
        (charge_id,) = session.scalars(
            select(Topup.provider_charge_id).where(Topup.team_id == uuid.UUID(team_id))
        )
        row = Refund(
            id=uuid.uuid4(),
            team_id=uuid.UUID(team_id),
            invoice_id=invoice_id,
            amount_cents=Cents(cents),
            reason="",
            status="PENDING",
            idempotency_key=key,
            request_fingerprint="",
            provider="sandbox",
            provider_charge_id=charge_id,
            provider_refund_id="",
            failure_code="",
            failure_message="",
            ledger_entry_id=None,
            created_at=utc_now() - timedelta(hours=1),
            settled_at=None,
        )
        session.add(row)
        session.commit()
        return row.id


def test_a_pending_refund_reserves_its_amount_until_reconciliation_fails_it(
    api: Api, sandbox: SandboxProvider
) -> None:
    team_id, _, invoice_id = bought(api)
    refund_id = pending_refund(api, team_id, invoice_id, 2000, "crashed")
    before = state(api, team_id, sandbox)
    # 2000 of the 2500 are reserved: of the purchase, and of the credit left.
    too_much = refund(api, team_id, invoice_id, {"amount": "501", "idempotencyKey": "x"})
    assert too_much.status_code == 400 and too_much.json()["code"] == "refund_exceeds_purchase"
    assert state(api, team_id, sandbox) == before
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    report = reconcile(sessions, sandbox, timedelta(minutes=5), team_id=uuid.UUID(team_id))
    # The sandbox has no refund with that key: none was made; the reservation is released.
    assert report.settled == [f"refund {refund_id}: FAILED"]
    assert state(api, team_id, sandbox) == before
    again = refund(api, team_id, invoice_id, {"idempotencyKey": "crashed"})
    assert again.status_code == 400 and again.json()["code"] == "refund_not_made"
    rest = refund(api, team_id, invoice_id, {"amount": "2500", "idempotencyKey": "y"})
    assert rest.status_code == 201, rest.text
    assert sandbox.total_charged() == before[1] - 2500


def test_a_retry_of_a_pending_refund_refunds_once(api: Api, sandbox: SandboxProvider) -> None:
    team_id, _, invoice_id = bought(api)
    refund_id = pending_refund(api, team_id, invoice_id, 1000, "k")
    charged = sandbox.total_charged()
    # The crash came after the sandbox's refund: the retry finds it by the row's id.
    with session_of(api) as session:
        row = session.get(Refund, refund_id)
        assert row is not None
        sandbox.refund(row.provider_charge_id, Cents(1000), idempotency_key=str(refund_id))
    retry = refund(api, team_id, invoice_id, {"amount": "1000", "idempotencyKey": "k"})
    assert retry.status_code == 201, retry.text
    assert sandbox.total_charged() == charged - 1000
    assert [(e.kind, e.credit_cents) for e in entries(api, team_id)] == [
        ("purchase", 2500),
        ("refund", -1000),
    ]


@pytest.mark.postgres_only
def test_concurrent_refunds_of_one_purchase_never_exceed_it(
    postgres_api: Api,
) -> None:
    api = postgres_api
    team_id, _, invoice_id = bought(api)
    provider: SandboxProvider = api.client.app.state.payment_provider  # type: ignore[attr-defined]
    charged = provider.total_charged()

    def run(i: int) -> Any:
        return refund(api, team_id, invoice_id, {"amount": "300", "idempotencyKey": f"c{i}"})

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(run, range(24)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 8 + [400] * 16, [r.text for r in responses if r.status_code != 201]
    assert {r.json()["code"] for r in responses if r.status_code == 400} == {
        "refund_exceeds_purchase"
    }
    refunds = [e.credit_cents for e in entries(api, team_id) if e.kind == "refund"]
    assert refunds == [-300] * 8
    assert provider.total_charged() == charged - 2400
    with session_of(api) as session:
        statuses = list(
            session.scalars(select(Refund.status).where(Refund.team_id == uuid.UUID(team_id)))
        )
    assert statuses == ["SUCCEEDED"] * 8
