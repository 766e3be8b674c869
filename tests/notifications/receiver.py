"""A real webhook receiver on loopback: a threaded http.server that records what it is sent and
answers with the statuses it is told (then 200)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A sender that gave up (the slow-endpoint test's timeout) closes the connection before
        the answer is written: expected here, not a traceback on the test run's output."""


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.arrivals: list[dict[str, str]] = []  # headers of every request, when it arrives
        self.statuses: list[int] = []  # answered in turn, then `always`
        self.always = 200
        self.delay = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.arrivals.append({k.lower(): v for k, v in self.headers.items()})
                time.sleep(receiver.delay)
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.always
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok\x00" + b"x" * 3000 if status >= 300 else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def messages(self, predicate: Callable[[Received], bool] = lambda r: True) -> list[Received]:
        with self.lock:
            return [r for r in self.received if predicate(r)]

    def wait(
        self,
        count: int,
        predicate: Callable[[Received], bool] = lambda r: True,
        timeout: float = 15.0,
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(predicate)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{count} wanted, {len(self.messages(predicate))} received")


@contextmanager
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
