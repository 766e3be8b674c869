"""Rendering an invoice into its PDF and its CSV: pure functions of a :class:`Sheet`.

Deterministic: the font is the DejaVu Sans shipped in the package (static/fonts, with its
licence), and the PDF's creation date, producer and file id are derived from the invoice, so the
same sheet renders to the same bytes on every machine. Money is formatted from integer cents
(unit prices from integer pico-dollars), never through a float.
"""

from __future__ import annotations

import csv
import hashlib
import io
from importlib.resources import files
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from billfold.documents.sheet import Party, Sheet, money, unit_price, units
from billfold.kit.money import Pico, format_usd_price

FONT = "DejaVu"
PRODUCER = "Billfold"
_FONTS = files("billfold") / "static" / "fonts"


def _pdf_for(sheet: Sheet) -> FPDF:
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_creation_date(sheet.created_at)
    pdf.set_producer(PRODUCER)
    pdf.set_creator(PRODUCER)
    pdf.set_title(f"Invoice {sheet.number}")
    pdf.set_author(sheet.seller.name)
    pdf.set_subject(f"Invoice {sheet.number}")
    # The trailer's file id is otherwise random: derive it from the invoice.
    digest = hashlib.md5(f"{sheet.invoice_id}:{sheet.number}".encode(), usedforsecurity=False)
    pdf.file_id = lambda: f"<{digest.hexdigest().upper()}><{digest.hexdigest().upper()}>"  # type: ignore[method-assign]
    pdf.add_font(FONT, "", str(Path(str(_FONTS / "DejaVuSans.ttf"))))
    pdf.add_font(FONT, "B", str(Path(str(_FONTS / "DejaVuSans-Bold.ttf"))))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_margins(15, 15, 15)
    return pdf


def _party_lines(party: Party) -> list[str]:
    out = [party.name or "-"]
    out.extend(line for line in party.address if line)
    if party.tax_id:
        out.append(f"Tax ID: {party.tax_id}")
    if party.email:
        out.append(party.email)
    return out


_COLUMNS: tuple[tuple[str, float, str], ...] = (
    ("Description", 52, "L"),
    ("Cluster", 24, "L"),
    ("Unit type", 30, "L"),
    ("Units", 22, "R"),
    ("Unit price", 26, "R"),
    ("Amount", 26, "R"),
)


def render_pdf(sheet: Sheet) -> bytes:
    pdf = _pdf_for(sheet)
    pdf.add_page()
    title = "Receipt" if sheet.kind == "prepaid" else "Invoice"
    pdf.set_font(FONT, "B", 18)
    pdf.cell(0, 10, f"{title} {sheet.number}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, "", 9)
    facts = [
        f"Invoice number: {sheet.number}",
        f"Issued: {sheet.created_at:%Y-%m-%d %H:%M} UTC",
        f"Due: {sheet.due_at:%Y-%m-%d %H:%M} UTC",
        f"Billing cycle: {sheet.cycle_year:04d}-{sheet.cycle_month:02d}",
        f"Status at finalization: {sheet.status}",
    ]
    for fact in facts:
        pdf.cell(0, 4.5, fact, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)

    top = pdf.get_y()
    half = (pdf.w - pdf.l_margin - pdf.r_margin) / 2
    for column, (label, party) in enumerate((("From", sheet.seller), ("Bill to", sheet.buyer))):
        pdf.set_xy(pdf.l_margin + column * half, top)
        pdf.set_font(FONT, "B", 10)
        pdf.cell(half, 5, label, new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_font(FONT, "", 9)
        for text in _party_lines(party):
            pdf.set_x(pdf.l_margin + column * half)
            pdf.multi_cell(half - 4, 4.5, text, new_x=XPos.LEFT, new_y=YPos.NEXT)
    pdf.set_xy(pdf.l_margin, max(pdf.get_y(), top + 30))
    pdf.ln(4)

    def header() -> None:
        pdf.set_font(FONT, "B", 8)
        pdf.set_fill_color(235, 235, 235)
        for label, width, align in _COLUMNS:
            pdf.cell(width, 6, label, border="B", align=align, fill=True)
        pdf.ln(6)

    header()
    pdf.set_font(FONT, "", 8)
    for line in sheet.lines:
        if pdf.get_y() > pdf.h - 30:
            pdf.add_page()
            header()
            pdf.set_font(FONT, "", 8)
        values = (
            line.description,
            line.cluster_name,
            line.unit_type,
            units(line.num_units),
            unit_price(line.unit_price_pico),
            money(line.amount_cents),
        )
        if all(
            pdf.get_string_width(text) <= width - 2 * pdf.c_margin
            for text, (_, width, _) in zip(values, _COLUMNS, strict=True)
        ):
            # One line: plain cells (no line breaking to compute, several times faster).
            for text, (_, width, align) in zip(values, _COLUMNS, strict=True):
                pdf.cell(width, 4.5, text, align=align)
            pdf.ln(4.5)
            continue
        with pdf.table(
            col_widths=tuple(w for _, w, _ in _COLUMNS),
            text_align=tuple(a for _, _, a in _COLUMNS),
            first_row_as_headings=False,
            borders_layout="NONE",
            line_height=4.5,
            width=sum(w for _, w, _ in _COLUMNS),
            align="LEFT",
        ) as table:
            table.row(values)
    pdf.ln(3)

    totals: list[tuple[str, str]] = []
    if sheet.kind != "prepaid":
        totals.append(("Usage", money(sheet.usage_cents)))
        totals.append(("Paid by prepaid credit", money(-sheet.credits_applied_cents)))
    totals.append(("Subtotal", money(sheet.subtotal_cents)))
    totals.append((f"VAT ({sheet.vat_rate}%)", money(sheet.tax_cents)))
    totals.append(("Total", money(sheet.total_cents)))
    label_width = 50
    amount_width = 30
    for label, value in totals:
        bold = label == "Total"
        pdf.set_font(FONT, "B" if bold else "", 9)
        pdf.set_x(pdf.w - pdf.r_margin - label_width - amount_width)
        pdf.cell(label_width, 5, label, align="R")
        pdf.cell(amount_width, 5, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())


CSV_HEADER = (
    "position",
    "description",
    "cluster_name",
    "unit_type",
    "num_units",
    "unit_price_usd",
    "amount_cents",
    "amount_usd",
)


def render_csv(sheet: Sheet) -> bytes:
    """The lines of an invoice, one row each, amounts exact (cents and decimal USD)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for position, line in enumerate(sheet.lines):
        writer.writerow(
            (
                position,
                line.description,
                line.cluster_name,
                line.unit_type,
                line.num_units,
                format_usd_price(Pico(line.unit_price_pico)),
                line.amount_cents,
                _decimal(line.amount_cents),
            )
        )
    return out.getvalue().encode("utf-8")


def _decimal(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}{dollars}.{rest:02d}"
