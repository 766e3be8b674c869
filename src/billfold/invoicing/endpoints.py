"""HTTP surface of the postpaid domain: limits, preview and invoices (customers); the spend check,
team billing state, hard limits, cycle close and invoice charges (operator)."""

from __future__ import annotations

import uuid
from typing import Annotated, TypeVar

from fastapi import Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from billfold.invoicing.gateway import spend_answer, spend_status_json
from billfold.invoicing.limits import SpendDecision, SpendingLimits
from billfold.invoicing.models import Invoice, InvoiceLine
from billfold.invoicing.schemas import (
    BillingCycleOut,
    ChargerAttemptOut,
    CloseCycleRequest,
    ClosedInvoiceOut,
    CloseSummaryOut,
    CloseTotalsOut,
    CoreInvoice,
    InvoiceLineOut,
    InvoiceList,
    InvoiceOut,
    InvoicePreviewResponse,
    MonthlyFlavour,
    OperatorChargerAttemptOut,
    OperatorInvoiceOut,
    PrepaidFlavour,
    SetHardLimitRequest,
    SetSoftLimitRequest,
    SetSoftLimitResponse,
    SpendingLimitsOut,
    SpendingLimitsResponse,
    SpendStatusOut,
    TeamBillingOut,
)
from billfold.invoicing.service import (
    KIND_PREPAID,
    CloseSummary,
    InvoiceWithLines,
    StatementLine,
    invoice_filter,
    invoicing_service,
)
from billfold.kit.errors import (
    Conflict,
    InvalidField,
    ResourceNotFound,
    ServiceUnavailable,
    Unauthorized,
)
from billfold.kit.http import (
    DbSession,
    Sessions,
    bearer_token,
    end_request_transaction,
    parse_uuid,
)
from billfold.kit.money import Pico, pico_to_price_units
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter, cent
from billfold.payments.endpoints import Provider
from billfold.teams.auth import AppSettings, BillingRead, BillingWrite, Operator
from billfold.teams.service import OperatorTokenService

_T = TypeVar("_T")

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])
# The spend check's router (see "the spend check" below), included ahead of billing_router's own
# routes: FastAPI tries routes in order, and each one tried first costs every check a few us.
gateway_router = WireRouter()
billing_router.include_router(gateway_router)

# --- shaping -----------------------------------------------------------------------------------


def limits_out(limits: SpendingLimits) -> SpendingLimitsOut:
    return SpendingLimitsOut(
        hard_sl_override=None if limits.hard_override is None else cent(limits.hard_override),
        hard_sl_auto=cent(limits.hard_auto),
        effective_hard_sl=cent(limits.effective_hard),
        soft_sl=cent(limits.soft),
        effective_sl=cent(limits.effective),
    )


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


def spend_status_out(decision: SpendDecision) -> SpendStatusOut:
    return SpendStatusOut(
        allowed=decision.allowed,
        reason=decision.reason,
        prepaid_remaining=cent(decision.prepaid_remaining),
        postpaid_remaining=cent(decision.postpaid_remaining),
        cycle_spend=cent(decision.cycle_spend),
        postpaid_spend=cent(decision.postpaid_spend),
        effective_spending_limit=cent(decision.effective_limit),
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


# --- the Billing Management API (customers) ----------------------------------------------------


@billing_router.get(
    "/v1/billing/teams/{team_id}/postpaid/spending-limits",
    response_model=SpendingLimitsResponse,
)
def get_spending_limits(
    scope: BillingRead, session: DbSession, settings: AppSettings
) -> SpendingLimitsResponse:
    limits = invoicing_service.limits(session, settings, scope.team_id)
    return SpendingLimitsResponse(spending_limits=limits_out(limits))


@billing_router.post(
    "/v1/billing/teams/{team_id}/postpaid/spending-limits",
    response_model=SetSoftLimitResponse,
)
def set_spending_limit(
    body: SetSoftLimitRequest, scope: BillingWrite, session: DbSession, settings: AppSettings
) -> SetSoftLimitResponse:
    soft = invoicing_service.set_soft_limit(
        session, settings, scope.team_id, body.desired_soft_spending_limit.val
    )
    return SetSoftLimitResponse(this_bp_soft_spending_limit=cent(soft))


@billing_router.get(
    "/v1/billing/teams/{team_id}/postpaid/invoice/preview",
    response_model=InvoicePreviewResponse,
)
def preview_invoice(
    scope: BillingRead, session: DbSession, settings: AppSettings
) -> InvoicePreviewResponse:
    preview = invoicing_service.preview(session, settings, scope.team_id)
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


def either(json_name: _T | None, proto_name: _T | None, json: str, proto: str) -> _T | None:
    """A query parameter given by its JSON name or its proto field name, not both."""
    if json_name is not None and proto_name is not None:
        raise InvalidField(json, f"is given twice (also as {proto}); send it once")
    return json_name if json_name is not None else proto_name


@billing_router.get(
    "/v1/billing/teams/{team_id}/invoices",
    response_model=InvoiceList,
)
def list_invoices(
    scope: BillingRead,
    session: DbSession,
    cycle_year: Annotated[int | None, Query(alias="billingCycle.year")] = None,
    cycle_month: Annotated[int | None, Query(alias="billingCycle.month")] = None,
    since_year: Annotated[int | None, Query(alias="since.year")] = None,
    since_month: Annotated[int | None, Query(alias="since.month")] = None,
    invoice_ids: Annotated[list[str] | None, Query(alias="invoiceIds.invoiceIds")] = None,
    # The proto field names, which the upstream gateway (grpc-gateway) accepts as well: a client
    # using them must get its filter, not every invoice.
    cycle_year_: Annotated[
        int | None, Query(alias="billing_cycle.year", include_in_schema=False)
    ] = None,
    cycle_month_: Annotated[
        int | None, Query(alias="billing_cycle.month", include_in_schema=False)
    ] = None,
    invoice_ids_: Annotated[
        list[str] | None, Query(alias="invoice_ids.invoice_ids", include_in_schema=False)
    ] = None,
) -> InvoiceList:
    wanted = invoice_filter(
        either(cycle_year, cycle_year_, "billingCycle.year", "billing_cycle.year"),
        either(cycle_month, cycle_month_, "billingCycle.month", "billing_cycle.month"),
        since_year,
        since_month,
        either(invoice_ids, invoice_ids_, "invoiceIds.invoiceIds", "invoice_ids.invoice_ids"),
    )
    items = invoicing_service.list_invoices(session, scope.team_id, wanted)
    return InvoiceList(invoices=[invoice_out(item) for item in items])


# --- the spend check (operator; called by the gateway on every request) ---------------------

# The spend check is the one route on the platform's hot path, and it is built for that
# (invoicing/gateway.py has the whole story):
# * most checks never reach this route: GatewayMiddleware answers them before FastAPI's routing,
#   from the process's cache of answers or with one read. This route answers the rest -- a
#   generated operator token, SQLite, errors, a grant expiry to book -- the same way;
# * it does not go through admin_router, whose dependency chain (the request session, the settings,
#   the operator check) costs five hops to worker threads and a transaction per call. This router
#   has no dependency; the route checks the operator token itself. It is registered through
#   billing_router (app.py includes each domain's two routers) but is an operator route: the
#   operator token only, never a management key;
# * the read is one prepared statement, one round trip, on connections of its own that are never
#   pinged (InvoicingService.spend_snapshot, service._SpendReader); on PostgreSQL it runs on the
#   event loop: the indexed statement (~65 us) costs less than the hop to a worker thread and
#   back. Anything that can wait -- a SQLite read (the write lock), booking a due credit expiry
#   (the account lock) -- runs in the thread pool as usual.


# Bound to no engine, so it can run no query: OperatorTokenService.check compares a configured
# token in memory and never touches its session (were that to change, this would fail loudly).
# Creating and closing a session per check cost ~20-40 us of CPU.
_NO_DATABASE = Session()


def require_operator(request: Request) -> None:
    """teams.auth.operator without the request's transaction: a configured token is compared in
    memory, without a session; a generated one is looked up in a short session of its own."""
    token = bearer_token(request)
    state = request.app.state
    tokens = OperatorTokenService(state.settings.admin_token)
    if tokens.configured:
        ok = tokens.check(_NO_DATABASE, token)
    else:
        with state.sessionmaker() as session:
            ok = tokens.check(session, token)
    if not ok:
        raise Unauthorized("unknown operator token", code="invalid_operator_token")


def checked_spend_answer(request: Request) -> tuple[uuid.UUID, bytes | None]:
    require_operator(request)
    team_id = parse_uuid(request.path_params["team_id"])
    return team_id, spend_answer(request.app.state, team_id)


# The team id is read from the matched path, not declared as a parameter: FastAPI's validation of
# a declared one costs more than the rest of the route's plumbing (openapi_extra documents it).
@gateway_router.get(
    "/admin/v1/teams/{team_id}/spend-status",
    response_model=SpendStatusOut,
    tags=["operator"],
    # The token is checked by checked_spend_answer, not by a dependency: declared here.
    responses=error_responses(ResourceNotFound, ServiceUnavailable),
    openapi_extra={
        "security": [{"operatorToken": []}],
        "parameters": [
            {
                "name": "team_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "title": "Team Id"},
            }
        ],
    },
)
async def spend_status(request: Request) -> Response:
    state = request.app.state
    if invoicing_service.reads_inline(state.engine):
        team_id, body = checked_spend_answer(request)
    else:
        team_id, body = await run_in_threadpool(checked_spend_answer, request)
    if body is None:
        decision = await run_in_threadpool(
            invoicing_service.spend_status_booking_expiry,
            state.sessionmaker,
            state.settings,
            team_id,
        )
        body = spend_status_json(decision)
    return Response(body, media_type="application/json")


# --- operator ------------------------------------------------------------------------------------


@admin_router.get(
    "/admin/v1/teams/{team_id}",
    response_model=TeamBillingOut,
    response_model_exclude_none=True,
    responses=error_responses(ResourceNotFound),
)
def get_team(team_id: str, session: DbSession, settings: AppSettings) -> TeamBillingOut:
    state = invoicing_service.team_billing(session, settings, parse_uuid(team_id))
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


@admin_router.put(
    "/admin/v1/teams/{team_id}/hard-spending-limit",
    response_model=SpendingLimitsResponse,
    responses=error_responses(ResourceNotFound),
)
def set_hard_spending_limit(
    team_id: str, body: SetHardLimitRequest, session: DbSession, settings: AppSettings
) -> SpendingLimitsResponse:
    limits = invoicing_service.set_hard_limit(session, settings, parse_uuid(team_id), body.amount)
    return SpendingLimitsResponse(spending_limits=limits_out(limits))


@admin_router.post(
    "/admin/v1/billing-cycles/close",
    response_model=CloseSummaryOut,
)
def close_billing_cycle(
    body: CloseCycleRequest,
    session: DbSession,
    sessions: Sessions,
    settings: AppSettings,
    provider: Provider,
) -> CloseSummaryOut:
    end_request_transaction(session)  # close commits step by step in its own transactions
    summary = invoicing_service.close_cycle(sessions, settings, provider, body.year, body.month)
    return close_summary_out(summary)


@admin_router.post(
    "/admin/v1/invoices/{invoice_id}/charge",
    response_model=OperatorInvoiceOut,
    responses=error_responses(ResourceNotFound, Conflict),
)
def charge_invoice(
    invoice_id: str, session: DbSession, sessions: Sessions, provider: Provider
) -> OperatorInvoiceOut:
    """Charge a PENDING invoice or retry a FAILED one on the team's current default method."""
    end_request_transaction(session)
    invoicing_service.charge_invoice(sessions, provider, invoice_id)
    return operator_invoice_out(invoicing_service.get_invoice(session, invoice_id))
