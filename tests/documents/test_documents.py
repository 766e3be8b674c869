"""Invoice documents: a PDF of every finalized invoice, a CSV of every monthly invoice's lines,
rendered once at finalization, stored, and downloaded byte-identical with the team's key."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from pypdf import PdfReader
from sqlalchemy import func, select
from typer.testing import CliRunner

from billfold.cli import app as cli_app
from billfold.config import get_settings
from billfold.documents.models import InvoiceDocument
from billfold.documents.service import document_service
from billfold.documents.sheet import money
from billfold.invoicing.service import invoicing_service
from tests.conftest import Api, event, unique_sku
from tests.invoicing.conftest import close, frozen_at, invoices, set_country, use_settings
from tests.ledger.conftest import top_up

_years = itertools.count(2150)  # each use closes months of a year of its own


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def download(api: Api, headers: dict[str, str], path: str) -> Any:
    assert not path.startswith("/")
    return api.client.get(f"/{path}", headers=headers)


def set_billing_name(api: Api, headers: dict[str, str], team_id: str, name: str) -> None:
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info",
        headers=headers,
        json={
            "billingInfo": {
                "name": name,
                "address": {"line1": "1 Main St", "city": "Berlin", "country": "DE"},
                "email": "billing@example.com",
            }
        },
    )
    assert response.status_code == 200, response.text


def document_rows(api: Api, invoice_id: str) -> list[InvoiceDocument]:
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return list(
            session.scalars(
                select(InvoiceDocument)
                .where(InvoiceDocument.invoice_id == invoice_id)
                .order_by(InvoiceDocument.kind)
            )
        )


@pytest.fixture
def monthly(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A team with a monthly invoice of two lines and 19 % VAT."""
    year = next(_years)
    use_settings(api, monkeypatch, vat_rates="DE=19")
    chat, image = unique_sku("chat"), unique_sku("image")
    api.set_price(chat, "0.0125", "2030-01-01T00:00:00Z", description=f"Chat {chat}")
    api.set_price(
        image, "0.07", "2030-01-01T00:00:00Z", description=f"Images {image}", unit_type="Images"
    )
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    set_country(api, headers, team_id, "DE")
    set_billing_name(api, headers, team_id, "Acme Widgets GmbH")
    with frozen_at(f"{year}-03-20T12:00:00"):
        api.ingest(
            [
                event(team_id, chat, 123_457, f"{year}-03-03T00:00:00Z", clusterName="us-east"),
                event(team_id, image, 31, f"{year}-03-04T00:00:00Z", clusterName="eu-west"),
            ]
        )
    with frozen_at(f"{year}-04-02T00:00:00"):
        close(api, year, 3)
    (invoice,) = invoices(api, headers, team_id)
    return team_id, headers, invoice


def test_monthly_invoice_pdf(api: Api, monthly: tuple[str, dict[str, str], dict[str, Any]]) -> None:
    team_id, headers, invoice = monthly
    year = invoice["monthly"]["billingCycle"]["year"]
    path = invoice["invoicePdfAssetKeySuffix"]
    assert path == f"teams/{team_id}/billing/{year}-03-{invoice['invoiceId']}.pdf"
    response = download(api, headers, path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="invoice-{invoice["invoiceNumber"]}.pdf"'
    )
    text = pdf_text(response.content)
    assert invoice["invoiceNumber"] in text
    assert len(invoice["lines"]) == 2
    for line in invoice["lines"]:
        assert line["description"] in text
        assert money(int(line["amount"])) in text
    assert int(invoice["tax"]) > 0
    assert f"Subtotal {money(int(invoice['subtotal']))}" in text
    assert f"VAT (19%) {money(int(invoice['tax']))}" in text
    assert f"Total {money(int(invoice['total']))}" in text
    assert "Billfold" in text  # the seller (BILLFOLD_SELLER_NAME's default)
    assert "Acme Widgets GmbH" in text  # the buyer
    assert "Status at finalization: PENDING" in text

    # Byte-identical on every download, even after the billing info changed.
    assert download(api, headers, path).content == response.content
    set_billing_name(api, headers, team_id, "Renamed Later Ltd")
    again = download(api, headers, path)
    assert again.content == response.content
    assert "Renamed Later Ltd" not in pdf_text(again.content)

    # Rendered once: one row per kind, whose hash is the bytes served.
    rows = document_rows(api, invoice["invoiceId"])
    assert [r.kind for r in rows] == ["csv", "pdf"]
    assert rows[1].content == response.content
    assert rows[1].buyer["name"] == "Acme Widgets GmbH"
    assert rows[1].sha256 == hashlib.sha256(response.content).hexdigest()


def test_monthly_invoice_csv(api: Api, monthly: tuple[str, dict[str, str], dict[str, Any]]) -> None:
    _, headers, invoice = monthly
    path = invoice["monthly"]["billingItemsCsvAssetKeySuffix"]
    assert path == invoice["invoicePdfAssetKeySuffix"].removesuffix(".pdf") + ".csv"
    response = download(api, headers, path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert (
        f'filename="invoice-{invoice["invoiceNumber"]}.csv"'
        in (response.headers["content-disposition"])
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [
        (r["description"], r["cluster_name"], r["unit_type"], r["num_units"], r["amount_cents"])
        for r in rows
    ] == [
        (
            line["description"],
            line["clusterName"],
            line["unitType"],
            line["numUnits"],
            line["amount"],
        )
        for line in invoice["lines"]
    ]
    assert download(api, headers, path).content == response.content


def test_another_teams_key_gets_nothing(
    api: Api, monthly: tuple[str, dict[str, str], dict[str, Any]]
) -> None:
    team_id, headers, invoice = monthly
    other_id, other_headers = api.team_with_key()
    path = invoice["invoicePdfAssetKeySuffix"]
    response = download(api, other_headers, path)
    assert response.status_code == 403
    assert response.json()["code"] == "wrong_team"
    # Its own team in the path, the first team's invoice: no such document of this team.
    response = download(api, other_headers, path.replace(team_id, other_id))
    assert response.status_code == 404
    assert response.json()["code"] == "invoice_document_not_found"
    # No key at all.
    assert api.client.get(f"/{path}").status_code == 401
    before = len(document_rows(api, invoice["invoiceId"]))
    for bad in (
        path.replace(".pdf", ".txt"),
        path.replace("-03-", "-04-"),  # the wrong month
        f"teams/{team_id}/billing/nonsense.pdf",
        f"teams/{team_id}/billing/2150-03-inv_missing.pdf",
    ):
        response = download(api, headers, bad)
        assert response.status_code == 404, bad
        assert response.json()["code"] == "invoice_document_not_found"
    assert len(document_rows(api, invoice["invoiceId"])) == before


def test_receipt_pdf(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    set_billing_name(api, headers, team_id, "Receipt Buyer Inc")
    assert top_up(api, team_id, headers, 12_345).status_code == 200
    (receipt,) = invoices(api, headers, team_id)
    assert receipt["prepaid"] == {} and "monthly" not in receipt
    response = download(api, headers, receipt["invoicePdfAssetKeySuffix"])
    assert response.status_code == 200, response.text
    text = pdf_text(response.content)
    assert receipt["invoiceNumber"] in text
    assert "Prepaid credits" in text
    assert "Total $123.45" in text
    assert "Receipt Buyer Inc" in text
    assert "Status at finalization: PAID" in text
    assert [r.kind for r in document_rows(api, receipt["invoiceId"])] == ["pdf"]
    csv_path = receipt["invoicePdfAssetKeySuffix"].removesuffix(".pdf") + ".csv"
    assert download(api, headers, csv_path).status_code == 404


@pytest.fixture
def without_documents() -> Iterator[None]:
    """Finalize invoices as before documents existed (the wiring restored afterwards)."""
    invoicing_service.use(None)
    try:
        yield
    finally:
        invoicing_service.use(document_service)


def test_backfill_renders_missing_documents_once(api: Api, without_documents: None) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    assert top_up(api, team_id, headers, 700).status_code == 200
    (receipt,) = invoices(api, headers, team_id)
    assert receipt["invoicePdfAssetKeySuffix"] == ""
    assert document_rows(api, receipt["invoiceId"]) == []

    invoicing_service.use(document_service)
    assert invoices(api, headers, team_id)[0]["invoicePdfAssetKeySuffix"] == ""
    set_billing_name(api, headers, team_id, "Backfilled Buyer")
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    assert document_service.backfill(sessions) >= 1
    rows = document_rows(api, receipt["invoiceId"])
    assert [r.kind for r in rows] == ["pdf"]
    (receipt,) = invoices(api, headers, team_id)
    response = download(api, headers, receipt["invoicePdfAssetKeySuffix"])
    assert response.status_code == 200
    assert response.content == rows[0].content
    text = pdf_text(response.content)
    assert "Backfilled Buyer" in text and receipt["invoiceNumber"] in text

    # Idempotent: a second run renders nothing again for this invoice.
    document_service.backfill(sessions)
    again = document_rows(api, receipt["invoiceId"])
    assert [(r.kind, r.content, r.created_at) for r in again] == [
        (r.kind, r.content, r.created_at) for r in rows
    ]


def test_documents_are_append_only(
    api: Api, monthly: tuple[str, dict[str, str], dict[str, Any]]
) -> None:
    invoice_id = monthly[2]["invoiceId"]
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        row = session.get(InvoiceDocument, (invoice_id, "pdf"))
        assert row is not None
        row.content = b"forged"
        with pytest.raises(Exception, match=re.compile("append-only", re.I)):
            session.commit()
        session.rollback()
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        count = session.scalar(select(func.count()).where(InvoiceDocument.invoice_id == invoice_id))
        assert count == 2
        stored = session.get(InvoiceDocument, (invoice_id, "pdf"))
        assert stored is not None and stored.content.startswith(b"%PDF")


def test_backfill_command(
    api: Api, without_documents: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    assert top_up(api, team_id, headers, 900).status_code == 200
    (receipt,) = invoices(api, headers, team_id)
    assert document_rows(api, receipt["invoiceId"]) == []
    invoicing_service.use(document_service)

    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(cli_app, ["invoices", "backfill-documents", "--json"])
        assert first.exit_code == 0, first.output
        assert json.loads(first.output)["invoices"] >= 1
        rows = document_rows(api, receipt["invoiceId"])
        assert [r.kind for r in rows] == ["pdf"]
        second = CliRunner().invoke(cli_app, ["invoices", "backfill-documents"])
        assert second.exit_code == 0, second.output
        assert "rendered documents of" in second.output
    finally:
        get_settings.cache_clear()
    assert [(r.kind, r.content) for r in document_rows(api, receipt["invoiceId"])] == [
        (r.kind, r.content) for r in rows
    ]
    (receipt,) = invoices(api, headers, team_id)
    assert download(api, headers, receipt["invoicePdfAssetKeySuffix"]).content == rows[0].content
