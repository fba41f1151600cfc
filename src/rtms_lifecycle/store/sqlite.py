"""SQLite connections as the store opens them: pragmas, the pruning guard, the file they name.

Without SQLAlchemy: the store's writer opens its own connection to an SQLite file, and a
command that only writes (``ingest``) never imports SQLAlchemy. The engine's pool, which the
reads use, sets its connections up with :func:`prepare` too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rtms_lifecycle.exceptions import DatabaseUnavailable

__all__ = [
    "PRUNING_FUNCTION",
    "SQLITE_BULK_CHECKPOINT_PAGES",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_IMMEDIATE",
    "SQLITE_PRAGMAS",
    "SQLITE_WRITER_CACHE_KB",
    "SQLITE_WRITER_PRAGMAS",
    "SqliteFile",
    "not_pruning",
    "orphaned_log",
    "prepare",
    "refuse_orphaned_log",
    "sqlite_trouble",
    "unavailable",
]

#: How long an SQLite write waits for another process's write lock when it has no deadline.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
#: What every SQLite connection of the store runs first (the raw benchmarks use the same). The
#: busy timeout comes first: switching a new file to WAL waits for the other processes' locks.
SQLITE_PRAGMAS: Final = (
    f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "journal_mode=WAL",
    "synchronous=NORMAL",
)
#: The writer's page cache in KiB (SQLite's default is 2 MB); it grows only as it is used.
SQLITE_WRITER_CACHE_KB: Final = 32_768
#: What the writer's connection runs on top of ``SQLITE_PRAGMAS``. A statement that fires a
#: trigger journals the pages it changes, to undo itself alone. Once one statement's journal
#: passes 64 KiB, SQLite keeps it in a file in the temporary folder for the rest of the
#: transaction, written page by page: 942,420 ``pwrite`` calls for 64,000 deliveries in batches
#: of 5,000 (60,658 in memory), 23% of the load's time; and a full temporary folder failed the
#: writes with "database or disk is full". In memory it holds one statement's pages at a time.
SQLITE_WRITER_PRAGMAS: Final = (f"cache_size=-{SQLITE_WRITER_CACHE_KB}", "temp_store=MEMORY")
#: Log pages between two checkpoints of a bulk load (SQLite's default is 1,000).
SQLITE_BULK_CHECKPOINT_PAGES: Final = 10_000
#: The SQLite guard of the audit history lets a DELETE pass only where this returns 1: every
#: connection of the store defines it as 0, a prune's own connection as 1 (migration 0006).
PRUNING_FUNCTION: Final = "rtms_lifecycle_pruning"
#: The SQLAlchemy execution option that makes an SQLite transaction begin with
#: ``BEGIN IMMEDIATE`` (a schema change takes the write lock up front).
SQLITE_IMMEDIATE: Final = "rtms_lifecycle_immediate"


def not_pruning() -> int:
    """What ``rtms_lifecycle_pruning()`` says on a connection that is not pruning."""
    return 0


def prepare(connection: Any) -> None:
    """Set up a new DBAPI connection to SQLite the way the store needs it."""
    # We issue BEGIN ourselves; pysqlite's own transaction handling would defer it.
    connection.isolation_level = None
    cursor = connection.cursor()
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    for pragma in SQLITE_PRAGMAS:
        _execute_when_free(cursor, f"PRAGMA {pragma}", deadline)
    cursor.close()
    connection.create_function(PRUNING_FUNCTION, 0, not_pruning)


def _execute_when_free(cursor: Any, statement: str, deadline: float) -> None:
    """Run ``statement``, retrying while SQLite answers SQLITE_BUSY until ``deadline``.

    Switching a new file to WAL answers SQLITE_BUSY at once, without the busy handler, while
    another process holds a lock on it: 12 of 480 processes, 8 opening one new file at a time
    on a loaded machine, failed with "database is locked" before this retry.
    """
    delay = 0.001
    while True:
        try:
            cursor.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def sqlite_trouble(path: Path) -> str | None:
    """Why SQLite cannot open or write ``path``, in words, when the file system tells: the
    driver says only "unable to open database file" or "attempt to write a readonly database"."""
    if path.is_dir():
        return f"{path} is a directory, not a database file"
    if not path.parent.is_dir():
        return f"the folder {path.parent} of {path.name} does not exist"
    if path.is_file():
        try:
            with path.open("rb") as file:
                head = file.read(16)
        except OSError as exc:  # /proc/self/mem, a file on a failing disk
            return f"{path} cannot be read: {exc.strerror or exc}"
        if head and head != b"SQLite format 3\x00":
            return f"{path} is not an SQLite database"
    if not os.access(path.parent, os.W_OK):
        return (
            f"the folder {path.parent} is not writable: SQLite keeps its -wal and -shm files "
            f"beside {path.name}, even to read it"
        )
    return None


def orphaned_log(path: Path | str) -> str | None:
    """Why no database may be created at ``path``: the file is absent but its ``-wal`` or
    ``-shm`` is there (None if not). SQLite would take them for the new file's own, fail with
    "disk I/O error", and replace the log: if it is the live log of a database moved or deleted
    while in use, its deliveries could then never come back."""
    name = os.fspath(path)
    if os.path.lexists(name):
        return None
    logs = [f"{name}{end}" for end in ("-wal", "-shm") if os.path.lexists(f"{name}{end}")]
    if not logs:
        return None
    return (
        f"database unavailable: {name} is absent but {' and '.join(logs)} "
        f"{'are' if len(logs) > 1 else 'is'} there, a write-ahead log without its database: "
        "the database was moved or deleted while in use; put it back at its path (a receiver "
        "still running on it restores a deleted one itself), or, if it is lost for good, "
        f"remove {' and '.join(logs)} to start a new, empty database; nothing was created "
        "(see docs/operations.md, Backup, restore and moving the database)"
    )


def refuse_orphaned_log(path: Path | str) -> None:
    """Raise :class:`DatabaseUnavailable` if :func:`orphaned_log` says why."""
    why = orphaned_log(path)
    if why is not None:
        raise DatabaseUnavailable(why)


def unavailable(path: Path | None, error: sqlite3.Error) -> str:
    """What to tell of an SQLite database that SQLite could not open or use: why, when the file
    system tells, else SQLite's own words."""
    return f"database unavailable: {(sqlite_trouble(path) if path else None) or error}"


@dataclass(frozen=True, slots=True)
class SqliteFile:
    """An SQLite database file and how to open it: what ``sqlite3.connect`` is given."""

    #: the file, as the user named it (relative paths from the current folder)
    path: Path
    #: what ``sqlite3.connect`` opens: the absolute path, or an SQLite URI
    filename: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def at(cls, path: str) -> SqliteFile:
        """The file at ``path``, opened as SQLAlchemy opens ``sqlite:///path``."""
        return cls(Path(path), os.path.abspath(path), {"check_same_thread": False})

    def connect(self) -> sqlite3.Connection:
        """A new connection, set up by :func:`prepare`; :class:`DatabaseUnavailable` where
        :func:`orphaned_log` refuses."""
        refuse_orphaned_log(self.path)
        connection: sqlite3.Connection = sqlite3.connect(self.filename, **self.options)
        try:
            prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection
