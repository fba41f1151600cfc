"""The SQLite writer: one connection, held for the store's life, and ``BEGIN IMMEDIATE``."""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from rtms_lifecycle.exceptions import DatabaseUnavailable
from rtms_lifecycle.store.deadline import remaining
from rtms_lifecycle.store.filewatch import Change, FileWatch, identity
from rtms_lifecycle.store.rows import (
    ALERT_COLUMNS,
    DELIVERY_COLUMNS,
    IN_LIST_SIZE,
    STREAM_COLUMNS,
    TRANSITION_ROW_COLUMNS,
    Row,
    in_lists,
)
from rtms_lifecycle.store.salvage import keep_recovered, put_at, save_copy
from rtms_lifecycle.store.sqlite import (
    SQLITE_BULK_CHECKPOINT_PAGES,
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_WAIT_SLICE_MS,
    SQLITE_WRITER_PRAGMAS,
    LockedOut,
    SqliteFile,
    execute_when_unlocked,
    unavailable,
)
from rtms_lifecycle.store.writers.base import (
    EVENT,
    IDENTITY_LOOKUP,
    NEW_STREAM_COLUMNS,
    ON_NEW_ALERT,
    PROBE,
    STREAM_EVENTS,
    Loaded,
    RollBack,
    WriteFailed,
    Writes,
    check_deadline,
    checkout,
    insert_sql,
    select_sql,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["SqliteWriter"]

log = logging.getLogger("rtms_lifecycle.store")


#: The connection a writer holds, and how to give it back (True: it broke, do not reuse it).
Held = tuple[sqlite3.Connection, Callable[[bool], None]]
Connector = Callable[[], Held]
_FOLD_TS: Final = STREAM_COLUMNS.index("fold_ts")
# Log pages between two checkpoints of a commit that answers a sender: SQLite's default.
_CHECKPOINT_PAGES: Final = 1_000
# Seconds between two checks of the file after commits that answer nobody (a bulk load's; the
# load checks once more at its end). Checking after each of them cost 5-10% of a load of one
# delivery per transaction (measured, alternating runs), far more than the stat itself.
_BULK_CHECK_INTERVAL: Final = 0.1
# Seconds before a copy of a deleted database file that failed (a full disk) is tried again:
# each try copies the whole database.
_SAVE_RETRY_INTERVAL: Final = 5.0


_SQLITE_DELIVERIES: Final = insert_sql("deliveries", DELIVERY_COLUMNS, "?")
# SQLite has no transaction ids: the feed's cursor there rests on serialised writers.
_SQLITE_TRANSITIONS: Final = insert_sql(
    "transitions", TRANSITION_ROW_COLUMNS, "?", computed="tx_id = 0"
)
_SQLITE_NEW_STREAMS: Final = insert_sql("streams", NEW_STREAM_COLUMNS, "?")
_SQLITE_ALERTS: Final = insert_sql("concurrency_alerts", ALERT_COLUMNS, "?", suffix=ON_NEW_ALERT)
_LAST_IDS: Final = "(SELECT max(id) FROM deliveries), (SELECT max(id) FROM transitions)"
_SQLITE_LAST_IDS: Final = f"SELECT {_LAST_IDS}"


@lru_cache(maxsize=64)
def _sqlite_update(changed: tuple[int, ...]) -> str:
    assignments = "".join(f"{STREAM_COLUMNS[i]} = ?, " for i in changed)
    return f"UPDATE streams SET {assignments}updated_at = ? WHERE stream_id = ?"


def _sqlite_changes(writes: Writes) -> dict[str, list[Row]]:
    # Only the columns that changed: SQLite rewrites the entries of every index holding a column
    # the statement sets, changed or not (twice the pages written per event, measured).
    shapes: dict[tuple[int, ...], list[Row]] = {}
    columns = range(1, len(STREAM_COLUMNS))
    for stored, now in writes.changed_streams:
        # Lists, not generator expressions: a third of the time for a stream row.
        changed = tuple([i for i in columns if now[i] != stored[i]])
        shapes.setdefault(changed, []).append((*[now[i] for i in changed], writes.now, now[0]))
    return {_sqlite_update(changed): rows for changed, rows in shapes.items()}


@lru_cache(maxsize=32)
def _sqlite_in(n: int) -> str:
    return select_sql("streams", STREAM_COLUMNS, f"stream_id IN ({', '.join('?' * n)})")


@lru_cache(maxsize=32)
def _sqlite_first_streams(n: int) -> str:
    # The largest ids and the first streams in one statement, one fewer per transaction: the
    # left join on one constant row returns that row, its stream columns null, when none of the
    # streams is stored.
    columns = ", ".join(f"s.{name}" for name in STREAM_COLUMNS)
    return (
        f"SELECT {_LAST_IDS}, {columns} FROM (SELECT 1)"
        f" LEFT JOIN streams AS s ON s.stream_id IN ({', '.join('?' * n)})"
    )


@lru_cache(maxsize=32)
def _sqlite_identity_lookup(n: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * n)
    return f"WITH v(s, k, t) AS (VALUES {values}) SELECT {IDENTITY_LOOKUP} FROM v"


_SQLITE_STREAM_EVENTS: Final = STREAM_EVENTS.replace("%s", "?")
_SQLITE_EVENT: Final = EVENT.replace("%s", "?")


def _sqlite_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc)


_SQLITE_PROBE: Final = tuple(statement.replace("%s", "x''") for statement in PROBE)
# Copies the whole log into the database file (synced) and empties it.
_CHECKPOINT: Final = "PRAGMA wal_checkpoint(TRUNCATE)"


def _keep_open(conn: sqlite3.Connection) -> None:
    # Never deallocated, so never closed, not even at exit: SQLite's close would checkpoint and
    # delete the files named by its paths, which are no longer its own.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


class SqliteTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def load(
        self,
        stream_ids: Sequence[str],
        identities: Sequence[Row],
        deliveries: int,
        transitions: int,
        now: int,
    ) -> Loaded:
        conn = self._conn
        # BEGIN IMMEDIATE made this the only writer: the ids after the largest are ours.
        first = stream_ids[:IN_LIST_SIZE]
        if first:
            joined = conn.execute(_sqlite_first_streams(len(first)), first).fetchall()
            last_delivery, last_transition = joined[0][:2]
            found: list[Row] = [row[2:] for row in joined if row[2] is not None]
        else:
            # An empty IN list would scan the streams table.
            last_delivery, last_transition = conn.execute(_SQLITE_LAST_IDS).fetchone()
            found = []
        if len(stream_ids) > IN_LIST_SIZE:
            for chunk in in_lists(stream_ids[IN_LIST_SIZE:]):
                found += conn.execute(_sqlite_in(len(chunk)), chunk)
        # Only identities that may be stored are looked up: a new stream has no events, and a
        # stored stream's events all lie at or before its fold position (every stored event
        # was folded in), so an event after it (the usual, in-order case) is new.
        folded = {row[0]: row[_FOLD_TS] for row in found}
        asked = [i for i in identities if i[0] in folded and i[2] <= folded[i[0]]]
        identified: list[Row] = []
        if asked:
            for part in in_lists(asked):
                values = [v for i in part for v in i]
                rows = conn.execute(_sqlite_identity_lookup(len(part)), values)
                identified += [row for row in rows if row[3] is not None]
        return Loaded(
            found, identified, count((last_delivery or 0) + 1), count((last_transition or 0) + 1)
        )

    def events(self, stream_id: str) -> list[Row]:
        return self._conn.execute(_SQLITE_STREAM_EVENTS, (stream_id,)).fetchall()

    def event(self, delivery_id: int) -> Row:
        row: Row = self._conn.execute(_SQLITE_EVENT, (delivery_id,)).fetchone()
        return row

    def write(self, writes: Writes) -> None:
        many = self._conn.executemany
        for sql, rows in (
            (_SQLITE_DELIVERIES, writes.deliveries),
            (_SQLITE_TRANSITIONS, writes.transitions),
            (_SQLITE_NEW_STREAMS, writes.new_streams),
            *_sqlite_changes(writes).items(),
            (_SQLITE_ALERTS, writes.alerts),
        ):
            if rows:
                many(sql, rows)


def _tune_for_writes(conn: Any) -> None:
    # Every delivery adds entries at random places in the stream-keyed indexes: with SQLite's
    # default 2 MB page cache, a bulk load read those pages back from the OS again and again
    # (65,667 reads for 64,000 deliveries; 14,123 from 16 MB up, measured). Only the writer's
    # connection, whose cache grows only as it is used; its statement journal: see the pragmas.
    for pragma in SQLITE_WRITER_PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")


class SqliteWriter:
    """One connection, held for the store's life (writes take turns in the store's queue).

    Before every commit that answers a sender, and after it, it checks that the database file
    and its ``-wal`` at their paths are still the ones its connection opened (after bulk
    commits, at most every 0.1 s): a commit into a moved, deleted or replaced file is lost to
    whoever opens the path next, and must not answer 200. Any such change is an outage: every
    write is refused, and the connection kept open (closing it would checkpoint into, and
    delete by name, files that are not its own), until the original files are back at their
    paths; nothing committed before is lost. A ``-wal`` deleted alone while the database file
    is still the original is recovered: the open connection still holds the log, and copies it
    into the database file (synced) before it is reopened. A database file deleted while open
    (``rm``) is saved through the connection: put back at its path if nothing is there (writes
    go on), else kept beside it as ``<path>.recovered-<time>`` (the outage names it).
    """

    def __init__(
        self, connect: Connector, path: Path | None, dispose_reads: Callable[[], None]
    ) -> None:
        self._connect = connect
        self._path = path
        # ``dispose_reads`` closes the pooled read connections: they still read a replaced file.
        self._dispose_reads = dispose_reads
        self._held: Held | None = None
        # No file to lose for an in-memory database.
        self._files = FileWatch(str(path)) if path is not None else None
        #: Why writes are refused now (the files at the paths are not the connection's), or None.
        self.outage: str | None = None
        self.restores = 0
        # What the held connection is set to now: pragmas are set only when they change.
        self._busy_ms = SQLITE_BUSY_TIMEOUT_MS
        # None until the first transaction sets the sync and checkpoint pragmas its way.
        self._synchronous_full: bool | None = None
        # A commit since the file was last checked, and when the next bulk commit checks it.
        self._unchecked = False
        self._check_due = 0.0
        # When a failed copy of a deleted database file may be tried again.
        self._save_due = 0.0

    @classmethod
    def of_file(cls, file: SqliteFile, dispose_reads: Callable[[], None]) -> SqliteWriter:
        """A writer with a connection of its own to ``file``."""

        def connect() -> Held:
            try:
                conn = file.connect()
            except sqlite3.Error as exc:
                raise WriteFailed(unavailable(file.path, exc), retryable=False) from exc
            except DatabaseUnavailable as exc:
                raise WriteFailed(str(exc), retryable=False) from exc
            return conn, lambda _broken: conn.close()

        return cls(connect, file.path, dispose_reads)

    @classmethod
    def of_engine(cls, engine: Engine) -> SqliteWriter:
        """The writer of an engine's SQLite database: a connection of its own to a file, one
        from the engine's pool for an in-memory database (the pool's connections share it)."""
        from rtms_lifecycle.store.urls import sqlite_file

        path = sqlite_file(engine.url)
        if path is not None:
            (filename,), options = engine.dialect.create_connect_args(engine.url)
            return cls.of_file(SqliteFile(path, filename, dict(options)), engine.dispose)

        def checked_out() -> Held:
            held = checkout(engine)
            conn = held.driver_connection
            assert isinstance(conn, sqlite3.Connection)
            return conn, lambda broken: held.invalidate() if broken else held.close()

        return cls(checked_out, None, engine.dispose)

    def close(self) -> None:
        files = self._files
        if files is not None and self._held is not None:
            self._save_due = 0.0  # the last chance: not put off by an earlier failure
            deleted = self._deleted(files.change())
            if deleted is not None and not self._save_deleted(deleted) and files.recovered is None:
                # Closed, the last handle of the deleted file would take every delivery with it.
                self._save_elsewhere(deleted)
        if self._held is None:
            return
        if files is not None and not files.wal_is_safe_to_delete():
            _keep_open(self._held[0])
            log.warning("left the connection to %s open: %s", files.path, self.outage)
        else:
            self._held[1](False)
            if files is not None and files.recovered is not None:
                files.remove_logs()
        self._held = None

    def refusal(self) -> str | None:
        # Only while the connection is held (closed, it holds no log another could take), or
        # closed to save a deleted file that could not be put back.
        files = self._files
        if files is None or (self._held is None and self.outage is None):
            return None
        change = files.change()
        return None if change is None else self.outage or files.describe(change)

    def _connection(self) -> sqlite3.Connection:
        if self._held is not None and self.outage is not None:
            self._recheck()
        if self._held is None:
            files = self._files
            if files is not None and files.database is not None:
                now = identity(files.path)
                if now != files.database:
                    # Opening by path would open (or create) another file than the one written.
                    change = Change.GONE if now is None else Change.REPLACED
                    raise WriteFailed(self.outage or files.describe(change), retryable=False)
            self._held = self._connect()
            if files is not None:
                files.opened()
            self._busy_ms, self._synchronous_full = SQLITE_BUSY_TIMEOUT_MS, None
            _tune_for_writes(self._held[0])
        return self._held[0]

    def _recheck(self) -> None:
        # In an outage: over once the files at the paths are the connection's again.
        assert self._files is not None
        change = self._files.change()
        if change is None:
            log.warning("the database files of %s are back: writes resume", self._files.path)
            self.outage = None
            return
        if change is Change.WAL_GONE:
            if self._rescue():
                return
        elif (deleted := self._deleted(change)) is not None and self._save_deleted(deleted):
            return
        self.outage = self._files.describe(change)
        raise WriteFailed(self.outage, retryable=False)

    def _rescue(self) -> bool:
        """Copy the log of a ``-wal`` deleted while open into the database file (the original,
        checked), through the connection that still holds it; then reopen. False if it could
        not be copied whole (a reader of another process holds an older snapshot)."""
        assert self._held is not None
        assert self._files is not None
        # The pool's connections hold the deleted log too, and would read it beside the new one.
        self._dispose_reads()
        try:
            busy, frames, copied = self._held[0].execute(_CHECKPOINT).fetchone()
        except sqlite3.Error:
            return False
        if busy or frames != copied or self._files.change() is not Change.WAL_GONE:
            return False
        # Closing deletes the -wal path, which names nothing now: a new log is made on reopening.
        self._held[1](False)
        self._held = None
        self.outage = None
        self.restores += 1
        log.warning(
            "the write-ahead log %s was deleted while open: its content was copied into the "
            "database file, and the database reopened",
            self._files.wal_path,
        )
        return True

    def _deleted(self, change: Change | None) -> os.stat_result | None:
        # The status of the database file gone from its path (or replaced) if it was deleted,
        # and is not saved yet.
        files = self._files
        if (
            change not in (Change.GONE, Change.REPLACED)
            or files is None
            or files.recovered is not None
            or time.monotonic() < self._save_due
        ):
            return None
        return files.deleted()

    def _save_deleted(self, status: os.stat_result) -> bool:
        """Save the database file deleted while open (``status``), through the connection that
        holds it: put at its path if nothing is there, then reopened (True); else kept as
        ``<path>.recovered-<time>`` and the outage says so (False)."""
        files, held = self._files, self._held
        assert files is not None
        assert held is not None
        # The pool's connections hold the deleted file too: closed, the writer's is the last.
        self._dispose_reads()
        try:
            copy = save_copy(held[0], files.path, status.st_mode)
        except (OSError, sqlite3.Error) as exc:
            self._save_due = time.monotonic() + _SAVE_RETRY_INTERVAL
            files.save_failed = str(exc)
            self.outage = files.describe(Change.GONE)
            log.error("%s", self.outage)
            return False
        files.save_failed = None
        if identity(files.path) is None and files.wal_is_safe_to_delete():
            held[1](False)
            self._held = None
            files.remove_logs()
            adopted = identity(copy)
            if put_at(copy, files.path):
                files.database, files.wal = adopted, None
                self.outage = None
                self.restores += 1
                log.error(
                    "the database file %s was deleted while open: restored at its path from the "
                    "open connection, every committed delivery kept; writes go on",
                    files.path,
                )
                return True
        files.recovered = keep_recovered(copy, files.path)
        self.outage = files.describe(Change.GONE)
        log.error("%s", self.outage)
        return False

    def _save_elsewhere(self, status: os.stat_result) -> None:
        """At close, the copy of a deleted database file that could not be written beside it:
        kept in the current folder, else the temporary folder (a service's private one, under
        systemd's PrivateTmp, is removed when it stops: the current folder comes first)."""
        files, held = self._files, self._held
        assert files is not None
        assert held is not None
        name = os.path.basename(files.path)
        tried = {os.path.dirname(os.path.abspath(files.path))}
        for folder in (os.getcwd(), tempfile.gettempdir()):
            folder = os.path.abspath(folder)
            if folder in tried:
                continue
            tried.add(folder)
            target = os.path.join(folder, name)
            try:
                copy = save_copy(held[0], target, status.st_mode)
                kept = keep_recovered(copy, target)
            except (OSError, sqlite3.Error) as exc:
                log.error(
                    "the deleted database file %s could not be saved in %s: %s", name, folder, exc
                )
                continue
            files.recovered = kept
            log.error(
                "the database file %s was deleted while open and could not be saved beside it "
                "(%s): every delivery recorded was saved to %s instead; remove any %s-wal and "
                "%s-shm left there and put the copy at %s before starting a receiver on it",
                files.path,
                files.save_failed,
                kept,
                files.path,
                files.path,
                files.path,
            )
            return
        log.error(
            "the database file %s was deleted while open and could not be saved anywhere: "
            "the deliveries recorded in it are lost",
            files.path,
        )

    def _settle(self, conn: sqlite3.Connection, deadline: float | None, durable: bool) -> None:
        # The wait for another process's write lock ends at the deadline: rounded up, so that a
        # wait that gives up has reached it (rounded down, SQLite gave up a moment before, and the
        # failure read as an error of the store instead of a timeout: "database is locked").
        # Without one it waits in slices, in Python (see execute_when_unlocked).
        busy = SQLITE_WAIT_SLICE_MS if deadline is None else math.ceil(remaining(deadline) * 1000)
        if busy != self._busy_ms:
            conn.execute(f"PRAGMA busy_timeout={max(busy, 1)}")
            self._busy_ms = busy
        if durable != self._synchronous_full:
            # FULL syncs the WAL at every commit: a commit that answered a sender survives a
            # power loss. NORMAL (bulk loads, whose input is still there) syncs at checkpoints.
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            # A bulk load copies its log into the database every 40 MB instead of every 4 MB:
            # the index pages each batch rewrites are copied once per checkpoint, not once per
            # commit (a third of a 64,000-delivery load's writes, measured).
            pages = _CHECKPOINT_PAGES if durable else SQLITE_BULK_CHECKPOINT_PAGES
            conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            self._synchronous_full = durable

    def _checked(self) -> None:
        self._unchecked = False
        self._check_due = time.monotonic() + _BULK_CHECK_INTERVAL

    def _check_file(self, *, in_transaction: bool = False) -> None:
        files = self._files
        change = None if files is None else files.change()
        if change is None:
            self._checked()
            return
        assert files is not None
        deleted = self._deleted(change)
        if change is Change.WAL_GONE or deleted is not None:
            if in_transaction:
                # Rolled back; the retry's connection recovers the log (or the file) first.
                self.outage = files.describe(change)
                raise WriteFailed(self.outage, retryable=True)
            if self._rescue() if deleted is None else self._save_deleted(deleted):
                self._checked()
                return
        self._enter_outage(files.describe(change))

    def _enter_outage(self, reason: str) -> None:
        if self.outage is None:
            log.error("%s", reason)
        self.outage = reason
        # The pool's connections would be reopened by path: on another file.
        self._dispose_reads()
        raise WriteFailed(reason, retryable=False)

    def confirm(self) -> None:
        if self._unchecked:
            self._check_file()

    def check_file(self) -> None:
        self._connection()
        self._check_file()

    def _discard(self) -> None:
        if self._held is None:
            return
        files = self._files
        if self.outage is not None or (files is not None and files.change() is not None):
            # Kept for the original's return: closing would touch the files now at its paths.
            return
        self._held[1](True)
        self._held = None

    def probe(self, deadline: float) -> None:
        # The files first, outside a transaction: a deleted -wal is recovered, not reported.
        self._connection()
        self._check_file()
        with self.transaction(deadline=deadline, durable=False) as tx:
            for statement in _SQLITE_PROBE:
                tx._conn.execute(statement)
            self._check_file(in_transaction=True)
            raise RollBack

    def transaction(
        self,
        *,
        cautious: bool = False,
        size: int = 1,
        deadline: float | None = None,
        durable: bool = True,
    ) -> _Transaction:
        # Always cautious: BEGIN IMMEDIATE makes this the only writer until it commits.
        return _Transaction(self, deadline, durable)

    def _begin(self, deadline: float | None, durable: bool) -> sqlite3.Connection:
        check_deadline(deadline)
        conn = self._connection()
        try:
            self._settle(conn, deadline, durable)
            # The write lock is taken up front: two writers never both read, then both write.
            if deadline is None:
                execute_when_unlocked(conn, "BEGIN IMMEDIATE", self._path)
            else:
                conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            raised = self._abort(conn, exc, deadline)
            if raised is exc:
                raise
            raise raised from exc
        return conn

    def _commit(self, conn: sqlite3.Connection, durable: bool) -> None:
        if durable:
            self._check_file(in_transaction=True)
        conn.execute("COMMIT")
        if durable or time.monotonic() >= self._check_due:
            # Moved between the check and the commit: the commit may be lost.
            self._check_file()
        else:
            self._unchecked = True

    def _abort(
        self, conn: sqlite3.Connection, exc: BaseException, deadline: float | None
    ) -> BaseException:
        """Roll back after ``exc``; the exception to raise (``exc`` itself, or WriteFailed)."""
        busy = isinstance(exc, sqlite3.Error) and _sqlite_busy(exc)
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            busy = False
        if isinstance(exc, RollBack):
            return exc
        if isinstance(exc, LockedOut):
            # Waited for the lock as long as a write without a deadline does: not retried.
            failed = WriteFailed(str(exc), retryable=False)
            failed.__cause__ = exc
            return failed
        if not busy:
            # Whatever went wrong, the next transaction starts on a fresh connection.
            self._discard()
        if isinstance(exc, sqlite3.Error):
            timed_out = busy and deadline is not None and remaining(deadline) <= 0
            failed = WriteFailed(str(exc), retryable=busy, timed_out=timed_out)
            failed.__cause__ = exc
            return failed
        return exc


class _Transaction:
    """One write transaction of a :class:`SqliteWriter`, as a context manager: a class, not a
    generator (``contextmanager`` cost about 1 us of each transaction, measured)."""

    __slots__ = ("_conn", "_deadline", "_durable", "_writer")

    def __init__(self, writer: SqliteWriter, deadline: float | None, durable: bool) -> None:
        self._writer = writer
        self._deadline = deadline
        self._durable = durable

    def __enter__(self) -> SqliteTx:
        self._conn = self._writer._begin(self._deadline, self._durable)
        return SqliteTx(self._conn)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        writer = self._writer
        if exc is None:
            try:
                writer._commit(self._conn, self._durable)
            except BaseException as error:
                raised = writer._abort(self._conn, error, self._deadline)
                if raised is error:
                    raise
                raise raised from error
            return False
        raised = writer._abort(self._conn, exc, self._deadline)
        if isinstance(exc, RollBack):
            return True  # a probe's end: rolled back, nothing raised
        if raised is exc:
            return False  # the block's own exception goes on
        raise raised
