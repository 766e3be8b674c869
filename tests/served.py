"""``billfold serve`` as a subprocess, for the tests that need the real thing over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import direct_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(
    url: str, workers: int, cwd: Path, **settings: str
) -> tuple[subprocess.Popen[str], str]:
    """Start ``billfold serve`` on ``url`` with only the given BILLFOLD_* settings (names without
    the prefix, e.g. ``ADMIN_TOKEN``); returns the process and its base URL. Stdout is a pipe."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env |= {"BILLFOLD_DATABASE_URL": url, "BILLFOLD_LOG_LEVEL": "warning"}
    if os.environ.get("BILLFOLD_DATABASE_POOL_MODE") == "transaction" and url.startswith(
        "postgres"
    ):
        # pytest --pgbouncer: `url` is PgBouncer's; the spend cache listens on the server.
        env |= {
            "BILLFOLD_DATABASE_POOL_MODE": "transaction",
            "BILLFOLD_LISTEN_DATABASE_URL": direct_url(url),
        }
    env |= {f"BILLFOLD_{name}": value for name, value in settings.items()}
    process = subprocess.Popen(
        [sys.executable, "-m", "billfold", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")
