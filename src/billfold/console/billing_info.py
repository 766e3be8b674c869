"""``/console/billing-info``: the billing info object of the API (spec §3) as a form.

Read with ``team_service.get_billing_info`` (``GET .../billing-info``); written with the API's own
request model (``SetBillingInfoRequest``: the same validators, so the same messages) and
``team_service.set_billing_info`` (``POST .../billing-info``). Every bad field is named next to its
input, and nothing changes.
"""

from __future__ import annotations

from functools import cache

import pycountry
from fastapi import APIRouter, Request
from fastapi.responses import Response

from billfold.console.auth import ConsoleForm, ConsoleViewer, require_write
from billfold.console.forms import FormErrors, error_of, validate
from billfold.console.service import Viewer, console_service
from billfold.console.web import page, redirect
from billfold.kit.errors import BillfoldError
from billfold.kit.http import DbSession
from billfold.teams.schemas import TAX_ID_TYPES, SetBillingInfoRequest
from billfold.teams.service import team_service

router = APIRouter(include_in_schema=False)

ADDRESS_FIELDS = ("line1", "line2", "city", "postalCode", "state", "country")
FIELDS = ("name", "email", *ADDRESS_FIELDS, "taxIdType", "taxNumber")


@cache
def countries() -> list[tuple[str, str]]:
    """(code, name) of every ISO 3166-1 country, by name."""
    return sorted(((c.alpha_2, c.name) for c in pycountry.countries), key=lambda c: c[1])


def _form_values(session: DbSession, viewer: Viewer) -> dict[str, str]:
    info = team_service.get_billing_info(session, viewer.team_id)
    address = info.address
    return {
        "name": info.name,
        "email": info.email,
        "line1": address.line1,
        "line2": address.line2,
        "city": address.city,
        "postalCode": address.postal_code,
        "state": address.state,
        "country": address.country,
        "taxIdType": info.tax_id_type,
        "taxNumber": info.tax_number,
    }


def _page(
    request: Request,
    viewer: Viewer,
    values: dict[str, str],
    *,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return page(
        request,
        viewer,
        "billing_info.html",
        title="Billing info",
        values=values,
        errors=errors or {},
        countries=countries(),
        tax_id_types=sorted(TAX_ID_TYPES),
        status_code=status_code,
    )


@router.get("/console/billing-info")
def billing_info_page(request: Request, viewer: ConsoleViewer, session: DbSession) -> Response:
    return _page(request, viewer, _form_values(session, viewer))


@router.post("/console/billing-info")
def save_billing_info(
    request: Request, viewer: ConsoleViewer, form: ConsoleForm, session: DbSession
) -> Response:
    require_write(viewer)
    values = {name: str(form.get(name) or "") for name in FIELDS}
    wire = {
        "billingInfo": {
            "name": values["name"],
            "email": values["email"],
            "address": {name: values[name] for name in ADDRESS_FIELDS},
            "taxIdType": values["taxIdType"],
            "taxNumber": values["taxNumber"],
        }
    }
    try:
        body = validate(SetBillingInfoRequest, wire)
        try:
            team_service.set_billing_info(session, viewer.team_id, body.billing_info)
        except BillfoldError as exc:
            raise error_of(exc, "name") from None
    except FormErrors as exc:
        return _page(request, viewer, values, errors=exc.errors, status_code=400)
    console_service.set_flash(session, viewer, "success", "Billing info saved.")
    return redirect("/console/billing-info")
