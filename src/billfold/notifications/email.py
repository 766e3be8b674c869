"""E-mail: team-level events also go, as plain text + HTML, to the team's alert e-mails.

Same outbox, same deliverer: the fan-out that makes a message's webhook deliveries also makes one
``EmailDelivery`` per (message, recipient address) when ``BILLFOLD_SMTP_URL`` and
``BILLFOLD_EMAIL_FROM`` are set; they are claimed, leased, retried on the webhooks' schedule and
recorded exactly like webhook deliveries. Sending uses ``smtplib`` in a worker thread with a 10 s
limit, never in a request. ``Message-ID`` is derived from the outbox message id and the recipient,
so every retry of one e-mail carries the same id (receivers and mail stores de-duplicate on it).
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import exists, select, tuple_
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.notifications.models import EmailDelivery
from billfold.outbox.events import WEBHOOK_FAILED
from billfold.outbox.models import OutboxMessage
from billfold.teams.alerts import effective_emails

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
ERROR_LIMIT = 2048


def wall_clock() -> datetime:
    """As ``service.wall_clock``: delivery runs on the wall clock, not the billing clock."""
    return datetime.now(UTC)


# --- SMTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool  # smtps://: TLS from the first byte
    starttls: bool


def parse_smtp_url(url: str) -> SmtpTarget:
    parts = urlsplit(url)
    tls = parts.scheme == "smtps"
    query = parse_qs(parts.query)
    starttls = query.get("starttls", ["false"])[0].lower() in ("1", "true", "yes")
    return SmtpTarget(
        host=parts.hostname or "localhost",
        port=parts.port or (465 if tls else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        starttls=starttls,
    )


@dataclass(frozen=True)
class EmailJob:
    """One claimed e-mail delivery, with all the deliverer needs to send it."""

    message_id: str
    recipient: str
    subject: str
    text: str
    html: str


def email_message_id(message_id: str, recipient: str) -> str:
    """The ``Message-ID`` of one message to one recipient: the same on every retry."""
    digest = hashlib.sha256(recipient.casefold().encode()).hexdigest()[:16]
    return f"<{message_id}.{digest}@billfold>"


def build_email(job: EmailJob, sender: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = job.recipient
    mail["Subject"] = job.subject
    mail["Message-ID"] = email_message_id(job.message_id, job.recipient)
    mail["Date"] = formatdate(usegmt=True)
    mail.set_content(job.text)
    mail.add_alternative(job.html, subtype="html")
    return mail


def send_email(target: SmtpTarget, sender: str, job: EmailJob, timeout: float) -> str | None:
    """One SMTP attempt (blocking: run it in a worker thread). None on success, else the error."""
    mail = build_email(job, sender)
    try:
        smtp: smtplib.SMTP
        if target.tls:
            smtp = smtplib.SMTP_SSL(
                target.host, target.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(target.host, target.port, timeout=timeout)
        with smtp:
            if target.starttls and not target.tls:
                smtp.starttls(context=ssl.create_default_context())
            if target.username is not None:
                smtp.login(target.username, target.password or "")
            smtp.send_message(mail)
    except (smtplib.SMTPException, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
    return None


# --- templates --------------------------------------------------------------------------------


def format_cents(value: Any) -> str:
    """``"123456"`` -> ``$1,234.56`` (integer cents; never a float)."""
    try:
        cents = int(str(value))
    except ValueError:
        return str(value)
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}${whole:,}.{part:02d}"


def _cent_val(value: Any) -> Any:
    return value.get("val", "0") if isinstance(value, dict) else value


def _lines(message: OutboxMessage) -> tuple[str, list[str]]:
    """(subject, lines) for one event type: one small template each, a generic one otherwise."""
    data = message.data
    kind = message.type
    if kind == "topup.succeeded":
        return f"Top-up of {format_cents(data.get('amount'))} succeeded", [
            f"Your top-up of {format_cents(data.get('amount'))} was charged and credited.",
            f"Receipt: invoice {data.get('change', {}).get('invoiceNumber', '-')}.",
        ]
    if kind == "topup.failed":
        return f"Top-up of {format_cents(data.get('amount'))} failed", [
            f"Your top-up of {format_cents(data.get('amount'))} could not be charged.",
            "No credit was added. Check the payment method and try again.",
        ]
    if kind == "auto_topup.succeeded":
        return f"Auto top-up of {format_cents(data.get('amount'))} succeeded", [
            f"Your credit fell below your threshold: {format_cents(data.get('amount'))} was "
            "charged and credited.",
            f"Receipt: invoice {data.get('change', {}).get('invoiceNumber', '-')}.",
        ]
    if kind == "auto_topup.failed":
        return f"Auto top-up of {format_cents(data.get('amount'))} failed", [
            f"Your auto top-up of {format_cents(data.get('amount'))} could not be charged.",
            "No credit was added. Check the payment method.",
        ]
    if kind == "auto_topup.disabled":
        return "Auto top-up turned off", [
            f"After {data.get('consecutiveFailures')} failed charges in a row, auto top-up was "
            "turned off.",
            "Check the payment method, then turn auto top-up on again.",
        ]
    if kind.startswith("invoice."):
        invoice = data.get("invoice", {})
        number = invoice.get("invoiceNumber", "")
        total = format_cents(_cent_val(invoice.get("total", "0")))
        what = {
            "invoice.finalized": "is ready",
            "invoice.paid": "is paid",
            "invoice.payment_failed": "could not be charged",
        }.get(kind, kind)
        return f"Invoice {number} {what}", [
            f"Invoice {number} ({total}) {what}.",
            f"Status: {invoice.get('invoiceStatus', '-')}.",
        ]
    if kind == "spend.threshold_reached":
        return f"Spend reached {data.get('thresholdPercent')} % of your limit", [
            f"Spend this cycle: {format_cents(data.get('postpaidSpend'))} of "
            f"{format_cents(data.get('effectiveSpendingLimit'))} "
            f"({data.get('thresholdPercent')} %).",
        ]
    if kind == "spend.blocked":
        why = (
            "your prepaid credit is used up"
            if data.get("reason") == "prepaid_exhausted"
            else "this cycle's spend reached your spending limit"
        )
        return "Spending is blocked", [
            f"Spending is blocked: {why}.",
            f"Spend this cycle: {format_cents(data.get('postpaidSpend'))} of "
            f"{format_cents(data.get('effectiveSpendingLimit'))}.",
            "Add credit or raise the spending limit to spend again.",
        ]
    if kind == "spend.unblocked":
        return "Spending is possible again", ["Your team can spend again."]
    if kind == "credit.low":
        return "Your credit is low", [
            f"Your prepaid credit ({format_cents(data.get('creditLeft'))}) fell below your "
            f"alert threshold of {format_cents(data.get('lowCreditCents'))}.",
        ]
    if kind == "credit.depleted":
        return "Your credit is used up", ["Your prepaid credit reached zero."]
    return f"Billfold: {kind}", [f"Event {kind}."]


def render(message: OutboxMessage) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of a message."""
    subject, lines = _lines(message)
    footer = f"Team {message.data.get('teamId', '')} - event {message.type} ({message.id})"
    text = "\n\n".join([*lines, "--", footer]) + "\n"
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    body = (
        "<!doctype html><html><body>"
        f"<h1>{html.escape(subject)}</h1>{paragraphs}"
        f'<hr><p style="color:#777">{html.escape(footer)}</p></body></html>'
    )
    return subject, text, body


# --- the deliverer's steps (the twins of WebhookService's) ----------------------------------


def is_emailed(message: OutboxMessage) -> bool:
    """Team-level events are e-mailed; operator-level ones (no team, ``webhook.failed``) not."""
    return message.team_id is not None and message.type != WEBHOOK_FAILED


class EmailService:
    def fan_out(
        self, session: Session, settings: Settings, messages: Sequence[OutboxMessage]
    ) -> int:
        """One delivery per (message, recipient), due now; called by ``WebhookService.fan_out``
        inside its transaction, before the messages are marked dispatched."""
        if not settings.email_enabled():
            return 0
        now = wall_clock()
        max_attempts = len(settings.webhook_retry_delays()) + 1
        recipients: dict[uuid.UUID, tuple[str, ...]] = {}
        made = 0
        for message in messages:
            if not is_emailed(message) or message.team_id is None:
                continue
            if message.team_id not in recipients:
                recipients[message.team_id] = effective_emails(session, message.team_id)
            for address in dict.fromkeys(recipients[message.team_id]):
                session.add(
                    EmailDelivery(
                        message_id=message.id,
                        recipient=address,
                        state=PENDING,
                        attempts=0,
                        max_attempts=max_attempts,
                        next_attempt_at=now,
                        last_error=None,
                        created_at=now,
                        updated_at=now,
                    )
                )
                made += 1
        return made

    def due(self, session: Session) -> bool:
        return bool(
            session.scalar(
                select(
                    exists()
                    .where(EmailDelivery.state == PENDING)
                    .where(EmailDelivery.next_attempt_at <= wall_clock())
                )
            )
        )

    def claim(self, session: Session, settings: Settings, limit: int) -> list[EmailJob]:
        """Take up to ``limit`` due e-mail deliveries and lease them (as WebhookService.claim)."""
        now = wall_clock()
        due = (EmailDelivery.state == PENDING, EmailDelivery.next_attempt_at <= now)
        chosen = [
            tuple(row)
            for row in session.execute(
                select(EmailDelivery.message_id, EmailDelivery.recipient)
                .where(*due)
                .order_by(EmailDelivery.next_attempt_at)
                .limit(limit)
            ).all()
        ]
        if not chosen:
            return []
        taken = session.scalars(
            select(EmailDelivery)
            .where(tuple_(EmailDelivery.message_id, EmailDelivery.recipient).in_(chosen))
            .where(*due)
            .with_for_update(skip_locked=True)
        ).all()
        if not taken:
            return []
        messages = {
            m.id: m
            for m in session.scalars(
                select(OutboxMessage).where(OutboxMessage.id.in_({d.message_id for d in taken}))
            )
        }
        lease_end = now + timedelta(seconds=settings.webhook_lease_seconds)
        jobs = []
        for delivery in taken:
            delivery.next_attempt_at = lease_end
            subject, text, body = render(messages[delivery.message_id])
            jobs.append(EmailJob(delivery.message_id, delivery.recipient, subject, text, body))
        session.flush()
        return jobs

    def record(
        self, session: Session, settings: Settings, job: EmailJob, error: str | None
    ) -> None:
        """Book one real attempt: done, a retry after the schedule's next delay, or failed."""
        delivery = session.scalars(
            select(EmailDelivery)
            .where(EmailDelivery.message_id == job.message_id)
            .where(EmailDelivery.recipient == job.recipient)
            .with_for_update()
        ).one_or_none()
        if delivery is None:
            return
        now = wall_clock()
        delivery.attempts += 1
        delivery.last_error = error
        delivery.updated_at = now
        if delivery.state != PENDING:
            session.flush()
            return
        if error is None:
            delivery.state, delivery.next_attempt_at = SUCCEEDED, None
        elif delivery.attempts >= delivery.max_attempts:
            delivery.state, delivery.next_attempt_at = FAILED, None
        else:
            delays = settings.webhook_retry_delays() or (0,)
            delay = delays[min(delivery.attempts - 1, len(delays) - 1)]
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        session.flush()


email_service = EmailService()
