"""The store's engine: the URL normalised, every SQLite connection set up as the store needs it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from rtms_lifecycle.store.sqlite import (
    PRUNING_FUNCTION,
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_IMMEDIATE,
    SQLITE_PRAGMAS,
    not_pruning,
    prepare,
)
from rtms_lifecycle.store.urls import check_driver, parse

__all__ = [
    "PRUNING_FUNCTION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_PRAGMAS",
    "configure_sqlite",
    "create_store_engine",
    "not_pruning",
]


def _normalise_url(url: str) -> str:
    parsed = parse(url)
    check_driver(parsed)
    return parsed.render_as_string(hide_password=False)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    prepare(dbapi_connection)


def _sqlite_begin(conn: Connection) -> None:
    # A reader's statements see one snapshot (writers begin their own, in _writers); a schema
    # change takes the write lock up front.
    immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def configure_sqlite(engine: Engine) -> None:
    if not event.contains(engine, "connect", _sqlite_connect):
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)


def create_store_engine(url: str) -> Engine:
    """An engine configured the way the store needs it (SQLite pragmas and locking)."""
    url = _normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url)
        configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per transaction; a connection found dead is retried.
    return create_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600)
