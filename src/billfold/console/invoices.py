"""An invoice as the console shows it: the Billing Management API's own shaping
(``invoicing.schemas.invoice_out``), so every figure and document path is the API's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billfold.invoicing.schemas import InvoiceLineOut, invoice_out
from billfold.invoicing.service import InvoiceWithLines


@dataclass(frozen=True)
class InvoiceView:
    id: str
    number: str
    kind: str  # monthly | prepaid
    status: str
    created_at: datetime
    due_at: datetime
    cycle_year: int
    cycle_month: int
    lines: list[InvoiceLineOut]
    subtotal: int
    tax: int
    total: int
    credits_applied: int
    pdf_url: str  # "" when the invoice has no stored PDF
    csv_url: str


def invoice_view(item: InvoiceWithLines) -> InvoiceView:
    wire = invoice_out(item)
    invoice = item.invoice
    csv = wire.monthly.billing_items_csv_asset_key_suffix if wire.monthly else ""
    return InvoiceView(
        id=wire.invoice_id,
        number=wire.invoice_number,
        kind=invoice.kind,
        status=wire.invoice_status,
        created_at=invoice.created_at,
        due_at=invoice.due_at,
        cycle_year=invoice.cycle_year,
        cycle_month=invoice.cycle_month,
        lines=wire.lines,
        subtotal=wire.subtotal,
        tax=wire.tax,
        total=wire.total,
        credits_applied=invoice.credits_applied_cents,
        # The API's paths are relative to the service root (docs/api-decisions.md).
        pdf_url="/" + wire.invoice_pdf_asset_key_suffix
        if wire.invoice_pdf_asset_key_suffix
        else "",
        csv_url="/" + csv if csv else "",
    )
