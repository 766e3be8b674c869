"""``/console/payment-methods``: the team's cards (the default first), "make default", adding one.

The list and the default are the API's (``payment_method_service.list``, the order of
``GET .../payment-method``; ``set_default``, ``POST .../payment-method/default``). Adding a card
depends on the provider:

* the sandbox takes a test card's number, as the operator route does (``add_card``);
* Stripe never lets a card number reach Billfold: the page loads Stripe.js from Stripe (the one
  asset the console does not ship, docs/api-decisions.md), which collects the card in Stripe's own
  frame and confirms a SetupIntent made here (``payment_method_service.setup``, the service of the
  payment-methods setup route); the PaymentMethod it made is then attached
  (``payment_method_service.attach``). Stripe's ``setup_intent.succeeded`` webhook would add it
  too; attaching twice keeps one.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from billfold.config import Settings
from billfold.console.auth import ConsoleForm, ConsoleViewer, not_found, require_write
from billfold.console.forms import FormErrors, error_of, validate
from billfold.console.service import Viewer, console_service
from billfold.console.web import page, redirect, security_headers
from billfold.kit.errors import BillfoldError, ResourceNotFound
from billfold.kit.http import DbSession
from billfold.payments.endpoints import Provider
from billfold.payments.provider import CardInput, PaymentProvider
from billfold.payments.schemas import AddCardRequest
from billfold.payments.service import payment_method_service
from billfold.teams.auth import AppSettings
from billfold.teams.service import team_service

router = APIRouter(include_in_schema=False)

STRIPE_JS = "https://js.stripe.com/v3/"


def stripe_js(settings: Settings) -> tuple[str, dict[str, str]]:
    """Stripe.js's address and the page's CSP additions for it. With ``BILLFOLD_STRIPE_API_BASE``
    (a Stripe fake such as localstripe, which serves its own Stripe.js at ``/js.stripe.com/v3/``)
    both point there."""
    if settings.stripe_api_base:
        base = settings.stripe_api_base.rstrip("/")
        return f"{base}/js.stripe.com/v3/", {
            "script-src": base,
            "frame-src": base,
            "connect-src": base,
        }
    return STRIPE_JS, {
        "script-src": "https://js.stripe.com",
        "frame-src": "https://js.stripe.com",
        "connect-src": "https://api.stripe.com",
    }


def _methods_page(
    request: Request,
    viewer: Viewer,
    session: DbSession,
    provider: PaymentProvider,
    settings: Settings,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    team = team_service.get(session, viewer.team_id)
    methods = payment_method_service.list(session, team)
    csp: dict[str, str] | None = None
    stripe: dict[str, str] | None = None
    if not provider.accepts_raw_cards:
        script, csp = stripe_js(settings)
        stripe = {
            "script": script,
            "publishableKey": getattr(provider, "publishable_key", ""),
            "setupUrl": "/console/payment-methods/setup",
        }
    return page(
        request,
        viewer,
        "payment_methods.html",
        title="Payment methods",
        methods=methods,
        default_id=team.default_payment_method_id,
        stripe=stripe,
        errors=errors or {},
        values=values or {},
        status_code=status_code,
        csp=csp,
    )


@router.get("/console/payment-methods")
def payment_methods_page(
    request: Request,
    viewer: ConsoleViewer,
    session: DbSession,
    provider: Provider,
    settings: AppSettings,
) -> Response:
    return _methods_page(request, viewer, session, provider, settings)


@router.post("/console/payment-methods/default")
def make_default(viewer: ConsoleViewer, form: ConsoleForm, session: DbSession) -> Response:
    require_write(viewer)
    method_id = str(form.get("payment_method_id") or "")
    try:
        payment_method_service.set_default(session, viewer.team_id, method_id)
    except ResourceNotFound:
        raise not_found("payment method") from None
    console_service.set_flash(session, viewer, "success", "Default card changed.")
    return redirect("/console/payment-methods")


@router.post("/console/payment-methods/cards")
def add_test_card(
    request: Request,
    viewer: ConsoleViewer,
    form: ConsoleForm,
    session: DbSession,
    provider: Provider,
    settings: AppSettings,
) -> Response:
    """The sandbox's test-card form (the operator route's rules: AddCardRequest, add_card)."""
    require_write(viewer)
    values = {name: str(form.get(name) or "") for name in ("cardNumber", "expMonth", "expYear")}
    values["cvc"] = ""  # never echoed back
    try:
        if not provider.accepts_raw_cards:
            raise FormErrors({"cardNumber": "Card numbers are entered in Stripe's card form."})
        wire = {
            "cardNumber": values["cardNumber"].replace(" ", ""),
            "expMonth": values["expMonth"].strip() or None,
            "expYear": values["expYear"].strip() or None,
            "cvc": str(form.get("cvc") or ""),
            "makeDefault": form.get("makeDefault") == "on",
        }
        body = validate(AddCardRequest, wire)
        missing = {
            name: "Is required."
            for name, value in (
                ("cardNumber", body.card_number),
                ("expMonth", body.exp_month),
                ("expYear", body.exp_year),
            )
            if value is None
        }
        if missing:
            raise FormErrors(missing)
        assert body.card_number is not None and body.exp_month and body.exp_year
        team = team_service.get(session, viewer.team_id, for_update=True)
        card = CardInput(body.card_number, body.exp_month, body.exp_year, body.cvc)
        try:
            method = payment_method_service.add_card(
                session, provider, team, card, make_default=body.make_default
            )
        except BillfoldError as exc:  # declined on attach (402), the provider down (503)
            raise error_of(exc, "cardNumber") from None
    except FormErrors as exc:
        session.rollback()  # a refused card changes nothing (a customer made for it included)
        return _methods_page(
            request,
            viewer,
            session,
            provider,
            settings,
            errors=exc.errors,
            values=values,
            status_code=400,
        )
    console_service.set_flash(
        session, viewer, "success", f"Added the {method.brand} card ending {method.last4}."
    )
    return redirect("/console/payment-methods")


@router.post("/console/payment-methods/setup")
def setup_intent(
    viewer: ConsoleViewer, form: ConsoleForm, session: DbSession, provider: Provider
) -> Response:
    """A SetupIntent for Stripe.js's card form: its client secret, as JSON (the page's script
    asks for it when the form is submitted, so a page view creates nothing at Stripe)."""
    require_write(viewer)
    team = team_service.get(session, viewer.team_id, for_update=True)
    try:
        secret = payment_method_service.setup(session, provider, team)
    except BillfoldError as exc:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=security_headers())
    return JSONResponse({"clientSecret": secret}, headers=security_headers())


@router.post("/console/payment-methods/attach")
def attach_card(
    request: Request,
    viewer: ConsoleViewer,
    form: ConsoleForm,
    session: DbSession,
    provider: Provider,
    settings: AppSettings,
) -> Response:
    """The PaymentMethod Stripe.js made (its id only, never the card) attached to the team."""
    require_write(viewer)
    reference = str(form.get("payment_method_id") or "")
    try:
        validate(AddCardRequest, {"providerPaymentMethodId": reference or None})
        if not reference:
            raise FormErrors({"card": "The card form did not complete; try again."})
        team = team_service.get(session, viewer.team_id, for_update=True)
        try:
            method = payment_method_service.attach(
                session, provider, team, reference, make_default=form.get("makeDefault") == "on"
            )
        except BillfoldError as exc:
            raise error_of(exc, "card") from None
    except FormErrors as exc:
        errors = {"card": next(iter(exc.errors.values()))}
        return _methods_page(
            request, viewer, session, provider, settings, errors=errors, status_code=400
        )
    console_service.set_flash(
        session, viewer, "success", f"Added the {method.brand} card ending {method.last4}."
    )
    return redirect("/console/payment-methods")
