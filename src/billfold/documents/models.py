"""Stored invoice documents (append-only; migration 0016 makes the database refuse changes).

One row per invoice and kind (``pdf`` for every finalized invoice, ``csv`` for monthly invoices'
lines): the bytes as rendered at finalization, their SHA-256, and the buyer as it was then (the
team's billing info snapshot the PDF shows; never re-read later).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base

KIND_PDF = "pdf"
KIND_CSV = "csv"


class InvoiceDocument(Base):
    __tablename__ = "invoice_documents"

    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("invoices.id", ondelete="RESTRICT"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # pdf | csv
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    buyer: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
