"""Auto top-up (operator-api.md, "Auto top-up") through HTTP on both databases: the settings, a
batch crossing the threshold enqueues exactly one, the serving process's charger books
AUTO_PURCHASE with a receipt, never two pending, the monthly cap, three failures turn it off."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from billfold.autotopup.charger import charge_due
from billfold.config import Settings
from billfold.invoicing.models import Invoice
from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, CARD_DECLINED, CARD_TIMEOUT
from billfold.topups.models import Topup
from tests.autotopup.conftest import (
    auto_topups,
    enable,
    events,
    get_settings,
    put_settings,
    settled,
)
from tests.conftest import Api, event, frozen_at, unique_sku
from tests.ledger.conftest import balance, charges, entries, grant, session_of

NOON = "2063-03-10T12:00:00"
USAGE_AT = "2063-03-10T11:00:00Z"


def funded_team(api: Api, credit: int, card: str = CARD_ALWAYS_SUCCEEDS) -> tuple[str, Any, str]:
    """A team with ``credit`` cents granted, a default card and a SKU at 1 cent a unit."""
    team_id, headers = api.team_with_key()
    api.add_card(team_id, card)
    response = grant(api, team_id, credit)
    assert response.status_code == 201, response.text
    sku = unique_sku()
    api.set_price(sku, "0.01", "2063-01-01T00:00:00Z")
    return team_id, headers, sku


def spend(api: Api, team_id: str, sku: str, cents: int, event_id: str | None = None) -> None:
    api.ingest([event(team_id, sku, cents, USAGE_AT, event_id)])


# --- settings --------------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("enabled missing", {"thresholdCents": "1000"}, "invalid_argument"),
    ("enabled not a bool", {"enabled": "yes", "thresholdCents": "1000"}, "invalid_argument"),
    (
        "both amount and target",
        {"thresholdCents": "1000", "amountCents": "5000", "targetCents": "8000"},
        "invalid_argument",
    ),
    ("neither amount nor target", {"thresholdCents": "1000"}, "invalid_argument"),
    ("no threshold", {"amountCents": "5000"}, "invalid_argument"),
    ("no monthly limit", {"thresholdCents": "1000", "amountCents": "5000"}, "invalid_argument"),
    (
        "negative threshold",
        {"thresholdCents": "-1", "amountCents": "5000", "monthlyLimitCents": "20000"},
        "invalid_argument",
    ),
    (
        "amount below the smallest top-up",
        {"thresholdCents": "1000", "amountCents": "499", "monthlyLimitCents": "20000"},
        "amount_out_of_range",
    ),
    (
        "amount a decimal",
        {"thresholdCents": "1000", "amountCents": "50.5", "monthlyLimitCents": "20000"},
        "invalid_argument",
    ),
    (
        "target not above the threshold",
        {"thresholdCents": "1000", "targetCents": "1000", "monthlyLimitCents": "20000"},
        "invalid_argument",
    ),
    (
        "monthly limit below one top-up",
        {"thresholdCents": "1000", "amountCents": "5000", "monthlyLimitCents": "4999"},
        "invalid_argument",
    ),
]


@pytest.mark.parametrize(("case", "fields", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_settings_are_400_and_change_nothing(
    api: Api, case: str, fields: dict[str, Any], code: str
) -> None:
    team_id, _ = api.team_with_key()
    api.add_card(team_id)
    body = {"enabled": True, **fields} if "enabled" not in case else dict(fields)
    response = api.admin("PUT", f"/admin/v1/teams/{team_id}/auto-top-up", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert get_settings(api, team_id) == {
        "teamId": team_id,
        "enabled": False,
        "consecutiveFailures": 0,
        "monthToDateCents": "0",
    }


def test_settings_need_a_default_payment_method(api: Api) -> None:
    team_id, _ = api.team_with_key()
    body = {"thresholdCents": "1000", "amountCents": "5000", "monthlyLimitCents": "20000"}
    response = put_settings(api, team_id, enabled=True, **body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "no_default_payment_method"
    assert get_settings(api, team_id)["enabled"] is False
    # Off needs no card, and no figures.
    response = put_settings(api, team_id, enabled=False)
    assert response.status_code == 200, response.text
    api.add_card(team_id)
    response = put_settings(api, team_id, enabled=True, **body)
    assert response.status_code == 200, response.text
    assert response.json() == get_settings(api, team_id)
    assert response.json() == {
        "teamId": team_id,
        "enabled": True,
        "thresholdCents": "1000",
        "amountCents": "5000",
        "monthlyLimitCents": "20000",
        "consecutiveFailures": 0,
        "monthToDateCents": "0",
    }
    target = {"thresholdCents": "1000", "targetCents": "8000", "monthlyLimitCents": "20000"}
    got = enable(api, team_id, **target)
    assert (got["targetCents"], "amountCents" in got) == ("8000", False)
    missing = put_settings(api, str(uuid.uuid4()), enabled=True, **body)
    assert missing.status_code == 404
    assert api.admin("GET", f"/admin/v1/teams/{uuid.uuid4()}/auto-top-up").status_code == 404
    unauthorized = api.client.get(f"/admin/v1/teams/{team_id}/auto-top-up")
    assert unauthorized.status_code == 401


# --- a crossing --------------------------------------------------------------------------------


def test_a_batch_crossing_the_threshold_buys_one_auto_top_up_with_a_receipt(api: Api) -> None:
    team_id, headers, sku = funded_team(api, 2000)
    with frozen_at(NOON):
        enable(api, team_id, thresholdCents="1000", amountCents="5000", monthlyLimitCents="20000")
        spend(api, team_id, sku, 700)  # 1300 left: above the threshold
        assert auto_topups(api, team_id) == []
        spend(api, team_id, sku, 800, "evt-crossing")  # 500 left: below
        (topup,) = settled(api, team_id, 1)
        assert (topup.status, topup.amount_cents) == ("SUCCEEDED", 5000)
        # The same batch again lowers nothing and buys nothing.
        spend(api, team_id, sku, 800, "evt-crossing")
        assert len(auto_topups(api, team_id)) == 1

        listing = balance(api, team_id, headers)
        (change,) = [c for c in listing["changes"] if c["changeOrigin"] == "AUTO_PURCHASE"]
        assert change["topupStatus"] == "SUCCEEDED"
        assert change["amount"] == {"val": "-5000"}
        assert change["invoiceId"] == topup.invoice_id and change["invoiceNumber"]
        assert listing["total"] == {"val": "-7000"}
        with session_of(api) as session:
            invoice = session.get(Invoice, topup.invoice_id)
        assert invoice is not None
        assert (invoice.kind, invoice.status, invoice.total_cents) == ("prepaid", "PAID", 5000)
        purchase = [e for e in entries(api, team_id) if e.kind == "purchase"]
        assert [(e.credit_cents, e.topup_id) for e in purchase] == [(5000, topup.id)]
        # Charged once, the top-up's id as the idempotency key.
        assert [(c.idempotency_key, c.amount) for c in charges(api, team_id)] == [
            (str(topup.id), 5000)
        ]
        (succeeded,) = events(api, team_id)
        assert succeeded.type == "auto_topup.succeeded"
        assert succeeded.data["topupId"] == str(topup.id)
        assert succeeded.data["change"]["changeOrigin"] == "AUTO_PURCHASE"
        assert get_settings(api, team_id)["monthToDateCents"] == "5000"


def test_a_target_tops_up_to_that_level(api: Api) -> None:
    team_id, _, sku = funded_team(api, 2000)
    with frozen_at(NOON):
        enable(api, team_id, thresholdCents="1000", targetCents="6000", monthlyLimitCents="20000")
        spend(api, team_id, sku, 1700)  # 300 left
        (topup,) = settled(api, team_id, 1)
        assert (topup.status, topup.amount_cents) == ("SUCCEEDED", 5700)


def test_never_two_pending_and_a_lost_answer_is_found_not_charged_again(api: Api) -> None:
    team_id, _, sku = funded_team(api, 2000, CARD_TIMEOUT)
    with frozen_at(NOON):
        # The card's charges succeed but the answer is lost: the top-up stays pending, leased.
        enable(api, team_id, thresholdCents="1000", amountCents="1000", monthlyLimitCents="20000")
        spend(api, team_id, sku, 1200)
        for _ in range(4):  # each lowers the credit further, below the threshold
            spend(api, team_id, sku, 100)
        (pending,) = auto_topups(api, team_id)
        assert pending.status == "TO_CHARGE"
        assert get_settings(api, team_id)["pendingTopupId"] == str(pending.id)
        # The charger's attempt reached the provider (whose answer was lost) ...
        deadline = time.monotonic() + 20
        while not charges(api, team_id):
            assert time.monotonic() < deadline, "the charger never tried"
            time.sleep(0.05)
        assert auto_topups(api, team_id)[0].status == "TO_CHARGE"
        # ... and its lease runs out: a charger asks the provider, which made the charge: settled.
        _expire_leases(api, team_id)
        app_state = api.client.app.state  # type: ignore[attr-defined]
        settings: Settings = app_state.settings
        charge_due(
            app_state.sessionmaker,
            app_state.read_sessionmaker,
            app_state.payment_provider,
            settings,
        )
        (topup,) = settled(api, team_id, 1)
        assert topup.status == "SUCCEEDED"
        assert [c.idempotency_key for c in charges(api, team_id)] == [str(topup.id)]


def _expire_leases(api: Api, team_id: str) -> None:
    with session_of(api) as session:
        session.execute(
            update(Topup)
            .where(Topup.team_id == uuid.UUID(team_id))
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()


def test_the_monthly_limit_holds_and_its_remainder_is_charged(api: Api) -> None:
    team_id, _, sku = funded_team(api, 1500)
    with frozen_at(NOON):
        enable(api, team_id, thresholdCents="1000", amountCents="1000", monthlyLimitCents="2600")
        amounts = []
        for n in range(1, 5):
            spend(api, team_id, sku, 1000)  # each takes the credit below the threshold again
            amounts = sorted(t.amount_cents for t in settled(api, team_id, min(n, 3)))
        assert amounts == [600, 1000, 1000]  # the remainder of the month's 2600, then nothing
        assert get_settings(api, team_id)["monthToDateCents"] == "2600"
    with frozen_at("2063-04-02T12:00:00"):  # a new month: a new allowance
        api.ingest([event(team_id, sku, 3000, "2063-04-02T11:00:00Z")])
        assert sorted(t.amount_cents for t in settled(api, team_id, 4)) == [600, 1000, 1000, 1000]


def test_three_failures_in_a_row_turn_it_off(api: Api) -> None:
    team_id, headers, sku = funded_team(api, 2000, CARD_DECLINED)
    with frozen_at(NOON):
        enable(api, team_id, thresholdCents="1500", amountCents="1000", monthlyLimitCents="20000")
        for n in range(1, 4):
            spend(api, team_id, sku, 600 if n == 1 else 300)  # 1400, 1100, 800 left
            settled(api, team_id, n)
            assert get_settings(api, team_id)["consecutiveFailures"] == n
        state = get_settings(api, team_id)
        assert (state["enabled"], state["disabledReason"]) == (False, "consecutive_failures")
        spend(api, team_id, sku, 300)  # off: nothing more
        found = auto_topups(api, team_id)
        assert [t.status for t in found] == ["FAILED_TO_CHARGE"] * 3
        written = events(api, team_id)
        assert (
            sorted(e.type for e in written) == ["auto_topup.disabled"] + ["auto_topup.failed"] * 3
        )
        (disabled,) = [e.data for e in written if e.type == "auto_topup.disabled"]
        assert disabled["consecutiveFailures"] == 3
        assert disabled["lastFailureCode"] == "card_declined"
        listing = balance(api, team_id, headers)
        failed = [c for c in listing["changes"] if c["changeOrigin"] == "AUTO_PURCHASE"]
        assert [c["topupStatus"] for c in failed] == ["FAILED_TO_CHARGE"] * 3
        assert listing["total"] == {"val": "-2000"}  # failures book nothing

    # Turned on again (a working card): the count starts over and the next write charges.
    api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
    with frozen_at(NOON):
        again = enable(
            api, team_id, thresholdCents="1500", amountCents="1000", monthlyLimitCents="20000"
        )
        assert (again["consecutiveFailures"], "disabledReason" in again) == (0, False)
        spend(api, team_id, sku, 100)
        statuses = sorted(t.status for t in settled(api, team_id, 4))
        assert statuses == ["FAILED_TO_CHARGE"] * 3 + ["SUCCEEDED"]


def test_the_auto_top_up_events_have_e_mail_templates() -> None:
    from billfold.notifications.email import render
    from billfold.outbox.models import OutboxMessage

    def subject(kind: str, **data: Any) -> str:
        message = OutboxMessage(id="msg_x", type=kind, team_id=uuid.uuid4(), data=data)
        return render(message)[0]

    assert subject("auto_topup.succeeded", amount="5000") == "Auto top-up of $50.00 succeeded"
    assert subject("auto_topup.failed", amount="5000") == "Auto top-up of $50.00 failed"
    assert subject("auto_topup.disabled", consecutiveFailures=3) == "Auto top-up turned off"
