"""Alert settings per team: spend thresholds, the low-credit threshold, who is e-mailed.

The model and ``read_alert_settings`` sit in ``teams/`` (the lowest domain) so that the crossing
detection, which runs inside the ingestion transaction in ``spend/``/``ledger/``, can read them
without importing upward. The routes are the operator's team routes (``teams/endpoints.py``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from billfold.kit.clock import utc_now
from billfold.kit.money import Cents
from billfold.teams.models import BillingInfo, TeamAlertSettings
from billfold.teams.service import team_service

DEFAULT_THRESHOLDS_PERCENT: tuple[int, ...] = (50, 80, 100)


@dataclass(frozen=True)
class AlertSettings:
    """What applies to a team. ``emails`` as set (empty: the billing-info e-mail)."""

    spend_thresholds_percent: tuple[int, ...]
    low_credit_cents: Cents | None
    emails: tuple[str, ...]
    is_default: bool


def read_alert_settings(session: Session, team_id: uuid.UUID) -> AlertSettings:
    """The team's settings, or the defaults when never set (one primary-key read)."""
    row = session.get(TeamAlertSettings, team_id)
    if row is None:
        return AlertSettings(DEFAULT_THRESHOLDS_PERCENT, None, (), True)
    return AlertSettings(
        tuple(row.spend_thresholds_percent), row.low_credit_cents, tuple(row.emails), False
    )


def effective_emails(session: Session, team_id: uuid.UUID) -> tuple[str, ...]:
    """Who is e-mailed: the alert e-mails, else the billing-info e-mail, else nobody."""
    settings = read_alert_settings(session, team_id)
    if settings.emails:
        return settings.emails
    info = session.get(BillingInfo, team_id)
    if info is not None and info.email:
        return (info.email,)
    return ()


def set_alert_settings(
    session: Session,
    team_id: uuid.UUID,
    thresholds: list[int],
    low_credit_cents: Cents | None,
    emails: list[str],
) -> AlertSettings:
    """Replace the team's settings (already validated by the request model)."""
    team_service.get(session, team_id, for_update=True)
    row = session.get(TeamAlertSettings, team_id)
    if row is None:
        row = TeamAlertSettings(team_id=team_id)
        session.add(row)
    row.spend_thresholds_percent = list(thresholds)
    row.low_credit_cents = low_credit_cents
    row.emails = list(emails)
    row.updated_at = utc_now()
    session.flush()
    return read_alert_settings(session, team_id)
