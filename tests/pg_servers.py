"""Private PostgreSQL-side servers for tests: a PgBouncer in transaction mode, a streaming replica.

Both run in front of (or behind) the test PostgreSQL server (``BILLFOLD_TEST_POSTGRES_URL``,
default 127.0.0.1:5432), on a free port, from a temporary directory, as the ``postgres`` user when
the suite runs as root (PgBouncer refuses root; PostgreSQL too). The fixtures in conftest.py start
them; a missing program skips locally and fails under ``CI=true`` (.ci/run installs PgBouncer).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

RUN_AS = "postgres"  # who runs the servers when the suite runs as root


class Missing(Exception):
    """A program the server needs is not installed."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_root() -> bool:
    return os.geteuid() == 0


def _run_as(command: list[str]) -> list[str]:
    """``command``, run as RUN_AS when we are root."""
    return ["runuser", "-u", RUN_AS, "--", *command] if _as_root() else command


def _private_dir(prefix: str) -> Path:
    """A new directory the servers' user owns (pytest's own are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if _as_root():
        user = pwd.getpwnam(RUN_AS)
        os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)
    return path


def _wait_port(port: int, process: subprocess.Popen[bytes] | None, what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start on port {port}:\n{tail}")


@dataclass
class PgBouncer:
    """A PgBouncer in ``pool_mode = transaction`` in front of the test server: every database
    name passes through (``* =``), logged in as the server's user whatever the client says
    (``auth_type = any``)."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def url(self, direct_url: str) -> str:
        """``direct_url`` (a database on the test server) through this PgBouncer."""
        return _with_port(direct_url, self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: PgBouncer's fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_pgbouncer(server_host: str, server_port: int, server_user: str) -> PgBouncer:
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        raise Missing("pgbouncer is not installed (apt-get install -y pgbouncer)")
    directory = _private_dir("billfold-pgbouncer-")
    port = free_port()
    log = directory / "pgbouncer.log"
    config = directory / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
* = host={server_host} port={server_port} user={server_user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
; the suite's apps keep up to 2 x 10 pooled connections each, and several apps run at once
max_client_conn = 1000
default_pool_size = 20
reserve_pool_size = 5
; give idle server connections back soon: the test server is shared with other suites
server_idle_timeout = 5
logfile = {log}
log_connections = 0
log_disconnections = 0
"""
    )
    if _as_root():
        os.chown(config, pwd.getpwnam(RUN_AS).pw_uid, -1)
    # `-u`: PgBouncer switches to that user itself (it refuses to run as root), and stays our
    # child, so its pid is the one to stop.
    command = [binary, *(["-u", RUN_AS] if _as_root() else []), str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, process, "pgbouncer", log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return PgBouncer(port, directory, process)


def _with_port(url: str, port: int) -> str:
    """``url`` with the port of its host replaced (``...@host:5432/db`` -> ``...@host:port/db``)."""
    head, _, tail = url.partition("://")
    authority, slash, path = tail.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    return f"{head}://{userinfo}{at}{host}:{port}{slash}{path}"


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (Debian keeps them out of PATH, per version)."""
    found = shutil.which(name)
    if found is not None and name not in ("pg_ctl", "postgres"):
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    if found is not None:
        return found
    raise Missing(f"{name} is not installed (the PostgreSQL server package)")


@dataclass
class Replica:
    """A hot standby of the test server, streaming from it (``pg_basebackup -R``)."""

    port: int
    directory: Path

    def url(self, direct_url: str) -> str:
        """``direct_url`` (a database on the test server) on this replica."""
        return _with_port(direct_url, self.port)

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _run_as([postgres_bin("pg_ctl"), "-D", str(self.directory / "data"), *args]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def start(self) -> None:
        self._ctl("-l", str(self.directory / "postgres.log"), "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.directory / "data" / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            try:
                self.stop()
            except subprocess.SubprocessError:
                self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def wait_replayed(self, primary: Engine, replica: Engine, timeout: float = 30) -> None:
        """Until the replica has replayed everything the primary had written when called."""
        with primary.connect() as connection:
            lsn = connection.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()
        deadline = time.monotonic() + timeout
        query = text("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)")
        while True:
            with replica.connect() as connection:
                if connection.execute(query, {"lsn": lsn}).scalar_one():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica did not replay up to {lsn} in {timeout} s")
            time.sleep(0.05)


# What a hot standby needs at least as high as its primary (else it refuses to start).
_AT_LEAST_PRIMARY = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


def start_replica(primary: Engine, host: str, port: int, user: str) -> Replica:
    """A streaming replica of the server behind ``primary`` (a superuser's engine, port
    ``port``): needs a ``replication`` line for ``host`` in its pg_hba.conf (.ci/run adds one)."""
    basebackup = postgres_bin("pg_basebackup")
    postgres_bin("pg_ctl")
    with primary.connect() as connection:
        settings = {
            name: connection.execute(text(f"SHOW {name}")).scalar_one()
            for name in _AT_LEAST_PRIMARY
        }
    directory = _private_dir("billfold-replica-")
    data = directory / "data"
    replica_port = free_port()
    done = subprocess.run(
        _run_as(
            [
                basebackup,
                "-h",
                host,
                "-p",
                str(port),
                "-U",
                user,
                "-D",
                str(data),
                "-R",  # standby.signal and primary_conninfo: a standby streaming from `host`
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]
        ),
        capture_output=True,
        timeout=120,
    )
    if done.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(
            f"pg_basebackup failed (pg_hba.conf needs `host replication all {host}/32 trust`, "
            f"see .ci/run): {done.stderr.decode(errors='replace')}"
        )
    # Debian keeps the configuration out of the data directory: the copy has none.
    lines = [
        "listen_addresses = '127.0.0.1'",
        f"port = {replica_port}",
        f"unix_socket_directories = '{directory}'",
        "hot_standby = on",
        "shared_buffers = 16MB",
        "fsync = off",
        *(f"{name} = {value}" for name, value in settings.items()),
    ]
    (data / "postgresql.conf").write_text("\n".join(lines) + "\n")
    (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    if _as_root():
        user_ids = pwd.getpwnam(RUN_AS)
        for path in (data / "postgresql.conf", data / "pg_hba.conf"):
            os.chown(path, user_ids.pw_uid, user_ids.pw_gid)
    replica = Replica(replica_port, directory)
    try:
        replica.start()
    except BaseException as exc:
        log = directory / "postgres.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"the replica did not start: {exc}\n{tail}") from exc
    return replica
