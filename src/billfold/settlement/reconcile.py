"""Reconciliation: settle charges left pending, and prove Billfold and Stripe agree.

``reconcile`` (``billfold payments reconcile``, and every serving process every few minutes with
Stripe) settles every top-up and invoice whose provider charge has been pending longer than a
threshold, by retrieving its PaymentIntent (the same path as a webhook). Younger ones may still be
in their first request's hands and are left alone.

Refunds left ``PENDING`` (a crash between the provider's refund and the ledger booking) are
settled the same way: the provider's refund whose metadata names the row is booked; none found
after the threshold means none was made, and the row is marked FAILED.

``check`` proves the invariant both ways: no credit without a succeeded PaymentIntent (every
purchase entry that names one is backed by it, amount for amount) and no succeeded PaymentIntent
without its ledger entry (every succeeded PaymentIntent whose metadata names a Billfold top-up is
that top-up's settled purchase; one naming an invoice is that invoice's successful attempt).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billfold.invoicing.models import Invoice
from billfold.invoicing.service import invoicing_service
from billfold.kit.clock import utc_now
from billfold.kit.db import transaction
from billfold.ledger.models import LedgerEntry
from billfold.payments.provider import PaymentProvider, ProviderUnavailable
from billfold.topups.models import Topup
from billfold.topups.refunds import refund_service
from billfold.topups.service import topup_service

if TYPE_CHECKING:  # the SDK is loaded with the provider only (payments/providers.py)
    from billfold.payments.stripe_provider import StripeProvider

log = logging.getLogger("billfold.reconcile")

PENDING_TOPUP = "TO_CHARGE"
PENDING_INVOICE = "PENDING"


@dataclass
class ReconcileReport:
    examined: int = 0
    settled: list[str] = field(default_factory=list)  # "<record>: <status>"
    still_pending: list[str] = field(default_factory=list)


def reconcile(
    sessions: sessionmaker[Session],
    provider: PaymentProvider,
    older_than: timedelta,
    *,
    team_id: uuid.UUID | None = None,
) -> ReconcileReport:
    report = ReconcileReport()
    cutoff = utc_now() - older_than
    with transaction(sessions) as session:
        stmt = select(Topup).where(
            Topup.status == PENDING_TOPUP,
            Topup.provider == provider.name,
            Topup.created_at <= cutoff,
        )
        invoices = select(Invoice.id, Invoice.number, Invoice.provider_charge_id).where(
            Invoice.status == PENDING_INVOICE,
            Invoice.provider_charge_id.is_not(None),
            Invoice.created_at <= cutoff,
        )
        if team_id is not None:
            stmt = stmt.where(Topup.team_id == team_id)
            invoices = invoices.where(Invoice.team_id == team_id)
        topups = list(session.scalars(stmt.order_by(Topup.created_at)))
        pending_invoices = list(session.execute(invoices.order_by(Invoice.created_at)))
        refunds = refund_service.pending(session, cutoff, provider.name, team_id)
    for topup in topups:
        report.examined += 1
        try:
            settled = topup_service.resolve(sessions, provider, topup)
        except ProviderUnavailable as exc:
            log.warning("top-up %s: provider unavailable (%s)", topup.id, exc)
            settled = topup
        label = f"top-up {topup.id}: {settled.status}"
        (report.still_pending if settled.status == PENDING_TOPUP else report.settled).append(label)
    for _invoice_id, number, charge_id in pending_invoices:
        report.examined += 1
        try:
            invoice = invoicing_service.settle_charge(sessions, provider, charge_id or "")
        except ProviderUnavailable as exc:
            log.warning("invoice %s: provider unavailable (%s)", number, exc)
            invoice = None
        status = invoice.status if invoice is not None else PENDING_INVOICE
        label = f"invoice {number}: {status}"
        (report.still_pending if status == PENDING_INVOICE else report.settled).append(label)
    for refund_id in refunds:
        # Looked up at the provider (the refund whose metadata names the row), never made again.
        report.examined += 1
        try:
            refund_status = refund_service.resolve(sessions, provider, refund_id)
        except ProviderUnavailable as exc:
            log.warning("refund %s: provider unavailable (%s)", refund_id, exc)
            refund_status = "PENDING"
        label = f"refund {refund_id}: {refund_status}"
        (report.still_pending if refund_status == "PENDING" else report.settled).append(label)
    return report


def check(
    sessions: sessionmaker[Session],
    provider: StripeProvider,
    *,
    team_ids: Collection[uuid.UUID] | None = None,
) -> list[str]:
    """What disagrees between the ledger and Stripe (empty: they agree). ``team_ids`` limits the
    check to those teams (one Stripe account shared by several Billfolds, as in the tests)."""
    teams = {str(t) for t in team_ids} if team_ids is not None else None
    problems: list[str] = []
    succeeded = {
        charge.charge_id: charge
        for charge in provider.succeeded_charges()
        if teams is None or charge.metadata.get("billfold_team") in teams
    }
    with transaction(sessions) as session:
        entries = select(LedgerEntry).where(
            LedgerEntry.kind == "purchase", LedgerEntry.reference.like("pi\\_%", escape="\\")
        )
        if team_ids is not None:
            entries = entries.where(LedgerEntry.team_id.in_(list(team_ids)))
        credited: dict[str, list[LedgerEntry]] = {}
        for entry in session.scalars(entries):
            credited.setdefault(entry.reference or "", []).append(entry)
        for reference, booked in credited.items():
            charge = succeeded.get(reference)
            if charge is None:
                problems.append(f"credit without a succeeded PaymentIntent: {reference}")
            elif len(booked) != 1 or booked[0].credit_cents != charge.amount:
                amounts = [e.credit_cents for e in booked]
                problems.append(f"{reference}: charged {charge.amount}, credited {amounts}")
        for charge_id, charge in succeeded.items():
            topup_id = charge.metadata.get("billfold_topup")
            invoice_id = charge.metadata.get("billfold_invoice")
            if topup_id is not None:
                topup = session.get(Topup, _uuid(topup_id))
                if topup is None or topup.provider_charge_id != charge_id:
                    problems.append(f"succeeded PaymentIntent {charge_id} of no top-up record")
                elif charge_id not in credited:
                    problems.append(
                        f"succeeded PaymentIntent {charge_id} without its ledger entry "
                        f"(top-up {topup_id} is {topup.status})"
                    )
            elif invoice_id is not None:
                invoice = session.get(Invoice, invoice_id)
                paid_by = [
                    a.get("chargeId")
                    for a in (invoice.charge_attempts if invoice is not None else [])
                    if a.get("successful")
                ]
                if invoice is None or invoice.status != "PAID" or charge_id not in paid_by:
                    state = invoice.status if invoice is not None else "missing"
                    problems.append(
                        f"succeeded PaymentIntent {charge_id} of invoice {invoice_id} ({state})"
                    )
    return problems


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
