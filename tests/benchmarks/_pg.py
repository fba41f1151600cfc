"""A throwaway PostgreSQL server for benchmarks: the test session's, but with fsync ON.

The test fixture (tests/conftest.py) runs PostgreSQL with ``fsync=off`` for speed; a benchmark of
one transaction per delivery must pay for the commit's flush like production does, so this starts
the same binaries with the defaults (``fsync=on``, ``synchronous_commit=on``).
"""

from __future__ import annotations

import shlex
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import (
    PG_HOST,
    PG_SUPERUSER,
    STARTUP_TIMEOUT_S,
    PostgresServer,
    _free_port,
    _make_base_dir,
    _run,
    _run_as,
    _stop_server,
    _wait_until_ready,
    find_pg_bindir,
)

__all__ = ["PostgresServer", "create_database", "postgres_server", "server_version"]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a fresh cluster (fsync on) on a free port; stop and delete it afterwards."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
    run_as = _run_as()
    base = _make_base_dir(run_as)
    try:
        data_dir, socket_dir, log_file = base / "data", base / "sock", base / "server.log"
        socket_dir.mkdir(mode=0o700)
        run_as.chown(socket_dir)
        init = _run(
            [
                str(bindir / "initdb"),
                *("--pgdata", str(data_dir), "--username", PG_SUPERUSER, "--auth", "trust"),
                *("--encoding", "UTF8", "--locale", "C"),
            ],
            run_as,
            base,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
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
            f"-p {server.port} -k {shlex.quote(str(socket_dir))} -c listen_addresses={PG_HOST}"
            " -c max_connections=100 -c fsync=on -c synchronous_commit=on"
        )
        start = _run(
            [
                str(bindir / "pg_ctl"),
                *("start", "--pgdata", str(data_dir), "--log", str(log_file), "--wait"),
                *("--timeout", str(int(STARTUP_TIMEOUT_S)), "-o", options),
            ],
            run_as,
            base,
        )
        if start.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{start.stderr}\n{server.log()}")
        _wait_until_ready(server)
        yield server
    finally:
        _stop_server(bindir, run_as, base)
        shutil.rmtree(base, ignore_errors=True)


def create_database(server: PostgresServer) -> str:
    """A new empty database; returns its name."""
    import psycopg
    from psycopg import sql

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
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
