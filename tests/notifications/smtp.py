"""A real SMTP server (``aiosmtpd``) on a free loopback port, recording what it accepts."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mailbox:
    """The handler: accepts every message, except that the first ``refuse`` DATA commands are
    answered ``451`` (a temporary failure: the sender must retry)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[tuple[list[str], EmailMessage]] = []
        self.refused: list[EmailMessage] = []
        self.refuse = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            if self.refuse > 0:
                self.refuse -= 1
                self.refused.append(parsed)
                return "451 4.3.0 try again later"
            self.accepted.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def wait(
        self,
        count: int,
        where: Callable[[list[str], EmailMessage], bool] = lambda r, m: True,
        timeout: float = 15.0,
    ) -> list[tuple[list[str], EmailMessage]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [(r, m) for r, m in self.accepted if where(r, m)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, str]]:
    """The mailbox and its ``smtp://`` URL."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()
