"""Alembic from code: where the migrations live, which revision a database is at, upgrading
and downgrading.

Only upgrading imports Alembic (a tenth of a second and more): which revision a database is at
is one SELECT, which revisions this version ships is read from the migration files' text, and a
new SQLite database is created from the schema the migrations make, kept as SQL in the package
(``store/sqlite_schema.sql``, written by ``scripts/gen_sqlite_schema.py`` and checked by the
tests).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from rtms_lifecycle.exceptions import (
    DatabaseError,
    DatabaseUnavailable,
    SchemaOutdatedError,
    SchemaTooNewError,
)
from rtms_lifecycle.store.sqlite import SQLITE_IMMEDIATE, unavailable

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection, Engine

# The PostgreSQL advisory lock held while the schema is created or upgraded ("rtms" in ASCII).
_PG_SCHEMA_LOCK: Final = 0x72746D73

_log = logging.getLogger("rtms_lifecycle.store")

# The wheel carries the migrations inside the package (pyproject: force-include).
_PACKAGED = Path(__file__).resolve().parents[1] / "migrations"
# The schema a new SQLite database starts with: what the migrations create, as SQL.
SQLITE_SCHEMA_FILE = Path(__file__).with_name("sqlite_schema.sql")
# An editable install or a source checkout runs the top-level folder the wheel is built from.
_SOURCE = Path(__file__).resolve().parents[3] / "migrations"
# Alembic's default table of the revision a database is at.
_VERSION_TABLE: Final = "alembic_version"
# `revision: str = "0007"` and `down_revision: str | None = "0006"` (or a tuple, or None) in a
# migration file, as Alembic's template writes them.
_REVISION_LINE: Final = re.compile(r"^(revision|down_revision)\b[^=\n]*=(.*)$", re.MULTILINE)
_QUOTED: Final = re.compile(r"""["']([^"']+)["']""")
# PostgreSQL's SQLSTATE for "permission denied" (also "must be owner of table").
_INSUFFICIENT_PRIVILEGE: Final = "42501"

# What undoing each migration does to stored data, said before a downgrade runs (`db downgrade`)
# and in docs/operations.md. Every migration but the first has an entry (a test checks).
DOWNGRADE_DROPS: Final[dict[str, str]] = {
    "0002": "nothing stored; the database no longer refuses updates and deletes of the audit "
    "history",
    "0003": "nothing: the stream_events table is rebuilt from the deliveries (with empty payloads)",
    "0004": "nothing stored (a PostgreSQL function)",
    "0005": "each stream's stop source and each delivery's secret label and signing time",
    "0006": "the record of prunes (`prunes`); deliveries stored once for several retries get "
    "their own copy of the bytes back (the database grows)",
    "0007": "durable subscriptions: each consumer's cursor, lease and parked transitions",
    "0008": "nothing stored (indexes)",
    "0009": "nothing stored (an index)",
    "0010": "every claim and the claim history (workers lose the streams they hold)",
    "0011": "the audit hash chain: each transition's hash, each stream's chain head and the "
    "record of the chains pruned; `db upgrade` hashes the history then stored again, and a "
    "digest from `audit head` taken before no longer verifies once a chain was pruned",
    "0012": "the links from reprocessed deliveries to the refused ones they parsed again "
    "(both deliveries stay; a later `deliveries reprocess` reads the refused ones again, "
    "and their events come out duplicates)",
    "0013": "the dashboard sign-outs: a signed-out session cookie works again until it expires",
    "0014": "the stop rollup, counted from the streams (`db upgrade` counts it again)",
    "0015": "the claim queue, made from the streams and claims (`db upgrade` makes it again)",
    "0016": "nothing stored (a PostgreSQL function)",
    "0017": "nothing stored (PostgreSQL functions)",
    "0018": "nothing stored; the database no longer refuses transitions without a chain hash",
    "0019": "nothing stored; PostgreSQL's stop codes are 32-bit again (refused, nothing "
    "downgraded, while a stream holds a code beyond 32 bits)",
}


def script_location() -> str:
    """The migrations folder: inside the installed package, else the source checkout's."""
    if (_PACKAGED / "env.py").is_file():
        return "rtms_lifecycle:migrations"
    return str(_SOURCE)


def alembic_config() -> Config:
    """An Alembic configuration that needs no alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    return config


@cache
def _revisions() -> dict[str, tuple[str, ...]]:
    """Each revision this version ships, with the revisions it follows."""
    folder = _PACKAGED if (_PACKAGED / "env.py").is_file() else _SOURCE
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted((folder / "versions").glob("*.py")):
        found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" in found:
            (revision,) = _QUOTED.findall(found["revision"])
            revisions[revision] = tuple(_QUOTED.findall(found.get("down_revision", "")))
    return revisions


@cache
def head_revision() -> str:
    """The newest migration this version of the library ships: the one no other follows."""
    revisions = _revisions()
    followed = {down for downs in revisions.values() for down in downs}
    (head,) = (revision for revision in revisions if revision not in followed)
    return head


def migrations() -> list[tuple[str, str]]:
    """Each migration this version ships, oldest first: its revision and its title, the first
    paragraph of its docstring as plain text."""
    folder = _PACKAGED if (_PACKAGED / "env.py").is_file() else _SOURCE
    titles = {}
    for path in (folder / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        found = dict(_REVISION_LINE.findall(text))
        if "revision" in found:
            (revision,) = _QUOTED.findall(found["revision"])
            titles[revision] = migration_title(text)
    revisions, order = _revisions(), [head_revision()]
    while downs := revisions[order[-1]]:
        order.append(downs[0])
    return [(revision, titles[revision]) for revision in reversed(order)]


def migration_title(source: str) -> str:
    """A migration file's title: its docstring's first paragraph on one line, without the
    reStructuredText literal quotes (````name````) it writes code in."""
    docstring = source.lstrip().removeprefix('"""').partition('"""')[0]
    paragraph = docstring.strip().split("\n\n")[0]
    return " ".join(paragraph.replace("``", "").split())


def is_known(revision: str) -> bool:
    """Whether this version ships ``revision``; an unknown one was written by a newer version."""
    return revision in _revisions()


def refuse_newer(revision: str | None) -> None:
    """Refuse a database migrated by a newer rtms-lifecycle: neither using nor upgrading it."""
    if revision is not None and not is_known(revision):
        raise SchemaTooNewError(
            f"the database schema is at revision {revision}, which this version of "
            f"rtms-lifecycle (newest revision {head_revision()}) does not know: it was written "
            "by a newer version; upgrade rtms-lifecycle to use it"
        )


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database without our schema."""
    if engine.dialect.name == "sqlite":
        with _pooled_sqlite(engine) as conn, sqlite_errors(_file_of(engine)):
            return _sqlite_revision(conn)
    with engine.connect() as conn:
        return read_revision(conn)


@contextmanager
def _pooled_sqlite(engine: Engine) -> Iterator[sqlite3.Connection]:
    # The driver's own connection, from the engine's pool, and back to it.
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, sqlite3.Connection)
        yield conn
    finally:
        raw.close()


def _one_revision(rows: list[str]) -> str | None:
    if len(rows) > 1:
        raise SchemaOutdatedError(
            f"the database records {len(rows)} schema revisions ({', '.join(rows)}): "
            "rtms-lifecycle never branches its migrations, so it did not write them"
        )
    return str(rows[0]) if rows else None


def read_revision(conn: Connection) -> str | None:
    """The revision the database of ``conn`` is at; None for a database without our schema."""
    from sqlalchemy import inspect

    # Looked up first: on PostgreSQL a failed SELECT would abort the caller's transaction.
    if not inspect(conn).has_table(_VERSION_TABLE):
        return None
    return _one_revision(
        list(conn.exec_driver_sql(f"SELECT version_num FROM {_VERSION_TABLE}").scalars())
    )


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_VERSION_TABLE,)
    ).fetchone()
    if found is None:
        return None
    return _one_revision(
        [row[0] for row in conn.execute(f"SELECT version_num FROM {_VERSION_TABLE}")]
    )


@contextmanager
def _schema_locked(engine: Engine) -> Iterator[Connection]:
    """A transaction that alone may change the schema: other processes wait until it ends.

    PostgreSQL: an advisory lock, released with the transaction. SQLite: ``BEGIN IMMEDIATE``,
    its write lock. Without it, processes opening a new database at once all create the tables.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{SQLITE_IMMEDIATE: True})
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_SCHEMA_LOCK})")
            yield conn


def _upgrade(conn: Connection, revision: str) -> None:
    from alembic import command

    before = read_revision(conn)
    config = alembic_config()
    config.attributes["connection"] = conn
    with _alembic_quiet():
        command.upgrade(config, revision)
    after = read_revision(conn)
    if after != before:
        _log.info("database schema upgraded from %s to %s", before or "nothing", after)


@contextmanager
def _alembic_quiet() -> Iterator[None]:
    """Keep Alembic's INFO lines (27 for a new PostgreSQL database: its plugins, then a line per
    migration) out of an application's INFO log, unless it set Alembic's level itself."""
    alembic = logging.getLogger("alembic")
    if alembic.level != logging.NOTSET:
        yield
        return
    alembic.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic.setLevel(logging.NOTSET)


def _sqlite_statements() -> Iterator[str]:
    """The statements of the packaged SQLite schema, one at a time (triggers hold ``;``)."""
    statement = ""
    for line in SQLITE_SCHEMA_FILE.read_text(encoding="utf-8").splitlines(keepends=True):
        if not statement and (line.startswith("--") or not line.strip()):
            continue
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""


def downgrade_plan(current: str | None, target: str) -> list[tuple[str, str]]:
    """The migrations a downgrade of a database at ``current`` to ``target`` undoes, newest
    first, with their titles; ValueError saying why it cannot (naming the revision)."""
    shipped = migrations()
    known = [revision for revision, _ in shipped]
    if target not in known:
        raise ValueError(
            f"unknown revision {target!r}: this version ships {known[0]} to {known[-1]} "
            "(`rtms-lifecycle db history` lists them)"
        )
    if current is None:
        raise ValueError("the database has no schema yet: nothing to downgrade")
    refuse_newer(current)
    if known.index(target) >= known.index(current):
        raise ValueError(
            f"revision {target} is not older than the database's revision {current}: "
            "nothing to undo"
        )
    return shipped[known.index(target) + 1 : known.index(current) + 1][::-1]


def downgrade_url(url: str, current: str, target: str) -> None:
    """Undo the migrations after ``target`` in the database at ``url``, which was at ``current``
    when the caller looked: under the schema lock, in one transaction on PostgreSQL. Refused
    (:class:`SchemaOutdatedError`) if its revision changed meanwhile.
    """
    from alembic import command

    from rtms_lifecycle.store.engine import create_store_engine
    from rtms_lifecycle.store.errors import translated

    engine = create_store_engine(url)
    try:
        with (
            translated(_file_of(engine)),
            owner_needed("the downgrade"),
            _schema_locked(engine) as conn,
        ):
            now = read_revision(conn)
            if now != current:
                raise SchemaOutdatedError(
                    f"the database's revision changed from {current} to {now} meanwhile: "
                    "nothing downgraded; look again with `rtms-lifecycle db current`"
                )
            config = alembic_config()
            config.attributes["connection"] = conn
            with _alembic_quiet():
                command.downgrade(config, target)
            _log.info("database schema downgraded from %s to %s", now, target)
    finally:
        engine.dispose()


@contextmanager
def owner_needed(what: str) -> Iterator[None]:
    """A permission refused by PostgreSQL as a :class:`DatabaseError` saying that ``what`` runs
    as the database's owner (a receiver's role may not change the schema)."""
    try:
        yield
    except Exception as exc:
        cause = getattr(exc, "orig", None) or exc
        if getattr(cause, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
            raise
        from rtms_lifecycle.store.errors import first_line

        raise DatabaseError(
            f"{what} failed: {first_line(exc)}: run it as the database's owner"
        ) from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest), one process at a time."""
    with _schema_locked(engine) as conn:
        _upgrade(conn, revision)


def ensure_schema(engine: Engine) -> bool:
    """Create the schema in a new, empty database; refuse one at an older revision. True if
    this call created it.

    Safe when several processes open a new database at once: one creates the schema under the
    schema lock, the others wait for it, then find the schema there.
    """
    if engine.dialect.name == "sqlite":
        with _pooled_sqlite(engine) as conn:
            revision, created = ensure_sqlite(conn, _file_of(engine))
        if revision != head_revision():
            upgrade(engine)
        return created
    current = current_revision(engine)
    if current == head_revision():
        return False
    if current is None:
        with _schema_locked(engine) as conn:
            # Read again under the lock: another process may have created it meanwhile.
            current = read_revision(conn)
            if current is None:
                from sqlalchemy import inspect

                _refuse_foreign(set(inspect(conn).get_table_names()))
                _upgrade(conn, "head")
                return True
        if current == head_revision():
            return False
    return _refuse(current)


def ensure_sqlite(conn: sqlite3.Connection, path: Path | None) -> tuple[str, bool]:
    """:func:`ensure_schema` on an SQLite connection, without SQLAlchemy: a new database gets
    the packaged schema (other processes wait for it); one at an older or a newer revision is
    refused. Returns the revision, and whether this call created the schema. The revision is
    behind the head only for a database just created from a packaged schema that is behind the
    migrations (the tests keep it at the head), which the caller then upgrades with Alembic.
    """
    with sqlite_errors(path):
        current = _sqlite_revision(conn)
        if current is None:
            created = _create_sqlite(conn)
            if created is not None:
                return created, True
            current = _sqlite_revision(conn)
    if current is None or current != head_revision():
        _refuse(current)
    return current, False


def _create_sqlite(conn: sqlite3.Connection) -> str | None:
    """Create the packaged schema in an empty database, under ``BEGIN IMMEDIATE`` (the write
    lock); the revision it records, or None if another process created the schema first."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the lock: another process may have created it meanwhile.
        if _sqlite_revision(conn) is not None:
            conn.execute("ROLLBACK")
            return None
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        _refuse_foreign({row[0] for row in tables})
        for statement in _sqlite_statements():
            conn.execute(statement)
        created = _sqlite_revision(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return created


@contextmanager
def sqlite_errors(path: Path | None) -> Iterator[None]:
    """sqlite3's own errors (a file that is no database, a folder SQLite cannot write in) as
    :class:`DatabaseUnavailable`, saying why where the file system tells."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DatabaseUnavailable(unavailable(path, exc)) from exc


def _file_of(engine: Engine) -> Path | None:
    from rtms_lifecycle.store.urls import sqlite_file

    return sqlite_file(engine.url)


def _refuse_foreign(tables: set[str]) -> None:
    if tables & {"streams", "deliveries"}:
        raise SchemaOutdatedError(
            "the database has rtms-lifecycle tables but no migration revision: "
            "it was not created by rtms-lifecycle"
        )


def _refuse(current: str | None) -> NoReturn:
    refuse_newer(current)
    raise SchemaOutdatedError(
        f"the database schema is at revision {current}, this version of rtms-lifecycle needs "
        f"{head_revision()}: run `rtms-lifecycle db upgrade` (with the same --db) first"
    )


def revisions(url: str) -> tuple[str | None, str]:
    """The revision the database at ``url`` is at (None: no schema yet), and this version's."""
    from rtms_lifecycle.store.engine import create_store_engine
    from rtms_lifecycle.store.errors import translated

    engine = create_store_engine(url)
    try:
        with translated(_file_of(engine)):
            return current_revision(engine), head_revision()
    finally:
        engine.dispose()


def upgrade_url(url: str) -> tuple[str | None, str | None]:
    """Migrate the database at ``url`` to the newest schema: the revisions before and after.

    A database migrated by a newer rtms-lifecycle is refused (:class:`SchemaTooNewError`).
    """
    from rtms_lifecycle.store.engine import create_store_engine
    from rtms_lifecycle.store.errors import translated

    engine = create_store_engine(url)
    try:
        with translated(_file_of(engine)):
            before = current_revision(engine)
            refuse_newer(before)
            with owner_needed("the upgrade"):
                upgrade(engine)
            return before, current_revision(engine)
    finally:
        engine.dispose()
