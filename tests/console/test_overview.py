"""The overview's figures equal the API's (the preview, the balance, the spending limits, the
spend check, usage analytics) to the cent, and the runway and the limit bar are right at their
edges: no usage, blocked, postpaid only, prepaid only, no soft limit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billfold.config import Settings
from billfold.console.overview import limit_bar, runway
from billfold.console.web import dollars
from billfold.kit.money import Cents
from billfold.spend.limits import limits_of
from tests.conftest import Api, event, frozen_at, unique_sku
from tests.console.helpers import signed_in as _signed_in
from tests.console.helpers import text_of
from tests.invoicing.conftest import preview, spend_status
from tests.ledger.conftest import grant

NOW = "2066-06-15T12:00:00"


def signed_in(api: Api, key: str) -> Any:
    with frozen_at(NOW):
        return _signed_in(api, key)


def team(api: Api, name: str = "Overview Co") -> tuple[str, dict[str, str], str]:
    team_id = api.create_team(name)
    key = api.create_key(team_id)["apiKey"]
    return team_id, {"Authorization": f"Bearer {key}"}, key


def spend(api: Api, team_id: str, cents_per_day: list[int], last_day: int = 15) -> None:
    """Usage of ``cents_per_day[i]`` cents on each of the days up to 2066-06-``last_day``."""
    sku = unique_sku("cent")
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z", description=f"Cent {sku}")
    first = last_day - len(cents_per_day) + 1
    events = [
        event(team_id, sku, cents, f"2066-06-{first + i:02d}T09:00:00Z", model="grok-4")
        for i, cents in enumerate(cents_per_day)
        if cents
    ]
    with frozen_at(NOW):
        assert api.ingest(events)["accepted"] == len(events)


def analytics_7d(api: Api, headers: dict[str, str], team_id: str) -> float:
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/usage",
        headers=headers,
        json={
            "analyticsRequest": {
                "timeRange": {
                    "startTime": "2066-06-08 12:00:00",
                    "endTime": "2066-06-15 12:00:00",
                    "timezone": "UTC",
                },
                "timeUnit": "TIME_UNIT_NONE",
                "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
            }
        },
    )
    assert response.status_code == 200, response.text
    return float(response.json()["timeSeries"][0]["dataPoints"][0]["values"][0])


def overview(api: Api, key: str) -> str:
    client = signed_in(api, key)
    with frozen_at(NOW):
        page = client.get("/console")
    assert page.status_code == 200, page.text
    return page.text


def test_figures_equal_the_preview_and_balance(api: Api) -> None:
    team_id, headers, key = team(api)
    assert grant(api, team_id, 10_000).status_code == 201
    spend(api, team_id, [150, 275, 0, 333, 120, 99, 101, 250])  # June 8 to 15
    page = overview(api, key)
    with frozen_at(NOW):
        shown = preview(api, headers, team_id)
        balance = api.client.get(f"/v1/billing/teams/{team_id}/prepaid/balance", headers=headers)
        status = spend_status(api, team_id)
        spent = analytics_7d(api, headers, team_id)
    core = shown["coreInvoice"]
    remaining = -int(core["prepaidCredits"]["val"]) - abs(int(core["prepaidCreditsUsed"]["val"]))
    assert remaining == 10_000 - 1328
    assert text_of(page, "credits-remaining") == dollars(remaining) == "$86.72"
    # The balance is the posted ledger: the open month's credit use is not posted yet.
    assert -int(balance.json()["total"]["val"]) - abs(int(core["prepaidCreditsUsed"]["val"])) == (
        remaining
    )
    assert int(status["prepaidRemaining"]["val"]) == remaining
    assert text_of(page, "cycle-spend") == dollars(int(core["amountBeforeVat"]))
    assert text_of(page, "credit-paid") == dollars(abs(int(core["prepaidCreditsUsed"]["val"])))
    assert text_of(page, "postpaid-spend") == dollars(int(core["amountBeforeVatLimited"]["val"]))
    assert text_of(page, "status") == "Active"
    # The runway: credits / (the last 7 days' usage / 7), whole days, from the API's analytics.
    # June 8, 09:00 is before the window (June 8, 12:00 to June 15, 12:00): 1178 cents count.
    assert spent == pytest.approx(11.78)
    days = int(Decimal(remaining) * 7 / (Decimal(repr(spent)) * 100))
    assert days == 51
    assert text_of(page, "runway") == f"Lasts about {days} days at the last 7 days' rate."


def test_no_usage_no_credit_default_limits(api: Api) -> None:
    _, _, key = team(api)
    page = overview(api, key)
    assert text_of(page, "credits-remaining") == "$0.00"
    assert text_of(page, "runway").startswith("No credit left: usage is billed at the end of")
    assert text_of(page, "status") == "Active"
    assert 'class="bar bar-ok"' in page
    assert 'width="0"' in page  # the filled part
    assert "No soft limit set" in page
    assert "No invoices yet." in page


def test_credit_but_no_usage_in_seven_days(api: Api) -> None:
    team_id, _, key = team(api)
    grant(api, team_id, 5_000)
    spend(api, team_id, [500], last_day=2)  # June 2: outside the 7 days
    page = overview(api, key)
    assert text_of(page, "credits-remaining") == "$45.00"
    assert text_of(page, "runway") == "No usage in the last 7 days: the credit is not being used."


def test_blocked_prepaid_only_when_credit_runs_out(api: Api) -> None:
    team_id, headers, key = team(api)
    put = api.admin("PUT", f"/admin/v1/teams/{team_id}/hard-spending-limit", json={"amount": "0"})
    assert put.status_code == 200, put.text
    grant(api, team_id, 1_000)
    spend(api, team_id, [600, 700])
    page = overview(api, key)
    with frozen_at(NOW):
        status = spend_status(api, team_id)
        core = preview(api, headers, team_id)["coreInvoice"]
    assert status["allowed"] is False and status["reason"] == "prepaid_exhausted"
    assert 'data-reason="prepaid_exhausted"' in page
    assert text_of(page, "status") == "Blocked"
    assert text_of(page, "credits-remaining") == "$0.00"
    assert text_of(page, "runway") == "No credit left."
    assert text_of(page, "postpaid-spend") == dollars(int(core["amountBeforeVatLimited"]["val"]))
    assert text_of(page, "limit-text").startswith("Prepaid only")


def test_blocked_at_the_limit_postpaid_only(api: Api) -> None:
    team_id, headers, key = team(api)
    api.admin("PUT", f"/admin/v1/teams/{team_id}/hard-spending-limit", json={"amount": "1000"})
    spend(api, team_id, [800, 700])
    page = overview(api, key)
    with frozen_at(NOW):
        status = spend_status(api, team_id)
        core = preview(api, headers, team_id)["coreInvoice"]
    assert status["reason"] == "spending_limit_reached"
    assert 'data-reason="spending_limit_reached"' in page
    assert text_of(page, "postpaid-spend") == dollars(int(core["amountBeforeVatLimited"]["val"]))
    assert text_of(page, "postpaid-spend") == "$15.00"
    assert 'class="bar bar-reached"' in page and 'width="100"' in page
    assert "$15.00 of $10.00 (the hard limit) · $0.00 left this month" in text_of(
        page, "limit-text"
    )


def test_soft_limit_marked_on_the_bar(api: Api) -> None:
    team_id, headers, key = team(api)
    api.admin("PUT", f"/admin/v1/teams/{team_id}/hard-spending-limit", json={"amount": "10000"})
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        headers=headers,
        json={"desiredSoftSpendingLimit": {"val": "2500"}},
    )
    assert response.status_code == 200, response.text
    spend(api, team_id, [1000, 1000])
    page = overview(api, key)
    assert 'class="bar bar-near"' in page  # 20.00 of 25.00: past 80 %
    assert 'class="bar-soft" x="25"' in page
    assert 'width="20"' in page
    assert "$20.00 of $25.00 (your soft limit) · $5.00 left this month" in text_of(
        page, "limit-text"
    )
    assert text_of(page, "status") == "Active"


# --- the pure rules, at their edges ------------------------------------------------------------


def _limits(soft: int | None, hard: int | None, default: int = 100_000) -> Any:
    settings = Settings(default_hard_limit_cents=default)
    return limits_of(
        None if soft is None else Cents(soft), None if hard is None else Cents(hard), settings
    )


def test_runway_edges() -> None:
    assert runway(Cents(0), 12.5, True).kind == "no-credit"
    assert runway(Cents(-5), 12.5, False).postpaid is False
    assert runway(Cents(100), 0.0, True).kind == "no-usage"
    assert runway(Cents(100), 7.0, True).days == 1  # $1 a day, $1 left
    assert runway(Cents(99), 7.0, True).days == 0  # less than a day
    assert runway(Cents(10_000), 0.07, True).days == 10_000  # 1 cent a day
    assert runway(Cents(1), 1e-12, True).days == 70_000_000_000  # exact, no float overflow


def test_bar_edges() -> None:
    prepaid_only = limit_bar(_limits(None, 0), Cents(0))
    assert prepaid_only.state == "prepaid-only" and prepaid_only.filled_percent == "0"
    no_soft = limit_bar(_limits(None, None), Cents(0))
    assert no_soft.soft is None and no_soft.soft_percent is None and no_soft.state == "ok"
    assert no_soft.scale == 100_000 and no_soft.remaining == 100_000
    over = limit_bar(_limits(None, 1000), Cents(5000))  # the limit lowered below the spend
    assert over.filled_percent == "100" and over.state == "reached" and over.remaining == 0
    soft_zero = limit_bar(_limits(0, 1000), Cents(0))  # soft 0: no postpaid allowed
    assert soft_zero.state == "reached" and soft_zero.soft_percent == "0"
    soft_above = limit_bar(_limits(5000, 1000), Cents(10))
    assert soft_above.soft_percent == "100" and soft_above.effective == 1000
    third = limit_bar(_limits(None, 300), Cents(100))
    assert third.filled_percent == "33.33"


@given(
    soft=st.one_of(st.none(), st.integers(0, 10**9)),
    hard=st.one_of(st.none(), st.integers(0, 10**9)),
    postpaid=st.integers(0, 2 * 10**9),
)
def test_bar_is_always_drawable(soft: int | None, hard: int | None, postpaid: int) -> None:
    bar = limit_bar(_limits(soft, hard), Cents(postpaid))
    assert 0 <= Decimal(bar.filled_percent) <= 100
    if bar.soft_percent is not None:
        assert 0 <= Decimal(bar.soft_percent) <= 100
    assert (bar.state == "reached") == (bar.scale > 0 and postpaid >= bar.effective)
    assert bar.remaining == max(bar.effective - postpaid, 0)


def test_percent_text_is_plain() -> None:
    for postpaid, text in ((2000, "20"), (10_000, "100"), (1, "0.01"), (0, "0"), (1234, "12.34")):
        assert limit_bar(_limits(None, 10_000), Cents(postpaid)).filled_percent == text
