"""HTTP surface of the postpaid domain: limits, preview and invoices (customers); the spend check,
team billing state, hard limits, cycle close and invoice charges (operator)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Query

from billfold.invoicing.schemas import (
    BillingCycleOut,
    CloseCycleRequest,
    CloseSummaryOut,
    CoreInvoice,
    InvoiceList,
    InvoicePreviewResponse,
    OperatorChargerAttemptOut,
    OperatorInvoiceOut,
    TeamBillingOut,
    close_summary_out,
    invoice_out,
    line_out,
)
from billfold.invoicing.service import (
    InvoiceWithLines,
    invoice_filter,
    invoicing_service,
)
from billfold.invoicing.statement import statement_service
from billfold.kit.errors import (
    Conflict,
    InvalidField,
    ResourceNotFound,
    ServiceUnavailable,
)
from billfold.kit.http import (
    DbSession,
    Sessions,
    end_request_transaction,
    parse_uuid,
)
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter, cent
from billfold.payments.endpoints import Provider
from billfold.spend.schemas import (
    limits_out,
    spend_status_out,
)
from billfold.teams.auth import AppSettings, BillingRead, Operator

_T = TypeVar("_T")

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])

# --- shaping -----------------------------------------------------------------------------------


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


# --- the Billing Management API (customers) ----------------------------------------------------


@billing_router.get(
    "/v1/billing/teams/{team_id}/postpaid/invoice/preview",
    response_model=InvoicePreviewResponse,
    responses=error_responses(ServiceUnavailable),
)
def preview_invoice(
    scope: BillingRead, session: DbSession, settings: AppSettings
) -> InvoicePreviewResponse:
    preview = statement_service.preview(session, settings, scope.team_id)
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


@admin_router.post(
    "/admin/v1/billing-cycles/close",
    response_model=CloseSummaryOut,
    responses=error_responses(ServiceUnavailable),
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
