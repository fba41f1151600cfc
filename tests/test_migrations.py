"""Migrations: pytest-alembic's standard checks on SQLite and PostgreSQL, and schema refusal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from rtms_lifecycle import SchemaOutdatedError, Tracker, _migrate
from rtms_lifecycle.store import create_store_engine

from ._deliveries import raw

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]


@pytest.fixture
def alembic_config() -> dict[str, str]:
    """pytest-alembic runs the migrations the library ships, from where the library finds them."""
    return {"script_location": _migrate.script_location()}


@pytest.fixture
def alembic_engine(db_url: str) -> Iterator[Engine]:
    """Each standard check runs on a real SQLite file and a real PostgreSQL database."""
    engine = create_store_engine(db_url)
    yield engine
    engine.dispose()


def test_new_database_is_created_at_head(db_url: str) -> None:
    """A new, empty database gets the schema at the latest migration on first use."""
    with Tracker(db_url) as tracker:
        assert _migrate.current_revision(tracker.engine) == _migrate.head_revision()


def test_older_database_is_refused(db_url: str) -> None:
    """A database at an older migration is refused, naming the upgrade command; upgrade fixes it."""
    engine = create_store_engine(db_url)
    _migrate.upgrade(engine, "0001")
    with pytest.raises(SchemaOutdatedError, match="rtms-lifecycle db upgrade"):
        Tracker(engine)
    _migrate.upgrade(engine)
    with Tracker(engine) as tracker:
        assert _migrate.current_revision(tracker.engine) == _migrate.head_revision()


@pytest.mark.parametrize(
    "statement", ["UPDATE transitions SET late = late", "DELETE FROM transitions"]
)
def test_database_refuses_to_rewrite_the_audit_history(db_url: str, statement: str) -> None:
    """Even raw SQL cannot update or delete audit rows: the database refuses."""
    with Tracker(db_url) as tracker:
        tracker.ingest(raw("started", "s1", 10))
        with pytest.raises(DBAPIError, match="append-only"), tracker.engine.begin() as conn:
            conn.execute(text(statement))
        assert len(tracker.audit("s1")) == 1


def test_foreign_tables_are_refused(sqlite_url: str) -> None:
    """A database with our table names but no migration history is not taken over."""
    engine = create_store_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE streams (x INTEGER)"))
    with pytest.raises(SchemaOutdatedError, match="not created by rtms-lifecycle"):
        Tracker(engine)
    engine.dispose()
