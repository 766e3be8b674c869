"""Gapless invoice numbers: one counter row, locked, in the invoice's own transaction.

A number is drawn only in the transaction that creates the invoice; if that transaction rolls back,
so does the counter, so no number is ever skipped or used twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.invoicing.models import Invoice, InvoiceCounter
from billfold.kit.db import dialect_insert

COUNTER = "invoices"
PREFIX = "BF-"


def next_invoice_number(session: Session) -> str:
    insert = dialect_insert(session)
    session.execute(
        insert(InvoiceCounter)
        .values(name=COUNTER, next_value=1)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    counter = session.scalars(
        select(InvoiceCounter)
        .where(InvoiceCounter.name == COUNTER)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    value = counter.next_value
    counter.next_value = value + 1
    session.flush()
    return f"{PREFIX}{value:08d}"


def invoice_numbers(session: Session, invoice_ids: Sequence[str]) -> dict[str, str]:
    if not invoice_ids:
        return {}
    rows = session.execute(
        select(Invoice.id, Invoice.number).where(Invoice.id.in_(list(invoice_ids)))
    ).all()
    return {invoice_id: number for invoice_id, number in rows}
