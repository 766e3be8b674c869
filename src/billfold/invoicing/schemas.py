"""Wire models of the postpaid domain (spec §5, §8-§10 and the operator API)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from billfold.invoicing.models import KIND_PREPAID, Invoice, InvoiceLine
from billfold.invoicing.service import CloseSummary, InvoiceWithLines, TeamBilling
from billfold.invoicing.statement import Preview, StatementLine
from billfold.kit.money import Pico, pico_to_price_units
from billfold.kit.schemas import Cent, Int64, UtcDateTime, WireModel, cent
from billfold.spend.schemas import (
    SpendingLimitsOut,
    SpendStatusOut,
    limits_out,
    spend_status_out,
)

# --- invoice lines, preview (§8) -------------------------------------------------------------


class BillingCycleOut(WireModel):
    year: int
    month: int


class InvoiceLineOut(WireModel):
    cluster_name: str
    description: str
    unit_type: str
    unit_price: Int64  # wire price units: 10^-10 USD per unit
    num_units: Int64
    amount: Int64  # cents; the authoritative figure of the line


class CoreInvoice(WireModel):
    lines: list[InvoiceLineOut]
    amount_before_vat: Int64
    vat_cost: Int64
    amount_after_vat: Int64
    auto_credits_issued: Int64
    default_credits_issued: Int64
    total_with_corr: Cent
    prepaid_credits: Cent
    prepaid_credits_used: Cent
    amount_before_vat_limited: Cent
    amount_before_vat_unlimited: Cent
    amount_before_vat_limited_and_unlimited: Cent


class InvoicePreviewResponse(WireModel):
    core_invoice: CoreInvoice
    effective_spending_limit: Int64
    default_credits: Int64
    billing_cycle: BillingCycleOut


# --- invoices (§5) ---------------------------------------------------------------------------


class ChargerAttemptOut(WireModel):
    """A charge attempt on the Billing Management API: the upstream fields only (spec §5)."""

    ticket: int
    successful: bool
    payment_method_id: str


class OperatorChargerAttemptOut(ChargerAttemptOut):
    """A charge attempt on the operator API: why a failed attempt failed (left out on success)."""

    failure_code: str | None = None
    failure_message: str | None = None


class MonthlyFlavour(WireModel):
    billing_cycle: BillingCycleOut
    default_credits_issued: Cent
    auto_credits_issued: Cent
    prepaid_tokens_to_spend: Cent
    billing_items_csv_asset_key_suffix: str = ""
    corrections_csv_asset_key_suffix: str = ""


class PrepaidFlavour(WireModel):
    pass


class InvoiceOut(WireModel):
    """An invoice on the Billing Management API (spec §5): the upstream fields only."""

    team_id: str
    invoice_id: str
    invoice_number: str
    create_time: UtcDateTime
    invoice_status: str
    first_desired_next_cycle_ts: UtcDateTime
    # A Sequence, so that the operator's invoice can narrow it (a list is invariant).
    charger_attempts: Sequence[ChargerAttemptOut]
    lines: list[InvoiceLineOut]
    subtotal: Int64
    tax: Int64
    total: Int64
    invoice_pdf_asset_key_suffix: str = ""
    monthly: MonthlyFlavour | None = None
    prepaid: PrepaidFlavour | None = None


class OperatorInvoiceOut(InvoiceOut):
    """An invoice on the operator API: the customer's fields, attempts with their failures."""

    charger_attempts: Sequence[OperatorChargerAttemptOut]


class InvoiceList(WireModel):
    invoices: list[InvoiceOut]


# --- operator: spend check, team billing state, cycle close ----------------------------------


class TeamBillingOut(WireModel):
    team_id: str
    name: str
    create_time: UtcDateTime
    default_payment_method_id: str | None = None
    billing_country: str
    billing_cycle: BillingCycleOut
    # The live credit in §11's sign (credit negative): ``-creditLeft``. Not the customer API's
    # prepaid ``total``, which is the posted ledger (open cycles' credit use posts at close).
    balance: Cent
    credit_left: Cent
    cycle_spend: Cent
    cycle_credit_used: Cent
    cycle_postpaid: Cent
    spending_limits: SpendingLimitsOut
    spend_status: SpendStatusOut


class CloseCycleRequest(WireModel):
    year: int = Field(ge=2000, le=9999)
    month: int = Field(ge=1, le=12)


class ClosedInvoiceOut(WireModel):
    team_id: str
    invoice_id: str
    invoice_number: str
    invoice_status: str
    usage: Int64
    credits_applied: Int64
    subtotal: Int64
    tax: Int64
    total: Int64


class CloseTotalsOut(WireModel):
    invoices: int
    usage: Int64
    credits_applied: Int64
    subtotal: Int64
    tax: Int64
    total: Int64
    paid: Int64
    failed: Int64
    pending: Int64
    by_status: dict[str, int]


class CloseSummaryOut(WireModel):
    year: int
    month: int
    closed_at: UtcDateTime
    invoices: list[ClosedInvoiceOut]
    totals: CloseTotalsOut


def line_out(line: StatementLine | InvoiceLine) -> InvoiceLineOut:
    """A running (preview) or a finalized invoice line, in the wire's one line shape."""
    return InvoiceLineOut(
        cluster_name=line.cluster_name,
        description=line.description,
        unit_type=line.unit_type,
        unit_price=pico_to_price_units(Pico(line.unit_price_pico)),
        num_units=line.num_units,
        amount=line.amount_cents,
    )


def invoice_preview_out(preview: Preview) -> InvoicePreviewResponse:
    """The running invoice of the current cycle (spec §8), from its statement."""
    st = preview.statement
    return InvoicePreviewResponse(
        core_invoice=CoreInvoice(
            lines=[line_out(line) for line in st.lines],
            amount_before_vat=st.usage,
            vat_cost=st.vat,
            amount_after_vat=st.usage + st.vat,
            auto_credits_issued=0,
            default_credits_issued=0,
            total_with_corr=cent(st.usage),
            prepaid_credits=cent(-st.credit_available),
            prepaid_credits_used=cent(-st.credit_used),
            # Every SKU counts against the spending limit: the limited part is the postpaid
            # spend, nothing is unlimited (credit-paid usage is in prepaidCreditsUsed instead).
            amount_before_vat_limited=cent(st.postpaid),
            amount_before_vat_unlimited=cent(0),
            amount_before_vat_limited_and_unlimited=cent(st.postpaid),
        ),
        effective_spending_limit=preview.limits.effective,
        default_credits=0,
        billing_cycle=BillingCycleOut(year=st.year, month=st.month),
    )


def asset_path(invoice: Invoice, kind: str) -> str:
    """Where an invoice's document is downloaded (documents/endpoints.py), relative to the
    service root and without a leading slash (docs/api-decisions.md)."""
    return (
        f"teams/{invoice.team_id}/billing/"
        f"{invoice.cycle_year:04d}-{invoice.cycle_month:02d}-{invoice.id}.{kind}"
    )


def invoice_out(item: InvoiceWithLines) -> InvoiceOut:
    """An invoice as the Billing Management API lists it (upstream fields only)."""
    invoice: Invoice = item.invoice
    monthly = None
    prepaid = None
    if invoice.kind == KIND_PREPAID:
        prepaid = PrepaidFlavour()
    else:
        monthly = MonthlyFlavour(
            billing_cycle=BillingCycleOut(year=invoice.cycle_year, month=invoice.cycle_month),
            default_credits_issued=cent(0),
            auto_credits_issued=cent(0),
            prepaid_tokens_to_spend=cent(invoice.credits_applied_cents),
            billing_items_csv_asset_key_suffix=(
                asset_path(invoice, "csv") if "csv" in item.documents else ""
            ),
        )
    return InvoiceOut(
        team_id=str(invoice.team_id),
        invoice_id=invoice.id,
        invoice_number=invoice.number,
        create_time=invoice.created_at,
        invoice_status=invoice.status,
        first_desired_next_cycle_ts=invoice.due_at,
        charger_attempts=[
            ChargerAttemptOut(
                ticket=int(a.get("ticket", index)),
                successful=bool(a.get("successful", False)),
                payment_method_id=str(a.get("paymentMethodId", "")),
            )
            for index, a in enumerate(invoice.charge_attempts)
        ],
        lines=[line_out(line) for line in item.lines],
        subtotal=invoice.subtotal_cents,
        tax=invoice.tax_cents,
        total=invoice.total_cents,
        invoice_pdf_asset_key_suffix=asset_path(invoice, "pdf") if "pdf" in item.documents else "",
        monthly=monthly,
        prepaid=prepaid,
    )


def operator_invoice_out(item: InvoiceWithLines) -> OperatorInvoiceOut:
    """An invoice as the operator API shows it: a failed attempt also says why it failed."""
    fields = dict(invoice_out(item))
    attempts = fields.pop("charger_attempts")
    return OperatorInvoiceOut(
        **fields,
        charger_attempts=[
            OperatorChargerAttemptOut(
                **dict(attempt),
                failure_code=None if attempt.successful else str(a.get("failureCode", "")),
                failure_message=None if attempt.successful else str(a.get("failureMessage", "")),
            )
            for attempt, a in zip(attempts, item.invoice.charge_attempts, strict=True)
        ],
    )


def team_billing_out(state: TeamBilling) -> TeamBillingOut:
    """A team's billing state as the operator API shows it (live credit, this cycle, limits)."""
    cycle = state.position.cycle(state.year, state.month)
    credit_left = max(state.position.credit_left, 0)
    return TeamBillingOut(
        team_id=str(state.team.id),
        name=state.team.name,
        create_time=state.team.created_at,
        default_payment_method_id=state.team.default_payment_method_id,
        billing_country=state.country,
        billing_cycle=BillingCycleOut(year=state.year, month=state.month),
        balance=cent(-credit_left),
        credit_left=cent(credit_left),
        cycle_spend=cent(cycle.spend),
        cycle_credit_used=cent(cycle.credit_used),
        cycle_postpaid=cent(cycle.postpaid),
        spending_limits=limits_out(state.limits),
        spend_status=spend_status_out(state.decision),
    )


def close_summary_out(summary: CloseSummary) -> CloseSummaryOut:
    t = summary.totals
    return CloseSummaryOut(
        year=summary.year,
        month=summary.month,
        closed_at=summary.closed_at,
        invoices=[
            ClosedInvoiceOut(
                team_id=str(i.team_id),
                invoice_id=i.id,
                invoice_number=i.number,
                invoice_status=i.status,
                usage=i.usage_cents,
                credits_applied=i.credits_applied_cents,
                subtotal=i.subtotal_cents,
                tax=i.tax_cents,
                total=i.total_cents,
            )
            for i in summary.invoices
        ],
        totals=CloseTotalsOut(
            invoices=t.invoices,
            usage=t.usage,
            credits_applied=t.credits_applied,
            subtotal=t.subtotal,
            tax=t.tax,
            total=t.total,
            paid=t.paid,
            failed=t.failed,
            pending=t.pending,
            by_status=t.by_status,
        ),
    )
