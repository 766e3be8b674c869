"""Every response of the Billing Management API carries exactly the fields the spec lists.

Strict protobuf-JSON clients reject a field the message does not define, so a Billfold-only field
on the customer wire breaks them (spec §11: "no Billfold-only fields on any response of this
API"); extras belong on the operator API. Each object of each response is held to the exact key
set of billing-api.md (optional fields pinned as present or left out in the state built here).

Cycle close closes a month for every team of the database: this file alone uses 2048.
"""

from __future__ import annotations

from typing import Any

from billfold.payments.sandbox import CARD_DECLINED
from tests.conftest import Api, event, frozen_at, unique_sku

CENT = {"val"}
CYCLE = {"year", "month"}
ADDRESS = {"line1", "line2", "city", "country", "postalCode", "state"}
BILLING_INFO = {"name", "address", "email", "taxIdType", "taxNumber"}
LINE = {"clusterName", "description", "unitType", "unitPrice", "numUnits", "amount"}
ATTEMPT = {"ticket", "successful", "paymentMethodId"}
INVOICE = {
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
}
MONTHLY = {
    "billingCycle",
    "defaultCreditsIssued",
    "autoCreditsIssued",
    "prepaidTokensToSpend",
    "billingItemsCsvAssetKeySuffix",
    "correctionsCsvAssetKeySuffix",
}
PAYMENT_METHOD = {"paymentMethodId", "billingInfo", "cardDetails", "paymentType", "addedTs"}
CARD = {"brand", "expMonth", "expYear", "last4"}
PROCESSOR = {"kind", "externalParty", "externalInvoiceId"}
CHANGE_BASE = {"teamId", "changeOrigin", "amount", "createTime", "createTs"}
PAID_PURCHASE = CHANGE_BASE | {"topupStatus", "invoiceId", "invoiceNumber", "paymentProcessor"}
FAILED_PURCHASE = CHANGE_BASE | {"topupStatus", "paymentProcessor"}
GRANT = CHANGE_BASE | {"paymentProcessor"}
SPEND = CHANGE_BASE | {"spendBpKeyYear", "spendBpKeyMonth"}
CORE_INVOICE = {
    "lines",
    "amountBeforeVat",
    "vatCost",
    "amountAfterVat",
    "autoCreditsIssued",
    "defaultCreditsIssued",
    "totalWithCorr",
    "prepaidCredits",
    "prepaidCreditsUsed",
    "amountBeforeVatLimited",
    "amountBeforeVatUnlimited",
    "amountBeforeVatLimitedAndUnlimited",
}
CORE_CENTS = {
    "totalWithCorr",
    "prepaidCredits",
    "prepaidCreditsUsed",
    "amountBeforeVatLimited",
    "amountBeforeVatUnlimited",
    "amountBeforeVatLimitedAndUnlimited",
}
LIMITS = {"hardSlAuto", "effectiveHardSl", "softSl", "effectiveSl"}


def keys(value: Any, expected: set[str]) -> None:
    assert isinstance(value, dict), value
    assert set(value) == expected, (sorted(set(value) - expected), sorted(expected - set(value)))


def call(api: Api, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
    response = api.client.request(method, path, headers=headers, **kwargs)
    assert response.status_code in (200, 402), response.text
    return response.json()


def add_card(api: Api, team_id: str, number: str, default: bool = True) -> dict[str, Any]:
    response = api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/payment-methods",
        json={"cardNumber": number, "expMonth": 12, "expYear": 2060, "makeDefault": default},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    # The operator API says which method is the default; the customer API does not (§6).
    keys(body, PAYMENT_METHOD | {"isDefault"})
    assert body["isDefault"] is default
    return body


def check_invoice(invoice: dict[str, Any]) -> None:
    flavour = {"monthly"} if "monthly" in invoice else {"prepaid"}
    keys(invoice, INVOICE | flavour)
    for attempt in invoice["chargerAttempts"]:
        keys(attempt, ATTEMPT)
    for line in invoice["lines"]:
        keys(line, LINE)
    if "monthly" in invoice:
        monthly = invoice["monthly"]
        keys(monthly, MONTHLY)
        keys(monthly["billingCycle"], CYCLE)
        for name in ("defaultCreditsIssued", "autoCreditsIssued", "prepaidTokensToSpend"):
            keys(monthly[name], CENT)
    else:
        keys(invoice["prepaid"], set())


def test_every_customer_response_has_exactly_the_spec_fields(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000001", "2047-12-01T00:00:00Z")  # 1,000,000 units = $1.00
    team_id, headers = api.team_with_key()
    declined_id, declined_headers = api.team_with_key()
    base = f"/v1/billing/teams/{team_id}"
    with frozen_at("2048-01-10T12:00:00"):
        info = {
            "billingInfo": {
                "name": "Acme",
                "email": "billing@acme.example",
                "address": {"line1": "1 Main St", "country": "DE"},
            }
        }
        assert call(api, "POST", f"{base}/billing-info", headers, json=info) == {}
        first = add_card(api, team_id, "4242424242424242")
        second = add_card(api, team_id, "5555555555554444", default=False)
        add_card(api, declined_id, CARD_DECLINED)
        assert (
            api.admin(
                "PUT", f"/admin/v1/teams/{team_id}/hard-spending-limit", json={"amount": "500000"}
            ).status_code
            == 200
        )
        topped = call(
            api, "POST", f"{base}/prepaid/top-up", headers, json={"amount": {"val": "2500"}}
        )
        declined = call(
            api,
            "POST",
            f"/v1/billing/teams/{declined_id}/prepaid/top-up",
            declined_headers,
            json={"amount": {"val": "2500"}},
        )
        granted = api.admin(
            "POST", f"/admin/v1/teams/{team_id}/credits", json={"amount": "1000", "reason": "p"}
        )
        assert granted.status_code == 201
        api.ingest(
            [
                event(team_id, sku, 3_000_000, "2048-01-10T11:00:00Z", model="m"),
                event(declined_id, sku, 2_000_000, "2048-01-10T11:00:00Z"),  # postpaid
            ]
        )
    with frozen_at("2048-02-02T00:00:00"):
        closed = api.admin(
            "POST", "/admin/v1/billing-cycles/close", json={"year": 2048, "month": 1}
        )
        assert closed.status_code == 200, closed.text
        api.ingest([event(team_id, sku, 1_000_000, "2048-02-01T12:00:00Z")])
        assert (
            call(
                api,
                "POST",
                f"{base}/payment-method/default",
                headers,
                json={"paymentMethodId": second["paymentMethodId"]},
            )
            == {}
        )

        # §2
        validation = call(api, "GET", "/auth/management-keys/validation", headers)
        keys(
            validation,
            {
                "apiKeyId",
                "teamId",
                "scope",
                "scopeId",
                "ownerUserId",
                "createTime",
                "modifyTime",
                "name",
                "acls",
                "redactedApiKey",
            },
        )
        # §3
        body = call(api, "GET", f"{base}/billing-info", headers)
        keys(body, {"billingInfo"})
        keys(body["billingInfo"], BILLING_INFO)
        keys(body["billingInfo"]["address"], ADDRESS)
        # §5: a monthly invoice and a top-up's receipt; the declined team's failed attempt
        for team, team_headers, count in (
            (team_id, headers, 2),
            (declined_id, declined_headers, 1),
        ):
            body = call(api, "GET", f"/v1/billing/teams/{team}/invoices", team_headers)
            keys(body, {"invoices"})
            assert len(body["invoices"]) == count
            for invoice in body["invoices"]:
                check_invoice(invoice)
        [failed] = call(api, "GET", f"/v1/billing/teams/{declined_id}/invoices", declined_headers)[
            "invoices"
        ]
        assert failed["invoiceStatus"] == "FAILED" and len(failed["chargerAttempts"]) == 1
        # §6: the default first, no default marker
        body = call(api, "GET", f"{base}/payment-method", headers)
        keys(body, {"paymentMethods"})
        assert [m["paymentMethodId"] for m in body["paymentMethods"]] == [
            second["paymentMethodId"],
            first["paymentMethodId"],
        ]
        for method in body["paymentMethods"]:
            keys(method, PAYMENT_METHOD)
            keys(method["cardDetails"], CARD)
            keys(method["billingInfo"], BILLING_INFO)
            keys(method["billingInfo"]["address"], ADDRESS)
        # §8
        body = call(api, "GET", f"{base}/postpaid/invoice/preview", headers)
        keys(body, {"coreInvoice", "effectiveSpendingLimit", "defaultCredits", "billingCycle"})
        keys(body["coreInvoice"], CORE_INVOICE)
        keys(body["billingCycle"], CYCLE)
        assert len(body["coreInvoice"]["lines"]) == 1
        for line in body["coreInvoice"]["lines"]:
            keys(line, LINE)
        for name in CORE_CENTS:
            keys(body["coreInvoice"][name], CENT)
        # §9 (with the operator's override) and §10
        body = call(api, "GET", f"{base}/postpaid/spending-limits", headers)
        keys(body, {"spendingLimits"})
        keys(body["spendingLimits"], LIMITS | {"hardSlOverride"})
        for value in body["spendingLimits"].values():
            keys(value, CENT)
        body = call(
            api,
            "POST",
            f"{base}/postpaid/spending-limits",
            headers,
            json={"desiredSoftSpendingLimit": {"val": "5000"}},
        )
        keys(body, {"thisBpSoftSpendingLimit"})
        keys(body["thisBpSoftSpendingLimit"], CENT)
        # §11: SPEND (posted at close), MANUAL grant, paid and failed purchases
        body = call(api, "GET", f"{base}/prepaid/balance", headers)
        keys(body, {"changes", "total"})
        keys(body["total"], CENT)
        assert [c["changeOrigin"] for c in body["changes"]] == ["SPEND", "MANUAL", "PURCHASE"]
        spend, grant, purchase = body["changes"]
        keys(spend, SPEND)
        keys(grant, GRANT)
        keys(purchase, PAID_PURCHASE)
        for change in (grant, purchase):
            keys(change["paymentProcessor"], PROCESSOR)
        for change in body["changes"]:
            keys(change["amount"], CENT)
        body = call(
            api, "GET", f"/v1/billing/teams/{declined_id}/prepaid/balance", declined_headers
        )
        keys(body, {"changes", "total"})
        [failed_purchase] = body["changes"]
        keys(failed_purchase, FAILED_PURCHASE)
        keys(failed_purchase["paymentProcessor"], PROCESSOR)
        # §12: the paid top-up (200) and the declined one (402 keeps its error body + change)
        keys(topped, {"change"})
        keys(topped["change"], PAID_PURCHASE)
        keys(declined, {"code", "error", "change"})
        keys(declined["change"], FAILED_PURCHASE)
        # §13
        body = call(
            api,
            "POST",
            f"{base}/usage",
            headers,
            json={
                "analyticsRequest": {
                    "timeRange": {
                        "startTime": "2048-01-09 00:00:00",
                        "endTime": "2048-01-11 00:00:00",
                        "timezone": "Etc/GMT",
                    },
                    "timeUnit": "TIME_UNIT_DAY",
                    "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
                    "groupBy": ["model"],
                    "filters": [],
                }
            },
        )
        keys(body, {"timeSeries", "limitReached"})
        assert len(body["timeSeries"]) == 1
        for series in body["timeSeries"]:
            keys(series, {"group", "groupLabels", "dataPoints"})
            for point in series["dataPoints"]:
                keys(point, {"timestamp", "values"})
