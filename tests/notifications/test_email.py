"""E-mail through a real SMTP server (``aiosmtpd`` on loopback) on both databases: one e-mail
per recipient with text and HTML parts and a stable Message-ID, a refused attempt retried with
the same Message-ID, nothing without SMTP settings."""

from __future__ import annotations

import hashlib
import time
from email.message import EmailMessage

from sqlalchemy import func, select

from billfold.kit.db import make_engine
from billfold.notifications.models import EmailDelivery
from billfold.outbox.models import OutboxMessage
from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS
from tests.conftest import Api
from tests.notifications.conftest import top_up
from tests.notifications.smtp import Mailbox
from tests.teams.test_billing_info import GOOD


def _parts(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.iter_parts()}


def _to(address: str) -> object:
    return lambda rcpt, m: rcpt == [address]


def test_a_topup_is_emailed_once_to_each_recipient(mail: tuple[Api, Mailbox]) -> None:
    api, mailbox = mail
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
    alerts = {"emails": ["ops@acme.example", "cfo@acme.example"]}
    assert api.admin("PUT", f"/admin/v1/teams/{team_id}/alerts", json=alerts).status_code == 200
    assert top_up(api, team_id, headers, 123456).status_code == 200
    got = mailbox.wait(2)
    time.sleep(0.5)  # nothing more comes: one e-mail per recipient
    assert len(mailbox.accepted) == 2
    assert sorted(r for rcpt, _ in got for r in rcpt) == ["cfo@acme.example", "ops@acme.example"]
    ids = set()
    for (recipient,), message in got:
        assert message["To"] == recipient
        assert message["From"] == "Billfold <billing@billfold.example>"
        assert message["Subject"] == "Top-up of $1,234.56 succeeded"
        assert message.get_content_type() == "multipart/alternative"
        parts = _parts(message)
        assert set(parts) == {"text/plain", "text/html"}
        assert "$1,234.56" in parts["text/plain"] and "$1,234.56" in parts["text/html"]
        assert team_id in parts["text/plain"]
        message_id = message["Message-ID"]
        digest = hashlib.sha256(recipient.encode()).hexdigest()[:16]
        assert message_id.startswith("<msg_") and message_id.endswith(f".{digest}@billfold>")
        ids.add(message_id.split(".")[0])
    assert len(ids) == 1  # one outbox message, two recipients


def test_the_billing_info_email_is_the_default_and_none_means_no_email(
    mail: tuple[Api, Mailbox],
) -> None:
    api, mailbox = mail
    silent, silent_headers = api.team_with_key()  # neither alert e-mails nor billing info
    api.add_card(silent, CARD_ALWAYS_SUCCEEDS)
    assert top_up(api, silent, silent_headers, 1000).status_code == 200
    team_id, headers = api.team_with_key()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info", headers=headers, json={"billingInfo": GOOD}
    )
    assert response.status_code == 200
    api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
    assert top_up(api, team_id, headers, 2500).status_code == 200
    (got,) = mailbox.wait(1)
    assert got[0] == ["billing@acme.example"]
    assert got[1]["Subject"] == "Top-up of $25.00 succeeded"
    time.sleep(0.5)
    assert len(mailbox.accepted) == 1  # the silent team's top-up e-mailed nobody


def test_a_refused_email_is_retried_with_the_same_message_id(mail: tuple[Api, Mailbox]) -> None:
    api, mailbox = mail
    mailbox.refuse = 1
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
    api.admin("PUT", f"/admin/v1/teams/{team_id}/alerts", json={"emails": ["ops@acme.example"]})
    assert top_up(api, team_id, headers, 700).status_code == 200
    (got,) = mailbox.wait(1)
    assert len(mailbox.refused) == 1
    assert got[1]["Message-ID"] == mailbox.refused[0]["Message-ID"]
    engine = make_engine(api.url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(EmailDelivery.state, EmailDelivery.attempts, EmailDelivery.last_error)
            ).one()
    finally:
        engine.dispose()
    assert row.state == "succeeded"
    assert row.attempts == 2
    assert row.last_error is None


def test_without_smtp_settings_no_email_deliveries_are_made(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info", headers=headers, json={"billingInfo": GOOD}
    )
    assert response.status_code == 200
    api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
    assert top_up(api, team_id, headers, 1000).status_code == 200
    engine = make_engine(api.url)
    try:
        deadline = time.monotonic() + 15
        while True:  # wait for the fan-out of the team's message
            with engine.connect() as connection:
                message = connection.execute(
                    select(OutboxMessage.id, OutboxMessage.dispatched_at).where(
                        OutboxMessage.type == "topup.succeeded",
                        OutboxMessage.data["teamId"].as_string() == team_id,
                    )
                ).one()
            if message.dispatched_at is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert message.dispatched_at is not None
        with engine.connect() as connection:
            count = connection.scalar(
                select(func.count())
                .select_from(EmailDelivery)
                .where(EmailDelivery.message_id == message.id)
            )
        assert count == 0
    finally:
        engine.dispose()
