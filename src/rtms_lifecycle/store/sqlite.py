"""SQLite connections as the store opens them: pragmas, the pruning guard, the file they name.

Without SQLAlchemy: the store's writer opens its own connection to an SQLite file, and a
command that only writes (``ingest``) never imports SQLAlchemy. The engine's pool, which the
reads use, sets its connections up with :func:`prepare` too.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rtms_lifecycle.exceptions import ConfigurationError, DatabaseUnavailable

__all__ = [
    "LOCK_WAIT_ENV",
    "PRUNING",
    "PRUNING_FUNCTION",
    "SQLITE_BULK_CHECKPOINT_PAGES",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_IMMEDIATE",
    "SQLITE_PRAGMAS",
    "SQLITE_WAIT_SLICE_MS",
    "SQLITE_WRITER_CACHE_KB",
    "SQLITE_WRITER_PRAGMAS",
    "LockWaitInterrupted",
    "LockedOut",
    "SqliteFile",
    "execute_when_unlocked",
    "is_busy",
    "lock_wait_s",
    "lock_waits_interrupted_by",
    "not_pruning",
    "orphaned_log",
    "prepare",
    "refuse_orphaned_log",
    "sqlite_trouble",
    "unavailable",
]

#: How long an SQLite write waits for another process's write lock when it has no deadline.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
#: The environment variable that sets how many seconds a write without a deadline (a command's)
#: waits for another process's write lock in all (default: the busy timeout's 30 s).
LOCK_WAIT_ENV: Final = "RTMS_LIFECYCLE_LOCK_WAIT"
#: The busy timeout of such a write: it waits in slices this long, and Python runs its signal
#: handlers between two (a Ctrl-C), which it cannot while SQLite's busy handler sleeps.
SQLITE_WAIT_SLICE_MS: Final = 100
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


#: What ``rtms_lifecycle_pruning()`` says on a connection that is not pruning: 0. A builtin,
#: not a Python function: SQLite calls it inside a DELETE, and a Ctrl-C that came meanwhile,
#: raised in a function of ours, failed the statement as "user-defined function raised
#: exception" instead of interrupting the command; a builtin runs no bytecode to raise it in.
not_pruning: Final[Callable[[], int]] = int
#: The same on a prune's own connection: 1.
PRUNING: Final[Callable[[], int]] = functools.partial(int, 1)


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
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's SQLITE_BUSY: another connection holds a lock."""
    return (
        isinstance(exc, sqlite3.OperationalError)
        and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    )


def lock_wait_s() -> float:
    """Seconds a write without a deadline waits for another process's lock: ``LOCK_WAIT_ENV``,
    else the busy timeout; :class:`ConfigurationError` if the variable is not a number > 0."""
    given = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not given:
        return SQLITE_BUSY_TIMEOUT_MS / 1000
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ConfigurationError(f"{LOCK_WAIT_ENV}: {given!r} is not a number of seconds > 0")
    return seconds


class LockedOut(sqlite3.OperationalError):
    """Another process held the database's lock for all of the wait (:func:`lock_wait_s`)."""


class LockWaitInterrupted(KeyboardInterrupt):
    """A wait for another process's lock, ended by a Ctrl-C (:func:`lock_waits_interrupted_by`)."""


# What the main thread's wait for a lock asks between two slices: whether the user asked to
# stop (a Ctrl-C that a handler noted without raising); see lock_waits_interrupted_by.
_stop_checks: list[Callable[[], bool]] = []


@contextmanager
def lock_waits_interrupted_by(stop: Callable[[], bool]) -> Iterator[None]:
    """In the block, a wait for a lock ends with :class:`LockWaitInterrupted` once ``stop()``
    is true: for a Ctrl-C handler that only notes the Ctrl-C (``ingest`` commits what it read)."""
    _stop_checks.append(stop)
    try:
        yield
    finally:
        _stop_checks.remove(stop)


def execute_when_unlocked(
    conn: sqlite3.Connection, statement: str, path: Path | str | None = None
) -> sqlite3.Cursor:
    """Run ``statement`` on ``conn``, whose busy timeout is ``SQLITE_WAIT_SLICE_MS``, waiting
    for another process's lock up to :func:`lock_wait_s` in all, a slice at a time: between
    two, a Ctrl-C is seen (within about 0.1 s). :class:`LockedOut` once the wait is over.

    Free, the statement runs once, as it would without this (nothing is read or timed)."""
    try:
        return conn.execute(statement)
    except sqlite3.OperationalError as exc:
        if not is_busy(exc):
            raise
    # The first slice has passed; from here on, a wait.
    begun = time.monotonic() - SQLITE_WAIT_SLICE_MS / 1000
    bound = lock_wait_s()
    while True:
        if any(stop() for stop in _stop_checks):
            raise LockWaitInterrupted
        waited = time.monotonic() - begun
        if waited >= bound:
            name = f"the database {path}" if path is not None else "the database"
            took = f"{waited:.0f}" if waited >= 10 else f"{waited:.1f}"
            raise LockedOut(
                f"{name} is locked by another process: it held the lock for all of the "
                f"{took} s this command waited (set {LOCK_WAIT_ENV} to wait longer)"
            )
        try:
            return conn.execute(statement)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise


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
