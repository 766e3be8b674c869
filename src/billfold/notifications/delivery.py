"""The deliverer: sends the outbox's messages from the serving processes.

Every serving process runs one (``webhook_delivery`` in the app's lifespan); any number may run
against one database. A round, every ``BILLFOLD_WEBHOOK_POLL_SECONDS``:

1. a cheap read: is anything new or due? (an idle deliverer takes no write lock);
2. fan-out, one short transaction: each new message becomes one delivery per matching endpoint;
3. claim, one short transaction: due deliveries, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (on
   SQLite the one write lock serializes the claim), leased by moving their next attempt past
   ``BILLFOLD_WEBHOOK_LEASE_SECONDS``;
4. each claimed delivery is sent by its own task, outside any transaction, signed per Standard
   Webhooks, with a 10 s limit; its outcome is recorded in a short transaction of its own.

Sends run concurrently, at most ``BILLFOLD_WEBHOOK_CONCURRENCY`` per process and
``BILLFOLD_WEBHOOK_ENDPOINT_CONCURRENCY`` per endpoint, and the loop does not wait for them: a
slow or dead endpoint takes a few slots and never delays other endpoints, nor any request.

E-mail deliveries (``email.py``, with ``BILLFOLD_SMTP_URL``) go through the same round: made by
the same fan-out, claimed in the same transaction with the slots left, each sent by ``smtplib``
in a worker thread and recorded like a webhook attempt; all e-mails together take at most
``BILLFOLD_WEBHOOK_ENDPOINT_CONCURRENCY`` slots, like one endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from billfold import __version__
from billfold.config import Settings
from billfold.kit.db import transaction
from billfold.notifications.email import EmailJob, email_service, parse_smtp_url, send_email
from billfold.notifications.service import (
    RESPONSE_BODY_LIMIT,
    Job,
    Outcome,
    clean_response_body,
    webhook_service,
)

log = logging.getLogger("billfold.webhooks")
EMAIL_SLOT = "email"  # the busy counter of e-mail sends (as if one endpoint)
ROUND_GAP_SECONDS = 0.005  # after a send ends, before the round it wakes


def signed_headers(job: Job, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers: one ``v1,`` signature per live secret, space-separated."""
    signature = " ".join(Webhook(key).sign(job.message_id, at, job.body) for key in job.secrets)
    return {
        "webhook-id": job.message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": f"Billfold-Webhooks/{__version__}",
    }


async def send(client: httpx.AsyncClient, job: Job, timeout: float) -> Outcome:
    """One HTTP attempt. The webhook timestamp is the wall clock (receivers check it is recent),
    not Billfold's clock, which tests may freeze."""
    headers = signed_headers(job, datetime.now(UTC))
    started = time.monotonic()
    status: int | None = None
    body = b""
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", job.url, content=job.body, headers=headers) as reply:
                status = reply.status_code
                async for chunk in reply.aiter_bytes():
                    body += chunk
                    if len(body) >= RESPONSE_BODY_LIMIT:
                        break
    except TimeoutError:
        error = f"no answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    duration_ms = int((time.monotonic() - started) * 1000)
    if status is not None and error is not None:
        status = None  # the answer did not complete: not a success, whatever its status
    if status is not None and not 200 <= status < 300:
        error = f"HTTP {status}"
    return Outcome(status, clean_response_body(body), error, duration_ms)


class Deliverer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        read_sessions: sessionmaker[Session],
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.read_sessions = read_sessions
        self.settings = settings
        self.busy: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        # Set when a send ends: a loop whose last round claimed work goes again then, not a
        # whole poll later (what a burst of deliveries needs: slots, not rounds, bound it).
        self.freed: asyncio.Event | None = None
        self.smtp = (
            parse_smtp_url(settings.smtp_url)
            if settings.smtp_url and settings.email_enabled()
            else None
        )

    def claim_round(self, free: int, busy: dict[str, int]) -> tuple[list[Job], list[EmailJob]]:
        """Steps 1-3 of a round, in a worker thread: webhook deliveries first, then e-mail
        deliveries with the slots left (e-mails count as one more endpoint, ``EMAIL_SLOT``)."""
        with transaction(self.read_sessions) as session:
            undispatched, due = webhook_service.work_waiting(session)
        if undispatched:
            with transaction(self.sessions) as session:
                due = webhook_service.fan_out(session, self.settings) > 0 or due
        if not due:
            return [], []
        with transaction(self.sessions) as session:
            jobs = webhook_service.claim(session, self.settings, free, busy)
            email_free = min(
                free - len(jobs),
                self.settings.webhook_endpoint_concurrency - busy.get(EMAIL_SLOT, 0),
            )
            emails = (
                email_service.claim(session, self.settings, email_free)
                if email_free > 0 and self.smtp is not None
                else []
            )
            return jobs, emails

    def send_and_record_email(self, job: EmailJob) -> None:
        """One SMTP attempt and its outcome, in a worker thread (smtplib blocks)."""
        assert self.smtp is not None and self.settings.email_from is not None
        error = send_email(
            self.smtp, self.settings.email_from, job, self.settings.email_timeout_seconds
        )
        if error is not None:
            log.warning("e-mail of %s to %s failed: %s", job.message_id, job.recipient, error)
        with transaction(self.sessions) as session:
            email_service.record(session, self.settings, job, error)

    async def deliver_email(self, job: EmailJob) -> None:
        try:
            await asyncio.to_thread(self.send_and_record_email, job)
        except Exception:
            log.exception("e-mail delivery of %s to %s failed", job.message_id, job.recipient)
        finally:
            self.busy[EMAIL_SLOT] -= 1
            if self.busy[EMAIL_SLOT] <= 0:
                del self.busy[EMAIL_SLOT]
            self._freed()

    def record(self, job: Job, outcome: Outcome) -> None:
        with transaction(self.sessions) as session:
            webhook_service.record(session, self.settings, job, outcome)

    async def deliver(self, client: httpx.AsyncClient, job: Job) -> None:
        try:
            outcome = await send(client, job, self.settings.webhook_timeout_seconds)
            await asyncio.to_thread(self.record, job, outcome)
        except Exception:
            # Not recorded: the lease runs out and the delivery comes due again.
            log.exception("webhook delivery of %s to %s failed", job.message_id, job.endpoint_id)
        finally:
            self.busy[job.endpoint_id] -= 1
            if self.busy[job.endpoint_id] <= 0:
                del self.busy[job.endpoint_id]
            self._freed()

    def _freed(self) -> None:
        if self.freed is not None:
            self.freed.set()

    async def _pause(self, claimed: bool) -> None:
        """Until the next round: a poll, or -- when this round claimed work, so more may be
        due -- until a send ends (then a few ms more, so that one round takes the slots of the
        sends that end together), whichever comes first."""
        poll = self.settings.webhook_poll_seconds
        if not claimed or self.freed is None:
            await asyncio.sleep(poll)
            return
        self.freed.clear()
        try:
            await asyncio.wait_for(self.freed.wait(), poll)
        except TimeoutError:
            return
        await asyncio.sleep(min(poll, ROUND_GAP_SECONDS))

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.settings.webhook_concurrency)
        timeout = httpx.Timeout(self.settings.webhook_timeout_seconds)
        async with httpx.AsyncClient(
            limits=limits, timeout=timeout, follow_redirects=False
        ) as client:
            self.freed = asyncio.Event()
            while True:
                free = self.settings.webhook_concurrency - sum(self.busy.values())
                claimed = free <= 0  # every slot busy: go again when one is free
                if free > 0:
                    try:
                        jobs, emails = await asyncio.to_thread(
                            self.claim_round, free, dict(self.busy)
                        )
                    except Exception:
                        log.exception("webhook delivery round failed")
                        jobs, emails = [], []
                    for job in jobs:
                        self.busy[job.endpoint_id] += 1
                        self.start(self.deliver(client, job))
                    for email in emails:
                        self.busy[EMAIL_SLOT] += 1
                        self.start(self.deliver_email(email))
                    claimed = bool(jobs or emails)
                await self._pause(claimed)

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()  # unrecorded: leased, so sent again after the lease
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


@asynccontextmanager
async def webhook_delivery(app: FastAPI) -> AsyncIterator[None]:
    """Started with the app and stopped with it (see app.create_app's lifespan)."""
    settings: Settings = app.state.settings
    if not settings.webhooks_deliver:
        yield
        return
    deliverer = Deliverer(app.state.sessionmaker, app.state.read_sessionmaker, settings)
    task = asyncio.create_task(deliverer.run(), name="billfold-webhooks")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await deliverer.stop()
