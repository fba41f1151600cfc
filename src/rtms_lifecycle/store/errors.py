"""The store's boundary: a database error of SQLAlchemy's leaves it as one of the library's.

Callers see :class:`DatabaseUnavailable` (the database cannot be reached or opened) or
:class:`DatabaseError` (it failed a statement), each one line, never ``SQLAlchemyError``.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from rtms_lifecycle.display import error_line
from rtms_lifecycle.exceptions import DatabaseError, DatabaseUnavailable, RTMSLifecycleError
from rtms_lifecycle.store.sqlite import sqlite_trouble

__all__ = [
    "HEALTH_REASONS",
    "first_line",
    "health_reason",
    "translate",
    "translated",
    "unreachable",
]


def first_line(exc: BaseException) -> str:
    """What the driver said, first line: SQLAlchemy's own text spans lines (SQL, parameters)."""
    return error_line(getattr(exc, "orig", None) or exc)


def translate(exc: BaseException, sqlite_path: Path | None) -> RTMSLifecycleError | None:
    """The library's error for a database error (SQLAlchemy's or sqlite3's); None for anything else.

    ``sqlite_path``: the store's SQLite file, to say why it cannot be opened or written.
    """
    # Only a process that imported SQLAlchemy can have its errors: a write-only one never does.
    sa_exc = sys.modules.get("sqlalchemy.exc")
    is_sa = sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError)
    if not (is_sa or isinstance(exc, sqlite3.Error)):
        return None
    trouble = sqlite_trouble(sqlite_path) if sqlite_path is not None else None
    if isinstance(exc, sqlite3.Error):
        # The store's own SQLite connections (schema checks): opening or reading the file failed
        # (a directory, not a database, unreadable), or a statement did.
        if trouble or type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
            return DatabaseUnavailable(f"database unavailable: {trouble or first_line(exc)}")
        return DatabaseError(f"database error: {first_line(exc)}")
    assert sa_exc is not None
    # A DBAPI error raised while connecting (server down, file unopenable) has no statement.
    if isinstance(exc, sa_exc.DBAPIError) and (exc.connection_invalidated or exc.statement is None):
        return DatabaseUnavailable(f"database unavailable: {trouble or first_line(exc)}")
    if trouble:
        return DatabaseUnavailable(f"database unavailable: {trouble}")
    return DatabaseError(f"database error: {first_line(exc)}")


@contextmanager
def translated(sqlite_path: Path | None) -> Iterator[None]:
    """Raise what :func:`translate` makes of a database error raised in the block."""
    try:
        yield
    except Exception as exc:
        error = translate(exc, sqlite_path)
        if error is None:
            raise
        raise error from exc


#: PostgreSQL's codes for a connection refused, lost or not yet accepted: class 08, and a server
#: shutting down or starting (57P01 to 57P03).
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` or what caused it says the database could not be reached (no connection,
    one lost, a server going down), as opposed to a statement it refused."""
    psycopg = sys.modules.get("psycopg")
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DatabaseUnavailable):
            return True
        if psycopg is not None and isinstance(seen, psycopg.OperationalError):
            state = seen.sqlstate
            if state is None or state.startswith(_UNREACHABLE_SQLSTATES):
                return True
        seen = seen.__cause__
    return False


#: What ``/healthz`` may answer as its ``reason``: a fixed, short vocabulary that tells a load
#: balancer and an operator what kind of trouble it is, and nothing of the database's own text
#: (host, port, socket path, role and file names), which goes to the log.
HEALTH_REASONS: Final = (
    "store busy",
    "database unreachable",
    "database refuses writes",
    "disk full",
    "database damaged",
    "database error",
)
# SQLSTATEs and SQLite result codes (the primary code, the low byte) of each kind.
_PG_STATES: Final = {
    "25006": "database refuses writes",  # read_only_sql_transaction
    "42501": "database refuses writes",  # insufficient_privilege
    "53100": "disk full",
    "XX001": "database damaged",  # data_corrupted
    "XX002": "database damaged",  # index_corrupted
}
_SQLITE_CODES: Final = {8: "database refuses writes", 13: "disk full", 11: "database damaged"}
_SQLITE_CODES_NOTADB: Final = 26
# What the library's own messages say, when no driver error is attached (the file watcher's).
_WORDS: Final = (
    (("no space left", "disk is full", "disk full"), "disk full"),
    (
        ("read-only", "readonly", "permission denied", "not writable", "could not be written"),
        "database refuses writes",
    ),
    (("malformed", "not a database", "not an sqlite database", "corrupt"), "database damaged"),
)


def health_reason(exc: BaseException, busy: bool = False) -> str:
    """Which of :data:`HEALTH_REASONS` ``exc`` is (``busy``: the store did not answer in time)."""
    if busy:
        return "store busy"
    seen: BaseException | None = exc
    while seen is not None:
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str) and state in _PG_STATES:
            return _PG_STATES[state]
        code = getattr(seen, "sqlite_errorcode", None)
        if isinstance(code, int):
            if code & 0xFF == _SQLITE_CODES_NOTADB:
                return "database damaged"
            if code & 0xFF in _SQLITE_CODES:
                return _SQLITE_CODES[code & 0xFF]
        seen = seen.__cause__ or getattr(seen, "orig", None)
    text = str(exc).lower()
    for words, reason in _WORDS:
        if any(word in text for word in words):
            return reason
    if isinstance(exc, DatabaseUnavailable) or unreachable(exc):
        return "database unreachable"
    return "database error"
