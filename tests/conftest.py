"""Shared test fixtures: real SQLite files and a throwaway PostgreSQL server.

Nothing here imports ``rtms_lifecycle``; the fixtures only need the standard library and, for
PostgreSQL, ``psycopg``.  The PostgreSQL server is started once per test session (per xdist
worker) from the locally installed binaries and every test that asks for ``postgres_url`` gets
its own freshly created database, dropped again afterwards.

If the PostgreSQL binaries cannot be found the PostgreSQL tests are skipped, unless the
environment variable ``CI`` is ``true``: CI must exercise them, so there the run fails instead.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pytest

PG_OS_USER = "postgres"
"""OS account that runs the server when the tests run as root (PostgreSQL refuses root)."""

PG_SUPERUSER = "postgres"
"""Database superuser created by ``initdb``; authentication is ``trust``."""

PG_HOST = "127.0.0.1"
PG_LIB_ROOT = Path("/usr/lib/postgresql")
"""Debian/Ubuntu install root; versioned binaries live in ``<root>/<version>/bin``."""

STARTUP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
"""Attempts to start the server, each on a fresh free port, when the port was taken meanwhile."""


def _in_ci() -> bool:
    """Whether we run under CI, where missing PostgreSQL must fail rather than skip."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _skip_or_fail(reason: str) -> NoReturn:
    """Skip the requesting test locally, but fail it under CI (``CI=true``)."""
    if _in_ci():
        pytest.fail(f"{reason} [failing, not skipping, because CI=true]")
    pytest.skip(reason)


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
        _skip_or_fail(
            f"running as root, and PostgreSQL refuses to run as root, but there is no "
            f"{PG_OS_USER!r} OS user to run it as: create one (e.g. `useradd --system "
            f"--user-group {PG_OS_USER}`) or install the postgresql package"
        )
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
        _skip_or_fail(f"no temporary directory the PostgreSQL user can write to among {parents}")
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
                pytest.fail(
                    f"PostgreSQL on {server.host}:{server.port} did not accept connections "
                    f"within {STARTUP_TIMEOUT_S:.0f} s: {exc}\n--- server log ---\n{server.log()}"
                )
            time.sleep(0.1)


def _start_server(bindir: Path, run_as: _RunAs, base: Path) -> PostgresServer:
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
        pytest.fail(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")

    for attempt in range(1, START_ATTEMPTS + 1):
        server = PostgresServer(
            host=PG_HOST,
            port=_free_port(),
            user=PG_SUPERUSER,
            data_dir=data_dir,
            socket_dir=socket_dir,
            log_file=log_file,
            bindir=bindir,
        )
        options = (
            f"-F -p {server.port} -k {shlex.quote(str(socket_dir))}"
            f" -c listen_addresses={PG_HOST} -c max_connections=200 -c fsync=off"
        )
        start = _run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "--pgdata",
                str(data_dir),
                "--log",
                str(log_file),
                "--wait",
                "--timeout",
                str(int(STARTUP_TIMEOUT_S)),
                "-o",
                options,
            ],
            run_as,
            base,
        )
        if start.returncode == 0:
            _wait_until_ready(server)
            return server
        port_taken = "could not bind" in server.log() or "already in use" in server.log()
        if not (port_taken and attempt < START_ATTEMPTS):
            pytest.fail(
                f"pg_ctl start failed ({start.returncode}):\n{start.stdout}\n{start.stderr}\n"
                f"--- server log ---\n{server.log()}"
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _stop_server(bindir: Path, run_as: _RunAs, base: Path) -> None:
    """Stop the server immediately (best effort; the data is thrown away anyway)."""
    data_dir = base / "data"
    if (data_dir / "postmaster.pid").exists():
        _run(
            [str(bindir / "pg_ctl"), "stop", "--pgdata", str(data_dir), "-m", "immediate", "-w"],
            run_as,
            base,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (directly or indirectly) uses the PostgreSQL server ``postgres``."""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session; skipped (CI: failed) if absent."""
    bindir = find_pg_bindir()
    if bindir is None:
        _skip_or_fail(
            "PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql or set CI=true "
            f"to make this an error instead of a skip (looked on PATH and in {PG_LIB_ROOT}/*/bin)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip_or_fail('psycopg is not installed: pip install -e ".[all]" --group test')

    run_as = _run_as()
    base = _make_base_dir(run_as)
    try:
        yield _start_server(bindir, run_as, base)
    finally:
        _stop_server(bindir, run_as, base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_postgres_url(postgres_server: PostgresServer) -> Iterator[Callable[[], str]]:
    """Factory: each call creates a fresh, uniquely named database and returns its URL."""
    import psycopg
    from psycopg import sql

    created: list[str] = []

    def make() -> str:
        name = f"rtms_test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)
                )
            )
        created.append(name)
        return postgres_server.url(name)

    yield make

    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        for name in created:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def postgres_url(make_postgres_url: Callable[[], str]) -> str:
    """SQLAlchemy URL of a fresh PostgreSQL database, dropped after the test."""
    return make_postgres_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a real SQLite file (``rtms.db``) in the test's temporary directory."""
    return f"sqlite:///{tmp_path}/rtms.db"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL for each backend in turn: SQLite, then PostgreSQL."""
    backend: str = request.param
    url: str = request.getfixturevalue(f"{backend}_url")
    return url
