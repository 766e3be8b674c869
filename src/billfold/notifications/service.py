"""Webhook endpoints and the life of a delivery (fan-out, claim, record, retry).

The deliverer (``delivery.py``) calls ``fan_out``, ``claim`` and ``record``, each in a short
transaction of its own; HTTP happens between them, outside any transaction.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import orjson
from sqlalchemy import delete, exists, select, tuple_
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.kit.audit import note
from billfold.kit.clock import rfc3339
from billfold.kit.errors import InvalidField, ResourceNotFound
from billfold.notifications.email import email_service
from billfold.notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from billfold.outbox.events import EVENT_TYPES, WEBHOOK_FAILED
from billfold.outbox.models import OutboxMessage
from billfold.outbox.writer import enqueue

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 500
RESPONSE_BODY_LIMIT = 2048
FAN_OUT_BATCH = 500


def wall_clock() -> datetime:
    """Delivery runs on the wall clock, not Billfold's clock (``kit.clock``, which tests freeze
    in other years): retries, leases and grace periods are about now, not about billing time.
    A message's own time (its ``timestamp``) is the billing clock's, like its cause's."""
    return datetime.now(UTC)


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def clean_response_body(raw: bytes) -> str:
    """What is kept of a response body: 2 KB at most, decoded leniently, NUL bytes stripped
    (PostgreSQL's text refuses them)."""
    return raw[:RESPONSE_BODY_LIMIT].decode("utf-8", "replace").replace("\x00", "")


def message_body(message: OutboxMessage) -> bytes:
    """The body every attempt of a message sends, byte for byte."""
    return orjson.dumps(
        {"type": message.type, "timestamp": rfc3339(message.created_at), "data": message.data}
    )


@dataclass(frozen=True)
class Job:
    """One claimed delivery, with all the deliverer needs to send it outside any transaction."""

    message_id: str
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    body: bytes


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    response_body: str
    error: str | None
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class DeliveryView:
    delivery: WebhookDelivery
    message: OutboxMessage
    attempts: Sequence[WebhookAttempt]


def _matches(endpoint: WebhookEndpoint, message: OutboxMessage) -> bool:
    if message.type == WEBHOOK_FAILED and message.data.get("endpointId") == endpoint.id:
        return False  # an endpoint is never told about its own failure (it is failing)
    return "*" in endpoint.event_types or message.type in endpoint.event_types


class WebhookService:
    # --- endpoints ------------------------------------------------------------------------------

    def check_url(self, settings: Settings, url: str) -> str:
        if len(url) > MAX_URL_LENGTH:
            raise InvalidField("url", f"at most {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise InvalidField("url", "not a valid URL") from None
        del port
        allowed = ("https", "http") if settings.webhooks_allow_http else ("https",)
        if parts.scheme not in allowed:
            hint = (
                ""
                if settings.webhooks_allow_http
                else " (http:// needs BILLFOLD_WEBHOOKS_ALLOW_HTTP)"
            )
            raise InvalidField("url", f"must be an https:// URL{hint}")
        if not parts.hostname or any(c.isspace() for c in url):
            raise InvalidField("url", "must name a host and contain no spaces")
        return url

    def check_event_types(self, event_types: list[str]) -> list[str]:
        if not event_types:
            raise InvalidField("eventTypes", 'must name at least one event type, or ["*"]')
        unknown = [t for t in event_types if t != "*" and t not in EVENT_TYPES]
        if unknown:
            raise InvalidField(
                "eventTypes", f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}"
            )
        return list(dict.fromkeys(event_types))

    def create(
        self,
        session: Session,
        settings: Settings,
        url: str,
        event_types: list[str],
        description: str,
    ) -> WebhookEndpoint:
        if len(description) > MAX_DESCRIPTION_LENGTH:
            raise InvalidField("description", f"at most {MAX_DESCRIPTION_LENGTH} characters")
        endpoint = WebhookEndpoint(
            id="we_" + secrets.token_urlsafe(18),
            url=self.check_url(settings, url),
            event_types=self.check_event_types(event_types),
            description=description,
            secret=new_secret(),
            previous_secret=None,
            previous_secret_expires_at=None,
            created_at=wall_clock(),
        )
        session.add(endpoint)
        session.flush()
        note(session, endpointId=endpoint.id)  # the audit trail (kit/audit.py): never the secret
        return endpoint

    def endpoints(self, session: Session) -> Sequence[WebhookEndpoint]:
        return session.scalars(
            select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        ).all()

    def get(
        self, session: Session, endpoint_id: str, *, for_update: bool = False
    ) -> WebhookEndpoint:
        query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
        if for_update:
            query = query.with_for_update()
        endpoint = session.scalars(query).one_or_none()
        if endpoint is None:
            raise ResourceNotFound(
                f"webhook endpoint {endpoint_id!r} not found", code="webhook_endpoint_not_found"
            )
        return endpoint

    def delete(self, session: Session, endpoint_id: str) -> None:
        """Delete the endpoint, its deliveries and their log: nothing more is sent to it."""
        endpoint = self.get(session, endpoint_id, for_update=True)
        session.execute(delete(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint.id))
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
        session.delete(endpoint)
        session.flush()

    def rotate_secret(
        self, session: Session, settings: Settings, endpoint_id: str
    ) -> WebhookEndpoint:
        """A new secret signs from now on; the current one keeps signing (a second signature in
        the same header) for the grace period, so the receiver can switch at its own pace."""
        endpoint = self.get(session, endpoint_id, for_update=True)
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = wall_clock() + timedelta(
            hours=settings.webhook_secret_grace_hours
        )
        endpoint.secret = new_secret()
        session.flush()
        return endpoint

    def deliveries(self, session: Session, endpoint_id: str, limit: int) -> list[DeliveryView]:
        """The endpoint's deliveries, newest message first, each with its attempts."""
        endpoint = self.get(session, endpoint_id)
        rows = session.execute(
            select(WebhookDelivery, OutboxMessage)
            .join(OutboxMessage, OutboxMessage.id == WebhookDelivery.message_id)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
            .order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
            .limit(limit)
        ).all()
        ids = [message.id for _, message in rows]
        attempts: dict[str, list[WebhookAttempt]] = {i: [] for i in ids}
        if ids:
            for attempt in session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.endpoint_id == endpoint.id)
                .where(WebhookAttempt.message_id.in_(ids))
                .order_by(WebhookAttempt.attempt, WebhookAttempt.id)
            ):
                attempts[attempt.message_id].append(attempt)
        return [DeliveryView(d, m, attempts[m.id]) for d, m in rows]

    def retry(self, session: Session, endpoint_id: str, message_id: str) -> DeliveryView:
        """Send again now. A failed (or succeeded) delivery gets one more attempt; a pending one
        is just made due now."""
        endpoint = self.get(session, endpoint_id)
        delivery = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
            .where(WebhookDelivery.message_id == message_id)
            .with_for_update()
        ).one_or_none()
        if delivery is None:
            raise ResourceNotFound(
                f"no delivery of message {message_id!r} to webhook endpoint {endpoint_id!r}",
                code="webhook_delivery_not_found",
            )
        now = wall_clock()
        if delivery.state != PENDING:
            delivery.state = PENDING
            delivery.max_attempts = delivery.attempts + 1
        delivery.next_attempt_at = now
        delivery.updated_at = now
        session.flush()
        message = session.get_one(OutboxMessage, message_id)
        return DeliveryView(delivery, message, [])

    # --- the deliverer's steps ------------------------------------------------------------------

    def work_waiting(self, session: Session) -> tuple[bool, bool]:
        """(messages to fan out, deliveries due): a cheap read, so an idle deliverer takes no
        write lock (SQLite has one for the whole database)."""
        now = wall_clock()
        undispatched = session.scalar(select(exists().where(OutboxMessage.dispatched_at.is_(None))))
        due = session.scalar(
            select(
                exists()
                .where(WebhookDelivery.state == PENDING)
                .where(WebhookDelivery.next_attempt_at <= now)
            )
        )
        return bool(undispatched), bool(due) or email_service.due(session)

    def fan_out(self, session: Session, settings: Settings) -> int:
        """Make a delivery of each new message to each matching endpoint, due now; mark the
        messages dispatched. Locked rows are another process's. An endpoint gets the messages
        fanned out after it was made (within a poll of their commit while deliverers run)."""
        messages = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.dispatched_at.is_(None))
            .order_by(OutboxMessage.created_at)
            .limit(FAN_OUT_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        if not messages:
            return 0
        endpoints = self.endpoints(session)
        now = wall_clock()
        max_attempts = len(settings.webhook_retry_delays()) + 1
        for message in messages:
            for endpoint in endpoints:
                if _matches(endpoint, message):
                    session.add(
                        WebhookDelivery(
                            message_id=message.id,
                            endpoint_id=endpoint.id,
                            state=PENDING,
                            attempts=0,
                            max_attempts=max_attempts,
                            next_attempt_at=now,
                            last_status_code=None,
                            last_error=None,
                            created_at=now,
                            updated_at=now,
                        )
                    )
        email_service.fan_out(session, settings, messages)
        for message in messages:
            message.dispatched_at = now
        session.flush()
        return len(messages)

    def claim(
        self, session: Session, settings: Settings, limit: int, busy: dict[str, int]
    ) -> list[Job]:
        """Take up to ``limit`` due deliveries, at most ``webhook_endpoint_concurrency`` per
        endpoint counting ``busy`` (this process's in-flight sends), and lease them: their next
        attempt moves past the lease, so if this process dies they come due again."""
        now = wall_clock()
        due = (WebhookDelivery.state == PENDING, WebhookDelivery.next_attempt_at <= now)
        # Choose from a plain read, then lock only what was chosen: locking every candidate
        # would hold rows this claim does not take away from the other deliverers.
        candidates = session.execute(
            select(WebhookDelivery.message_id, WebhookDelivery.endpoint_id)
            .where(*due)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit * 4)
        ).all()
        chosen: list[tuple[str, str]] = []
        load = dict(busy)
        for message_id, endpoint_id in candidates:
            if len(chosen) == limit:
                break
            if load.get(endpoint_id, 0) >= settings.webhook_endpoint_concurrency:
                continue
            load[endpoint_id] = load.get(endpoint_id, 0) + 1
            chosen.append((message_id, endpoint_id))
        if not chosen:
            return []
        taken = session.scalars(
            select(WebhookDelivery)
            .where(tuple_(WebhookDelivery.message_id, WebhookDelivery.endpoint_id).in_(chosen))
            .where(*due)  # still due: another deliverer may have leased it meanwhile
            .with_for_update(skip_locked=True)
        ).all()
        if not taken:
            return []
        lease_end = now + timedelta(seconds=settings.webhook_lease_seconds)
        messages = {
            m.id: m
            for m in session.scalars(
                select(OutboxMessage).where(OutboxMessage.id.in_({d.message_id for d in taken}))
            )
        }
        endpoints = {
            e.id: e
            for e in session.scalars(
                select(WebhookEndpoint).where(
                    WebhookEndpoint.id.in_({d.endpoint_id for d in taken})
                )
            )
        }
        jobs = []
        for delivery in taken:
            delivery.next_attempt_at = lease_end
            endpoint = endpoints[delivery.endpoint_id]
            keys = [endpoint.secret]
            if (
                endpoint.previous_secret is not None
                and endpoint.previous_secret_expires_at is not None
                and endpoint.previous_secret_expires_at > now
            ):
                keys.append(endpoint.previous_secret)
            jobs.append(
                Job(
                    message_id=delivery.message_id,
                    endpoint_id=endpoint.id,
                    url=endpoint.url,
                    secrets=tuple(keys),
                    body=message_body(messages[delivery.message_id]),
                )
            )
        session.flush()
        return jobs

    def record(self, session: Session, settings: Settings, job: Job, outcome: Outcome) -> None:
        """Book one real attempt and decide what comes next: done, a retry after the schedule's
        next delay, or failed for good (with a ``webhook.failed`` message of its own)."""
        delivery = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.message_id == job.message_id)
            .where(WebhookDelivery.endpoint_id == job.endpoint_id)
            .with_for_update()
        ).one_or_none()
        if delivery is None:  # the endpoint was deleted meanwhile
            return
        now = wall_clock()
        delivery.attempts += 1
        session.add(
            WebhookAttempt(
                message_id=job.message_id,
                endpoint_id=job.endpoint_id,
                attempt=delivery.attempts,
                status_code=outcome.status_code,
                response_body=outcome.response_body,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                created_at=now,
            )
        )
        delivery.last_status_code = outcome.status_code
        delivery.last_error = outcome.error
        delivery.updated_at = now
        if delivery.state != PENDING:  # settled by another sender meanwhile (a lease ran out)
            session.flush()
            return
        if outcome.succeeded:
            delivery.state, delivery.next_attempt_at = SUCCEEDED, None
        elif delivery.attempts >= delivery.max_attempts:
            delivery.state, delivery.next_attempt_at = FAILED, None
            self._announce_failure(session, delivery)
        else:
            delays = settings.webhook_retry_delays() or (0,)
            delay = delays[min(delivery.attempts - 1, len(delays) - 1)]
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        session.flush()

    @staticmethod
    def _announce_failure(session: Session, delivery: WebhookDelivery) -> None:
        message = session.get_one(OutboxMessage, delivery.message_id)
        if message.type == WEBHOOK_FAILED:
            return  # no failure notices about failure notices
        data = {
            "endpointId": delivery.endpoint_id,
            "messageId": message.id,
            "messageType": message.type,
            "attempts": delivery.attempts,
            "lastStatusCode": delivery.last_status_code,
            "lastError": delivery.last_error,
        }
        enqueue(session, WEBHOOK_FAILED, message.team_id, data)


def next_attempt_time(delivery: WebhookDelivery) -> datetime | None:
    return delivery.next_attempt_at if delivery.state == PENDING else None


webhook_service = WebhookService()
