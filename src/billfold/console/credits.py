"""``/console/credits``: the posted ledger, the top-up form and the auto top-up settings.

The ledger is the prepaid balance the API answers (``topup_service.balance``: the team's pending
top-ups settled with the provider first, then the posted ledger, ``GET .../prepaid/balance``); a
top-up is ``topup_service.top_up``, the service of ``POST .../prepaid/top-up``, so its rules
(minimum, maximum, a default card, one charge per idempotency key) are the API's. Both talk to the
payment provider, so they run in steps (kit.http.Steps): the viewer is read first, in the
request's transaction, and the flash message is written in a short transaction of its own.

Each top-up form carries an idempotency key made when the page was rendered: a form posted twice
(a double click, a reload of the POST) charges once and shows the first outcome.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billfold.console.auth import ConsoleForm, ConsoleViewer, require_write
from billfold.console.forms import FormErrors, error_of, parse_dollars
from billfold.console.service import Viewer, console_service
from billfold.console.web import dollars, page, redirect
from billfold.kit.db import transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.http import Steps
from billfold.ledger.schemas import FAILED_TO_CHARGE, SUCCEEDED
from billfold.payments.endpoints import Provider
from billfold.teams.auth import AppSettings
from billfold.topups.service import topup_service

router = APIRouter(include_in_schema=False)

ORIGINS = {
    "PURCHASE": "Credit purchase",
    "AUTO_PURCHASE": "Automatic credit purchase",
    "SPEND": "Usage paid from credits",
    "REFUND": "Refund of a purchase",
    "MANUAL": "Credit grant or adjustment",
}
# A purchase's status as a badge: (CSS class, label).
TOPUP_BADGES = {
    SUCCEEDED: ("paid", "Succeeded"),
    FAILED_TO_CHARGE: ("failed", "Declined"),
}


def _credits_page(
    request: Request,
    viewer: Viewer,
    steps: Steps,
    provider: Provider,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    balance = topup_service.balance(steps, provider, viewer.team_id)
    return page(
        request,
        viewer,
        "credits.html",
        title="Credits",
        balance=balance,
        posted_credit=-int(balance.total.val),
        origins=ORIGINS,
        topup_badges=TOPUP_BADGES,
        errors=errors or {},
        values=values or {},
        idempotency_key="console-" + secrets.token_urlsafe(18),
        status_code=status_code,
    )


@router.get("/console/credits")
def credits_page(
    request: Request, viewer: ConsoleViewer, steps: Steps, provider: Provider
) -> Response:
    return _credits_page(request, viewer, steps, provider)


@router.post("/console/credits/top-up")
def top_up(
    request: Request,
    viewer: ConsoleViewer,
    form: ConsoleForm,
    steps: Steps,
    provider: Provider,
    settings: AppSettings,
) -> Response:
    require_write(viewer)
    amount_text = str(form.get("amount") or "")
    key = str(form.get("idempotency_key") or "") or None
    try:
        cents = parse_dollars(amount_text, "amount")
        try:
            outcome = topup_service.top_up(steps, provider, settings, viewer.team_id, cents, key)
        except BillfoldError as exc:  # the API's 4xx/503: below the minimum, no card, ...
            raise error_of(exc, "amount", only=True) from None
    except FormErrors as exc:
        return _credits_page(
            request,
            viewer,
            steps,
            provider,
            errors=exc.errors,
            values={"amount": amount_text},
            status_code=400,
        )
    added = dollars(abs(int(outcome.change.amount.val)))
    if outcome.status == SUCCEEDED:
        number = outcome.change.invoice_number
        kind, text = (
            "success",
            f"Added {added} of credit." + (f" Receipt: invoice {number}." if number else ""),
        )
    elif outcome.status == FAILED_TO_CHARGE:
        reason = outcome.failure_message or "the card was declined"
        code = f" ({outcome.failure_code})" if outcome.failure_code else ""
        kind, text = "error", f"The top-up of {added} was declined: {reason}{code}."
    else:
        kind, text = (
            "info",
            f"The top-up of {added} is pending: the payment provider has not answered yet. "
            "This page shows the outcome once it has.",
        )
    with transaction(steps) as session:
        console_service.set_flash(session, viewer, kind, text)
    return redirect("/console/credits")
