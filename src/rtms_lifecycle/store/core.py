"""The SQL store: records deliveries, folds stream events, appends the audit history.

Every write goes through :meth:`Store.record`, atomic per call, whatever the batch size. On
SQLite every write transaction starts with ``BEGIN IMMEDIATE``; on PostgreSQL a first attempt
is optimistic (compare and swap on the stream rows' versions) and a retry locks the rows (see
``_writers``). The event identity is a unique index, so even a race nobody foresaw cannot apply
one event twice: it fails, and the batch is retried.

On SQLite every write of the process takes its turn in the store's one write queue (``queue``),
which commits durable delivery writes queued together in one transaction. The batch is decided
in memory (``batch``); ``writers`` talks to the driver. Reads go through SQLAlchemy.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.exceptions import DatabaseUnavailable, StoreError, StoreTimeout
from rtms_lifecycle.records import DatabaseCapacity, IngestResult, Outcome
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store.batch import Batch, Incoming
from rtms_lifecycle.store.deadline import WATCHDOG, connecting_by, postgres_interrupts, remaining
from rtms_lifecycle.store.errors import first_line, translate, translated
from rtms_lifecycle.store.queue import Prepare, Then, WriteQueue
from rtms_lifecycle.store.salvage import recovered_beside
from rtms_lifecycle.store.sqlite import (
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_IMMEDIATE,
    refuse_orphaned_log,
)
from rtms_lifecycle.store.streak import FailureStreak
from rtms_lifecycle.store.urls import default_url, plain_sqlite_file
from rtms_lifecycle.store.writers import WriteFailed, Writer, WriteTx
from rtms_lifecycle.store.writers.base import check_deadline

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from rtms_lifecycle.store.sqlite import SqliteFile

__all__ = ["FILE_CHECK_INTERVAL", "LOAD_CHUNK", "Store"]

B = TypeVar("B")
R = TypeVar("R")

#: Deliveries parsed and decided at a time inside one bulk-load transaction (:meth:`Store.load`).
LOAD_CHUNK: Final = 64

# The name it has always logged under: operators' log filters match it
# (see docs/decisions/0071-logger-names-kept.md).
log = logging.getLogger("rtms_lifecycle.store")


#: Seconds between two checks of an SQLite database's files by :meth:`Store.watch_files`.
FILE_CHECK_INTERVAL: Final = 2.0

# How often a transaction that lost a race (deadlock, serialisation, a busy SQLite) is retried.
_ATTEMPTS: Final = 8


def _say_opened(path: Path, created: bool) -> None:
    # A new file where one was expected (a deleted database, a mistyped path) must be seen; and
    # copies kept when the file was deleted while open and another took its path, forgotten,
    # hold deliveries lost to whoever reads the file at the path.
    said = [f"created a new, empty database at {path}"] if created else []
    kept = recovered_beside(path)
    if kept:
        said.append(
            f"copies of a deleted database are beside {path}: {', '.join(kept)}; each holds "
            "what was recorded up to its time, saved from the open connection of a receiver "
            f"whose file was deleted while another took its path. Compare each with {path} "
            "(which may hold later deliveries) before replacing or deleting anything (see "
            "docs/operations.md, Backup, restore and moving the database)"
        )
    if said:
        log.warning("; ".join(said))


class Store:
    """Persistence of the lifecycle: the only module that writes SQL."""

    def __init__(self, db: str | Engine | None = None, *, migrate: bool = True) -> None:
        given = db or default_url()
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._refusing: tuple[Engine, Callable[..., None]] | None = None
        plain = plain_sqlite_file(given) if isinstance(given, str) else None
        self._writer: Writer
        if plain is not None:
            # An SQLite file at a plain path: the writer opens its own connection, and
            # SQLAlchemy is imported by the first read (a command that only writes never does).
            from rtms_lifecycle.store.writers.sqlite import SqliteWriter

            self._url, file = plain
            self.dialect = "sqlite"
            self.sqlite_path: Path | None = file.path
            self._writer = SqliteWriter.of_file(file, self._dispose_reads)
        else:
            from rtms_lifecycle.store.engine import configure_sqlite, create_store_engine
            from rtms_lifecycle.store.writers import writer_for

            engine = create_store_engine(given, watched=True) if isinstance(given, str) else given
            if engine.dialect.name == "sqlite" and not isinstance(given, str):
                configure_sqlite(engine)
            from rtms_lifecycle.store.urls import sqlite_file

            self._engine, self._url, file = engine, "", None
            self.dialect = engine.dialect.name
            self.sqlite_path = sqlite_file(engine.url)
            self._writer = writer_for(engine)
            if self.sqlite_path is not None:
                self._refuse_other_files(engine)
        # SQLite admits one writer at a time and its busy handler sleeps up to 100 ms between
        # tries: every write of this process queues here instead (PostgreSQL needs no queue).
        self._queue = WriteQueue(self._write_group) if self.dialect == "sqlite" else None
        self._watching: tuple[threading.Thread, threading.Event] | None = None
        self._streak = FailureStreak()
        created = False
        if migrate:
            try:
                if file is None:
                    with translated(self.sqlite_path):
                        created = _migrate.ensure_schema(self.engine)
                else:
                    revision, created = self._ensure_sqlite(file)
                    if revision != _migrate.head_revision():
                        _migrate.upgrade(self.engine)
            except BaseException:
                # A refused schema (e.g. a newer one) leaves no open connection behind.
                self.close()
                raise
        if self.sqlite_path is not None:
            _say_opened(self.sqlite_path, created)

    @staticmethod
    def _ensure_sqlite(file: SqliteFile) -> tuple[str, bool]:
        with _migrate.sqlite_errors(file.path):
            conn = file.connect()
        try:
            return _migrate.ensure_sqlite(conn, file.path)
        finally:
            conn.close()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine the reads use; made on first use for an SQLite file."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    from rtms_lifecycle.store.engine import create_store_engine

                    engine = create_store_engine(self._url, watched=True)
                    self._refuse_other_files(engine)
                    self._engine = engine
        return self._engine

    def _refuse_other_files(self, engine: Engine) -> None:
        # Every new connection opens the path. Once the file there is not the one the writer
        # opened, one would create an empty database there, or take the writer's -wal for its
        # own, and delete it by name when it closed: acknowledged deliveries lost.
        from sqlalchemy import event

        def refuse(*_connect_args: object) -> None:
            why = self._writer.refusal()
            if why is not None:
                raise DatabaseUnavailable(f"database unavailable: {why}")
            if self.sqlite_path is not None:
                # Opening by path would create a database beside another's live log.
                refuse_orphaned_log(self.sqlite_path)

        event.listen(engine, "do_connect", refuse)
        self._refusing = (engine, refuse)

    def _dispose_reads(self) -> None:
        # The pooled read connections still read a deleted or replaced SQLite file.
        if self._engine is not None:
            self._engine.dispose()

    def watch_files(self, interval: float = FILE_CHECK_INTERVAL) -> None:
        """Check an SQLite database's files every ``interval`` seconds until :meth:`close`, in
        the writer's turn, as a commit does: a file deleted while open is saved (and put back)
        even when nothing is written, before the process may be killed. For long-running
        processes (``serve``); nothing for PostgreSQL or an in-memory database."""
        if self.sqlite_path is None or self._watching is not None:
            return
        stop = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(interval, stop), name="rtms-lifecycle-file-watch", daemon=True
        )
        self._watching = (thread, stop)
        thread.start()

    def _watch(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                with self._serialised(None):
                    if stop.is_set():
                        return
                    self._writer.check_file()
            except WriteFailed:
                pass  # an outage: the writer logged it, /healthz and the 503s tell it
            except Exception:
                log.exception("the check of the database files of %s failed", self.sqlite_path)

    def close(self) -> None:
        """Release every connection."""
        if self._watching is not None:
            thread, stop = self._watching
            stop.set()
            thread.join()
            self._watching = None
        try:
            with self._serialised(None):
                self._writer.close()
        finally:
            if self._queue is not None:
                self._queue.shutdown()
            self._dispose_reads()
            if self._refusing is not None:
                # A caller's engine outlives the store.
                from sqlalchemy import event

                engine, refuse = self._refusing
                event.remove(engine, "do_connect", refuse)
                self._refusing = None

    @property
    def queue(self) -> WriteQueue | None:
        """The queue every write of this process takes its turn in (SQLite), or None."""
        return self._queue

    @property
    def writes(self) -> Executor | None:
        """Runs a job that writes in its turn, on the writer thread (SQLite); None where
        writers need no queue (PostgreSQL: they run in the caller's thread)."""
        return self._queue

    def _serialised(self, deadline: float | None) -> AbstractContextManager[object]:
        # SQLite: the calling thread writes in its turn; the wait counts against the deadline.
        if self._queue is None:
            return nullcontext()
        return self._queue.hold(deadline)

    # --- writing ----------------------------------------------------------------------------

    def record(
        self,
        items: Sequence[Incoming],
        *,
        with_records: bool = True,
        deadline: float | None = None,
        durable: bool = True,
    ) -> list[IngestResult | None]:
        """Record deliveries in one transaction; None for an expiry that no longer applies.

        Without ``with_records``, results carry outcomes and ids but no Stream or Transition. Past
        ``deadline`` (``time.monotonic()`` seconds) it gives up with :class:`StoreTimeout`,
        nothing written. ``durable``: the commit survives a power loss (on SQLite, a sync per
        commit, shared with the durable writes queued beside it); without it (bulk loads), a
        crash of the machine may undo the last commits.
        """
        batch = self._written_here(items, with_records, deadline, durable)
        if batch is None:
            written: list[IngestResult | None] = self.submit(
                items, with_records=with_records, deadline=deadline
            ).result()
            return written
        return batch.results()

    def _written_here(
        self, items: Sequence[Incoming], with_records: bool, deadline: float | None, durable: bool
    ) -> Batch | None:
        """The batch written in the calling thread, or None where a durable write must queue
        (another write holds or awaits the SQLite queue: the writer thread writes it with them)."""
        if durable and self._queue is not None and not self._queue.writing:
            held = self._queue.hold_if_idle()
            if held is None:
                return None
            with held:
                return self._write(items, with_records, deadline, durable)
        return self._write(items, with_records, deadline, durable)

    def submit(
        self,
        prepare: Prepare,
        *,
        with_records: bool = True,
        deadline: float | None = None,
        then: Then | None = None,
    ) -> Future[Any]:
        """:meth:`record` durably, as a future: on SQLite the write is queued (written with the
        writes queued beside it, its own results or error as if alone); elsewhere, or on the
        writer's own thread, it is written now. ``prepare``: the items, or a callable making
        them (called when the write begins; what it raises is this write's error). ``then``:
        the future holds ``then(results)``, called in the writing thread after the commit."""
        if self._queue is not None and not self._queue.writing:
            return self._queue.record(
                prepare, with_records=with_records, deadline=deadline, then=then
            )
        future: Future[Any] = Future()
        try:
            items = prepare() if callable(prepare) else prepare
            results = self._write(items, with_records, deadline, True).results()
            future.set_result(results if then is None else then(results))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def outcomes(self, items: Sequence[Incoming], *, durable: bool = True) -> list[Outcome]:
        """Record deliveries in one transaction as :meth:`record` does, and say only what each
        came to (a bulk load without callbacks counts no more)."""
        batch = self._written_here(items, False, None, durable)
        if batch is None:
            results = self.submit(items, with_records=False).result()
            return [result.outcome for result in results if result is not None]
        return batch.outcomes()

    def load(
        self, bodies: Sequence[B], convert: Callable[[B], Incoming], *, chunk: int = LOAD_CHUNK
    ) -> list[Outcome]:
        """A bulk load's transaction (not durable, as :meth:`outcomes` with ``durable=False``):
        ``bodies`` converted and decided ``chunk`` at a time, all committed together.

        Each chunk's parsed deliveries are let go before the next is parsed, so that few of them
        live long enough for Python's collector to move them to its oldest generation: what
        triggers its full passes, which stop every thread (an event loop's too) for tens of ms.
        A chunk reads what the chunks before it wrote, as a transaction of its own would.
        """
        return self._load(bodies, convert, chunk, False, Batch.outcomes)

    def load_records(
        self, bodies: Sequence[B], convert: Callable[[B], Incoming], *, chunk: int = LOAD_CHUNK
    ) -> list[IngestResult | None]:
        """:meth:`load`, with each delivery's result and records, for callbacks: these are kept
        until the commit, the parsed deliveries are not."""
        return self._load(bodies, convert, chunk, True, Batch.results)

    def _load(
        self,
        bodies: Sequence[B],
        convert: Callable[[B], Incoming],
        chunk: int,
        with_records: bool,
        collect: Callable[[Batch], list[R]],
    ) -> list[R]:
        def run(tx: WriteTx) -> list[R]:
            kept: list[R] = []
            now = now_ms()
            for start in range(0, len(bodies), chunk):
                items = [convert(body) for body in bodies[start : start + chunk]]
                kept += collect(Batch(tx, now, with_records).run(items))
            return kept

        return self._attempts(len(bodies), run, None, False)

    def _write_group(
        self, items: Sequence[Incoming], with_records: bool, deadline: float | None
    ) -> list[IngestResult | None]:
        # The queue's writer thread, for a group of durable delivery writes.
        return self._write(items, with_records, deadline, True).results()

    def _write(
        self,
        items: Sequence[Incoming],
        with_records: bool,
        deadline: float | None,
        durable: bool,
    ) -> Batch:
        def run(tx: WriteTx) -> Batch:
            return Batch(tx, now_ms(), with_records).run(items)

        if not durable:
            return self._attempts(len(items), run, deadline, durable)
        # Durable writes answer senders: theirs is the health that counts. A timeout (a held
        # store) is not counted: the probe waits for the same lock, and says so itself.
        try:
            batch = self._attempts(len(items), run, deadline, durable)
        except StoreTimeout:
            raise
        except (StoreError, DatabaseUnavailable) as exc:
            self._streak.failed(first_line(exc))
            raise
        if (ended := self._streak.succeeded()) is not None:
            log.warning(
                "the store records deliveries again, after %d failed writes in a row over %.1f s",
                *ended,
            )
        return batch

    def statement(
        self,
        name: bytes,
        sql: str,
        params: Sequence[Any],
        types: Sequence[Callable[[bytes], Any]],
        deadline: float | None,
        what: str,
    ) -> list[tuple[Any, ...]]:
        """PostgreSQL only: the rows of one statement (``$n`` parameters) run alone, atomic on
        its own: one round trip on a connection the writer keeps, a prepared statement named
        ``name`` (see ``writers.postgres``). ``types`` turn each column's text into its value;
        ``what`` names the write in errors. Retried as a write that lost a race is."""
        from rtms_lifecycle.store.writers.postgres import PostgresTx

        def run(tx: WriteTx) -> list[tuple[Any, ...]]:
            assert isinstance(tx, PostgresTx)
            return tx.statement(name, sql, params, types)

        return self._attempts(1, run, deadline, True, what)

    def _attempts(
        self,
        size: int,
        run: Callable[[WriteTx], R],
        deadline: float | None,
        durable: bool,
        what: str | None = None,
    ) -> R:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                # A batch that lost a race is retried cautiously: no more optimism.
                with (
                    self._serialised(deadline),
                    self._writer.transaction(
                        cautious=attempt > 1, size=size, deadline=deadline, durable=durable
                    ) as tx,
                ):
                    return run(tx)
            except WriteFailed as exc:
                what = what or f"record {size} deliver{'y' if size == 1 else 'ies'}"
                expired = deadline is not None and remaining(deadline) <= 0
                if exc.timed_out or (exc.retryable and expired):
                    raise StoreTimeout(f"could not {what} within the time budget: {exc}") from exc
                if not exc.retryable or attempt == _ATTEMPTS:
                    raise StoreError(f"could not {what}: {exc}") from exc
                log.debug("retrying a batch that lost a race (attempt %d): %s", attempt, exc)
                time.sleep(random.uniform(0, 0.01 * 2**attempt))
            except Exception as exc:
                # The pool's own errors (none free in time, none to be opened).
                error = translate(exc, self.sqlite_path)
                if error is None:
                    raise
                raise error from exc
        raise AssertionError("unreachable")

    def confirm(self) -> None:
        """Raise :class:`StoreError` if what was committed since the last check may not be in
        the database (an SQLite file deleted or replaced): a bulk load ends with it."""
        try:
            with self._serialised(None):
                self._writer.confirm()
        except WriteFailed as exc:
            raise StoreError(str(exc)) from exc

    def check_writable(self, timeout: float) -> None:
        """Raise :class:`StoreError` (why) unless a write can begin, and a row be written in
        every table a delivery writes, within ``timeout`` seconds (the probe's write is rolled
        back), or if the last delivery writes all failed (a full disk fails only commits)."""
        deadline = time.monotonic() + timeout
        try:
            with self._serialised(deadline), translated(self.sqlite_path):
                self._writer.probe(deadline)
        except WriteFailed as exc:
            kind = StoreTimeout if exc.timed_out or remaining(deadline) <= 0 else StoreError
            raise kind(str(exc)) from exc
        problem = self._streak.problem()
        if problem is not None:
            raise StoreError(problem)

    def exclusive(self) -> AbstractContextManager[object]:
        """The calling thread is this process's only writer for the block, in its turn (SQLite
        admits one writer at a time); every write of the store queues behind it."""
        return self._serialised(None)

    @property
    def restores(self) -> int:
        """How often the database was reopened on another file (SQLite: a file deleted while
        open restored at its path, a deleted ``-wal`` recovered). Read before opening a
        connection kept across writes, and given to :meth:`guarded` as ``opened``."""
        return self._writer.restores

    @contextmanager
    def guarded(
        self, deadline: float | None = None, *, opened: int | None = None
    ) -> Iterator[None]:
        """Held around a write on a connection other than the store's writer's (subscriptions,
        prunes): this process's writes one at a time, the wait counted against ``deadline``
        (:class:`StoreTimeout` past it), and on SQLite the file checked before and after
        (:class:`StoreError` if it was deleted or replaced). ``opened``: :attr:`restores` when
        the connection was opened; :class:`StoreError` if the file was restored since (the
        connection still writes to the deleted one)."""
        try:
            with self._serialised(deadline):
                check_deadline(deadline)
                self._writer.check_file()
                if opened is not None and opened != self._writer.restores:
                    raise StoreError(
                        f"the database file {self.sqlite_path} (or its -wal) was deleted and "
                        "restored at its path while this connection was open: it still writes "
                        "to the deleted file, so it stopped; what it committed before is in the "
                        "restored file. Run it again"
                    )
                yield
                self._writer.check_file()
        except WriteFailed as exc:
            raise (StoreTimeout if exc.timed_out else StoreError)(str(exc)) from exc

    @contextmanager
    def transaction(self, deadline: float | None = None) -> Iterator[Connection]:
        """A write transaction on the engine for the store's modules, under :meth:`guarded`:
        on SQLite it takes the write lock up front (``BEGIN IMMEDIATE``), waiting for it until
        ``deadline``; on PostgreSQL a statement still running at ``deadline`` is cancelled.
        Database errors leave as the library's (:class:`StoreTimeout` past the deadline)."""
        try:
            with self.guarded(deadline), connecting_by(deadline), self.engine.connect() as conn:
                raw: Any = conn.connection.driver_connection
                waits = SQLITE_BUSY_TIMEOUT_MS
                if self.dialect == "sqlite":
                    conn.execution_options(**{SQLITE_IMMEDIATE: True})
                    if deadline is not None:
                        # Rounded up, as the writer does: a wait that gives up reached it.
                        waits = max(math.ceil(remaining(deadline) * 1000), 1)
                        raw.execute(f"PRAGMA busy_timeout={waits}")
                try:
                    with (
                        WATCHDOG.guard(deadline, *postgres_interrupts(raw))
                        if self.dialect == "postgresql"
                        else nullcontext(),
                        conn.begin(),
                    ):
                        yield conn
                finally:
                    if waits != SQLITE_BUSY_TIMEOUT_MS:
                        # A broken connection is not reused by the pool: nothing to restore.
                        with suppress(Exception):
                            raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        except Exception as exc:
            error = translate(exc, self.sqlite_path)
            if error is None:
                raise
            if deadline is not None and remaining(deadline) <= 0:
                error = StoreTimeout(
                    f"the write did not commit within the time budget: {first_line(exc)}"
                )
            raise error from exc

    # --- reading ----------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection (its transaction ends with the ``with`` block); database
        errors leave as the library's (:class:`DatabaseUnavailable`, :class:`DatabaseError`)."""
        if self._writer.refusal() is not None:
            # A new read connection would open another file by its path: the writer recovers
            # (a deleted -wal) or says why not.
            try:
                with self.guarded():
                    pass
            except StoreError as exc:
                raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
        with translated(self.sqlite_path), self.engine.connect() as conn:
            yield conn

    def schema_revision(self) -> str | None:
        """The migration the database is at (None: no schema yet), read as :meth:`read` reads."""
        with self.read() as conn:
            return _migrate.read_revision(conn)

    def capacity(self) -> DatabaseCapacity:
        """The database's size and its disk's room (:mod:`~rtms_lifecycle.store.capacity`):
        on SQLite without opening anything, so it answers while reads fail; on PostgreSQL
        read as :meth:`read` reads."""
        from rtms_lifecycle.store import capacity as _capacity

        if self.sqlite_path is not None:
            return _capacity.sqlite_capacity(self.sqlite_path)
        if self.dialect != "postgresql":
            return _capacity.UNKNOWN
        with self.read() as conn:
            return _capacity.postgres_capacity(conn)

    def ping(self) -> bool:
        """Whether the database answers."""
        try:
            with self.read() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True
