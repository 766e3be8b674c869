"""Rendering, storing and reading invoice documents.

:class:`DocumentService` implements invoicing's ``InvoiceDocuments``: finalization (cycle close,
a top-up's receipt) calls :meth:`DocumentService.finalized` in its own transaction, so an invoice
and its documents commit together. Each document is rendered once and never again: a download
returns the stored bytes. The buyer is the team's billing info at that moment, stored with the
document.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings, get_settings
from billfold.documents.models import KIND_CSV, KIND_PDF, InvoiceDocument
from billfold.documents.sheet import Party, Sheet, SheetLine
from billfold.invoicing.models import (
    KIND_MONTHLY,
    KIND_PREPAID,
    PAID,
    PENDING,
    WILL_NEVER_BE_CHARGED,
    Invoice,
    InvoiceLine,
)
from billfold.invoicing.service import invoicing_service
from billfold.kit.clock import utc_now
from billfold.kit.db import dialect_insert, transaction
from billfold.kit.errors import ResourceNotFound
from billfold.teams.service import team_service


@dataclass(frozen=True)
class Document:
    invoice: Invoice
    kind: str
    content: bytes
    filename: str

    @property
    def media_type(self) -> str:
        return "application/pdf" if self.kind == KIND_PDF else "text/csv; charset=utf-8"


def kinds_of(invoice: Invoice) -> tuple[str, ...]:
    """The documents an invoice has: a PDF always; monthly invoices also a CSV of their lines."""
    return (KIND_PDF, KIND_CSV) if invoice.kind == KIND_MONTHLY else (KIND_PDF,)


def status_at_finalization(invoice: Invoice) -> str:
    """Finalization sets it so: a receipt is PAID; a monthly invoice PENDING, or
    WILL_NEVER_BE_CHARGED with nothing to charge (what a backfill shows, whatever came after)."""
    if invoice.kind == KIND_PREPAID:
        return PAID
    return PENDING if invoice.total_cents > 0 else WILL_NEVER_BE_CHARGED


def seller_of(settings: Settings) -> Party:
    address = tuple(part.strip() for part in settings.seller_address.replace(";", "\n").split("\n"))
    return Party(
        name=settings.seller_name,
        address=tuple(part for part in address if part),
        tax_id=settings.seller_tax_id,
    )


def buyer_snapshot(session: Session, team_id: uuid.UUID) -> dict[str, Any]:
    """The team's billing info now (as the API reads it), with the team's name."""
    team = team_service.get(session, team_id)
    info = team_service.get_billing_info(session, team_id)
    return {"teamName": team.name, **info.model_dump(mode="json", by_alias=True)}


def buyer_of(snapshot: dict[str, Any]) -> Party:
    address: dict[str, str] = snapshot.get("address") or {}
    city = " ".join(p for p in (address.get("postalCode", ""), address.get("city", "")) if p)
    tax = " ".join(p for p in (snapshot.get("taxIdType", ""), snapshot.get("taxNumber", "")) if p)
    return Party(
        name=str(snapshot.get("name") or snapshot.get("teamName", "")),
        address=tuple(
            p
            for p in (
                address.get("line1", ""),
                address.get("line2", ""),
                city,
                address.get("state", ""),
                address.get("country", ""),
            )
            if p
        ),
        tax_id=tax,
        email=str(snapshot.get("email", "")),
    )


def sheet_of(invoice: Invoice, lines: Iterable[InvoiceLine], seller: Party, buyer: Party) -> Sheet:
    return Sheet(
        invoice_id=invoice.id,
        number=invoice.number,
        kind=invoice.kind,
        status=status_at_finalization(invoice),
        created_at=invoice.created_at,
        due_at=invoice.due_at,
        cycle_year=invoice.cycle_year,
        cycle_month=invoice.cycle_month,
        seller=seller,
        buyer=buyer,
        lines=tuple(
            SheetLine(
                description=line.description,
                cluster_name=line.cluster_name,
                unit_type=line.unit_type,
                num_units=line.num_units,
                unit_price_pico=int(line.unit_price_pico),
                amount_cents=int(line.amount_cents),
            )
            for line in lines
        ),
        usage_cents=int(invoice.usage_cents),
        credits_applied_cents=int(invoice.credits_applied_cents),
        subtotal_cents=int(invoice.subtotal_cents),
        vat_rate=invoice.vat_rate,
        tax_cents=int(invoice.tax_cents),
        total_cents=int(invoice.total_cents),
    )


class DocumentService:
    def __init__(self) -> None:
        self._settings: Settings | None = None

    def configure(self, settings: Settings) -> None:
        """The seller's details come from these settings (the app's; the CLI's by default)."""
        self._settings = settings

    @property
    def seller(self) -> Party:
        return seller_of(self._settings or get_settings())

    # --- invoicing.service.InvoiceDocuments -----------------------------------------------------

    def finalized(self, session: Session, invoice_id: str) -> None:
        self.render(session, invoice_id)

    def available(self, session: Session, invoice_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        found: dict[str, set[str]] = {}
        for invoice_id, kind in session.execute(
            select(InvoiceDocument.invoice_id, InvoiceDocument.kind).where(
                InvoiceDocument.invoice_id.in_(list(invoice_ids))
            )
        ):
            found.setdefault(invoice_id, set()).add(kind)
        return {invoice_id: frozenset(kinds) for invoice_id, kinds in found.items()}

    # --- rendering ------------------------------------------------------------------------------

    def render(self, session: Session, invoice_id: str) -> list[str]:
        """Render and store the invoice's missing documents; the kinds stored now.

        The buyer is the team's billing info at this moment. A document already stored is never
        rendered again (a concurrent render of the same one is ignored by the primary key)."""
        item = invoicing_service.get_invoice(session, invoice_id)
        invoice = item.invoice
        missing = [k for k in kinds_of(invoice) if k not in item.documents]
        if not missing:
            return []
        snapshot = buyer_snapshot(session, invoice.team_id)
        sheet = sheet_of(invoice, item.lines, self.seller, buyer_of(snapshot))
        now = utc_now()
        insert = dialect_insert(session)
        # Imported at the first rendering, not with the app: fpdf2 and its fonts cost a serving
        # process ~10 MB of memory that most processes never need.
        from billfold.documents.render import render_csv, render_pdf

        for kind in missing:
            content = render_pdf(sheet) if kind == KIND_PDF else render_csv(sheet)
            session.execute(
                insert(InvoiceDocument)
                .values(
                    invoice_id=invoice.id,
                    kind=kind,
                    content=content,
                    sha256=hashlib.sha256(content).hexdigest(),
                    buyer=snapshot,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["invoice_id", "kind"])
            )
        return missing

    def backfill(self, sessions: sessionmaker[Session], *, batch_size: int = 200) -> int:
        """Render the documents of finalized invoices that lack them, in number order, one
        invoice a transaction (an interrupted run keeps what it did; the next run goes on).
        Returns how many invoices got documents; a second run finds nothing to do."""
        done = 0
        after = ""
        while True:
            with transaction(sessions) as session:
                batch: list[tuple[str, str, str]] = [
                    (row.id, row.number, row.kind)
                    for row in session.execute(
                        select(Invoice.id, Invoice.number, Invoice.kind)
                        .where(Invoice.number > after)
                        .order_by(Invoice.number)
                        .limit(batch_size)
                    )
                ]
                have = self.available(session, [invoice_id for invoice_id, _, _ in batch])
            if not batch:
                return done
            after = batch[-1][1]
            for invoice_id, _, kind in batch:
                wanted = {KIND_PDF, KIND_CSV} if kind == KIND_MONTHLY else {KIND_PDF}
                if wanted <= have.get(invoice_id, frozenset()):
                    continue
                with transaction(sessions) as session:
                    if self.render(session, invoice_id):
                        done += 1

    # --- reading --------------------------------------------------------------------------------

    def document(
        self,
        session: Session,
        team_id: uuid.UUID,
        year: int,
        month: int,
        invoice_id: str,
        kind: str,
    ) -> Document:
        """One stored document of one of this team's invoices (404 for anything else)."""
        row = session.get(InvoiceDocument, (invoice_id, kind))
        invoice = session.get(Invoice, invoice_id)
        if (
            row is None
            or invoice is None
            or invoice.team_id != team_id
            or (invoice.cycle_year, invoice.cycle_month) != (year, month)
        ):
            raise ResourceNotFound(
                f"no {kind} document of invoice {invoice_id!r}", code="invoice_document_not_found"
            )
        return Document(
            invoice=invoice,
            kind=kind,
            content=row.content,
            filename=f"invoice-{invoice.number}.{kind}",
        )


document_service = DocumentService()
