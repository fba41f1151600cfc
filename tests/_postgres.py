"""A throwaway PostgreSQL server from the locally installed binaries, for tests and benchmarks.

``running_server()`` creates a cluster in a fresh temporary directory, starts it on a free
127.0.0.1 port with trust authentication, and stops and deletes it afterwards.  The test session
(``postgres_server`` in tests/conftest.py) runs it without flushing to disk; the benchmarks run it
``durable`` (PostgreSQL's defaults), so a commit costs what it costs in production.  Failures are
exceptions: ``PostgresUnavailable`` when PostgreSQL cannot run here at all, ``RuntimeError`` when
it could but did not start.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "PostgresServer",
    "PostgresUnavailable",
    "as_role",
    "create_database",
    "restart_server",
    "running_server",
    "server_version",
    "stopped",
]

PG_OS_USER = "postgres"
"""OS account that runs the server when the tests run as root (PostgreSQL refuses root)."""

PG_SUPERUSER = "postgres"
"""Database superuser created by ``initdb``; authentication is ``trust``."""

PG_HOST = "127.0.0.1"
PG_LIB_ROOT = Path("/usr/lib/postgresql")
"""Debian/Ubuntu install root; versioned binaries live in ``<root>/<version>/bin``."""

FAST = " -F -c fsync=off"
"""Tests: a commit need not survive a power cut, so the server does not flush (much faster)."""

DURABLE = " -c fsync=on -c synchronous_commit=on"
"""Benchmarks of one transaction per delivery pay for the commit's flush, as production does."""

STARTUP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
"""Attempts to start the server, each on a fresh free port, when the port was taken meanwhile."""


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run on this machine (no binaries, no user to run them as, ...)."""


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin``: numeric version, e.g. 9.6 < 15."""
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_pg_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``: from PATH, else the newest Debian install."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(pg_ctl).resolve().parent
    candidates = sorted(PG_LIB_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if os.access(bindir / "initdb", os.X_OK) and os.access(bindir / "pg_ctl", os.X_OK):
            return bindir
    return None


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0 and let go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((PG_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class _RunAs:
    """Credentials to drop to for PostgreSQL commands (``None`` values: keep our own)."""

    uid: int | None = None
    gid: int | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``subprocess.run`` that switch to this user, if any."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        """Hand ``path`` to this user (no-op when we are not switching users)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def _run_as() -> _RunAs:
    """Who runs initdb/pg_ctl: ourselves, or the ``postgres`` OS user when we are root."""
    if os.geteuid() != 0:
        return _RunAs()
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and PostgreSQL refuses to run as root, but there is no "
            f"{PG_OS_USER!r} OS user to run it as: create one (e.g. `useradd --system "
            f"--user-group {PG_OS_USER}`) or install the postgresql package"
        ) from None
    return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


def _usable_by(run_as: _RunAs, directory: str) -> bool:
    """Whether the PostgreSQL user can enter and write ``directory`` (checked as that user)."""
    if run_as.uid is None:
        return os.access(directory, os.W_OK | os.X_OK)
    result = subprocess.run(
        ["/bin/sh", "-c", 'test -d "$1" && test -w "$1" && test -x "$1"', "sh", directory],
        cwd="/",
        check=False,
        capture_output=True,
        **run_as.kwargs(),
    )
    return result.returncode == 0


def _make_base_dir(run_as: _RunAs) -> Path:
    """A fresh temporary directory owned by (and reachable for) the PostgreSQL user."""
    parents = [tempfile.gettempdir(), "/tmp", "/var/tmp"]
    parent = next((p for p in parents if os.path.isdir(p) and _usable_by(run_as, p)), None)
    if parent is None:
        raise PostgresUnavailable(
            f"no temporary directory the PostgreSQL user can write to among {parents}"
        )
    base = Path(tempfile.mkdtemp(prefix="rtms-pg-", dir=parent))
    base.chmod(0o700)
    run_as.chown(base)
    return base


def _pg_env() -> dict[str, str]:
    """Environment for the PostgreSQL tools: C locale, no stray ``PG*`` connection settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway PostgreSQL server (trust authentication, superuser ``user``)."""

    host: str
    port: int
    user: str
    data_dir: Path
    socket_dir: Path
    log_file: Path
    bindir: Path
    #: The server's command-line options, to start it again as it was.
    options: str = ""

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for database ``dbname`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{quote(dbname)}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """Plain libpq URI for database ``dbname``, usable with ``psycopg.connect``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{quote(dbname)}"

    def log(self) -> str:
        """The server log so far (for diagnostics)."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"<server log {self.log_file} unreadable: {exc}>"


def _run(args: list[str], run_as: _RunAs, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool (as the PostgreSQL user), capturing its output."""
    return subprocess.run(
        args,
        cwd=cwd,
        env=_pg_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        **run_as.kwargs(),
    )


def _wait_until_ready(server: PostgresServer) -> None:
    """Poll with psycopg until the server accepts connections, or fail showing its log."""
    import psycopg

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(server.conninfo(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"PostgreSQL on {server.host}:{server.port} did not accept connections "
                    f"within {STARTUP_TIMEOUT_S:.0f} s: {exc}\n--- server log ---\n{server.log()}"
                ) from exc
            time.sleep(0.1)


def _start_server(bindir: Path, run_as: _RunAs, base: Path, *, durable: bool) -> PostgresServer:
    """initdb a cluster in ``base`` and start it on a free port; fail with the log if it won't."""
    data_dir, socket_dir, log_file = base / "data", base / "sock", base / "server.log"
    socket_dir.mkdir(mode=0o700)
    run_as.chown(socket_dir)

    initdb = _run(
        [
            str(bindir / "initdb"),
            "--pgdata",
            str(data_dir),
            "--username",
            PG_SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ],
        run_as,
        base,
    )
    if initdb.returncode != 0:
        raise RuntimeError(
            f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}"
        )

    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        server = PostgresServer(
            host=PG_HOST,
            port=port,
            user=PG_SUPERUSER,
            data_dir=data_dir,
            socket_dir=socket_dir,
            log_file=log_file,
            bindir=bindir,
            options=(
                f"-p {port} -k {shlex.quote(str(socket_dir))}"
                f" -c listen_addresses={PG_HOST} -c max_connections=200"
                + (DURABLE if durable else FAST)
            ),
        )
        start = _pg_ctl_start(server, run_as, base)
        if start.returncode == 0:
            _wait_until_ready(server)
            return server
        port_taken = "could not bind" in server.log() or "already in use" in server.log()
        if not (port_taken and attempt < START_ATTEMPTS):
            raise RuntimeError(
                f"pg_ctl start failed ({start.returncode}):\n{start.stdout}\n{start.stderr}\n"
                f"--- server log ---\n{server.log()}"
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _pg_ctl_start(
    server: PostgresServer, run_as: _RunAs, base: Path
) -> subprocess.CompletedProcess[str]:
    return _run(
        [
            str(server.bindir / "pg_ctl"),
            "start",
            "--pgdata",
            str(server.data_dir),
            "--log",
            str(server.log_file),
            "--wait",
            "--timeout",
            str(int(STARTUP_TIMEOUT_S)),
            "-o",
            server.options,
        ],
        run_as,
        base,
    )


def _stop_server(bindir: Path, run_as: _RunAs, base: Path) -> None:
    """Stop the server immediately (best effort; the data is thrown away anyway)."""
    data_dir = base / "data"
    if (data_dir / "postmaster.pid").exists():
        _run(
            [str(bindir / "pg_ctl"), "stop", "--pgdata", str(data_dir), "-m", "immediate", "-w"],
            run_as,
            base,
        )


@contextmanager
def running_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a fresh cluster on a free port (``durable``: fsync on); stop and delete it after."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql "
            f"(looked on PATH and in {PG_LIB_ROOT}/*/bin)"
        )
    run_as = _run_as()
    base = _make_base_dir(run_as)
    try:
        yield _start_server(bindir, run_as, base, durable=durable)
    finally:
        _stop_server(bindir, run_as, base)
        shutil.rmtree(base, ignore_errors=True)


def restart_server(server: PostgresServer) -> None:
    """Stop ``server`` at once (its backends end, as in a crash) and start it again on its port."""
    run_as = _run_as()
    base = server.data_dir.parent
    restart = _run(
        [
            str(server.bindir / "pg_ctl"),
            "restart",
            "--pgdata",
            str(server.data_dir),
            "--log",
            str(server.log_file),
            "-m",
            "immediate",
            "--wait",
            "--timeout",
            str(int(STARTUP_TIMEOUT_S)),
        ],
        run_as,
        base,
    )
    if restart.returncode != 0:
        raise RuntimeError(
            f"pg_ctl restart failed ({restart.returncode}):\n{restart.stdout}\n{restart.stderr}\n"
            f"--- server log ---\n{server.log()}"
        )
    _wait_until_ready(server)


@contextmanager
def stopped(server: PostgresServer) -> Iterator[None]:
    """``server`` stopped at once (its backends end, as in a crash) for the block, then started
    again on its port: an outage, for a server of the test's own (``running_server()``)."""
    run_as = _run_as()
    base = server.data_dir.parent
    _stop_server(server.bindir, run_as, base)
    try:
        yield
    finally:
        start = _pg_ctl_start(server, run_as, base)
        if start.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({start.returncode}):\n{start.stdout}\n{start.stderr}\n"
                f"--- server log ---\n{server.log()}"
            )
        _wait_until_ready(server)


def create_database(
    server: PostgresServer, prefix: str = "rtms_test_", *, template: str = "template0"
) -> str:
    """A new uniquely named UTF-8 database on ``server``, a copy of ``template``; its name."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} ENCODING 'UTF8'").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return name


def server_version(server: PostgresServer) -> str:
    """``SHOW server_version`` plus the fsync settings in force."""
    import psycopg

    with psycopg.connect(server.conninfo()) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        commit = conn.execute("SHOW synchronous_commit").fetchone()
    assert version is not None
    assert fsync is not None
    assert commit is not None
    return f"{version[0]} (fsync={fsync[0]}, synchronous_commit={commit[0]})"


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role`` (password ``secret``) instead of its own user."""
    return (
        re.sub(r"//[^@/]*@", f"//{role}:secret@", url)
        if "@" in url
        else url.replace("//", f"//{role}:secret@", 1)
    )
