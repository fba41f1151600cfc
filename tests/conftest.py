"""Shared test fixtures: real SQLite files, a throwaway PostgreSQL server, a tracker on each.

The PostgreSQL server (tests/_postgres.py) is started once per test session (per xdist worker)
from the locally installed binaries and every test that asks for ``postgres_url`` gets its own
freshly created database, dropped again afterwards.  ``rtms_lifecycle`` is imported only by the
fixtures that need it, so a broken package still lets the session start and say why.

If the PostgreSQL binaries cannot be found the PostgreSQL tests are skipped, unless the
environment variable ``CI`` is ``true``: CI must exercise them, so there the run fails instead.

With pytest-xdist installed, ``python -m pytest`` runs two workers per core (``--dist
loadgroup``) unless told otherwise (``-n 0``, ``-n 2``, ``-p no:xdist``). Most of the suite
waits (for servers, subprocesses, timeouts), so the workers outnumber the cores.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests._postgres import PostgresServer, PostgresUnavailable, create_database, running_server

if TYPE_CHECKING:
    from rtms_lifecycle import Tracker

# A suite started in the background by a non-interactive shell (`pytest ... &`) inherits SIGINT
# ignored, and so would every command it starts: Python then installs no Ctrl-C handler in
# them, and the tests that send one a Ctrl-C would see it ignored. Handled here, SIGINT is back
# to its default in every process started from the suite.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _in_ci() -> bool:
    """Whether we run under CI, where missing PostgreSQL must fail rather than skip."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _skip_or_fail(reason: str) -> NoReturn:
    """Skip the requesting test locally, but fail it under CI (``CI=true``)."""
    if _in_ci():
        pytest.fail(f"{reason} [failing, not skipping, because CI=true]")
    pytest.skip(reason)


@pytest.fixture
def skip_or_fail() -> Callable[[str], NoReturn]:
    """For a test that needs a tool: skip it locally, but fail it under CI (``CI=true``)."""
    return _skip_or_fail


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Two workers per core by default (not in a worker, not when ``-n`` was given); a crashed
    worker ends the run.

    Most of the suite waits (servers, subprocesses, timeouts): on 2 cores one worker per core
    kept them 35% busy and took 6:23, two per core 4:45 (docs/benchmarks.md). In ``addopts`` an
    ``-n`` would make ``-p no:xdist`` a usage error; here it is only a default.
    """
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if config.option.numprocesses is None:
        config.option.numprocesses = 2 * (os.cpu_count() or 1)
        if config.option.dist == "no":
            # Modules marked xdist_group build something costly once (a wheel, a browser).
            config.option.dist = "loadgroup"
    if config.option.maxworkerrestart is None:
        # A worker killed by a crash (a segfault in a native library) is reported as that
        # test's failure and ends the run: under --dist loadgroup xdist 3.8's replacement
        # worker got no work and the run waited for ever.
        config.option.maxworkerrestart = "0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (directly or indirectly) uses the PostgreSQL server ``postgres``."""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session; skipped (CI: failed) if absent."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip_or_fail('psycopg is not installed: pip install -e ".[all]" --group test')
    with ExitStack() as stack:
        try:
            server = stack.enter_context(running_server())
        except PostgresUnavailable as exc:
            _skip_or_fail(f"{exc} (set CI=true to make this an error instead of a skip)")
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, for a test that stops it (`_postgres.stopped`)."""
    with ExitStack() as stack:
        try:
            yield stack.enter_context(running_server())
        except PostgresUnavailable as exc:
            _skip_or_fail(f"{exc} (set CI=true to make this an error instead of a skip)")


@pytest.fixture(scope="session")
def migrated_postgres_template(postgres_server: PostgresServer) -> str:
    """A database at the newest schema, copied for each test that opens a ``tracker``.

    Migrating a new database takes about 0.45 s, copying this one about 0.1 s; over 300
    tests open a PostgreSQL tracker.
    """
    from rtms_lifecycle import Tracker

    name = create_database(postgres_server, prefix="rtms_template_")
    Tracker(postgres_server.url(name)).close()  # migrates, then closes every connection
    return name


@pytest.fixture
def make_postgres_url(postgres_server: PostgresServer) -> Iterator[Callable[..., str]]:
    """Factory: each call creates a fresh, uniquely named database and returns its URL.

    ``template`` names a database to copy (its schema and rows); by default it is empty.
    """
    import psycopg
    from psycopg import sql

    created: list[str] = []

    def make(template: str = "template0") -> str:
        created.append(create_database(postgres_server, template=template))
        return postgres_server.url(created[-1])

    yield make

    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        for name in created:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def postgres_url(make_postgres_url: Callable[..., str]) -> str:
    """SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped after the test."""
    return make_postgres_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a real SQLite file (``rtms.db``) in the test's temporary directory."""
    return f"sqlite:///{tmp_path}/rtms.db"


#: Fixtures (here and in test modules) that open a tracker on ``db_url`` before the test runs.
OPEN_A_TRACKER = frozenset({"tracker", "atracker", "recorded"})


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL for each backend in turn: SQLite, then PostgreSQL.

    A test whose fixtures open a tracker on it first thing gets, on PostgreSQL, a copy of an
    already migrated database: the tracker would migrate it first thing anyway.
    """
    backend: str = request.param
    if backend == "postgres" and OPEN_A_TRACKER.intersection(request.fixturenames):
        make: Callable[..., str] = request.getfixturevalue("make_postgres_url")
        return make(template=request.getfixturevalue("migrated_postgres_template"))
    url: str = request.getfixturevalue(f"{backend}_url")
    return url


@pytest.fixture
def tracker(db_url: str) -> Iterator[Tracker]:
    """A Tracker on a fresh database of each backend (at the newest schema)."""
    from rtms_lifecycle import Tracker

    with Tracker(db_url) as t:
        yield t
