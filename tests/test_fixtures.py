"""The database fixtures in conftest.py hand out real, isolated databases."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import psycopg
import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.store.migrate import head_revision, revisions
from rtms_lifecycle.store.sqlite import (
    SQLITE_BULK_CHECKPOINT_PAGES,
    SQLITE_PRAGMAS,
    SQLITE_WRITER_PRAGMAS,
)
from tests._deliveries import raw
from tests._postgres import PostgresServer, running_server, server_version
from tests.benchmarks import baseline_postgres, baseline_sqlite
from tests.benchmarks.generate import LoadSpec, generate

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier


def _libpq(url: str) -> str:
    """Turn a ``postgresql+psycopg://`` SQLAlchemy URL into a libpq URI."""
    assert url.startswith("postgresql+psycopg://")
    return "postgresql://" + url.removeprefix("postgresql+psycopg://")


def _dbname(url: str) -> str:
    """The database name at the end of a database URL."""
    return url.rsplit("/", 1)[1]


@pytest.mark.postgres
def test_postgres_database_accepts_create_insert_select(postgres_url: str) -> None:
    """A fresh PostgreSQL database accepts a table create, an insert and a select."""
    with psycopg.connect(_libpq(postgres_url)) as conn:
        conn.execute("CREATE TABLE streams (id text PRIMARY KEY, state text NOT NULL)")
        conn.execute("INSERT INTO streams VALUES (%s, %s)", ("s-1", "active"))
        rows = conn.execute("SELECT id, state FROM streams").fetchall()
        current = conn.execute("SELECT current_database(), current_user").fetchone()
    assert rows == [("s-1", "active")]
    assert current == (_dbname(postgres_url), "postgres")


@pytest.mark.postgres
def test_postgres_databases_are_distinct(
    postgres_url: str, make_postgres_url: Callable[[], str]
) -> None:
    """Two requested PostgreSQL databases have different names and do not share tables."""
    other_url = make_postgres_url()
    assert _dbname(postgres_url) != _dbname(other_url)
    with psycopg.connect(_libpq(postgres_url)) as conn:
        conn.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(_libpq(other_url)) as conn:
        found = conn.execute("SELECT to_regclass('only_here')").fetchone()
    assert found == (None,)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_postgres_tracker_gets_its_own_copy_at_the_newest_schema(
    tracker: Tracker, db_url: str, postgres_url: str
) -> None:
    """The ``tracker`` fixture's database is a copy of a migrated one, its own, at the head."""
    assert revisions(db_url) == (head_revision(), head_revision())
    assert _dbname(db_url) != _dbname(postgres_url)
    tracker.ingest(raw("started", "copied", 1_741_701_600_000))
    with psycopg.connect(_libpq(postgres_url)) as conn:
        empty = conn.execute("SELECT to_regclass('streams')").fetchone()
    assert empty == (None,)
    assert [s.stream_id for s in tracker.active_streams()] == ["copied"]


@pytest.mark.postgres
def test_postgres_server_urls_name_the_server(postgres_server: object, postgres_url: str) -> None:
    """The URL points at the session server on 127.0.0.1 with the postgres superuser."""
    port = getattr(postgres_server, "port", None)
    assert postgres_url.startswith(f"postgresql+psycopg://postgres@127.0.0.1:{port}/")


@pytest.mark.postgres
def test_the_session_server_does_not_flush(postgres_server: PostgresServer) -> None:
    """The tests' server runs with fsync off: a commit need not survive a power cut there."""
    assert "(fsync=off," in server_version(postgres_server)


@pytest.mark.postgres
def test_a_durable_server_flushes_every_commit(postgres_server: PostgresServer) -> None:
    """The benchmarks' server runs with PostgreSQL's defaults: fsync and synchronous_commit on."""
    with running_server(durable=True) as server:
        assert server.port != postgres_server.port
        assert server_version(server).endswith("(fsync=on, synchronous_commit=on)")
    assert not server.data_dir.exists()


def test_sqlite_url_is_a_real_file(sqlite_url: str, tmp_path: Path) -> None:
    """The SQLite URL names rtms.db in the test's tmp dir, and the file exists once written."""
    path = tmp_path / "rtms.db"
    assert sqlite_url == f"sqlite:///{path}"
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
    assert path.is_file()
    assert path.stat().st_size > 0


def test_db_url_yields_each_backend(db_url: str, request: pytest.FixtureRequest) -> None:
    """The db_url fixture yields a SQLite URL for the sqlite id and a psycopg URL for postgres."""
    backend = request.node.callspec.id
    expected = {"sqlite": "sqlite:///", "postgres": "postgresql+psycopg://"}[backend]
    assert db_url.startswith(expected)


def test_the_sqlite_baseline_uses_the_store_s_pragmas() -> None:
    """The plain sqlite3 benchmark script sets the very pragmas the store (and its writer) sets."""
    assert baseline_sqlite.STORE_PRAGMAS == SQLITE_PRAGMAS
    assert baseline_sqlite.WRITER_PRAGMAS == SQLITE_WRITER_PRAGMAS
    assert baseline_sqlite.BULK_CHECKPOINT_PAGES == SQLITE_BULK_CHECKPOINT_PAGES


def test_the_raw_baselines_still_write_the_library_schema(db_url: str) -> None:
    """The benchmarks' floors write our tables with plain SQL: a migration that refuses what
    they write (a new required column, a new guard) must change them too."""
    bodies = list(generate(LoadSpec(deliveries=200, streams=50)))
    Tracker(db_url).close()
    if db_url.startswith("sqlite:///"):
        conn = baseline_sqlite.connect(Path(db_url.removeprefix("sqlite:///")), "writer")
        assert baseline_sqlite.ingest(bodies, conn, 50, "library") == 200
        conn.close()
    else:
        conninfo = db_url.replace("postgresql+psycopg://", "postgresql://")
        together = cast("Barrier", threading.Barrier(1))
        baseline_postgres.raw_worker(conninfo, bodies, "library", together)
    with Tracker(db_url) as tracker:
        assert len(tracker.streams()) == 50
