"""The PostgreSQL writer: a pooled connection per transaction, optimistic first (compare and
swap), then cautious (row locks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql

from rtms_lifecycle.store.deadline import WATCHDOG
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

__all__ = ["PostgresWriter"]


# Deadlock, serialisation failure, unique violation: a race another attempt will not lose.
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01", "23505"})
# Query cancelled (our watchdog, or the operator's statement_timeout), lock timeout.
_TIMEOUT_SQLSTATES: Final = frozenset({"57014", "55P03"})
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


class PostgresTx:
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


class PostgresWriter:
    """A pooled connection per transaction."""

    _watchdog = WATCHDOG

    def __init__(self, engine: Engine) -> None:
        import psycopg  # the "postgres" extra

        self._engine = engine
        self._psycopg = psycopg
        self._sequences: tuple[str, str] | None = None

    def confirm(self) -> None:
        """Every commit reached the server or raised."""

    def moved(self) -> bool:
        return False

    def check_file(self) -> None:
        """No file to lose: the server keeps the database."""

    def close(self) -> None:
        """Nothing is held between transactions."""

    def probe(self, deadline: float) -> None:
        with self.transaction(cautious=True, deadline=deadline) as tx:
            cursor = self._psycopg.RawCursor(tx._conn)
            for statement in _PG_PROBE:
                cursor.execute(statement)
            raise RollBack

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
        held = checkout(self._engine)
        conn = held.driver_connection
        assert isinstance(conn, psycopg.Connection)
        # An optimistic batch small enough to be written by one statement needs no transaction:
        # its read is one statement, its write another, each atomic on its own, and the write
        # checks what the read saw. That saves BEGIN and COMMIT: two of four round trips.
        alone = not cautious and size <= _PG_ROWS
        try:
            check_deadline(deadline)  # the pool may have made it wait
            if self._sequences is None:
                names = conn.execute(_PG_SEQUENCES).fetchone()
                conn.rollback()
                assert names is not None
                self._sequences = (names[0], names[1])
            conn.autocommit = alone
            with self._watchdog.guard(deadline, conn.cancel_safe):
                yield PostgresTx(conn, self._sequences, psycopg.RawCursor, cautious)
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
            if isinstance(exc, RollBack):
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
