"""The PostgreSQL writer: pooled connections kept between transactions, optimistic first
(compare and swap), then cautious (row locks). A delivery recorded alone costs two round trips,
a read and a write, each a prepared statement PostgreSQL plans once."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql

from rtms_lifecycle.store.deadline import WATCHDOG, postgres_interrupts
from rtms_lifecycle.store.engine import closed_by_server
from rtms_lifecycle.store.predicates import EVENT_PREDICATE
from rtms_lifecycle.store.rows import (
    ALERT_COLUMNS,
    DELIVERY_COLUMNS,
    STREAM_COLUMNS,
    TRANSITION_ROW_COLUMNS,
    Row,
    new_stream_row,
)
from rtms_lifecycle.store.tables import concurrency_alerts, deliveries, streams, transitions
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
    import psycopg
    from psycopg.pq.abc import PGresult
    from sqlalchemy.pool import PoolProxiedConnection

__all__ = ["PostgresWriter"]


# Deadlock, serialisation failure, unique violation: a race another attempt will not lose.
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01", "23505"})
# Query cancelled (our watchdog, or the operator's statement_timeout), lock timeout.
_TIMEOUT_SQLSTATES: Final = frozenset({"57014", "55P03"})
# Invalid SQL statement name: a named prepared statement that no longer exists.
_GONE_SQLSTATES: Final = frozenset({b"26000"})
# Feature not supported, as "cached plan must not change result type": a column the statement
# returns changed type since it was prepared (a migration's ALTER ... TYPE, 0019's say). The
# statement is prepared again; a 0A000 for another reason fails the second time too.
_RETYPED_SQLSTATE: Final = b"0A000"
_PG_PROBE: Final = tuple(statement.replace("%s", "''::bytea") for statement in PROBE)


def _numbered(sql: str) -> str:
    """``%s`` markers as PostgreSQL's ``$1, $2, ...``, for psycopg's RawCursor.

    psycopg parses a ``%s`` query on every execution once it has more than 50 parameters.
    """
    pieces = sql.split("%s")
    return "".join(f"{piece}${i}" for i, piece in enumerate(pieces[:-1], 1)) + pieces[-1]


# A cautious retry: placeholders are inserted in stream-id order, and the rows then locked in the
# same order, so that two batches touching the same streams can never deadlock.
_PG_PLACEHOLDERS: Final = _numbered(
    insert_sql(streams.name, NEW_STREAM_COLUMNS, "%s", suffix=" ON CONFLICT (stream_id) DO NOTHING")
)
_PG_LOCK_STREAMS: Final = _numbered(
    select_sql(streams.name, ("stream_id",), "stream_id = ANY(%s) ORDER BY stream_id FOR UPDATE")
)


def _json_rows(names: Sequence[str], source: str) -> str:
    return f"(SELECT json_agg(json_build_array({', '.join(names)})) FROM {source})"


# Everything a batch reads, in one statement: its streams (each with its row version, xmin),
# which of its events are stored, and ids for its rows. One statement reads one snapshot.
_PG_READ: Final = (
    f"SELECT {_json_rows((*STREAM_COLUMNS, 'xmin::text'), 'streams WHERE stream_id = ANY($1)')},"
    + _json_rows([IDENTITY_LOOKUP], "unnest($2::text[], $3::text[], $4::bigint[]) AS v(s, k, t)")
    + ", ARRAY(SELECT nextval($5::regclass) FROM generate_series(1, $6::int) ORDER BY 1),"
    " ARRAY(SELECT nextval($7::regclass) FROM generate_series(1, $8::int) ORDER BY 1)"
)


def _pg_read_one(sequences: tuple[str, str]) -> str:
    """The read of a batch of one delivery, with at most one stream and event identity.

    Scalar parameters, plain columns and the sequences named in the text: PostgreSQL plans the
    prepared statement once (generic plan), where the batch read above, whose array sizes change
    the plan, is planned again on every execution (about 110 us of server CPU, measured), and
    psycopg adapts no array and parses no JSON.
    """
    stream = ", ".join(f"s.{name}" for name in STREAM_COLUMNS)
    identity = (
        "SELECT d.id FROM deliveries AS d WHERE d.stream_id = $1::text AND d.kind = $2::text"
        f" AND d.event_ts = $3::bigint AND d.{EVENT_PREDICATE}"
    )
    delivery_seq, transition_seq = (name.replace("'", "''") for name in sequences)
    return (
        f"SELECT {stream}, s.xmin::text, ({identity}), nextval('{delivery_seq}'::regclass),"
        f" CASE WHEN $4::boolean THEN nextval('{transition_seq}'::regclass) END"
        " FROM (SELECT) AS one LEFT JOIN streams AS s ON s.stream_id = $1::text"
    )


_PG_STREAM_EVENTS: Final = _numbered(STREAM_EVENTS)
_PG_EVENT: Final = _numbered(EVENT)
_PG_SEQUENCES: Final = (
    "SELECT pg_get_serial_sequence('deliveries', 'id'), pg_get_serial_sequence('transitions', 'id')"
)
# The parts of a write: every batch's rows go in one statement per slice of _PG_ROWS rows of each
# table (psycopg costs tens of microseconds of CPU per statement, more than the database does).
_PG_INSERTS: Final = (
    (deliveries.name, DELIVERY_COLUMNS, "", ""),
    # A transition row carries its writer's transaction id (see _tables.transitions).
    (transitions.name, TRANSITION_ROW_COLUMNS, "tx_id = pg_current_xact_id()::text::bigint", ""),
    (streams.name, NEW_STREAM_COLUMNS, "", ""),
    (concurrency_alerts.name, ALERT_COLUMNS, "", ON_NEW_ALERT),
)
_PG_ROWS: Final = 100
# Connections the writer keeps between transactions, and for how long (seconds) at most.
_IDLE_MAX: Final = 8
_KEEP_S: Final = 300.0
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
        insert_sql(table, names, "%s", computed=computed, suffix=suffix, rows=n)
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


@dataclass(frozen=True, slots=True)
class _Sequences:
    """The id sequences of ``deliveries`` and ``transitions``, and the read that names them."""

    names: tuple[str, str]
    read_one: str


def _decode(value: bytes) -> str:
    return value.decode()


# Text results of _pg_read_one, column by column.
_READ_ONE_TYPES: Final = (
    *(int if streams.c[name].type.python_type is int else _decode for name in STREAM_COLUMNS),
    _decode,  # xmin
    int,
    int,
    int,
)


class _Libpq:
    """Named prepared statements run on libpq itself: psycopg's cursor cost about 20 us of CPU
    per statement more (measured), a tenth of a delivery's. Only for parameters whose text form
    is plain (``None``, ``bool``, ``int``, ``str`` without NUL, ``bytes`` sent as binary);
    :meth:`run` returns None for any other, and the caller goes through psycopg."""

    __slots__ = ("_pgconn", "_prepared", "usable")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._pgconn = conn.pgconn
        self._prepared: set[bytes] = set()
        # Without prepared statements (a pooler in transaction mode, say) psycopg runs them all.
        self.usable = conn.prepare_threshold is not None and conn.info.encoding == "utf-8"

    def run(self, name: bytes, sql: str, params: Sequence[Any]) -> PGresult | None:
        from psycopg import errors, pq

        values: list[bytes | None] = []
        formats: list[int] = []
        for value in params:
            kind = type(value)
            if value is None:
                values.append(None)
            elif kind is str:
                if "\x00" in value:
                    return None  # psycopg refuses it, with its own error
                values.append(value.encode())
            elif kind is int:
                values.append(str(value).encode())
            elif kind is bytes:
                values.append(value)
                formats.append(1)
                continue
            elif kind is bool:
                values.append(b"t" if value else b"f")
            else:
                return None
            formats.append(0)
        pgconn = self._pgconn
        if name not in self._prepared:
            self._prepare(name, sql)
        # None is NULL (psycopg's own type hints leave it out).
        result = pgconn.exec_prepared(name, values, formats)  # type: ignore[arg-type]
        if result.status != pq.ExecStatus.TUPLES_OK and result.status != pq.ExecStatus.COMMAND_OK:
            sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
            if sqlstate == _RETYPED_SQLSTATE:
                pgconn.exec_(b"DEALLOCATE " + name)
            elif sqlstate not in _GONE_SQLSTATES:
                raise errors.error_from_result(result)
            # The statement is gone (psycopg sends DEALLOCATE ALL on a rollback once it has
            # prepared statements of its own, and so does DISCARD ALL, a pooler's reset) or was
            # deallocated above. In autocommit the failed execution changed nothing: prepare
            # again, run once more.
            self._prepared.discard(name)
            self._prepare(name, sql)
            result = pgconn.exec_prepared(name, values, formats)  # type: ignore[arg-type]
            if (
                result.status != pq.ExecStatus.TUPLES_OK
                and result.status != pq.ExecStatus.COMMAND_OK
            ):
                raise errors.error_from_result(result)
        return result

    def _prepare(self, name: bytes, sql: str) -> None:
        from psycopg import errors, pq

        prepared = self._pgconn.prepare(name, sql.encode())
        # Duplicate: prepared on this session by a _Libpq before this one.
        if (
            prepared.status != pq.ExecStatus.COMMAND_OK
            and prepared.error_field(pq.DiagnosticField.SQLSTATE) != b"42P05"
        ):
            raise errors.error_from_result(prepared)
        self._prepared.add(name)


# Where a pooled connection keeps its cursor and its _Libpq: psycopg's cursor caches the adapters
# it looked up for each parameter type, and a new cursor per statement looked them up again.
_CURSOR: Final = "rtms_lifecycle.cursor"


@lru_cache(maxsize=256)
def _write_name(counts: tuple[int, ...]) -> bytes:
    return ("rtms_lifecycle_write_" + "_".join(map(str, counts))).encode()


class PostgresTx:
    """Optimistic unless ``cautious``.

    Optimistic: no locks. The batch reads its streams with their row versions, and writes them
    back only if the versions are unchanged (compare and swap); a stream another writer
    inserted meanwhile fails the insert (unique violation). Either way nothing is written and
    the batch is retried, cautiously: every stream gets a row (a placeholder in state ``new``
    if it had none) and the rows are locked in stream-id order, so that racing writers queue,
    and never deadlock.
    """

    __slots__ = ("_cautious", "_cursor", "_libpq", "_sequences", "_versions")

    def __init__(
        self,
        cursor: psycopg.RawCursor[Any],
        sequences: _Sequences,
        cautious: bool,
        libpq: _Libpq | None = None,
    ) -> None:
        # $n placeholders: psycopg passes the query through unparsed.
        self._cursor = cursor
        # In autocommit only: psycopg begins the transactions it knows of.
        self._libpq = libpq
        self._sequences = sequences
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
        cursor = self._cursor
        ids = list(stream_ids)
        if self._cautious and ids:
            rows = [new_stream_row(sid, now) for sid in ids]
            cursor.executemany(_PG_PLACEHOLDERS, rows)
            cursor.execute(_PG_LOCK_STREAMS, (ids,))
        if deliveries == 1 and len(ids) <= 1 and len(identities) <= 1:
            return self._load_one(ids, identities)
        delivery_seq, transition_seq = self._sequences.names
        columns = [list(column) for column in zip(*identities, strict=True)] or [[], [], []]
        read = cursor.execute(
            _PG_READ, (ids, *columns, delivery_seq, deliveries, transition_seq, transitions)
        )
        row = read.fetchone()
        assert row is not None
        found, stored, delivery_ids, transition_ids = row
        streams_read = []
        for *stream, version in found or ():
            self._versions[stream[0]] = version
            streams_read.append(tuple(stream))
        return Loaded(
            streams_read,
            [tuple(r) for r in stored or () if r[3] is not None],
            iter(delivery_ids),
            iter(transition_ids),
        )

    def _load_one(self, ids: list[str], identities: Sequence[Row]) -> Loaded:
        sid = ids[0] if ids else None
        _, kind, event_ts = identities[0] if identities else (sid, None, None)
        params = (sid, kind, event_ts, bool(identities))
        result = None
        if self._libpq is not None:
            result = self._libpq.run(b"rtms_lifecycle_read", self._sequences.read_one, params)
        if result is None:
            found = self._cursor.execute(self._sequences.read_one, params).fetchone()
        else:
            found = tuple(
                None if value is None else load(value)
                for value, load in zip(
                    (result.get_value(0, i) for i in range(result.nfields)),
                    _READ_ONE_TYPES,
                    strict=True,
                )
            )
        assert found is not None
        *stream, version, stored, delivery_id, transition_id = found
        streams_read = []
        if stream[0] is not None:
            self._versions[stream[0]] = version
            streams_read.append(tuple(stream))
        return Loaded(
            streams_read,
            [(sid, kind, event_ts, stored)] if stored is not None else [],
            iter((delivery_id,)),
            iter((transition_id,) if transition_id is not None else ()),
        )

    def events(self, stream_id: str) -> list[Row]:
        return self._cursor.execute(_PG_STREAM_EVENTS, (stream_id,)).fetchall()

    def event(self, delivery_id: int) -> Row:
        row: Row | None = self._cursor.execute(_PG_EVENT, (delivery_id,)).fetchone()
        if row is None:
            # Read without locks: a prune removed the stream since its identities were read.
            raise WriteFailed("a stored event was pruned meanwhile", retryable=True)
        return row

    def statement(
        self,
        name: bytes,
        sql: str,
        params: Sequence[Any],
        types: Sequence[Callable[[bytes], Any]],
    ) -> list[Row]:
        """The rows of one statement (``$n`` parameters), prepared as ``name`` on libpq in
        autocommit, where ``types`` turn each column's text into its value; else through
        psycopg."""
        result = None if self._libpq is None else self._libpq.run(name, sql, params)
        if result is None:
            return [tuple(row) for row in self._cursor.execute(sql, params).fetchall()]
        return [
            tuple(
                None if value is None else load(value)
                for value, load in zip(
                    (result.get_value(row, i) for i in range(result.nfields)), types, strict=True
                )
            )
            for row in range(result.ntuples)
        ]

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
        cursor = self._cursor
        for start in range(0, max(map(len, tables)), _PG_ROWS):
            parts = [rows[start : start + _PG_ROWS] for rows in tables]
            # The first statement holds the rows until the transaction commits.
            guard = referenced if start == 0 else []
            counts = tuple(map(len, parts))
            sql = _pg_write_sql(counts, bool(guard))
            values = [value for rows in parts for row in rows for value in row]
            if guard:
                cursor.execute(sql, [*values, guard, guard])
            elif self._libpq is None or self._libpq.run(_write_name(counts), sql, values) is None:
                cursor.execute(sql, values)


class PostgresWriter:
    """A pooled connection per transaction, kept between transactions.

    Checking a connection out of SQLAlchemy's pool and back in cost about a tenth of a writer's
    CPU per delivery (measured, see docs/benchmarks.md): the writer keeps the connections its
    transactions used, up to ``_IDLE_MAX``, each for at most ``_KEEP_S`` seconds (then it goes
    back to the pool, whose ``pool_recycle`` applies again), and gives them back on ``close``.
    """

    _watchdog = WATCHDOG

    def __init__(self, engine: Engine) -> None:
        import psycopg  # the "postgres" extra

        self._engine = engine
        self._psycopg = psycopg
        self._sequences: _Sequences | None = None
        # (connection, when it left the pool): a list, whose pop and append are atomic.
        self._idle: list[tuple[PoolProxiedConnection, float]] = []
        self._closed = False
        self._idle_status = psycopg.pq.TransactionStatus.IDLE
        # The pool the kept connections came from: an engine disposed since (by its owner)
        # has a new one, and a connection of the old one is closed, not kept or given back.
        self._pool = engine.pool
        # A tracker dropped unclosed still closes its kept connections.
        weakref.finalize(self, _release_all, self._idle, False)

    def confirm(self) -> None:
        """Every commit reached the server or raised."""

    #: The server keeps the database: never reopened on another.
    restores = 0

    def refusal(self) -> str | None:
        return None

    def check_file(self) -> None:
        """No file to lose: the server keeps the database."""

    def close(self) -> None:
        """Give the connections kept back to the pool."""
        self._closed = True
        _release_all(self._idle, self._current())

    def probe(self, deadline: float) -> None:
        with self.transaction(cautious=True, deadline=deadline) as tx:
            for statement in _PG_PROBE:
                tx._cursor.execute(statement)
            raise RollBack

    def _current(self) -> bool:
        """Whether the kept connections are still of the engine's pool."""
        return self._engine.pool is self._pool

    def _take(self, deadline: float | None) -> tuple[PoolProxiedConnection, float]:
        if not self._current():
            _release_all(self._idle, self._current())
            self._pool = self._engine.pool
        try:
            held, since = self._idle.pop()
        except IndexError:
            pass  # outside the handler: a failed connect must not chain an IndexError
        else:
            if not closed_by_server(held.driver_connection):
                return held, since
            # The server ended it (a restart, say): the others kept most likely share its fate.
            held.invalidate()
            _release_all(self._idle, current=False)
        return checkout(self._engine, deadline), time.monotonic()

    def _keep(self, held: PoolProxiedConnection, since: float) -> None:
        conn: Any = held.driver_connection
        if (
            not self._closed
            and self._current()
            and len(self._idle) < _IDLE_MAX
            and time.monotonic() - since < _KEEP_S
            and conn.pgconn.transaction_status == self._idle_status
        ):
            self._idle.append((held, since))
            if self._closed or not self._current():
                # Closed (or its pool disposed) while this one was being kept: not kept after all.
                _release_all(self._idle, self._current())
        else:
            self._release(held)

    def _release(self, held: PoolProxiedConnection) -> None:
        _release(held, self._current())

    @contextmanager
    def transaction(
        self,
        *,
        cautious: bool = False,
        size: int = 1,
        deadline: float | None = None,
        durable: bool = True,
    ) -> Iterator[PostgresTx]:
        # PostgreSQL's own synchronous_commit decides durability (on by default: every commit).
        psycopg = self._psycopg
        check_deadline(deadline)
        held, since = self._take(deadline)
        conn = held.driver_connection
        assert isinstance(conn, psycopg.Connection)
        # An optimistic batch small enough to be written by one statement needs no transaction:
        # its read is one statement, its write another, each atomic on its own, and the write
        # checks what the read saw. That saves BEGIN and COMMIT: two of four round trips.
        alone = not cautious and size <= _PG_ROWS
        try:
            check_deadline(deadline)  # the pool may have made it wait
            if self._sequences is None:
                found = conn.execute(_PG_SEQUENCES).fetchone()
                conn.rollback()
                assert found is not None
                names = (found[0], found[1])
                self._sequences = _Sequences(names, _pg_read_one(names))
            kept = held.info.get(_CURSOR)
            if kept is None or kept[0].connection is not conn:
                kept = held.info[_CURSOR] = (psycopg.RawCursor(conn), _Libpq(conn))
            cursor, libpq = kept
            if conn.autocommit is not alone:
                conn.autocommit = alone
            disarm = (
                None
                if deadline is None
                else self._watchdog.watch(deadline, *postgres_interrupts(conn))
            )
            try:
                yield PostgresTx(
                    cursor, self._sequences, cautious, libpq if alone and libpq.usable else None
                )
                if not alone:
                    conn.commit()
            finally:
                if disarm is not None:
                    # After this no cancel can reach the connection, which serves others.
                    disarm()
        except BaseException as exc:
            broken = conn.closed or conn.broken
            if not broken:
                try:
                    conn.rollback()
                except psycopg.Error:
                    broken = True
            if broken:
                held.invalidate()
                # The kept ones most likely share its fate (a restarted server): a retry that
                # took them one by one would run out of attempts before reaching a live one.
                _release_all(self._idle, current=False)
            if isinstance(exc, RollBack):
                return
            if isinstance(exc, psycopg.Error):
                timed_out = exc.sqlstate in _TIMEOUT_SQLSTATES
                retryable = (broken or exc.sqlstate in _RETRYABLE_SQLSTATES) and not timed_out
                raise WriteFailed(str(exc), retryable=retryable, timed_out=timed_out) from exc
            raise
        finally:
            if held.is_valid:
                self._keep(held, since)
            else:
                held.close()


def _release(held: PoolProxiedConnection, current: bool) -> None:
    """Give a connection back to the pool as SQLAlchemy lent it; one of a pool its engine has
    since disposed is closed instead (nobody would close it there)."""
    if current:
        conn = held.driver_connection
        # One that cannot go back (its server gone, say) is closed instead.
        with suppress(Exception):
            if held.is_valid and conn is not None and conn.autocommit:
                conn.autocommit = False
            held.close()
            return
    held.invalidate()


def _release_all(idle: list[tuple[PoolProxiedConnection, float]], current: bool) -> None:
    while idle:
        try:
            held, _ = idle.pop()
        except IndexError:
            return
        _release(held, current)
