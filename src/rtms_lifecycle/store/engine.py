"""The store's engine: the URL normalised, every SQLite connection set up as the store needs it."""

from __future__ import annotations

import os
import select
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from rtms_lifecycle.store.deadline import bound_connect
from rtms_lifecycle.store.sqlite import (
    PRUNING_FUNCTION,
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_IMMEDIATE,
    SQLITE_PRAGMAS,
    not_pruning,
    prepare,
    refuse_orphaned_log,
)
from rtms_lifecycle.store.urls import check_driver, parse, sqlite_file

__all__ = [
    "LIBPQ_DEFAULTS",
    "PRUNING_FUNCTION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_PRAGMAS",
    "closed_by_server",
    "configure_sqlite",
    "create_store_engine",
    "libpq_defaults",
    "not_pruning",
]


#: libpq settings the store gives a PostgreSQL connection unless its URL names them: a server
#: that vanishes from the network (a failover, a dropped route) fails a connect in 10 s and an
#: established connection in about 20 s (unacknowledged data: tcp_user_timeout) or 25 s (idle:
#: 10 s, then 3 keepalive probes 5 s apart), where TCP alone waits minutes (psycopg's connect
#: 130 s). Each is overridden by the URL's own query parameter, connect_timeout also by
#: PGCONNECT_TIMEOUT.
LIBPQ_DEFAULTS: Final = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}
_LIBPQ_ENVIRONMENT: Final = {"connect_timeout": "PGCONNECT_TIMEOUT"}


def libpq_defaults(url: str) -> dict[str, str]:
    """The :data:`LIBPQ_DEFAULTS` that neither ``url`` nor the environment sets."""
    query = make_url(url).query
    return {
        name: value
        for name, value in LIBPQ_DEFAULTS.items()
        if name not in query and not os.environ.get(_LIBPQ_ENVIRONMENT.get(name, ""))
    }


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


def create_store_engine(url: str, *, watched: bool = False) -> Engine:
    """An engine configured the way the store needs it (SQLite pragmas and locking). A new
    connection to an SQLite file is refused where :func:`refuse_orphaned_log` says, unless
    ``watched`` (the store checks that itself, after its writer's own reasons)."""
    url = _normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url)
        configure_sqlite(engine)
        path = sqlite_file(engine.url)
        if path is not None and not watched:

            def refuse(*_connect_args: object) -> None:
                # Opening by path would create a database beside another's live log.
                refuse_orphaned_log(path)

            event.listen(engine, "do_connect", refuse)
        return engine
    # No pre-ping: it costs a round trip per checkout (24 us on loopback, more over a network).
    # A connection the server closed (a restart, pg_terminate_backend) is found by a look at
    # its socket instead (1.2 us), and replaced.
    engine = create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_recycle=3600,
        connect_args=libpq_defaults(url),
    )
    event.listen(engine, "do_connect", bound_connect)
    event.listen(engine, "checkout", _replace_if_closed)
    return engine


def closed_by_server(conn: Any) -> bool:
    """Whether the server ended idle psycopg connection ``conn``: its socket has something to
    read (a termination notice, end of file) though nothing was asked. A look, no round trip:
    a server that stopped answering is found by the statement timeouts instead."""
    try:
        if conn.closed or conn.broken:
            return True
        # poll, not select: select refuses descriptors past 1024, which a busy receiver has.
        look = select.poll()
        look.register(conn.pgconn.socket, select.POLLIN)
        ready = look.poll(0)
    except Exception:  # a closed descriptor, psycopg's OperationalError: ended all the same
        return True
    return bool(ready)


def _replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    # The pool discards the connection and opens another in its place.
    if closed_by_server(dbapi_connection):
        raise DisconnectionError("the server closed the connection")
