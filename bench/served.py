"""What the served benchmarks share: a scratch PostgreSQL database (created, migrated, dropped)
and ``billfold serve`` as a subprocess on a free port, logged to a file."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from procfs import free_port, libpq_url  # bench/procfs.py

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url(base: str, name: str) -> str:
    return libpq_url(base).rsplit("/", 1)[0] + "/" + name


@dataclass
class Database:
    base: str  # BILLFOLD_BENCH_POSTGRES_URL: the server the scratch database lives on
    name: str
    url: str
    pg_version: str


def create_database(prefix: str, name: str | None = None) -> Database:
    """A database on BILLFOLD_BENCH_POSTGRES_URL named ``prefix`` + a random suffix (or ``name``,
    created only if missing); ``drop_database`` ends it."""
    base = os.environ.get("BILLFOLD_BENCH_POSTGRES_URL", DEFAULT_URL)
    name = name or f"{prefix}{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(base), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')
        pg_version = str(admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    return Database(base, name, database_url(base, name), pg_version)


def drop_database(database: Database) -> None:
    with psycopg.connect(libpq_url(database.base), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')


def upgrade_database(url: str) -> None:
    """``billfold db upgrade`` on it, as an operator runs it."""
    subprocess.run(
        [str(Path(sys.executable).with_name("billfold")), "db", "upgrade"],
        env={**os.environ, "BILLFOLD_DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


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
