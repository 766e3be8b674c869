"""The invoice preview (§8): the running invoice of the current cycle, live."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event as sa_event

from tests.conftest import Api, event, unique_sku
from tests.invoicing.conftest import cents, frozen_at, grant, preview, set_country, use_settings


def _check_formulas(body: dict[str, Any]) -> None:
    """Both client formulas of §8 and the internal sums."""
    core = body["coreInvoice"]
    lines_total = sum(int(line["amount"]) for line in core["lines"])
    assert int(core["amountBeforeVat"]) == lines_total == cents(core["totalWithCorr"])
    assert int(core["amountAfterVat"]) == int(core["amountBeforeVat"]) + int(core["vatCost"])
    assert cents(core["prepaidCredits"]) <= 0 and cents(core["prepaidCreditsUsed"]) <= 0
    postpaid = cents(core["totalWithCorr"]) - abs(cents(core["prepaidCreditsUsed"]))
    assert cents(core["amountBeforeVatLimited"]) == postpaid
    assert cents(core["amountBeforeVatLimitedAndUnlimited"]) == postpaid
    assert cents(core["amountBeforeVatUnlimited"]) == 0


def _credit_left(body: dict[str, Any]) -> int:
    core = body["coreInvoice"]
    return -cents(core["prepaidCredits"]) - abs(cents(core["prepaidCreditsUsed"]))


def test_month_of_usage_across_a_price_change_partly_paid_by_credit(api: Api) -> None:
    chat, image = unique_sku("chat"), unique_sku("img")
    api.set_price(chat, "0.01", "2030-01-01T00:00:00Z", description=f"Chat {chat}")
    api.set_price(chat, "0.02", "2030-03-15T00:00:00Z", description=f"Chat {chat}")
    api.set_price(image, "0.000003", "2030-01-01T00:00:00Z", unit_type="Generated image")
    team_id, headers = api.team_with_key()
    with frozen_at("2030-03-20T12:00:00"):
        empty = preview(api, headers, team_id)
        assert empty == {
            "coreInvoice": {
                "lines": [],
                "amountBeforeVat": "0",
                "vatCost": "0",
                "amountAfterVat": "0",
                "autoCreditsIssued": "0",
                "defaultCreditsIssued": "0",
                "totalWithCorr": {"val": "0"},
                "prepaidCredits": {"val": "0"},
                "prepaidCreditsUsed": {"val": "0"},
                "amountBeforeVatLimited": {"val": "0"},
                "amountBeforeVatUnlimited": {"val": "0"},
                "amountBeforeVatLimitedAndUnlimited": {"val": "0"},
            },
            "effectiveSpendingLimit": "100000",
            "defaultCredits": "0",
            "billingCycle": {"year": 2030, "month": 3},
        }
        result = api.ingest(
            [
                event(team_id, chat, 600, "2030-03-10T08:00:00Z"),  # $6.00 at $0.01
                event(team_id, chat, 400, "2030-03-14T23:59:59Z"),  # $4.00 at $0.01
                event(team_id, chat, 500, "2030-03-15T00:00:00Z"),  # $10.00 at $0.02
                event(team_id, image, 1_234_567, "2030-03-16T10:00:00Z"),  # $3.703701 -> 370
                event(team_id, chat, 100, "2030-02-28T10:00:00Z"),  # last month: not here
            ]
        )
        assert result["accepted"] == 5
        grant(api, team_id, 1500)
        body = preview(api, headers, team_id)

    core = body["coreInvoice"]
    assert body["billingCycle"] == {"year": 2030, "month": 3}
    assert [
        (line["description"], line["unitPrice"], line["numUnits"]) for line in core["lines"]
    ] == [
        (f"Chat {chat}", "100000000", "1000"),  # $0.01 = 10^8 price units (10^-10 USD)
        (f"Chat {chat}", "200000000", "500"),
        (f"Chat {image}", "30000", "1234567"),  # $3 per million units, as the spec's example
    ]
    assert [line["amount"] for line in core["lines"]] == ["1000", "1000", "370"]
    assert {line["clusterName"] for line in core["lines"]} == {""}
    assert core["lines"][2]["unitType"] == "Generated image"
    assert core["amountBeforeVat"] == "2370"
    assert core["totalWithCorr"] == {"val": "2370"}
    # The February usage (100 cents) is an older open cycle: credit pays it first.
    assert core["prepaidCredits"] == {"val": "-1400"}
    assert core["prepaidCreditsUsed"] == {"val": "-1400"}
    assert core["vatCost"] == "0" and core["amountAfterVat"] == "2370"
    assert core["amountBeforeVatLimited"] == {"val": "970"}
    _check_formulas(body)
    assert _credit_left(body) == 0

    with frozen_at("2030-03-21T00:00:00"):
        grant(api, team_id, 5000)
        more = preview(api, headers, team_id)
    _check_formulas(more)
    assert more["coreInvoice"]["prepaidCredits"] == {"val": "-6400"}
    assert more["coreInvoice"]["prepaidCreditsUsed"] == {"val": "-2370"}
    assert _credit_left(more) == 6500 - 100 - 2370


def test_vat_on_the_postpaid_part_by_billing_country(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(api, monkeypatch, vat_rates="DE=19, fr=20,GB=17.5")
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z")
    expected = {"DE": "10", "FR": "10", "GB": "9", "US": "0", "": "0"}
    with frozen_at("2030-03-22T09:00:00"):
        for country, vat in expected.items():
            team_id, headers = api.team_with_key()
            if country:
                set_country(api, headers, team_id, country)
            api.ingest([event(team_id, sku, 250, "2030-03-22T08:00:00Z")])  # $2.50
            grant(api, team_id, 200)  # credit pays $2.00; $0.50 is postpaid
            body = preview(api, headers, team_id)
            core = body["coreInvoice"]
            # 19% of 50 = 9.5 -> 10 (half up); 20% -> 10; 17.5% = 8.75 -> 9
            assert core["vatCost"] == vat, country
            assert core["amountBeforeVat"] == "250"
            assert core["amountAfterVat"] == str(250 + int(vat))
            _check_formulas(body)


def test_preview_follows_the_limits(api: Api) -> None:
    team_id, headers = api.team_with_key()
    with frozen_at("2030-03-23T09:00:00"):
        api.client.post(
            f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
            headers=headers,
            json={"desiredSoftSpendingLimit": {"val": "4321"}},
        )
        assert preview(api, headers, team_id)["effectiveSpendingLimit"] == "4321"


def test_preview_and_spend_check_never_read_raw_events(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.001", "2030-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    engine = api.client.app.state.engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    with frozen_at("2030-03-24T09:00:00"):
        api.ingest([event(team_id, sku, 7, f"2030-03-24T0{i}:00:00Z") for i in range(9)])
        sa_event.listen(engine, "before_cursor_execute", record)
        try:
            body = preview(api, headers, team_id)
            status = api.admin("GET", f"/admin/v1/teams/{team_id}/spend-status")
        finally:
            sa_event.remove(engine, "before_cursor_execute", record)
    assert body["coreInvoice"]["lines"][0]["numUnits"] == "63"
    assert status.status_code == 200
    assert statements and not [s for s in statements if "usage_events" in s or "usage_rollups" in s]


def test_preview_auth(api: Api) -> None:
    team_id, _ = api.team_with_key()
    _other_id, other = api.team_with_key()
    path = f"/v1/billing/teams/{team_id}/postpaid/invoice/preview"
    assert api.client.get(path, headers=other).status_code == 403
    assert api.client.get(path).status_code == 401
    assert api.client.get(path, headers=api.operator).status_code == 401
    bad = api.client.get("/v1/billing/teams/not-a-uuid/postpaid/invoice/preview", headers=other)
    assert bad.status_code in (400, 403)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["use", "grant"]), st.integers(min_value=0, max_value=5000)),
        min_size=1,
        max_size=8,
    )
)
def test_preview_formulas_hold_after_any_usage_and_credit(
    api: Api, steps: list[tuple[str, int]]
) -> None:
    sku = _penny_sku(api)
    team_id, headers = api.team_with_key()
    used = granted = 0
    with frozen_at("2030-03-25T09:00:00"):
        for kind, amount in steps:
            if kind == "use":
                api.ingest([event(team_id, sku, amount, "2030-03-25T08:00:00Z")])
                used += amount
            elif amount:
                grant(api, team_id, amount)
                granted += amount
            body = preview(api, headers, team_id)
            _check_formulas(body)
            assert _credit_left(body) == max(granted - used, 0)
            assert int(body["coreInvoice"]["amountBeforeVat"]) == used


_PENNY: dict[str, str] = {}


def _penny_sku(api: Api) -> str:
    """One $0.01-per-unit SKU per database for the property test."""
    if api.backend not in _PENNY:
        _PENNY[api.backend] = unique_sku("penny")
        api.set_price(_PENNY[api.backend], "0.01", "2030-01-01T00:00:00Z")
    return _PENNY[api.backend]
