"""Alembic from code: where the migrations live, which revision a database is at, upgrading."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, inspect

from .exceptions import SchemaOutdatedError, SchemaTooNewError

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


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest)."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def ensure_schema(engine: Engine) -> None:
    """Create the schema in a new, empty database; refuse one at an older revision."""
    current = current_revision(engine)
    if current == head_revision():
        return
    if current is None:
        tables = set(inspect(engine).get_table_names())
        if tables & {"streams", "deliveries"}:
            raise SchemaOutdatedError(
                "the database has rtms-lifecycle tables but no migration revision: "
                "it was not created by rtms-lifecycle"
            )
        upgrade(engine)
        return
    refuse_newer(current)
    raise SchemaOutdatedError(
        f"the database schema is at revision {current}, this version of rtms-lifecycle needs "
        f"{head_revision()}: run `rtms-lifecycle db upgrade` (with the same --db) first"
    )
