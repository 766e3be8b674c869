"""``billfold serve`` as both benchmarks run it: a subprocess on a free port, logged to a file."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from procfs import free_port  # bench/procfs.py


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    workers: int, settings: dict[str, str], command: str | None = None
) -> tuple[Server, list[str]]:
    """Start it with these BILLFOLD_* settings (full names) and wait for /healthz; ``command``
    replaces ``billfold serve`` (formatted with {port} and {workers}). Exits on failure."""
    port = free_port()
    billfold = Path(sys.executable).with_name("billfold")
    argv = [str(billfold), "serve", "--workers", str(workers), "--port", str(port)]
    if command:  # an experiment: the same server under another command
        argv = shlex.split(command.format(port=port, workers=workers))
    env = {
        **os.environ,
        "BILLFOLD_LOG_LEVEL": os.environ.get("BILLFOLD_LOG_LEVEL", "warning"),
        **settings,
    }
    log = Path(tempfile.mkstemp(prefix="billfold-bench-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(server.base_url + "/healthz", timeout=2).status_code == 200:
                time.sleep(1.0)  # the workers answer one by one: give the second a moment
                return server, argv
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    sys.exit(f"the server did not answer /healthz within 90 s:\n{log.read_text()}")
