"""Repeated query parameters and headers (kit.http.WireRoute): one that is not repeatable is a 400
``invalid_argument`` naming it, answered after the credentials; only list-declared parameters
(``invoiceIds.invoiceIds``) may repeat. Every endpoint is found through the OpenAPI document, so
an endpoint added later is covered without a test of its own."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from billfold.invoicing import endpoints as invoicing
from billfold.kit.http import WireRoute
from billfold.ledger import endpoints as ledger
from billfold.metering import endpoints as metering
from billfold.notifications import endpoints as notifications
from billfold.payments import endpoints as payments
from billfold.pricing import endpoints as pricing
from billfold.teams import endpoints as teams
from tests.conftest import Api, event, frozen_at, unique_sku


def app_of(api: Api) -> FastAPI:
    app: FastAPI = api.client.app  # type: ignore[assignment]
    return app


def query_params(app: FastAPI) -> list[tuple[str, str, str, bool]]:
    """(method, path, parameter, repeatable) of every query parameter of both APIs."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query":
                    continue
                schema = parameter.get("schema", {})
                kinds = [schema, *schema.get("anyOf", [])]
                repeatable = any(kind.get("type") == "array" for kind in kinds)
                found.append((method.upper(), path, parameter["name"], repeatable))
    return found


def concrete(path: str, team_id: str) -> str:
    return re.sub(r"\{[a-z_]+\}", lambda m: team_id if m.group() == "{team_id}" else "x", path)


def credentials(api: Api, path: str, key_headers: dict[str, str]) -> dict[str, str]:
    return api.operator if path.startswith("/admin/") else key_headers


def test_every_router_uses_the_checking_route_class() -> None:
    for module in (teams, payments, pricing, metering, ledger, invoicing, notifications):
        for router in (module.billing_router, module.admin_router):
            for route in router.routes:
                if hasattr(route, "endpoint"):
                    assert isinstance(route, WireRoute), (module.__name__, route)


def test_the_known_query_parameters_are_found(api: Api) -> None:
    found = {(path, name): repeatable for _, path, name, repeatable in query_params(app_of(api))}
    invoices = "/v1/billing/teams/{team_id}/invoices"
    assert found == {
        (invoices, "billingCycle.year"): False,
        (invoices, "billingCycle.month"): False,
        (invoices, "since.year"): False,
        (invoices, "since.month"): False,
        (invoices, "invoiceIds.invoiceIds"): True,
        ("/admin/v1/teams", "pageSize"): False,
        ("/admin/v1/teams", "pageToken"): False,
        ("/admin/v1/webhook-endpoints/{endpoint_id}/deliveries", "limit"): False,
        ("/admin/v1/audit-events", "teamId"): False,
        ("/admin/v1/audit-events", "since"): False,
        ("/admin/v1/audit-events", "pageSize"): False,
        ("/admin/v1/audit-events", "pageToken"): False,
    }


def test_a_repeated_parameter_is_a_400_naming_it_on_every_endpoint(api: Api) -> None:
    team_id, headers = api.team_with_key()
    for method, path, name, repeatable in query_params(app_of(api)):
        if repeatable:
            continue
        url = concrete(path, team_id)
        for values in (("1", "1"), ("1", "2"), ("2026", "")):
            response = api.client.request(
                method,
                url,
                params=[(name, values[0]), (name, values[1])],
                headers=credentials(api, path, headers),
            )
            assert response.status_code == 400, (path, name, response.text)
            assert response.json() == {
                "code": "invalid_argument",
                "error": f"{name}: is given more than once; send it once",
                "field": name,
            }


def test_credentials_are_checked_before_a_repeated_parameter(api: Api) -> None:
    team_id, headers = api.team_with_key()
    _, other_headers = api.team_with_key()
    revoked = api.create_key(team_id)
    assert api.admin("DELETE", f"/admin/v1/management-keys/{revoked['keyId']}").status_code == 204
    for method, path, name, repeatable in query_params(app_of(api)):
        if repeatable:
            continue
        url = concrete(path, team_id)
        params = [(name, "1"), (name, "2")]
        wrong: list[tuple[dict[str, str], int, str]] = [
            ({}, 401, "missing_credentials"),
            ({"Authorization": "Basic abc"}, 401, "missing_credentials"),
        ]
        if path.startswith("/admin/"):
            wrong += [
                ({"Authorization": "Bearer not-the-token"}, 401, "invalid_operator_token"),
                (headers, 401, "invalid_operator_token"),  # a management key is never one
            ]
        else:
            wrong += [
                ({"Authorization": "Bearer xai-unknown"}, 401, "invalid_api_key"),
                ({"Authorization": f"Bearer {revoked['apiKey']}"}, 401, "invalid_api_key"),
                (api.operator, 401, "invalid_api_key"),
                (other_headers, 403, "wrong_team"),
            ]
        for wrong_headers, status, code in wrong:
            response = api.client.request(method, url, params=params, headers=wrong_headers)
            assert response.status_code == status, (path, name, wrong_headers, response.text)
            assert response.json()["code"] == code


def test_a_non_uuid_team_is_judged_before_a_repeated_parameter_after_the_key(api: Api) -> None:
    # The path's team id belongs to authorization (403 for another team, 400 for a non-UUID);
    # both come before a complaint about the query.
    _, headers = api.team_with_key()
    response = api.client.get(
        "/v1/billing/teams/not-a-uuid/invoices",
        params=[("since.year", "2026"), ("since.year", "2025"), ("since.month", "1")],
        headers=headers,
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_uuid"


def _invoice_ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(i["invoiceId"] for i in response.json()["invoices"])


def test_invoice_ids_repeat_and_single_filters_do_not(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    invoice_ids = []
    for amount in ("1000", "2000"):
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/prepaid/top-up",
            json={"amount": {"val": amount}},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        invoice_ids.append(response.json()["change"]["invoiceId"])
    url = f"/v1/billing/teams/{team_id}/invoices"
    both = [("invoiceIds.invoiceIds", i) for i in invoice_ids]
    assert _invoice_ids(api.client.get(url, params=both, headers=headers)) == sorted(invoice_ids)
    one = [("invoiceIds.invoiceIds", invoice_ids[0])]
    assert _invoice_ids(api.client.get(url, params=one, headers=headers)) == invoice_ids[:1]
    # the reported bug: the last of a repeated year used to win silently
    response = api.client.get(
        url,
        params=[("since.year", "2000"), ("since.year", "2999"), ("since.month", "1")],
        headers=headers,
    )
    assert response.status_code == 400
    assert response.json()["field"] == "since.year"
    # an undeclared parameter is ignored, repeated or not
    assert _invoice_ids(
        api.client.get(url, params=[("x", "1"), ("x", "2")], headers=headers)
    ) == sorted(invoice_ids)


def test_team_list_pagination_refuses_repeats(api: Api) -> None:
    api.create_team("one")
    api.create_team("two")
    first = api.admin("GET", "/admin/v1/teams", params={"pageSize": "1"})
    assert first.status_code == 200
    token = first.json()["nextPageToken"]
    assert token
    for params in (
        [("pageSize", "1"), ("pageSize", "1000")],
        [("pageSize", "1"), ("pageToken", token), ("pageToken", token)],
    ):
        response = api.admin("GET", "/admin/v1/teams", params=params)
        assert response.status_code == 400
        assert response.json()["field"] == params[-1][0]
    # a bad value is judged after the token too
    wrong = {"Authorization": "Bearer not-the-token"}
    response = api.admin("GET", "/admin/v1/teams", params={"pageSize": "abc"}, headers=wrong)
    assert response.status_code == 401
    bad = api.admin("GET", "/admin/v1/teams", params={"pageToken": "zzz"})
    assert bad.status_code == 400
    assert bad.json() == {
        "code": "invalid_argument",
        "error": "pageToken: is not a token this API issued",
        "field": "pageToken",
    }


def test_a_repeated_idempotency_key_is_a_400_and_charges_nothing(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    balance_url = f"/v1/billing/teams/{team_id}/prepaid/balance"
    before = api.client.get(balance_url, headers=headers).json()
    for keys in (["k1", "k2"], ["k1", "k1"]):
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/prepaid/top-up",
            json={"amount": {"val": "1000"}},
            headers=[*headers.items(), *(("Idempotency-Key", key) for key in keys)],
        )
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "Idempotency-Key"
    assert api.client.get(balance_url, headers=headers).json() == before
    invoices = api.client.get(f"/v1/billing/teams/{team_id}/invoices", headers=headers)
    assert invoices.json() == {"invoices": []}
    # the same key once still works, and a replay is answered as before
    for _ in range(2):
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/prepaid/top-up",
            json={"amount": {"val": "1000"}},
            headers={**headers, "Idempotency-Key": "k1"},
        )
        assert response.status_code == 200, response.text
    assert api.client.get(balance_url, headers=headers).json()["total"] == {"val": "-1000"}


def test_undeclared_parameters_are_ignored_on_a_route_without_any(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000003")
    team_id, headers = api.team_with_key()
    with frozen_at("2026-11-21T00:00:00"):
        api.ingest([event(team_id, sku, 10, "2026-11-20T10:00:00Z", model="m")])
        body = {
            "analyticsRequest": {
                "timeRange": {
                    "startTime": "2026-11-20 00:00:00",
                    "endTime": "2026-11-21 00:00:00",
                },
                "timeUnit": "TIME_UNIT_DAY",
                "values": [{"name": "num_units", "aggregation": "AGGREGATION_SUM"}],
            }
        }
        response = api.client.post(
            f"/v1/billing/teams/{team_id}/usage",
            params=[("model", "a"), ("model", "b")],
            json=body,
            headers=headers,
        )
    assert response.status_code == 200, response.text
    assert response.json()["timeSeries"][0]["dataPoints"][0]["values"] == [10]
