"""Alembic from code: where the migrations live, which revision a database is at, upgrading.

Only upgrading imports Alembic (a tenth of a second and more): which revision a database is at
is one SELECT, which revisions this version ships is read from the migration files' text, and a
new SQLite database is created from the schema the migrations make, kept as SQL in the package
(``data/sqlite_schema.sql``, written by ``scripts/gen_sqlite_schema.py`` and checked by the
tests).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import Connection, Engine, inspect

from .exceptions import SchemaOutdatedError, SchemaTooNewError

if TYPE_CHECKING:
    from alembic.config import Config

# The PostgreSQL advisory lock held while the schema is created or upgraded ("rtms" in ASCII).
_PG_SCHEMA_LOCK: Final = 0x72746D73
#: The execution option that makes an SQLite transaction begin with ``BEGIN IMMEDIATE``.
SQLITE_IMMEDIATE: Final = "rtms_lifecycle_immediate"

_PACKAGED = Path(__file__).with_name("migrations")
# The schema a new SQLite database starts with: what the migrations create, as SQL.
_SQLITE_SCHEMA = Path(__file__).with_name("data") / "sqlite_schema.sql"
# An editable install or a source checkout runs the top-level folder the wheel is built from.
_SOURCE = Path(__file__).resolve().parents[2] / "migrations"
# Alembic's default table of the revision a database is at.
_VERSION_TABLE: Final = "alembic_version"
# `revision: str = "0007"` and `down_revision: str | None = "0006"` (or a tuple, or None) in a
# migration file, as Alembic's template writes them.
_REVISION_LINE: Final = re.compile(r"^(revision|down_revision)\b[^=\n]*=(.*)$", re.MULTILINE)
_QUOTED: Final = re.compile(r"""["']([^"']+)["']""")


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
    with engine.connect() as conn:
        return _read_revision(conn)


def _read_revision(conn: Connection) -> str | None:
    # Looked up first: on PostgreSQL a failed SELECT would abort the caller's transaction.
    if not inspect(conn).has_table(_VERSION_TABLE):
        return None
    rows = conn.exec_driver_sql(f"SELECT version_num FROM {_VERSION_TABLE}").scalars().all()
    if len(rows) > 1:
        raise SchemaOutdatedError(
            f"the database records {len(rows)} schema revisions ({', '.join(rows)}): "
            "rtms-lifecycle never branches its migrations, so it did not write them"
        )
    return str(rows[0]) if rows else None


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

    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


def _sqlite_statements() -> Iterator[str]:
    """The statements of the packaged SQLite schema, one at a time (triggers hold ``;``)."""
    statement = ""
    for line in _SQLITE_SCHEMA.read_text(encoding="utf-8").splitlines(keepends=True):
        if not statement and (line.startswith("--") or not line.strip()):
            continue
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""


def _create(conn: Connection) -> None:
    """Create the schema in an empty database: Alembic's migrations, or on SQLite their result.

    The packaged SQLite schema records the revision it is at; were it behind the migrations
    (the tests would have failed), Alembic upgrades the rest.
    """
    if conn.dialect.name == "sqlite":
        for statement in _sqlite_statements():
            conn.exec_driver_sql(statement)
        if _read_revision(conn) == head_revision():
            return
    _upgrade(conn, "head")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest), one process at a time."""
    with _schema_locked(engine) as conn:
        _upgrade(conn, revision)


def ensure_schema(engine: Engine) -> None:
    """Create the schema in a new, empty database; refuse one at an older revision.

    Safe when several processes open a new database at once: one creates the schema under the
    schema lock, the others wait for it, then find the schema there.
    """
    current = current_revision(engine)
    if current == head_revision():
        return
    if current is None:
        with _schema_locked(engine) as conn:
            # Read again under the lock: another process may have created it meanwhile.
            current = _read_revision(conn)
            if current is None:
                tables = set(inspect(conn).get_table_names())
                if tables & {"streams", "deliveries"}:
                    raise SchemaOutdatedError(
                        "the database has rtms-lifecycle tables but no migration revision: "
                        "it was not created by rtms-lifecycle"
                    )
                _create(conn)
                return
        if current == head_revision():
            return
    refuse_newer(current)
    raise SchemaOutdatedError(
        f"the database schema is at revision {current}, this version of rtms-lifecycle needs "
        f"{head_revision()}: run `rtms-lifecycle db upgrade` (with the same --db) first"
    )
