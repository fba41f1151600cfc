"""The store's write transactions, spoken directly to the database driver.

Through SQLAlchemy every statement costs about 25 us of Python before the database sees it, more
than SQLite needs to execute it. So the write path compiles its statements once, from the tables
in ``_tables``, and runs them on the DBAPI connection. SQLite gets one long-lived connection per
store (it admits one writer at a time anyway). On PostgreSQL a batch is one statement that reads
and one that writes (compare and swap on the stream rows' versions); with no transaction around
them when the batch is small, that is two round trips in all. Reads stay on SQLAlchemy.

Rows travel as plain tuples in the column orders below.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import count
from typing import TYPE_CHECKING, Any, Final, Protocol

from sqlalchemy import Engine, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.pool import PoolProxiedConnection

from ._deadline import Watchdog, remaining
from ._tables import EVENT_PREDICATE, concurrency_alerts, deliveries, streams, transitions
from .machine import StreamState
from .records import Transition

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ALERT_COLUMNS",
    "SQLITE_BUSY_TIMEOUT_MS",
    "DELIVERY_COLUMNS",
    "EVENT_COLUMNS",
    "STREAM_COLUMNS",
    "TRANSITION_COLUMNS",
    "Loaded",
    "Row",
    "WriteFailed",
    "WriteTx",
    "Writer",
    "Writes",
    "writer_for",
]

Row = tuple[Any, ...]

# Keeps IN (...) lists well under SQLite's bound-parameter limit.
_CHUNK: Final = 500
# Deadlock, serialisation failure, unique violation: a race another attempt will not lose.
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01", "23505"})
# Query cancelled (our watchdog, or the operator's statement_timeout), lock timeout.
_TIMEOUT_SQLSTATES: Final = frozenset({"57014", "55P03"})
#: How long an SQLite write waits for another process's write lock when it has no deadline.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Log pages between two checkpoints: SQLite's default, and a bulk load's.
_CHECKPOINT_PAGES: Final = 1_000
_BULK_CHECKPOINT_PAGES: Final = 10_000
# The SQLite writer's page cache (SQLite's default is 2 MB), in KiB; it grows only as it is used.
_WRITER_CACHE_KB: Final = 32_768


def _columns(table: Table, names: Sequence[str]) -> tuple[str, ...]:
    # Failing at import beats a misspelt column found in production.
    missing = [name for name in names if name not in table.c]
    assert not missing, f"{table.name} has no column {missing}"
    return tuple(names)


#: A stream row: ``stream_id``, then the fold's state, in ``StreamState``'s field order.
STREAM_COLUMNS: Final = _columns(streams, tuple(StreamState.__dataclass_fields__))
#: A stored event, as the fold reads it back.
#: A stored event: the delivery that brought it first, which a re-fold parses again.
EVENT_COLUMNS: Final = _columns(
    deliveries, ("id", "stream_id", "source", "event", "kind", "event_ts", "raw")
)
DELIVERY_COLUMNS: Final = _columns(
    deliveries,
    (
        "id",
        "received_at",
        "source",
        "event",
        "event_ts",
        "stream_id",
        "kind",
        "outcome",
        "error",
        "detail",
        "raw",
        "signed_at",
        "secret_label",
        "same_as",
    ),
)
#: An audit row, in ``Transition``'s field order.
TRANSITION_COLUMNS: Final = _columns(transitions, tuple(Transition.__dataclass_fields__))
ALERT_COLUMNS: Final = _columns(
    concurrency_alerts,
    (
        "event",
        "event_ts",
        "concurrency_number",
        "concurrency_limit",
        "percentage",
        "operator_id",
        "id_field",
        "id_value",
        "account_id",
        "payload",
        "fingerprint",
        "received_at",
    ),
)


@dataclass(slots=True)
class Loaded:
    """What a batch reads before deciding: the rows it touches, and ids for what it will add."""

    streams: list[Row]
    #: ``(stream_id, kind, event_ts, delivery id)`` of the identities asked for that are stored
    known: list[Row]
    delivery_ids: Iterator[int]
    transition_ids: Iterator[int]


@dataclass(slots=True)
class Writes:
    """What a batch decided to write."""

    now: int
    deliveries: list[Row] = field(default_factory=list)
    transitions: list[Row] = field(default_factory=list)
    #: ``STREAM_COLUMNS`` then ``created_at``, ``updated_at``
    new_streams: list[Row] = field(default_factory=list)
    #: (as stored, as it is now), both in ``STREAM_COLUMNS`` order; ``updated_at`` is ``now``
    changed_streams: list[tuple[Row, Row]] = field(default_factory=list)
    alerts: list[Row] = field(default_factory=list)
    #: Streams with a duplicate that references a stored event of theirs: on PostgreSQL the
    #: write checks they still exist (a prune may have removed them since the batch read them).
    referenced: set[str] = field(default_factory=set)


class WriteTx(Protocol):
    """One write transaction."""

    def load(
        self,
        stream_ids: Sequence[str],
        identities: Sequence[Row],
        deliveries: int,
        transitions: int,
        now: int,
    ) -> Loaded:
        """Read the given streams (sorted ids) and which of these event identities are stored.

        A stream that has no row is missing from the result and the batch inserts its row.
        At most ``deliveries`` and ``transitions`` ids are taken from the iterators.
        """
        ...

    def events(self, stream_id: str) -> list[Row]:
        """Every stored event of a stream (``EVENT_COLUMNS``): a late event re-folds them."""
        ...

    def event(self, delivery_id: int) -> Row:
        """One stored event (``EVENT_COLUMNS``), by the id of its delivery."""
        ...

    def write(self, writes: Writes) -> None:
        """Write what the batch decided (the transaction commits when its block ends)."""
        ...


class WriteFailed(Exception):
    """A write transaction failed and was rolled back; ``retryable`` if it lost a race.

    ``timed_out``: it waited for the database (a lock, a slow statement) past its deadline.
    """

    def __init__(self, message: str, *, retryable: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.timed_out = timed_out


def _past(deadline: float | None) -> None:
    if deadline is not None and remaining(deadline) <= 0:
        raise WriteFailed(
            "the time budget ran out before the write began", retryable=False, timed_out=True
        )


class Writer(Protocol):
    """Opens write transactions on one database."""

    def transaction(
        self,
        *,
        cautious: bool = False,
        size: int = 1,
        deadline: float | None = None,
        durable: bool = True,
    ) -> AbstractContextManager[WriteTx]:
        """A context manager yielding a :class:`WriteTx`; commits on success.

        Raises :class:`WriteFailed` when the database refuses. A first attempt may be
        optimistic and lose a race (then it is retried); a ``cautious`` one locks instead.
        ``size`` is the number of deliveries the transaction will record. Past ``deadline``
        (monotonic seconds) it gives up, rolled back (``timed_out``). ``durable``: the commit
        must survive a power loss (it answers someone); else a crash of the machine may undo it.
        """
        ...

    def probe(self, deadline: float) -> None:
        """Begin a write, write a row, roll back: raises :class:`WriteFailed` if any step fails."""
        ...

    def close(self) -> None:
        """Give back any connection held."""
        ...


def writer_for(engine: Engine) -> Writer:
    """The writer for this engine's database."""
    if engine.dialect.name == "postgresql":
        return _PostgresWriter(engine)
    if engine.dialect.name == "sqlite":
        return _SqliteWriter(engine)
    raise ValueError(f"unsupported database: {engine.dialect.name}")


def new_stream_row(stream_id: str, now: int) -> Row:
    """The row of a stream no event has been applied to yet."""
    return (*state_row(StreamState(stream_id)), now, now)


def state_row(state: StreamState) -> Row:
    """A state in ``STREAM_COLUMNS`` order, enums as their values."""
    row = list(state.as_tuple())
    row[1] = state.scope.value if state.scope is not None else None
    row[7] = state.state.value
    return tuple(row)


def _checkout(engine: Engine) -> PoolProxiedConnection:
    # The pool hands over the driver's own error when it cannot connect.
    try:
        return engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:
        raise WriteFailed(str(exc), retryable=False) from exc


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _insert(
    table: Table,
    names: Sequence[str],
    mark: str,
    *,
    computed: str = "",
    suffix: str = "",
    rows: int = 1,
) -> str:
    """An INSERT of ``rows`` rows of ``names``; ``computed`` is ``"column = SQL expression"``."""
    columns, values = list(names), [mark] * len(names)
    if computed:
        column, _, expression = computed.partition(" = ")
        columns.append(column)
        values.append(expression)
    row = f"({', '.join(values)})"
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}{suffix}"
    )


def _select(table: Table, names: Sequence[str], where: str) -> str:
    return f"SELECT {', '.join(names)} FROM {table.name} WHERE {where}"


_ON_NEW_ALERT: Final = " ON CONFLICT (fingerprint) DO NOTHING"
_NEW_STREAM_COLUMNS: Final = (*STREAM_COLUMNS, "created_at", "updated_at")


# --- SQLite -----------------------------------------------------------------------------------

_SQLITE_DELIVERIES: Final = _insert(deliveries, DELIVERY_COLUMNS, "?")
# SQLite has no transaction ids: the feed's cursor there rests on serialised writers.
_SQLITE_TRANSITIONS: Final = _insert(transitions, TRANSITION_COLUMNS, "?", computed="tx_id = 0")
_SQLITE_NEW_STREAMS: Final = _insert(streams, _NEW_STREAM_COLUMNS, "?")
_SQLITE_ALERTS: Final = _insert(concurrency_alerts, ALERT_COLUMNS, "?", suffix=_ON_NEW_ALERT)
_SQLITE_LAST_IDS: Final = (
    "SELECT (SELECT max(id) FROM deliveries), (SELECT max(id) FROM transitions)"
)


@lru_cache(maxsize=64)
def _sqlite_update(changed: tuple[int, ...]) -> str:
    assignments = "".join(f"{STREAM_COLUMNS[i]} = ?, " for i in changed)
    return f"UPDATE streams SET {assignments}updated_at = ? WHERE stream_id = ?"


def _sqlite_changes(writes: Writes) -> dict[str, list[Row]]:
    # Only the columns that changed: SQLite rewrites the entries of every index holding a column
    # the statement sets, changed or not (twice the pages written per event, measured).
    shapes: dict[tuple[int, ...], list[Row]] = {}
    for stored, now in writes.changed_streams:
        changed = tuple(i for i in range(1, len(now)) if now[i] != stored[i])
        shapes.setdefault(changed, []).append((*(now[i] for i in changed), writes.now, now[0]))
    return {_sqlite_update(changed): rows for changed, rows in shapes.items()}


@lru_cache(maxsize=32)
def _sqlite_in(n: int) -> str:
    return _select(streams, STREAM_COLUMNS, f"stream_id IN ({', '.join('?' * n)})")


@lru_cache(maxsize=32)
def _sqlite_known(n: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * n)
    return f"WITH v(s, k, t) AS (VALUES {values}) SELECT {_KNOWN} FROM v"


# Each listed identity with the id of its stored event, or null: one probe of the partial unique
# index per identity. Not a join: with statistics (ANALYZE) SQLite 3.38+ plans a join of a few
# hundred identities with a Bloom filter built by scanning all deliveries (300 ms at 2 million
# rows, measured), and a row-value IN list is planned as a scan as well.
_KNOWN: Final = (
    "v.s, v.k, v.t, (SELECT d.id FROM deliveries AS d"
    f" WHERE d.stream_id = v.s AND d.kind = v.k AND d.event_ts = v.t AND d.{EVENT_PREDICATE})"
)
_STREAM_EVENTS: Final = _select(deliveries, EVENT_COLUMNS, f"stream_id = %s AND {EVENT_PREDICATE}")
_EVENT: Final = _select(deliveries, EVENT_COLUMNS, "id = %s")
_SQLITE_STREAM_EVENTS: Final = _STREAM_EVENTS.replace("%s", "?")
_SQLITE_EVENT: Final = _EVENT.replace("%s", "?")


def _sqlite_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc)


# What a health probe writes (and rolls back): a row in the deliveries table, as a delivery would.
# Id 0 is never a delivery's: ids start at 1.
_PROBE: Final = (
    "INSERT INTO deliveries (id, received_at, source, outcome, raw)"
    " VALUES (0, 0, 'system', 'rejected', %s)"
)
_SQLITE_PROBE: Final = _PROBE.replace("%s", "x''")
_PG_PROBE: Final = _PROBE.replace("%s", "''::bytea")


class _RollBack(Exception):
    """Ends a probe's transaction: rolled back, nothing raised."""


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_dev, found.st_ino)


class _SqliteTx:
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
        found: list[Row] = []
        for chunk in _chunks(stream_ids):
            found += conn.execute(_sqlite_in(len(chunk)), chunk)
        # A new stream has no events: only identities of stored streams are looked up.
        stored = {row[0] for row in found}
        asked = [identity for identity in identities if identity[0] in stored]
        known: list[Row] = []
        for part in _chunks(asked):
            rows = conn.execute(_sqlite_known(len(part)), [v for i in part for v in i])
            known += [row for row in rows if row[3] is not None]
        # BEGIN IMMEDIATE made this the only writer: the ids after the largest are ours.
        last_delivery, last_transition = conn.execute(_SQLITE_LAST_IDS).fetchone()
        return Loaded(
            found, known, count((last_delivery or 0) + 1), count((last_transition or 0) + 1)
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


def _grow_cache(conn: Any) -> None:
    # Every delivery adds entries at random places in the stream-keyed indexes: with SQLite's
    # default 2 MB page cache, a bulk load read those pages back from the OS again and again
    # (65,667 reads for 64,000 deliveries; 14,123 from 16 MB up, measured). Only the writer's
    # connection, whose cache grows only as it is used.
    conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KB}")


class _SqliteWriter:
    """One connection, held for the store's life (threads queue on the store's lock).

    It checks after every commit that the database file is still the one it opened: a commit
    into a deleted (or replaced) file is lost with the process, and must not answer 200.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._held: PoolProxiedConnection | None = None
        database = engine.url.database
        # No file to lose for an in-memory database.
        self._path = database if database and database != ":memory:" else None
        self._identity: tuple[int, int] | None = None
        # What the held connection is set to now: pragmas are set only when they change.
        self._busy_ms = SQLITE_BUSY_TIMEOUT_MS
        # None until the first transaction sets the sync and checkpoint pragmas its way.
        self._full: bool | None = None

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def _connection(self) -> tuple[PoolProxiedConnection, sqlite3.Connection]:
        if self._held is None:
            identity = _file_identity(self._path) if self._path else None
            if self._path and identity is None and self._identity is not None:
                # Connecting would create a new, empty file where the database was.
                raise WriteFailed(f"the database file {self._path} is gone", retryable=False)
            if identity != self._identity and self._identity is not None:
                # Another file now: the pool's connections still read the old one.
                self._engine.dispose()
            self._held = _checkout(self._engine)
            self._identity = _file_identity(self._path) if self._path else None
            self._busy_ms, self._full = SQLITE_BUSY_TIMEOUT_MS, None
            _grow_cache(self._held.driver_connection)
        conn = self._held.driver_connection
        assert isinstance(conn, sqlite3.Connection)
        return self._held, conn

    def _settle(self, conn: sqlite3.Connection, deadline: float | None, durable: bool) -> None:
        # The wait for another process's write lock ends at the deadline.
        busy = SQLITE_BUSY_TIMEOUT_MS if deadline is None else int(remaining(deadline) * 1000)
        if busy != self._busy_ms:
            conn.execute(f"PRAGMA busy_timeout={max(busy, 1)}")
            self._busy_ms = busy
        if durable != self._full:
            # FULL syncs the WAL at every commit: a commit that answered a sender survives a
            # power loss. NORMAL (bulk loads, whose input is still there) syncs at checkpoints.
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            # A bulk load copies its log into the database every 40 MB instead of every 4 MB:
            # the index pages each batch rewrites are copied once per checkpoint, not once per
            # commit (a third of a 64,000-delivery load's writes, measured).
            pages = _CHECKPOINT_PAGES if durable else _BULK_CHECKPOINT_PAGES
            conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            self._full = durable

    def _check_file(self) -> None:
        if self._path is None or _file_identity(self._path) == self._identity:
            return
        gone = not os.path.exists(self._path)
        self._engine.dispose()
        if gone:
            # The deleted file's write-ahead log and index are left at its path: SQLite would
            # apply that log to whatever file is put back there (a backup: then corrupted).
            for suffix in ("-wal", "-shm"):
                with suppress(FileNotFoundError):
                    os.remove(self._path + suffix)
        raise WriteFailed(
            f"the database file {self._path} was {'deleted' if gone else 'replaced'} while "
            "open: what was just written is not in it",
            retryable=False,
        )

    def probe(self, deadline: float) -> None:
        with self.transaction(deadline=deadline, durable=False) as tx:
            tx._conn.execute(_SQLITE_PROBE)
            raise _RollBack

    @contextmanager
    def transaction(
        self,
        *,
        cautious: bool = False,
        size: int = 1,
        deadline: float | None = None,
        durable: bool = True,
    ) -> Iterator[_SqliteTx]:
        # Always cautious: BEGIN IMMEDIATE makes this the only writer until it commits.
        _past(deadline)
        held, conn = self._connection()
        try:
            self._settle(conn, deadline, durable)
            # The write lock is taken up front: two writers never both read, then both write.
            conn.execute("BEGIN IMMEDIATE")
            yield _SqliteTx(conn)
            conn.execute("COMMIT")
            self._check_file()
        except BaseException as exc:
            busy = isinstance(exc, sqlite3.Error) and _sqlite_busy(exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                busy = False
            if isinstance(exc, _RollBack):
                return
            if not busy:
                # Whatever went wrong, the next transaction starts on a fresh connection.
                held.invalidate()
                self._held = None
            if isinstance(exc, sqlite3.Error):
                timed_out = busy and deadline is not None and remaining(deadline) <= 0
                raise WriteFailed(str(exc), retryable=busy, timed_out=timed_out) from exc
            raise


# --- PostgreSQL -------------------------------------------------------------------------------


def _numbered(sql: str) -> str:
    """``%s`` markers as PostgreSQL's ``$1, $2, ...``, for psycopg's RawCursor.

    psycopg parses a ``%s`` query on every execution once it has more than 50 parameters.
    """
    pieces = sql.split("%s")
    return "".join(f"{piece}${i}" for i, piece in enumerate(pieces[:-1], 1)) + pieces[-1]


# A cautious retry: placeholders are inserted in stream-id order, and the rows then locked in the
# same order, so that two batches touching the same streams can never deadlock.
_PG_PLACEHOLDERS: Final = _numbered(
    _insert(streams, _NEW_STREAM_COLUMNS, "%s", suffix=" ON CONFLICT (stream_id) DO NOTHING")
)
_PG_LOCK_STREAMS: Final = _numbered(
    _select(streams, ("stream_id",), "stream_id = ANY(%s) ORDER BY stream_id FOR UPDATE")
)


def _json_rows(names: Sequence[str], source: str) -> str:
    return f"(SELECT json_agg(json_build_array({', '.join(names)})) FROM {source})"


# Everything a batch reads, in one statement: its streams (each with its row version, xmin),
# which of its events are stored, and ids for its rows. One statement reads one snapshot.
_PG_READ: Final = (
    f"SELECT {_json_rows((*STREAM_COLUMNS, 'xmin::text'), 'streams WHERE stream_id = ANY($1)')},"
    + _json_rows([_KNOWN], "unnest($2::text[], $3::text[], $4::bigint[]) AS v(s, k, t)")
    + ", ARRAY(SELECT nextval($5::regclass) FROM generate_series(1, $6::int) ORDER BY 1),"
    " ARRAY(SELECT nextval($7::regclass) FROM generate_series(1, $8::int) ORDER BY 1)"
)
_PG_STREAM_EVENTS: Final = _numbered(_STREAM_EVENTS)
_PG_EVENT: Final = _numbered(_EVENT)
_PG_SEQUENCES: Final = (
    "SELECT pg_get_serial_sequence('deliveries', 'id'), pg_get_serial_sequence('transitions', 'id')"
)
# The parts of a write: every batch's rows go in one statement per slice of _PG_ROWS rows of each
# table (psycopg costs tens of microseconds of CPU per statement, more than the database does).
_PG_INSERTS: Final = (
    (deliveries, DELIVERY_COLUMNS, "", ""),
    # A transition row carries its writer's transaction id (see _tables.transitions).
    (transitions, TRANSITION_COLUMNS, "tx_id = pg_current_xact_id()::text::bigint", ""),
    (streams, _NEW_STREAM_COLUMNS, "", ""),
    (concurrency_alerts, ALERT_COLUMNS, "", _ON_NEW_ALERT),
)
_PG_ROWS: Final = 100
_PG_UPDATE_COLUMNS: Final = (*STREAM_COLUMNS[1:], "updated_at", "stream_id")
_PG_DIALECT: Final = postgresql.dialect()  # type: ignore[no-untyped-call]
# UPDATE ... FROM (VALUES ...) takes its types from the values: each one is cast to its column's;
# the last is the version (xmin) the row had when the batch read it.
_PG_UPDATE_ROW: Final = "({}, %s::xid)".format(
    ", ".join(
        f"%s::{streams.c[name].type.compile(dialect=_PG_DIALECT)}" for name in _PG_UPDATE_COLUMNS
    )
)


@lru_cache(maxsize=256)
def _pg_write_sql(counts: tuple[int, ...], guarded: bool = False) -> str:
    """One statement writing ``counts`` rows of each of _PG_INSERTS, then of changed streams.

    ``guarded``: two more parameters, both the ids of streams that must still exist (see
    ``Writes.referenced``).
    """
    parts = [
        _insert(table, names, "%s", computed=computed, suffix=suffix, rows=n)
        for (table, names, computed, suffix), n in zip(_PG_INSERTS, counts, strict=False)
        if n
    ]
    checks = []
    if counts[-1]:
        # Compare and swap: a row another writer changed since the batch read it is not
        # updated, and then the whole statement fails as a serialisation failure (retried).
        assignments = ", ".join(f"{name} = v.{name}" for name in _PG_UPDATE_COLUMNS[:-1])
        parts.append(
            f"UPDATE streams SET {assignments} FROM (VALUES "
            f"{', '.join([_PG_UPDATE_ROW] * counts[-1])})"
            f" AS v({', '.join(_PG_UPDATE_COLUMNS)}, version)"
            " WHERE streams.stream_id = v.stream_id AND streams.xmin = v.version RETURNING 1"
        )
        checks.append(
            f"CASE WHEN (SELECT count(*) FROM w{len(parts) - 1}) = {counts[-1]} THEN 0"
            " ELSE rtms_lifecycle_lost_race() END"
        )
    if guarded:
        # A prune deletes a stream's row before its deliveries: holding the row (in a mode that
        # blocks only deletes) keeps the referenced delivery until this write commits, and a row
        # already gone fails the write as a lost race.
        parts.append("SELECT 1 FROM streams WHERE stream_id = ANY(%s::text[]) FOR KEY SHARE")
        checks.append(
            f"CASE WHEN (SELECT count(*) FROM w{len(parts) - 1}) = cardinality(%s::text[])"
            " THEN 0 ELSE rtms_lifecycle_lost_race() END"
        )
    ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts))
    return _numbered(f"WITH {ctes} SELECT {', '.join(checks) or '0'}")


class _PostgresTx:
    """Optimistic unless ``cautious``.

    Optimistic: no locks. The batch reads its streams with their row versions, and writes them
    back only if the versions are unchanged (compare and swap); a stream another writer
    inserted meanwhile fails the insert (unique violation). Either way nothing is written and
    the batch is retried, cautiously: every stream gets a row (a placeholder in state ``new``
    if it had none) and the rows are locked in stream-id order, so that racing writers queue,
    and never deadlock.
    """

    __slots__ = ("_cautious", "_conn", "_cursor", "_sequences", "_versions")

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        sequences: tuple[str, str],
        cursor: type[psycopg.RawCursor[Any]],
        cautious: bool,
    ) -> None:
        self._conn = conn
        self._sequences = sequences
        # $n placeholders: psycopg passes the query through unparsed.
        self._cursor = cursor
        self._cautious = cautious
        self._versions: dict[str, str] = {}

    def load(
        self,
        stream_ids: Sequence[str],
        identities: Sequence[Row],
        deliveries: int,
        transitions: int,
        now: int,
    ) -> Loaded:
        conn = self._conn
        ids = list(stream_ids)
        if self._cautious and ids:
            rows = [new_stream_row(sid, now) for sid in ids]
            self._cursor(conn).executemany(_PG_PLACEHOLDERS, rows)
            self._cursor(conn).execute(_PG_LOCK_STREAMS, (ids,))
        delivery_seq, transition_seq = self._sequences
        columns = [list(column) for column in zip(*identities, strict=True)] or [[], [], []]
        read = self._cursor(conn).execute(
            _PG_READ, (ids, *columns, delivery_seq, deliveries, transition_seq, transitions)
        )
        row = read.fetchone()
        assert row is not None
        found, known, delivery_ids, transition_ids = row
        streams_read = []
        for *stream, version in found or ():
            self._versions[stream[0]] = version
            streams_read.append(tuple(stream))
        return Loaded(
            streams_read,
            [tuple(r) for r in known or () if r[3] is not None],
            iter(delivery_ids),
            iter(transition_ids),
        )

    def events(self, stream_id: str) -> list[Row]:
        return self._cursor(self._conn).execute(_PG_STREAM_EVENTS, (stream_id,)).fetchall()

    def event(self, delivery_id: int) -> Row:
        row: Row | None = self._cursor(self._conn).execute(_PG_EVENT, (delivery_id,)).fetchone()
        if row is None:
            # Read without locks: a prune removed the stream since its identities were read.
            raise WriteFailed("a stored event was pruned meanwhile", retryable=True)
        return row

    def write(self, writes: Writes) -> None:
        tables = (
            writes.deliveries,
            writes.transitions,
            writes.new_streams,
            writes.alerts,
            [
                (*now[1:], writes.now, now[0], self._versions[now[0]])
                for _, now in writes.changed_streams
            ],
        )
        # A stream the batch changes is checked by the compare and swap already (and a statement
        # cannot lock a row it updates).
        referenced = sorted(
            writes.referenced.difference(now[0] for _, now in writes.changed_streams)
        )
        cursor = self._cursor(self._conn)
        for start in range(0, max(map(len, tables)), _PG_ROWS):
            parts = [rows[start : start + _PG_ROWS] for rows in tables]
            # The first statement holds the rows until the transaction commits.
            guard = referenced if start == 0 else []
            sql = _pg_write_sql(tuple(map(len, parts)), bool(guard))
            values = [value for rows in parts for row in rows for value in row]
            cursor.execute(sql, [*values, guard, guard] if guard else values)


class _PostgresWriter:
    """A pooled connection per transaction."""

    # One per process: it only sleeps until the next deadline.
    _watchdog = Watchdog()

    def __init__(self, engine: Engine) -> None:
        import psycopg  # the "postgres" extra

        self._engine = engine
        self._psycopg = psycopg
        self._sequences: tuple[str, str] | None = None

    def close(self) -> None:
        """Nothing is held between transactions."""

    def probe(self, deadline: float) -> None:
        with self.transaction(cautious=True, deadline=deadline) as tx:
            self._psycopg.RawCursor(tx._conn).execute(_PG_PROBE)
            raise _RollBack

    @contextmanager
    def transaction(
        self,
        *,
        cautious: bool = False,
        size: int = 1,
        deadline: float | None = None,
        durable: bool = True,
    ) -> Iterator[_PostgresTx]:
        # PostgreSQL's own synchronous_commit decides durability (on by default: every commit).
        psycopg = self._psycopg
        _past(deadline)
        held = _checkout(self._engine)
        conn = held.driver_connection
        assert isinstance(conn, psycopg.Connection)
        # An optimistic batch small enough to be written by one statement needs no transaction:
        # its read is one statement, its write another, each atomic on its own, and the write
        # checks what the read saw. That saves BEGIN and COMMIT: two of four round trips.
        alone = not cautious and size <= _PG_ROWS
        try:
            _past(deadline)  # the pool may have made it wait
            if self._sequences is None:
                names = conn.execute(_PG_SEQUENCES).fetchone()
                conn.rollback()
                assert names is not None
                self._sequences = (names[0], names[1])
            conn.autocommit = alone
            with self._watchdog.guard(deadline, conn.cancel_safe):
                yield _PostgresTx(conn, self._sequences, psycopg.RawCursor, cautious)
                conn.commit()
        except BaseException as exc:
            broken = conn.closed or conn.broken
            if not broken:
                try:
                    conn.rollback()
                except psycopg.Error:
                    broken = True
            if broken:
                held.invalidate()
            if isinstance(exc, _RollBack):
                return
            if isinstance(exc, psycopg.Error):
                timed_out = exc.sqlstate in _TIMEOUT_SQLSTATES
                retryable = (broken or exc.sqlstate in _RETRYABLE_SQLSTATES) and not timed_out
                raise WriteFailed(str(exc), retryable=retryable, timed_out=timed_out) from exc
            raise
        finally:
            # The connection goes back to the pool as SQLAlchemy lent it.
            if held.is_valid and conn.autocommit:
                conn.autocommit = False
            held.close()
