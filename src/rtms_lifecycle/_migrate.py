"""Alembic from code: where the migrations live, which revision a database is at, upgrading."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect

from .exceptions import SchemaOutdatedError, SchemaTooNewError

# The PostgreSQL advisory lock held while the schema is created or upgraded ("rtms" in ASCII).
_PG_SCHEMA_LOCK: Final = 0x72746D73
#: The execution option that makes an SQLite transaction begin with ``BEGIN IMMEDIATE``.
SQLITE_IMMEDIATE: Final = "rtms_lifecycle_immediate"

_PACKAGED = Path(__file__).with_name("migrations")
# An editable install or a source checkout runs the top-level folder the wheel is built from.
_SOURCE = Path(__file__).resolve().parents[2] / "migrations"


def script_location() -> str:
    """The migrations folder: inside the installed package, else the source checkout's."""
    if (_PACKAGED / "env.py").is_file():
        return "rtms_lifecycle:migrations"
    return str(_SOURCE)


def alembic_config() -> Config:
    """An Alembic configuration that needs no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", script_location())
    return config


@cache
def head_revision() -> str:
    """The newest migration this version of the library ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def is_known(revision: str) -> bool:
    """Whether this version ships ``revision``; an unknown one was written by a newer version."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


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
        return MigrationContext.configure(conn).get_current_revision()


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
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


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
            current = MigrationContext.configure(conn).get_current_revision()
            if current is None:
                tables = set(inspect(conn).get_table_names())
                if tables & {"streams", "deliveries"}:
                    raise SchemaOutdatedError(
                        "the database has rtms-lifecycle tables but no migration revision: "
                        "it was not created by rtms-lifecycle"
                    )
                _upgrade(conn, "head")
                return
        if current == head_revision():
            return
    refuse_newer(current)
    raise SchemaOutdatedError(
        f"the database schema is at revision {current}, this version of rtms-lifecycle needs "
        f"{head_revision()}: run `rtms-lifecycle db upgrade` (with the same --db) first"
    )
