"""The console's invoices: the list and each invoice's page show the API's figures, link the
API's document paths, and those download with the console session (another team's: 404)."""

from __future__ import annotations

import re
from typing import Any

from billfold.console.web import dollars
from tests.conftest import Api, event, unique_sku
from tests.console.helpers import browser, signed_in, text_of
from tests.invoicing.conftest import close, frozen_at, invoices
from tests.ledger.conftest import top_up


def monthly_invoice(api: Api, year: int, month: int) -> tuple[str, dict[str, str], str, Any]:
    chat, image = unique_sku("chat"), unique_sku("image")
    api.set_price(chat, "0.0125", "2030-01-01T00:00:00Z", description=f"Chat {chat}")
    api.set_price(image, "0.07", "2030-01-01T00:00:00Z", description=f"Images {image}")
    team_id = api.create_team("Invoiced")
    key = api.create_key(team_id)["apiKey"]
    headers = {"Authorization": f"Bearer {key}"}
    api.add_card(team_id)
    with frozen_at(f"{year}-{month:02d}-20T12:00:00"):
        api.ingest(
            [
                event(team_id, chat, 123_457, f"{year}-{month:02d}-03T00:00:00Z", clusterName="us"),
                event(team_id, image, 31, f"{year}-{month:02d}-04T00:00:00Z"),
            ]
        )
    with frozen_at(f"{year}-{month + 1:02d}-02T00:00:00"):
        close(api, year, month)
    return team_id, headers, key, invoices(api, headers, team_id)


def test_invoice_list_and_page_show_the_api_figures(api: Api) -> None:
    team_id, headers, key, listed = monthly_invoice(api, 2065, 1)
    response = top_up(api, team_id, headers, 2500)
    assert response.status_code == 200, response.text
    listed = invoices(api, headers, team_id)
    assert len(listed) == 2
    client = signed_in(api, key)
    page = client.get("/console/invoices")
    assert page.status_code == 200
    for invoice in listed:
        row = text_of(page.text, f"invoice-{invoice['invoiceId']}")
        assert invoice["invoiceNumber"] in row
        assert dollars(int(invoice["total"])) in row
        assert dollars(int(invoice["subtotal"])) in row
    assert "Credit purchase" in page.text and "January 2065" in page.text

    monthly = next(i for i in listed if "monthly" in i)
    detail = client.get(f"/console/invoices/{monthly['invoiceId']}")
    assert detail.status_code == 200
    assert text_of(detail.text, "total") == dollars(int(monthly["total"]))
    assert text_of(detail.text, "subtotal") == dollars(int(monthly["subtotal"]))
    assert text_of(detail.text, "tax") == dollars(int(monthly["tax"]))
    lines = text_of(detail.text, "lines")
    for line in monthly["lines"]:
        assert line["description"] in lines
        assert dollars(int(line["amount"])) in lines
    pdf = re.search(r'id="pdf-link" href="([^"]+)"', detail.text)
    csv = re.search(r'id="csv-link" href="([^"]+)"', detail.text)
    assert pdf and csv
    assert pdf.group(1) == "/" + monthly["invoicePdfAssetKeySuffix"]
    assert csv.group(1) == "/" + monthly["monthly"]["billingItemsCsvAssetKeySuffix"]

    # The console session downloads the very bytes the key does.
    by_session = client.get(pdf.group(1))
    by_key = api.client.get(pdf.group(1), headers=headers)
    assert by_session.status_code == 200, by_session.text
    assert by_session.headers["content-type"] == "application/pdf"
    assert by_session.content == by_key.content
    csv_session = client.get(csv.group(1))
    assert csv_session.status_code == 200
    assert csv_session.content == api.client.get(csv.group(1), headers=headers).content

    receipt = next(i for i in listed if "prepaid" in i)
    receipt_page = client.get(f"/console/invoices/{receipt['invoiceId']}")
    assert receipt_page.status_code == 200
    assert text_of(receipt_page.text, "total") == dollars(2500)


def test_another_teams_invoice_and_documents_are_404(api: Api) -> None:
    _, headers, _, listed = monthly_invoice(api, 2065, 2)
    (invoice,) = listed
    other_team = api.create_team("Other")
    other = signed_in(api, api.create_key(other_team)["apiKey"])
    page = other.get(f"/console/invoices/{invoice['invoiceId']}")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert invoice["invoiceNumber"] not in page.text
    assert other.get("/console/invoices/inv_does_not_exist").status_code == 404
    assert invoice["invoiceNumber"] not in other.get("/console/invoices").text
    document = other.get("/" + invoice["invoicePdfAssetKeySuffix"])
    assert document.status_code == 404
    assert document.json()["code"] == "invoice_document_not_found"
    # Without a session or a key: 401, as before.
    assert browser(api).get("/" + invoice["invoicePdfAssetKeySuffix"]).status_code == 401
    # A key still works as before, and the key wins over a cookie when both are sent.
    assert (
        api.client.get("/" + invoice["invoicePdfAssetKeySuffix"], headers=headers).status_code
        == 200
    )
    other_key = api.create_key(other_team)["apiKey"]
    wrong = other.get(
        "/" + invoice["invoicePdfAssetKeySuffix"],
        headers={"Authorization": f"Bearer {other_key}"},
    )
    assert wrong.status_code == 403


def test_no_invoices_yet(api: Api) -> None:
    team_id = api.create_team()
    client = signed_in(api, api.create_key(team_id)["apiKey"])
    page = client.get("/console/invoices")
    assert page.status_code == 200 and "No invoices yet" in page.text
