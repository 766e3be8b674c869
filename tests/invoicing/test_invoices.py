"""GET invoices (§5): the filter groups, the invoice shape, newest first."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from billfold.invoicing import service as invoicing
from tests.conftest import Api, event, unique_sku
from tests.invoicing.conftest import close, frozen_at, invoices

_years = itertools.count(2040)  # each use closes months of a year of its own


@pytest.fixture
def two_months(api: Api) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
    """A team invoiced for July and August of a year of its own (newest first)."""
    year = next(_years)
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z", unit_type="Requests")
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    with frozen_at(f"{year}-07-20T12:00:00"):
        api.ingest([event(team_id, sku, 120, f"{year}-07-03T00:00:00Z")])
    with frozen_at(f"{year}-08-02T00:00:00"):
        close(api, year, 7)
        api.ingest([event(team_id, sku, 80, f"{year}-08-01T12:00:00Z")])
    with frozen_at(f"{year}-09-02T00:00:00"):
        close(api, year, 8)
    listed = invoices(api, headers, team_id)
    assert len(listed) == 2
    return team_id, headers, listed


def test_invoice_shape_and_order(
    api: Api, two_months: tuple[str, dict[str, str], list[dict[str, Any]]]
) -> None:
    team_id, _, listed = two_months
    year = listed[0]["monthly"]["billingCycle"]["year"]
    assert [i["monthly"]["billingCycle"] for i in listed] == [
        {"year": year, "month": 8},
        {"year": year, "month": 7},
    ]
    august = listed[0]
    assert set(august) == {
        "teamId",
        "invoiceId",
        "invoiceNumber",
        "createTime",
        "invoiceStatus",
        "firstDesiredNextCycleTs",
        "chargerAttempts",
        "lines",
        "subtotal",
        "tax",
        "total",
        "invoicePdfAssetKeySuffix",
        "monthly",
    }
    assert august["teamId"] == team_id
    assert august["invoiceStatus"] == "PAID"
    assert august["createTime"] == f"{year}-09-02T00:00:00Z"
    assert august["firstDesiredNextCycleTs"] == f"{year}-09-02T00:00:00Z"
    # Issue 18: the PDF rendered at finalization, a path relative to the service root.
    documents = f"teams/{team_id}/billing/{year}-08-{august['invoiceId']}"
    assert august["invoicePdfAssetKeySuffix"] == f"{documents}.pdf"
    assert (august["subtotal"], august["tax"], august["total"]) == ("80", "0", "80")
    [line] = august["lines"]
    assert line == {
        "clusterName": "",
        "description": line["description"],
        "unitType": "Requests",
        "unitPrice": "100000000",
        "numUnits": "80",
        "amount": "80",
    }
    assert august["monthly"] == {
        "billingCycle": {"year": year, "month": 8},
        "defaultCreditsIssued": {"val": "0"},
        "autoCreditsIssued": {"val": "0"},
        "prepaidTokensToSpend": {"val": "0"},
        "billingItemsCsvAssetKeySuffix": f"{documents}.csv",
        "correctionsCsvAssetKeySuffix": "",
    }
    assert isinstance(august["chargerAttempts"][0]["ticket"], int)


def test_filter_groups(
    api: Api, two_months: tuple[str, dict[str, str], list[dict[str, Any]]]
) -> None:
    team_id, headers, listed = two_months
    august, july = listed
    year = july["monthly"]["billingCycle"]["year"]

    def ids(**params: Any) -> list[str]:
        return [i["invoiceId"] for i in invoices(api, headers, team_id, **params)]

    assert ids() == [august["invoiceId"], july["invoiceId"]]
    assert ids(**{"billingCycle.year": year, "billingCycle.month": 7}) == [july["invoiceId"]]
    assert ids(**{"billingCycle.year": str(year), "billingCycle.month": "9"}) == []
    assert ids(**{"since.year": year, "since.month": 8}) == [august["invoiceId"]]
    assert ids(**{"since.year": year, "since.month": 7}) == [august["invoiceId"], july["invoiceId"]]
    assert ids(**{"since.year": year - 1, "since.month": 12}) == [
        august["invoiceId"],
        july["invoiceId"],
    ]
    assert ids(**{"since.year": year + 1, "since.month": 1}) == []
    both = ids(**{"invoiceIds.invoiceIds": [july["invoiceId"], august["invoiceId"], "inv_x"]})
    assert both == [august["invoiceId"], july["invoiceId"]]
    assert ids(**{"invoiceIds.invoiceIds": july["invoiceId"]}) == [july["invoiceId"]]
    # The proto field names work too (the upstream gateway takes both).
    assert ids(**{"billing_cycle.year": year, "billing_cycle.month": 7}) == [july["invoiceId"]]
    assert ids(**{"invoice_ids.invoice_ids": [august["invoiceId"]]}) == [august["invoiceId"]]

    # Another team's key sees none of them, even by id.
    other_id, other = api.team_with_key()
    response = api.client.get(
        f"/v1/billing/teams/{other_id}/invoices",
        headers=other,
        params={"invoiceIds.invoiceIds": july["invoiceId"]},
    )
    assert response.status_code == 200 and response.json() == {"invoices": []}
    assert api.client.get(f"/v1/billing/teams/{team_id}/invoices", headers=other).status_code == 403


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"billingCycle.year": 2031}, "billingCycle.month"),
        ({"billingCycle.month": 7}, "billingCycle.year"),
        ({"since.month": 7}, "since.year"),
        ({"since.year": 2031}, "since.month"),
        (
            {
                "billingCycle.year": 2031,
                "billingCycle.month": 7,
                "since.year": 2031,
                "since.month": 7,
            },
            "since",
        ),
        ({"since.year": 2031, "since.month": 7, "invoiceIds.invoiceIds": "x"}, "invoiceIds"),
        (
            {"billingCycle.year": 2031, "billingCycle.month": 7, "invoiceIds.invoiceIds": "x"},
            "invoiceIds",
        ),
        ({"billingCycle.year": 2031, "billingCycle.month": 13}, "billingCycle.month"),
        ({"since.year": 2031, "since.month": 0}, "since.month"),
        ({"billingCycle.year": "abc", "billingCycle.month": 7}, "billingCycle.year"),
        ({"since.year": 2031, "since.month": "7.5"}, "since.month"),
        ({"billingCycle.year": 2031, "billing_cycle.year": 2031}, "billingCycle.year"),
        ({"billing_cycle.year": 2031}, "billingCycle.month"),
    ],
)
def test_bad_filters_are_400(api: Api, params: dict[str, Any], field: str) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.get(
        f"/v1/billing/teams/{team_id}/invoices", headers=headers, params=params
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_argument"
    assert response.json()["field"] == field


def test_no_invoices(api: Api) -> None:
    team_id, headers = api.team_with_key(["team-token:endpoint:BillingRead"])
    assert invoices(api, headers, team_id) == []


def test_a_receipt_id_has_the_format_of_a_monthly_invoice_id(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invoicing issues every invoice: a month's and a top-up's receipt take their ids from the
    one new_invoice_id (a receipt's used to be 24 hex digits of a builder of its own)."""
    issued: list[str] = []
    real = invoicing.new_invoice_id

    def spy() -> str:
        issued.append(real())
        return issued[-1]

    monkeypatch.setattr(invoicing, "new_invoice_id", spy)
    year = 2057  # no other test closes a month of 2057
    sku = unique_sku()
    api.set_price(sku, "0.01", "2030-01-01T00:00:00Z", unit_type="Requests")
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    with frozen_at(f"{year}-06-20T12:00:00"):
        api.ingest([event(team_id, sku, 120, f"{year}-06-03T00:00:00Z")])
    with frozen_at(f"{year}-07-02T00:00:00"):
        close(api, year, 6)
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/prepaid/top-up",
            headers=headers,
            json={"amount": {"val": "2500"}},
        )
        assert response.status_code == 200, response.text
    listed = invoices(api, headers, team_id)
    [receipt] = [i for i in listed if "prepaid" in i]
    [monthly] = [i for i in listed if "monthly" in i]
    for invoice in (monthly, receipt):
        assert re.fullmatch(r"inv_[A-Za-z0-9_-]{24}", invoice["invoiceId"]), invoice["invoiceId"]
    assert sorted(issued) == sorted([monthly["invoiceId"], receipt["invoiceId"]])
