"""``/console/limits``: the team's soft spending limit (the hard limit shown as its ceiling) and
its alert settings.

The limits are the API's (``spend_service.limits``, ``GET .../postpaid/spending-limits``); the soft
limit is set with ``spend_service.set_soft_limit`` (``POST .../postpaid/spending-limits``: negative
or above the effective hard limit is refused, and the field says why). The alert settings are the
operator's ``/admin/v1/teams/{id}/alerts`` (``teams/alerts.py``): validated by the same request
model (``AlertSettingsRequest``) and stored by ``set_alert_settings``.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billfold.config import Settings
from billfold.console.auth import ConsoleForm, ConsoleViewer, require_write
from billfold.console.forms import FormErrors, dollars_text, error_of, parse_dollars, validate
from billfold.console.service import Viewer, console_service
from billfold.console.web import dollars, page, redirect
from billfold.kit.errors import BillfoldError
from billfold.kit.http import DbSession
from billfold.kit.money import Cents
from billfold.spend.service import spend_service
from billfold.teams.alerts import effective_emails, read_alert_settings, set_alert_settings
from billfold.teams.auth import AppSettings
from billfold.teams.schemas import AlertSettingsRequest

router = APIRouter(include_in_schema=False)

_SPLIT = re.compile(r"[\s,;]+")


def _page(
    request: Request,
    viewer: Viewer,
    session: DbSession,
    settings: Settings,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    limits = spend_service.limits(session, settings, viewer.team_id)
    alerts = read_alert_settings(session, viewer.team_id)
    shown = {
        "softLimit": dollars_text(limits.soft) if limits.soft_set else "",
        "spendThresholdsPercent": ", ".join(str(t) for t in alerts.spend_thresholds_percent),
        "lowCredit": dollars_text(alerts.low_credit_cents),
        "emails": "\n".join(alerts.emails),
    }
    return page(
        request,
        viewer,
        "limits.html",
        title="Limits",
        limits=limits,
        alerts=alerts,
        recipients=effective_emails(session, viewer.team_id),
        values=shown | (values or {}),
        errors=errors or {},
        status_code=status_code,
    )


@router.get("/console/limits")
def limits_page(
    request: Request, viewer: ConsoleViewer, session: DbSession, settings: AppSettings
) -> Response:
    return _page(request, viewer, session, settings)


@router.post("/console/limits/soft")
def set_soft_limit(
    request: Request,
    viewer: ConsoleViewer,
    form: ConsoleForm,
    session: DbSession,
    settings: AppSettings,
) -> Response:
    require_write(viewer)
    text = str(form.get("softLimit") or "")
    try:
        desired = parse_dollars(text, "softLimit")
        try:
            soft = spend_service.set_soft_limit(session, settings, viewer.team_id, desired)
        except BillfoldError as exc:
            if exc.code == "above_hard_limit":  # the API's message counts cents
                hard = spend_service.limits(session, settings, viewer.team_id).effective_hard
                message = f"Must not exceed the hard spending limit of {dollars(hard)}."
                raise FormErrors({"softLimit": message}) from None
            raise error_of(exc, "softLimit", only=True) from None
    except FormErrors as exc:
        return _page(
            request,
            viewer,
            session,
            settings,
            errors=exc.errors,
            values={"softLimit": text},
            status_code=400,
        )
    console_service.set_flash(
        session, viewer, "success", f"Soft spending limit set to {dollars(soft)}."
    )
    return redirect("/console/limits")


@router.post("/console/limits/alerts")
def set_alerts(
    request: Request,
    viewer: ConsoleViewer,
    form: ConsoleForm,
    session: DbSession,
    settings: AppSettings,
) -> Response:
    require_write(viewer)
    values = {
        name: str(form.get(name) or "")
        for name in ("spendThresholdsPercent", "lowCredit", "emails")
    }
    try:
        errors: dict[str, str] = {}
        thresholds: list[object] = []
        for part in _SPLIT.split(values["spendThresholdsPercent"].replace("%", "").strip()):
            if not part:
                continue
            if not part.isdigit():
                errors["spendThresholdsPercent"] = "Enter whole percents, e.g. 50, 80, 100."
                break
            thresholds.append(int(part))
        low_credit: Cents | None = None
        if values["lowCredit"].strip():
            try:
                low_credit = parse_dollars(values["lowCredit"], "lowCredit")
            except FormErrors as exc:
                errors |= exc.errors
        if errors:
            raise FormErrors(errors)
        body = _validate_alerts(
            {
                "spendThresholdsPercent": thresholds,
                "lowCreditCents": low_credit,
                "emails": [e for e in _SPLIT.split(values["emails"].strip()) if e],
            }
        )
        set_alert_settings(
            session,
            viewer.team_id,
            body.spend_thresholds_percent,
            Cents(body.low_credit_cents) if body.low_credit_cents is not None else None,
            body.emails,
        )
    except FormErrors as exc:
        return _page(
            request, viewer, session, settings, errors=exc.errors, values=values, status_code=400
        )
    console_service.set_flash(session, viewer, "success", "Alert settings saved.")
    return redirect("/console/limits")


def _validate_alerts(wire: dict[str, object]) -> AlertSettingsRequest:
    try:
        return validate(AlertSettingsRequest, wire)
    except FormErrors as exc:  # the form shows dollars where the API takes cents
        errors = {("lowCredit" if k == "lowCreditCents" else k): v for k, v in exc.errors.items()}
        raise FormErrors(errors) from None
