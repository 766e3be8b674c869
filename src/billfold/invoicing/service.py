"""Postpaid: spending limits, the cycle statement (preview and invoice), the spend check, invoices,
and cycle close.

One piece of code states a cycle: :meth:`InvoicingService.statement` turns a team's cycle lines
(``cycle_lines``, rated at ingestion) and its credit position (``ledger.position``) into lines,
usage, the credit-paid share, the postpaid rest and VAT. The preview shows the statement of the
current cycle; cycle close writes the statement of the closed month into the invoice, so a preview
and the invoice it becomes can never disagree. Neither reads raw usage events: the cost of both is
the number of lines (SKU, price version and cluster) a team used in the month, not the number
of its events.

How a monthly invoice adds up (all cents)::

    sum(lines.amount)         = usage        (the whole spend of the cycle)
    monthly.prepaidTokensToSpend = credit_used  (the part credit paid; a SPEND ledger entry)
    subtotal = usage - credit_used = postpaid
    tax      = VAT on subtotal, rounded once, half up
    total    = subtotal + tax   (what is charged)

VAT applies to the postpaid part only (credit was bought, and taxed, as a prepayment). The rate is
``BILLFOLD_VAT_RATES`` for the team's billing country at the time of close (0 without an entry).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    and_,
    or_,
    select,
)
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.cycles.models import BillingCycle, ClosedPeriod
from billfold.cycles.periods import lock_month_exclusive, month_end
from billfold.figures.watch import watch
from billfold.invoicing.charges import invoice_charges
from billfold.invoicing.events import cycle_closed_event, invoice_event
from billfold.invoicing.models import (
    FAILED,
    KIND_MONTHLY,
    KIND_PREPAID,
    PAID,
    PENDING,
    WILL_NEVER_BE_CHARGED,
    Invoice,
    InvoiceLine,
)
from billfold.invoicing.numbers import next_invoice_number
from billfold.invoicing.statement import statement_service
from billfold.invoicing.vat import format_rate
from billfold.kit.clock import utc_now
from billfold.kit.db import (
    dialect_insert,
    transaction,
)
from billfold.kit.errors import (
    BadRequest,
    Conflict,
    InvalidField,
    ResourceNotFound,
)
from billfold.kit.money import Cents, cents_to_pico
from billfold.ledger.position import (
    CreditPosition,
)
from billfold.ledger.service import ledger_service
from billfold.outbox.events import (
    BILLING_CYCLE_CLOSED,
    INVOICE_FINALIZED,
)
from billfold.outbox.writer import enqueue
from billfold.payments.provider import (
    PaymentProvider,
)
from billfold.spend.limits import (
    SpendDecision,
    SpendingLimits,
    spend_decision,
    spending_limits,
)
from billfold.teams.models import Team
from billfold.teams.service import team_service

log = logging.getLogger("billfold.invoicing")


# --- VAT ----------------------------------------------------------------------------------------


# --- the statement of a cycle -------------------------------------------------------------------


@dataclass(frozen=True)
class TeamBilling:
    team: Team
    country: str
    year: int
    month: int
    limits: SpendingLimits
    position: CreditPosition
    decision: SpendDecision


# --- invoices -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceFilter:
    """At most one of the spec's filter groups (§5)."""

    cycle: tuple[int, int] | None = None
    since: tuple[int, int] | None = None
    invoice_ids: tuple[str, ...] | None = None


def invoice_filter(
    cycle_year: int | None,
    cycle_month: int | None,
    since_year: int | None,
    since_month: int | None,
    invoice_ids: Sequence[str] | None,
) -> InvoiceFilter:
    """Validate the query's filter groups: a group is complete or absent, and at most one is set."""
    groups: list[str] = []
    for name, year, month in (
        ("billingCycle", cycle_year, cycle_month),
        ("since", since_year, since_month),
    ):
        if (year is None) != (month is None):
            missing = f"{name}.month" if month is None else f"{name}.year"
            raise InvalidField(
                missing, f"is required with {name}.{'year' if month is None else 'month'}"
            )
        if year is not None and month is not None:
            if not 1 <= month <= 12:
                raise InvalidField(f"{name}.month", "must be between 1 and 12")
            if not 1 <= year <= 9999:
                raise InvalidField(f"{name}.year", "must be between 1 and 9999")
            groups.append(name)
    if invoice_ids:
        for invoice_id in invoice_ids:
            if "\x00" in invoice_id or len(invoice_id) > 100:
                raise InvalidField("invoiceIds.invoiceIds", "is not an invoice id")
        groups.append("invoiceIds")
    if len(groups) > 1:
        raise BadRequest(
            f"at most one filter group may be given; got {', '.join(groups)}",
            code="invalid_argument",
            field=groups[1],
        )
    if cycle_year is not None and cycle_month is not None:
        return InvoiceFilter(cycle=(cycle_year, cycle_month))
    if since_year is not None and since_month is not None:
        return InvoiceFilter(since=(since_year, since_month))
    if invoice_ids:
        return InvoiceFilter(invoice_ids=tuple(invoice_ids))
    return InvoiceFilter()


@dataclass(frozen=True)
class InvoiceWithLines:
    invoice: Invoice
    lines: tuple[InvoiceLine, ...]
    documents: frozenset[str] = frozenset()  # the kinds of its stored documents: pdf, csv


class InvoiceDocuments(Protocol):
    """Renders and stores the documents of a finalized invoice (the documents package, above
    invoicing, implements it; billfold/wiring.py hands it in)."""

    def finalized(self, session: Session, invoice_id: str) -> None:
        """Render and store this invoice's documents, in the caller's transaction, once."""
        ...

    def available(self, session: Session, invoice_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        """The kinds of stored documents of these invoices (absent: none)."""
        ...


# --- cycle close ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloseTotals:
    invoices: int
    usage: Cents
    credits_applied: Cents
    subtotal: Cents
    tax: Cents
    total: Cents
    paid: Cents
    failed: Cents
    pending: Cents
    by_status: dict[str, int]


@dataclass(frozen=True)
class CloseSummary:
    year: int
    month: int
    closed_at: datetime
    invoices: tuple[Invoice, ...]
    totals: CloseTotals

    def record(self) -> dict[str, Any]:
        """The compact form kept in ``closed_periods.summary``."""
        t = self.totals
        return {
            "invoices": t.invoices,
            "usage": t.usage,
            "creditsApplied": t.credits_applied,
            "subtotal": t.subtotal,
            "tax": t.tax,
            "total": t.total,
            "paid": t.paid,
            "failed": t.failed,
            "pending": t.pending,
            "byStatus": t.by_status,
        }


def _totals(invoices: Iterable[Invoice]) -> CloseTotals:
    items = list(invoices)
    by_status: dict[str, int] = {}
    for invoice in items:
        by_status[invoice.status] = by_status.get(invoice.status, 0) + 1

    def total_of(status: str) -> Cents:
        return Cents(sum(i.total_cents for i in items if i.status == status))

    return CloseTotals(
        invoices=len(items),
        usage=Cents(sum(i.usage_cents for i in items)),
        credits_applied=Cents(sum(i.credits_applied_cents for i in items)),
        subtotal=Cents(sum(i.subtotal_cents for i in items)),
        tax=Cents(sum(i.tax_cents for i in items)),
        total=Cents(sum(i.total_cents for i in items)),
        paid=total_of(PAID),
        failed=total_of(FAILED),
        pending=total_of(PENDING),
        by_status=dict(sorted(by_status.items())),
    )


def new_invoice_id() -> str:
    """The id of every invoice, monthly or receipt: ``inv_`` and 24 URL-safe characters.

    (Receipts issued before receipts were made here carry ``inv_`` and 24 hex digits; an id is
    opaque, so both stay valid.)
    """
    return "inv_" + secrets.token_urlsafe(18)


class LineSource(Protocol):
    """What an invoice line is made from: a statement line, or a receipt's :class:`LineDraft`."""

    @property
    def sku(self) -> str: ...
    @property
    def price_version_id(self) -> int | None: ...
    @property
    def cluster_name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def unit_type(self) -> str: ...
    @property
    def unit_price_pico(self) -> int: ...
    @property
    def num_units(self) -> int: ...
    @property
    def amount_cents(self) -> int: ...


@dataclass(frozen=True)
class LineDraft:
    sku: str
    price_version_id: int | None
    cluster_name: str
    description: str
    unit_type: str
    unit_price_pico: int
    num_units: int
    amount_cents: int


def _issue(session: Session, invoice: Invoice, lines: Iterable[LineSource]) -> Invoice:
    """The one way an invoice is created: its id (:func:`new_invoice_id`), its gapless number
    (drawn in this transaction, so a rollback gives it back) and its lines, in their order.

    The caller locks the team's credit account first when it also posts to the ledger (the lock
    order: account, then invoice counter).
    """
    invoice.id = new_invoice_id()
    invoice.number = next_invoice_number(session)
    session.add(invoice)
    session.flush()
    session.add_all(
        InvoiceLine(
            invoice_id=invoice.id,
            position=position,
            sku=line.sku,
            price_version_id=line.price_version_id,
            cluster_name=line.cluster_name,
            description=line.description,
            unit_type=line.unit_type,
            unit_price_pico=line.unit_price_pico,
            num_units=line.num_units,
            amount_cents=line.amount_cents,
        )
        for position, line in enumerate(lines)
    )
    session.flush()
    return invoice


def _month_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


class InvoicingService:
    def __init__(self) -> None:
        self._documents: InvoiceDocuments | None = None

    def use(self, documents: InvoiceDocuments | None) -> None:
        """Wire in the invoice documents (billfold/wiring.py does, for the app and the CLI).

        ``None`` finalizes invoices without documents (as before documents existed; the backfill
        command renders them later)."""
        self._documents = documents

    # --- spending limits ------------------------------------------------------------------------

    # --- statements: preview and invoice share this -----------------------------------------

    # --- the spend check ------------------------------------------------------------------------

    def team_billing(self, session: Session, settings: Settings, team_id: uuid.UUID) -> TeamBilling:
        team = team_service.get(session, team_id)
        now = utc_now()
        position = ledger_service.credit_position(session, team_id, now)
        limits = spending_limits(team, settings)
        return TeamBilling(
            team=team,
            country=statement_service.billing_country(session, team_id),
            year=now.year,
            month=now.month,
            limits=limits,
            position=position,
            decision=spend_decision(limits, position, now.year, now.month),
        )

    # --- invoices -------------------------------------------------------------------------------

    def list_invoices(
        self, session: Session, team_id: uuid.UUID, wanted: InvoiceFilter
    ) -> list[InvoiceWithLines]:
        """The team's invoices (monthly and prepaid receipts), newest first, with their lines."""
        stmt = select(Invoice).where(Invoice.team_id == team_id)
        if wanted.cycle is not None:
            stmt = stmt.where(
                Invoice.cycle_year == wanted.cycle[0], Invoice.cycle_month == wanted.cycle[1]
            )
        if wanted.since is not None:
            year, month = wanted.since
            stmt = stmt.where(
                or_(
                    Invoice.cycle_year > year,
                    and_(Invoice.cycle_year == year, Invoice.cycle_month >= month),
                )
            )
        if wanted.invoice_ids is not None:
            stmt = stmt.where(Invoice.id.in_(wanted.invoice_ids))
        invoices = list(
            session.scalars(stmt.order_by(Invoice.created_at.desc(), Invoice.number.desc()))
        )
        lines: dict[str, list[InvoiceLine]] = {i.id: [] for i in invoices}
        if invoices:
            for line in session.scalars(
                select(InvoiceLine)
                .where(InvoiceLine.invoice_id.in_(list(lines)))
                .order_by(InvoiceLine.invoice_id, InvoiceLine.position)
            ):
                lines[line.invoice_id].append(line)
        documents = self._available(session, list(lines))
        return [
            InvoiceWithLines(i, tuple(lines[i.id]), documents.get(i.id, frozenset()))
            for i in invoices
        ]

    def _available(self, session: Session, invoice_ids: list[str]) -> dict[str, frozenset[str]]:
        if self._documents is None or not invoice_ids:
            return {}
        return self._documents.available(session, invoice_ids)

    def _documents_of(self, session: Session, invoice: Invoice) -> None:
        if self._documents is not None:
            self._documents.finalized(session, invoice.id)

    def get_invoice(self, session: Session, invoice_id: str) -> InvoiceWithLines:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None:
            raise ResourceNotFound(f"invoice {invoice_id!r} not found", code="invoice_not_found")
        lines = session.scalars(
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice_id)
            .order_by(InvoiceLine.position)
        )
        documents = self._available(session, [invoice_id]).get(invoice_id, frozenset())
        return InvoiceWithLines(invoice, tuple(lines), documents)

    # --- cycle close ----------------------------------------------------------------------------

    def close_cycle(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        provider: PaymentProvider,
        year: int,
        month: int,
    ) -> CloseSummary:
        """Close a month: no more usage in it, one invoice per team with usage, charged once.

        Idempotent, and safe to run from several processes at once: the month mark is an insert
        that ignores a conflict; each team's cycle is finalized under its row lock and skipped once
        ``closed_at`` is set; an invoice is charged only while it is ``PENDING``, with its own id as
        the provider's idempotency key. A second run therefore finalizes nothing, charges nothing
        again, and returns the same summary. It does charge an invoice that a crash (or a provider
        timeout) left ``PENDING`` -- the provider answers such a repeat with the first charge.
        ``FAILED`` invoices are not retried here (a declined card would be charged again on every
        run); the operator retries them with :meth:`charge_invoice`.

        Each step commits on its own (the month mark, each team's invoice, each charge), so the
        card is charged outside any database transaction and only after the invoice is durable.
        """
        now = utc_now()
        if month_end(year, month) > now:
            raise BadRequest(
                f"{_month_key(year, month)} has not ended yet; a cycle is closed after its month",
                code="cycle_not_ended",
                field="month",
            )
        with transaction(sessions) as session:
            # Waits for every in-flight batch of the month (they hold this lock shared) and marks
            # the month closed; a later batch reads the mark after taking the lock and rejects
            # the month's events. From here on, the month's cycles no longer change.
            lock_month_exclusive(session, year, month)
            insert = dialect_insert(session)
            session.execute(
                insert(ClosedPeriod)
                .values(year=year, month=month, closed_at=now, summary={})
                .on_conflict_do_nothing(index_elements=["year", "month"])
            )
        with transaction(sessions) as session:
            team_ids = list(
                session.scalars(
                    select(BillingCycle.team_id)
                    .where(
                        BillingCycle.year == year,
                        BillingCycle.month == month,
                        BillingCycle.closed_at.is_(None),
                    )
                    .order_by(BillingCycle.team_id)
                )
            )
        for team_id in team_ids:
            with transaction(sessions) as session:
                self._finalize(session, settings, team_id, year, month)
        with transaction(sessions) as session:
            pending = list(
                session.scalars(
                    select(Invoice.id)
                    .where(
                        Invoice.kind == KIND_MONTHLY,
                        Invoice.cycle_year == year,
                        Invoice.cycle_month == month,
                        Invoice.status == PENDING,
                    )
                    .order_by(Invoice.number)
                )
            )
        for invoice_id in pending:
            invoice_charges.charge(sessions, provider, invoice_id, allowed=(PENDING,))
        with transaction(sessions) as session:
            summary = self.cycle_summary(session, year, month)
            period = session.get(ClosedPeriod, (year, month), with_for_update=True)
            if period is not None:
                if not period.summary:  # the first run to finish the close announces it
                    enqueue(session, BILLING_CYCLE_CLOSED, None, cycle_closed_event(summary))
                period.summary = summary.record()
        return summary

    def cycle_summary(self, session: Session, year: int, month: int) -> CloseSummary:
        period = session.get(ClosedPeriod, (year, month))
        if period is None:
            raise ResourceNotFound(
                f"{_month_key(year, month)} is not closed", code="cycle_not_closed"
            )
        invoices = tuple(
            session.scalars(
                select(Invoice)
                .where(
                    Invoice.kind == KIND_MONTHLY,
                    Invoice.cycle_year == year,
                    Invoice.cycle_month == month,
                )
                .order_by(Invoice.number)
            )
        )
        return CloseSummary(year, month, period.closed_at, invoices, _totals(invoices))

    def _finalize(
        self, session: Session, settings: Settings, team_id: uuid.UUID, year: int, month: int
    ) -> Invoice | None:
        """Turn one team's closed cycle into its SPEND entry and its monthly invoice.

        Locks, always in this order: the cycle row (so two closes finalize it once), the team's
        credit account (so no grant, top-up or expiry moves the credit between computing the
        cycle's credit share and posting it), then the invoice counter (gapless numbers).
        """
        cycle = session.scalars(
            select(BillingCycle)
            .where(
                BillingCycle.team_id == team_id,
                BillingCycle.year == year,
                BillingCycle.month == month,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if cycle is None or cycle.closed_at is not None:
            return None
        ledger_service.lock_account(session, team_id)
        now = utc_now()
        statement = statement_service.statement(session, settings, team_id, year, month, now)
        key = _month_key(year, month)
        invoice = _issue(
            session,
            Invoice(
                team_id=team_id,
                kind=KIND_MONTHLY,
                dedupe_key=f"monthly:{team_id}:{key}",
                status=PENDING if statement.total > 0 else WILL_NEVER_BE_CHARGED,
                cycle_year=year,
                cycle_month=month,
                topup_id=None,
                subtotal_cents=statement.postpaid,
                tax_cents=statement.vat,
                total_cents=statement.total,
                usage_cents=statement.usage,
                credits_applied_cents=statement.credit_used,
                vat_rate=format_rate(statement.vat_rate),
                charge_attempts=[],
                due_at=now,  # charged right after close
                created_at=now,
            ),
            statement.lines,
        )
        if statement.credit_used > 0:
            ledger_service.append(
                session,
                team_id,
                kind="spend",
                credit_cents=-statement.credit_used,
                idempotency_key=f"spend:{key}",
                reference=invoice.number,
                description=f"Usage of {key} paid by credit",
                cycle=(year, month),
                invoice_id=invoice.id,
            )
        cycle.closed_at = now
        cycle.invoice_id = invoice.id
        watch.moved(session, team_id)  # its figures, in the new cycle (spend.unblocked)
        session.flush()
        self._documents_of(session, invoice)
        enqueue(session, INVOICE_FINALIZED, team_id, invoice_event(session, invoice.id))
        return invoice

    # --- receipts -------------------------------------------------------------------------------

    def issue_receipt(
        self,
        session: Session,
        *,
        team_id: uuid.UUID,
        topup_id: uuid.UUID,
        amount: Cents,
        payment_method_id: str,
        at: datetime,
    ) -> Invoice:
        """The receipt of a paid top-up: a PAID invoice of kind "prepaid" with one line, issued
        once per top-up (a second call returns the first receipt).

        Prepaid credit carries no VAT here (VAT applies to postpaid usage, spec §8). The caller
        holds the team's account lock (it posts the purchase to the ledger in this transaction).
        """
        dedupe_key = f"prepaid:{topup_id}"
        existing = session.scalars(
            select(Invoice).where(Invoice.dedupe_key == dedupe_key)
        ).one_or_none()
        if existing is not None:
            return existing
        receipt = _issue(
            session,
            Invoice(
                team_id=team_id,
                kind=KIND_PREPAID,
                dedupe_key=dedupe_key,
                status=PAID,
                cycle_year=at.year,
                cycle_month=at.month,
                topup_id=topup_id,
                subtotal_cents=amount,
                tax_cents=0,
                total_cents=amount,
                usage_cents=0,
                credits_applied_cents=0,
                vat_rate="0",
                charge_attempts=[
                    {"ticket": 0, "successful": True, "paymentMethodId": payment_method_id}
                ],
                due_at=at,
                created_at=at,
            ),
            [
                LineDraft(
                    sku="prepaid-credits",
                    price_version_id=None,
                    cluster_name="",
                    description="Prepaid credits",
                    unit_type="",
                    unit_price_pico=cents_to_pico(amount),
                    num_units=1,
                    amount_cents=amount,
                )
            ],
        )
        self._documents_of(session, receipt)
        return receipt

    # --- charging -------------------------------------------------------------------------------

    def charge_invoice(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, invoice_id: str
    ) -> InvoiceWithLines:
        """Charge a ``PENDING`` invoice, or retry a ``FAILED`` one (operator action); the invoice
        as it is afterwards."""
        with transaction(sessions) as session:
            invoice = session.get(Invoice, invoice_id)
            if invoice is None:
                raise ResourceNotFound(
                    f"invoice {invoice_id!r} not found", code="invoice_not_found"
                )
            if invoice.status not in (PENDING, FAILED):
                raise Conflict(
                    f"invoice {invoice.number} is {invoice.status}; only PENDING or FAILED "
                    "invoices are charged",
                    code="invoice_not_chargeable",
                )
        invoice_charges.charge(sessions, provider, invoice_id, allowed=(PENDING, FAILED))
        with transaction(sessions) as session:
            return self.get_invoice(session, invoice_id)

    def settle_charge(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, charge_id: str
    ) -> Invoice | None:
        """Settle the ``PENDING`` invoice whose provider charge (a PaymentIntent) this is (webhook,
        reconciliation): asks the stored PaymentIntent, never creates one. None: no such invoice."""
        with transaction(sessions) as session:
            invoice_id = session.scalars(
                select(Invoice.id).where(
                    Invoice.provider_charge_id == charge_id, Invoice.status == PENDING
                )
            ).first()
        if invoice_id is None:
            return None
        invoice_charges.charge(sessions, provider, invoice_id, allowed=(PENDING,))
        with transaction(sessions) as session:
            return session.get(Invoice, invoice_id)


invoicing_service = InvoicingService()
