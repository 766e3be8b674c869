"""HTTP surface of invoicing: the preview and invoices (customers); team billing state, cycle close
and invoice charges (operator)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Query

from billfold.invoicing.schemas import (
    CloseCycleRequest,
    CloseSummaryOut,
    InvoiceList,
    InvoicePreviewResponse,
    OperatorInvoiceOut,
    TeamBillingOut,
    close_summary_out,
    invoice_out,
    invoice_preview_out,
    operator_invoice_out,
    team_billing_out,
)
from billfold.invoicing.service import (
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
from billfold.kit.http import DbSession, Steps, parse_uuid
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.payments.endpoints import Provider
from billfold.teams.auth import AppSettings, BillingRead, Operator

_T = TypeVar("_T")

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])

# --- the Billing Management API (customers) ----------------------------------------------------


@billing_router.get(
    "/v1/billing/teams/{team_id}/postpaid/invoice/preview",
    response_model=InvoicePreviewResponse,
    responses=error_responses(ServiceUnavailable),
)
def preview_invoice(
    scope: BillingRead, session: DbSession, settings: AppSettings
) -> InvoicePreviewResponse:
    return invoice_preview_out(statement_service.preview(session, settings, scope.team_id))


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


# --- operator ------------------------------------------------------------------------------------


@admin_router.get(
    "/admin/v1/teams/{team_id}",
    response_model=TeamBillingOut,
    response_model_exclude_none=True,
    responses=error_responses(ResourceNotFound),
)
def get_team(team_id: str, session: DbSession, settings: AppSettings) -> TeamBillingOut:
    return team_billing_out(invoicing_service.team_billing(session, settings, parse_uuid(team_id)))


@admin_router.post(
    "/admin/v1/billing-cycles/close",
    response_model=CloseSummaryOut,
    responses=error_responses(ServiceUnavailable),
)
def close_billing_cycle(
    body: CloseCycleRequest, steps: Steps, settings: AppSettings, provider: Provider
) -> CloseSummaryOut:
    # Each invoice and each charge commits in a step of its own (InvoicingService.close_cycle).
    summary = invoicing_service.close_cycle(steps, settings, provider, body.year, body.month)
    return close_summary_out(summary)


@admin_router.post(
    "/admin/v1/invoices/{invoice_id}/charge",
    response_model=OperatorInvoiceOut,
    responses=error_responses(ResourceNotFound, Conflict),
)
def charge_invoice(invoice_id: str, steps: Steps, provider: Provider) -> OperatorInvoiceOut:
    """Charge a PENDING invoice or retry a FAILED one on the team's current default method."""
    return operator_invoice_out(invoicing_service.charge_invoice(steps, provider, invoice_id))
