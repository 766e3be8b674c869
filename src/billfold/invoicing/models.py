"""Billing cycles, invoices and their lines.

``billing_cycles`` holds one row per team and UTC month with usage: its ``spend_cents`` is the sum
of the cycle's line amounts (see metering.models.CycleLine), kept current in the same transaction
as the events, which is what makes the spend check exact within one batch and a single read.

``closed_periods`` records each month the operator closed; usage and price versions inside a
closed month are rejected.

Invoices are immutable once finalized: lines and amounts never change; only the payment status and
the charge attempts move (migration 0003 makes the database refuse anything else: invoice lines are
append-only and an invoice's number, team, cycle and amounts cannot be updated). Invoice numbers
are gapless: drawn from ``invoice_counters`` under a row lock in the same transaction that creates
the invoice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ForeignKey,
    Index,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import (
    Base,
)
from billfold.kit.money import Cents, Pico


class InvoiceCounter(Base):
    __tablename__ = "invoice_counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_value: Mapped[int]


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        Index("ix_invoices_team_created", "team_id", "created_at"),
        Index("ix_invoices_provider_charge_id", "provider_charge_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # inv_...
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    number: Mapped[str] = mapped_column(String(40), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # monthly | prepaid
    # "monthly:<team>:<yyyy>-<mm>" or "prepaid:<topup id>": finalizing twice is impossible.
    dedupe_key: Mapped[str] = mapped_column(String(100), unique=True)
    # PENDING | PAID | FAILED | WILL_NEVER_BE_CHARGED | INVALID
    status: Mapped[str] = mapped_column(String(32))
    cycle_year: Mapped[int]
    cycle_month: Mapped[int]
    topup_id: Mapped[uuid.UUID | None]
    subtotal_cents: Mapped[Cents]
    tax_cents: Mapped[Cents]
    total_cents: Mapped[Cents]
    usage_cents: Mapped[Cents]  # the cycle's whole spend, credits included
    credits_applied_cents: Mapped[Cents]
    vat_rate: Mapped[str] = mapped_column(String(16))
    charge_attempts: Mapped[list[dict[str, Any]]]
    # A two-step provider's charge (Stripe's PaymentIntent), committed before it is confirmed.
    provider_charge_id: Mapped[str | None] = mapped_column(String(200))
    due_at: Mapped[datetime]
    created_at: Mapped[datetime]


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"

    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("invoices.id", ondelete="RESTRICT"), primary_key=True
    )
    position: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(200))
    price_version_id: Mapped[int | None]
    cluster_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(500))
    unit_type: Mapped[str] = mapped_column(String(200))
    unit_price_pico: Mapped[Pico]
    num_units: Mapped[int]
    amount_cents: Mapped[Cents]


PENDING = "PENDING"


PAID = "PAID"


FAILED = "FAILED"


WILL_NEVER_BE_CHARGED = "WILL_NEVER_BE_CHARGED"


KIND_MONTHLY = "monthly"


KIND_PREPAID = "prepaid"
