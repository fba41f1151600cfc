"""The SQL store: records deliveries, folds stream events, appends the audit history.

Every write goes through :meth:`Store.record`, one transaction per call, whatever the batch size.
Writers of one stream serialise: on PostgreSQL the stream rows are locked (``SELECT ... FOR
UPDATE``, in stream-id order so that two batches cannot deadlock); on SQLite every write
transaction starts with ``BEGIN IMMEDIATE``. The event identity is a unique constraint, so even a
race nobody foresaw cannot apply one event twice: it fails, and the batch is retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from pydantic_core import from_json, to_json
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.sql.elements import BindParameter

from . import _migrate
from ._tables import concurrency_alerts, deliveries, stream_events, streams
from ._tables import transitions as transitions_table
from .events import (
    ConcurrencyAlert,
    EventKind,
    ParsedDelivery,
    Scope,
    Source,
    StreamEvent,
    UnhandledDelivery,
    UrlValidation,
)
from .exceptions import FieldError, StoreError
from .machine import LIVE_STATES, State, StreamState, TransitionName, fold, step
from .records import IngestResult, Outcome, Stream, Transition

__all__ = ["DEFAULT_DB_URL", "KnownStreamEvent", "Incoming", "Store", "now_ms"]

log = logging.getLogger(__name__)

DEFAULT_DB_URL: Final = "sqlite:///rtms_lifecycle.db"
# How often a transaction that lost a race (deadlock, serialisation, a busy SQLite) is retried.
_ATTEMPTS: Final = 8
# Keeps IN (...) lists well under every driver's bound-parameter limit.
_CHUNK: Final = 500
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01", "23505"})


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class KnownStreamEvent:
    """An app-reported resume or a system expiry: the stream's scope comes from the store."""

    stream_id: str
    kind: EventKind
    event_ts: int


@dataclass(slots=True)
class Incoming:
    """One delivery to record: what was received, and what parsing made of it."""

    raw: bytes
    parsed: ParsedDelivery | KnownStreamEvent | None
    source: Source = Source.WEBHOOK
    errors: tuple[FieldError, ...] = ()
    event: str | None = None
    stream_id: str | None = None  # for a rejected body: the stream it seems to be about
    # Expiry only: record nothing unless the stream is still live with no event since then.
    stale_before: int | None = None


@dataclass(slots=True)
class _Live:
    """A stream as the batch sees it, and what the batch changed."""

    state: StreamState
    # No row yet (SQLite only: there the write lock makes a placeholder row unnecessary).
    insert: bool = False
    dirty: bool = False
    # The stream's stored events, as rows: turned into events only if a late one needs a re-fold.
    stored_rows: list[Row[Any]] = field(default_factory=list)
    new_events: list[StreamEvent] = field(default_factory=list)

    def stored_events(self) -> list[StreamEvent]:
        return [row_to_event(row) for row in self.stored_rows]


@dataclass(slots=True)
class _Pending:
    """A result whose ids are known only once its rows are written."""

    outcome: Outcome
    event: str | None
    stream_id: str | None
    errors: tuple[FieldError, ...]
    detail: str | None
    state: StreamState | None = None
    transition: dict[str, Any] | None = None
    delivery_id: int | None = None


def _same_payload(stored: str | Mapping[str, Any], payload: Mapping[str, Any]) -> bool:
    # "Same payload" means equal as parsed JSON, whatever the key order or spacing.
    return (from_json(stored) if isinstance(stored, str) else stored) == payload


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _normalise_url(url: str) -> str:
    parsed = make_url(url)
    # psycopg 3 is the PostgreSQL driver we ship (extra "postgres"); SQLAlchemy's default is
    # psycopg2, which users would otherwise have to install besides.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # We issue BEGIN ourselves; pysqlite's own transaction handling would defer it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writer takes the write lock up front: two writers never both read, then both write.
    write = conn.get_execution_options().get("rtms_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _configure_sqlite(engine: Engine) -> None:
    if not event.contains(engine, "connect", _sqlite_connect):
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)


def create_store_engine(url: str) -> Engine:
    """An engine configured the way the store needs it (SQLite pragmas and locking)."""
    url = _normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url)
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per transaction; a connection found dead is retried.
    return create_engine(url, pool_size=10, max_overflow=20, pool_recycle=3600)


def _retryable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


class Store:
    """Persistence of the lifecycle: the only module that writes SQL."""

    def __init__(self, db: str | Engine | None = None, *, migrate: bool = True) -> None:
        self.engine = (
            create_store_engine(db or DEFAULT_DB_URL) if not isinstance(db, Engine) else db
        )
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite" and isinstance(db, Engine):
            _configure_sqlite(self.engine)
        self._writer = self.engine.execution_options(rtms_write=True)
        # SQLite admits one writer at a time and its busy handler sleeps up to 100 ms between
        # tries: threads of one process queue here instead, at no cost to other processes.
        self._serial: AbstractContextManager[object] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        if migrate:
            _migrate.ensure_schema(self.engine)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    # --- writing ----------------------------------------------------------------------------

    def record(self, items: Sequence[Incoming], *, full: bool = True) -> list[IngestResult | None]:
        """Record deliveries in one transaction; None for an expiry that no longer applies.

        Without ``full``, results carry outcomes and ids but no Stream or Transition.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._serial, self._writer.begin() as conn:
                    return _Batch(conn, now_ms(), full).run(items)
            except DBAPIError as exc:
                if not _retryable(exc) or attempt == _ATTEMPTS:
                    raise StoreError(
                        f"could not record {len(items)} deliveries: {exc.orig}"
                    ) from exc
                log.debug("retrying a batch that lost a race (attempt %d): %s", attempt, exc.orig)
                time.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")

    # --- reading ----------------------------------------------------------------------------

    def read(self) -> Connection:
        """A read-only connection (its transaction ends with the ``with`` block)."""
        return self.engine.connect()


def row_to_state(row: Row[Any]) -> StreamState:
    """A stored stream row as the fold's state."""
    m = row._mapping
    return StreamState(
        stream_id=m["stream_id"],
        scope=Scope(m["scope"]) if m["scope"] else None,
        scope_id=m["scope_id"],
        account_id=m["account_id"],
        session_key=m["session_key"],
        operator_id=m["operator_id"],
        server_urls=m["server_urls"],
        state=State(m["state"]),
        first_event_at=m["first_event_at"],
        started_at=m["started_at"],
        stopped_at=m["stopped_at"],
        stop_reason=m["stop_reason"],
        last_event_at=m["last_event_at"],
        interruptions=m["interruptions"],
        resumes=m["resumes"],
        failovers=m["failovers"],
        fold_ts=m["fold_ts"],
        fold_rank=m["fold_rank"],
    )


def state_to_stream(state: StreamState) -> Stream:
    """The public view of a folded stream."""
    assert state.scope is not None, "a stream takes its scope from its first applied event"
    assert state.scope_id is not None
    return Stream(
        stream_id=state.stream_id,
        scope=state.scope,
        scope_id=state.scope_id,
        account_id=state.account_id,
        session_key=state.session_key,
        operator_id=state.operator_id,
        server_urls=state.server_urls,
        state=state.state,
        started_at=state.started_at,
        stopped_at=state.stopped_at,
        last_event_at=state.last_event_at,
        stop_reason=state.stop_reason,
        interruptions=state.interruptions,
        resumes=state.resumes,
        failovers=state.failovers,
    )


def transition_of(m: Mapping[Any, Any]) -> Transition:
    """An audit row (a stored row's mapping, or the values just inserted) as a Transition."""
    return Transition(
        id=m["id"],
        stream_id=m["stream_id"],
        from_state=State(m["from_state"]),
        to_state=State(m["to_state"]),
        name=TransitionName(m["name"]),
        kind=m["kind"],
        event_ts=m["event_ts"],
        source=Source(m["source"]),
        late=bool(m["late"]),
        recorded_at=m["recorded_at"],
        delivery_id=m["delivery_id"],
    )


def row_to_event(row: Row[Any]) -> StreamEvent:
    """A stored stream event, as the fold needs it."""
    m = row._mapping
    return StreamEvent(
        event=m["event"],
        scope=Scope(m["scope"]) if m["scope"] else None,
        kind=EventKind(m["kind"]),
        stream_id=m["stream_id"],
        scope_id=m["scope_id"],
        event_ts=m["event_ts"],
        source=Source(m["source"]),
        account_id=m["account_id"],
        session_key=m["session_key"],
        operator_id=m["operator_id"],
        server_urls=m["server_urls"],
        stop_reason=m["stop_reason"],
    )


_STATE_COLUMNS: Final = tuple(
    c.name for c in streams.columns if c.name not in ("stream_id", "created_at", "updated_at")
)
_ENUM_COLUMNS: Final = frozenset({"scope", "state"})

# Statements are built once: building them per call (coercions, cache keys) costs more than
# running them on SQLite.
_IDS: Final[BindParameter[list[str]]] = bindparam("ids", expanding=True)
_SELECT_STREAMS: Final = select(streams).where(streams.c.stream_id.in_(_IDS))
_LOCK_STREAMS: Final = _SELECT_STREAMS.order_by(streams.c.stream_id).with_for_update()
# By stream id, not by event identity: a row-value IN over several identities makes SQLite scan
# the whole table, while this reads only the touched streams' few events through the index.
_SELECT_EVENTS: Final = select(stream_events).where(stream_events.c.stream_id.in_(_IDS))
_UPDATE_STREAM: Final = (
    update(streams)
    .where(streams.c.stream_id == bindparam("b_stream_id"))
    .values({name: bindparam(name) for name in (*_STATE_COLUMNS, "updated_at")})
)
_INSERT_PLACEHOLDERS: Final = postgresql.insert(streams).on_conflict_do_nothing(
    index_elements=["stream_id"]
)
_INSERT_ALERTS: Final = {
    "postgresql": postgresql.insert(concurrency_alerts).on_conflict_do_nothing(
        index_elements=["fingerprint"]
    ),
    "sqlite": sqlite.insert(concurrency_alerts).on_conflict_do_nothing(
        index_elements=["fingerprint"]
    ),
}
# A transition row carries its writer's PostgreSQL transaction id (see _tables.transitions).
_INSERT_TRANSITIONS_PG: Final = insert(transitions_table).values(
    tx_id=literal_column("pg_current_xact_id()::text::bigint")
)


_INSERT_EVENTS: Final = insert(stream_events)
_INSERT_STREAMS: Final = insert(streams)
_SQLITE: Final = sqlite.dialect(paramstyle="qmark")


@lru_cache(maxsize=64)
def _sqlite_sql(statement: Any, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A statement's SQLite text for rows with these keys, and the keys in parameter order."""
    compiled = statement.compile(dialect=_SQLITE, column_keys=list(keys))
    return str(compiled), tuple(compiled.positiontup)


def _state_row(state: StreamState) -> dict[str, Any]:
    row = {name: getattr(state, name) for name in _STATE_COLUMNS}
    for name in _ENUM_COLUMNS:
        if row[name] is not None:
            row[name] = row[name].value
    return row


class _Batch:
    """One transaction's worth of deliveries: read what they touch, decide in memory, write."""

    def __init__(self, conn: Connection, now: int, full: bool) -> None:
        self.conn = conn
        self.now = now
        # Without full results (bulk loads without callbacks) no Stream or Transition is built.
        self.full = full
        self.postgres = conn.dialect.name == "postgresql"
        self.live: dict[str, _Live] = {}
        # identity -> payload: stored JSON text, or the mapping of an event of this batch
        self.known: dict[tuple[str, str, int], str | Mapping[str, Any]] = {}
        self.delivery_rows: list[dict[str, Any]] = []
        self.event_rows: list[dict[str, Any]] = []
        self.transition_rows: list[dict[str, Any]] = []
        self.alert_rows: list[dict[str, Any]] = []
        # One per item; None for an expiry that no longer applies (it writes nothing).
        self.pending: list[_Pending | None] = []

    def run(self, items: Sequence[Incoming]) -> list[IngestResult | None]:
        self._load(items)
        for item in items:
            self.pending.append(self._decide(item))
        self._write()
        return [self._result(p) if p is not None else None for p in self.pending]

    # --- reading what the batch touches -----------------------------------------------------

    def _load(self, items: Sequence[Incoming]) -> None:
        ids = sorted(
            {
                parsed.stream_id
                for parsed in (item.parsed for item in items)
                if isinstance(parsed, StreamEvent | KnownStreamEvent)
            }
        )
        if not ids:
            return
        lock = _LOCK_STREAMS if self.postgres else _SELECT_STREAMS
        for chunk in _chunks(ids):
            for row in self.conn.execute(lock, {"ids": chunk}):
                self.live[row.stream_id] = _Live(row_to_state(row))
        missing = [sid for sid in ids if sid not in self.live]
        if missing and self.postgres:
            # Racing writers of a new stream need one row to queue on: insert it, then lock it.
            # Sorted ids make every writer lock in one order, so none can deadlock.
            for chunk in _chunks(missing):
                self.conn.execute(_INSERT_PLACEHOLDERS, [self._placeholder(sid) for sid in chunk])
                for row in self.conn.execute(lock, {"ids": chunk}):
                    self.live[row.stream_id] = _Live(row_to_state(row))
        else:
            # SQLite: BEGIN IMMEDIATE already made this the only writer.
            for sid in missing:
                self.live[sid] = _Live(StreamState(sid), insert=True)
        stored = [sid for sid in ids if not self.live[sid].insert]
        for chunk in _chunks(stored):
            for row in self.conn.execute(_SELECT_EVENTS, {"ids": chunk}):
                self.known[row.stream_id, row.kind, row.event_ts] = row.payload
                self.live[row.stream_id].stored_rows.append(row)

    def _placeholder(self, stream_id: str) -> dict[str, Any]:
        # State "new" marks a row no event has been applied to yet.
        return {
            "stream_id": stream_id,
            **_state_row(StreamState(stream_id)),
            "created_at": self.now,
            "updated_at": self.now,
        }

    # --- deciding ---------------------------------------------------------------------------

    def _decide(self, item: Incoming) -> _Pending | None:
        parsed = item.parsed
        if item.errors or parsed is None:
            return self._delivery(
                item, Outcome.REJECTED, errors=item.errors, stream_id=item.stream_id
            )
        if isinstance(parsed, UnhandledDelivery):
            return self._delivery(
                item, Outcome.UNHANDLED, event=parsed.event, event_ts=parsed.event_ts
            )
        if isinstance(parsed, UrlValidation):
            return self._delivery(
                item, Outcome.APPLIED, event=parsed.event, event_ts=parsed.event_ts
            )
        if isinstance(parsed, ConcurrencyAlert):
            self._alert(parsed)
            return self._delivery(
                item, Outcome.APPLIED, event=parsed.event, event_ts=parsed.event_ts
            )
        live = self.live[parsed.stream_id]
        if isinstance(parsed, KnownStreamEvent):
            parsed = StreamEvent(
                event=item.event or parsed.kind.value,
                scope=live.state.scope,
                kind=parsed.kind,
                stream_id=parsed.stream_id,
                scope_id=live.state.scope_id,
                event_ts=parsed.event_ts,
                source=item.source,
                payload={"rtms_stream_id": parsed.stream_id},
            )
        if item.stale_before is not None and not (
            live.state.state in LIVE_STATES and (live.state.last_event_at or 0) < item.stale_before
        ):
            return None
        return self._stream_event(item, parsed, live)

    def _stream_event(self, item: Incoming, ev: StreamEvent, live: _Live) -> _Pending:
        before = live.state
        if before.scope is not None and ev.scope is not None and before.scope is not ev.scope:
            return self._delivery(
                item,
                Outcome.CONFLICT,
                about=ev,
                detail=(
                    f"stream {ev.stream_id} is a {before.scope.value} stream, "
                    f"this event is for a {ev.scope.value}"
                ),
            )
        identity = (ev.stream_id, ev.kind.value, ev.event_ts)
        stored = self.known.get(identity)
        if stored is not None:
            if _same_payload(stored, ev.payload):
                return self._delivery(
                    item, Outcome.DUPLICATE, about=ev, detail="this event is already stored"
                )
            return self._delivery(
                item,
                Outcome.CONFLICT,
                about=ev,
                detail=(
                    "an event with this identity but another payload is stored; the first stands"
                ),
            )
        self.known[identity] = ev.payload
        self._event_row(ev, to_json(ev.payload).decode())
        live.dirty = True
        if ev.position > (before.fold_ts, before.fold_rank):
            after = before.copy()
            name = step(after, ev)
        else:
            after, steps = fold(ev.stream_id, [*live.stored_events(), *live.new_events, ev])
            name = next(n for e, n in steps if e is ev)
        live.new_events.append(ev)
        live.state = after
        if name is None:
            return self._delivery(
                item,
                Outcome.IGNORED,
                about=ev,
                detail=f"a {ev.kind.value} event changes nothing in state {after.state.value}",
            )
        pending = self._delivery(item, Outcome.APPLIED, about=ev)
        pending.state = after
        pending.transition = {
            "stream_id": ev.stream_id,
            "from_state": before.state.value,
            "to_state": after.state.value,
            "name": name.value,
            "kind": ev.kind.value,
            "event_ts": ev.event_ts,
            "source": ev.source.value,
            "late": before.last_event_at is not None and ev.event_ts < before.last_event_at,
            "recorded_at": self.now,
        }
        self.transition_rows.append(pending.transition)
        return pending

    def _delivery(
        self,
        item: Incoming,
        outcome: Outcome,
        *,
        about: StreamEvent | None = None,
        event: str | None = None,
        event_ts: int | None = None,
        stream_id: str | None = None,
        errors: tuple[FieldError, ...] = (),
        detail: str | None = None,
    ) -> _Pending:
        kind = None
        if about is not None:
            event, event_ts, stream_id, kind = (
                about.event,
                about.event_ts,
                about.stream_id,
                about.kind.value,
            )
        event = event or item.event
        self.delivery_rows.append(
            {
                "received_at": self.now,
                "source": item.source.value,
                "event": event,
                "event_ts": event_ts,
                "stream_id": stream_id,
                "kind": kind,
                "outcome": outcome.value,
                "error": json.dumps([e.as_dict() for e in errors]) if errors else None,
                "detail": detail,
                "raw": item.raw,
            }
        )
        return _Pending(outcome, event, stream_id, errors, detail)

    def _event_row(self, ev: StreamEvent, payload: str) -> None:
        self.event_rows.append(
            {
                "stream_id": ev.stream_id,
                "kind": ev.kind.value,
                "event_ts": ev.event_ts,
                "source": ev.source.value,
                "event": ev.event,
                "scope": ev.scope.value if ev.scope else None,
                "scope_id": ev.scope_id,
                "account_id": ev.account_id,
                "session_key": ev.session_key,
                "operator_id": ev.operator_id,
                "server_urls": ev.server_urls,
                "stop_reason": ev.stop_reason,
                "payload": payload,
                "received_at": self.now,
            }
        )

    def _alert(self, alert: ConcurrencyAlert) -> None:
        payload = _canonical(alert.payload)
        fingerprint = hashlib.sha256(
            f"{alert.event}\x00{alert.event_ts}\x00{payload}".encode()
        ).hexdigest()
        self.alert_rows.append(
            {
                "event": alert.event,
                "event_ts": alert.event_ts,
                "concurrency_number": alert.concurrency_number,
                "concurrency_limit": alert.concurrency_limit,
                "percentage": alert.percentage,
                "operator_id": alert.operator_id,
                "id_field": alert.id_field,
                "id_value": alert.id_value,
                "account_id": alert.account_id,
                "payload": payload,
                "fingerprint": fingerprint,
                "received_at": self.now,
            }
        )

    # --- writing ----------------------------------------------------------------------------

    def _write(self) -> None:
        conn = self.conn
        written = [p for p in self.pending if p is not None]
        for pending, delivery_id in zip(
            written, self._insert_with_ids(deliveries, self.delivery_rows), strict=True
        ):
            pending.delivery_id = delivery_id
            if pending.transition is not None:
                pending.transition["delivery_id"] = delivery_id
        if self.event_rows:
            self._executemany(_INSERT_EVENTS, self.event_rows)
        if self.transition_rows:
            self._insert_with_ids(transitions_table, self.transition_rows)
        new, changed = [], []
        for sid, live in self.live.items():
            if live.insert:
                new.append(
                    {
                        "stream_id": sid,
                        **_state_row(live.state),
                        "created_at": self.now,
                        "updated_at": self.now,
                    }
                )
            elif live.dirty:
                changed.append(
                    {"b_stream_id": sid, **_state_row(live.state), "updated_at": self.now}
                )
        if new:
            self._executemany(_INSERT_STREAMS, new)
        if changed:
            self._executemany(_UPDATE_STREAM, changed)
        if self.alert_rows:
            conn.execute(_INSERT_ALERTS[conn.dialect.name], self.alert_rows)

    def _insert_with_ids(self, table: Table, rows: list[dict[str, Any]]) -> list[int]:
        """Insert rows, setting each row's ``id``; returns the ids in row order."""
        if not rows:
            return []
        if self.postgres:
            statement = _INSERT_TRANSITIONS_PG if table is transitions_table else insert(table)
            result = self.conn.execute(
                statement.returning(table.c.id, sort_by_parameter_order=True), rows
            )
            ids = [row[0] for row in result]
        else:
            ids = []
            if table is transitions_table:
                for row in rows:
                    row["tx_id"] = 0
            for chunk in _chunks(rows):
                ids.extend(self._sqlite_insert_ids(table, chunk))
        for row, row_id in zip(rows, ids, strict=True):
            row["id"] = row_id
        return ids

    def _sqlite_insert_ids(self, table: Table, rows: Sequence[dict[str, Any]]) -> range:
        # One multi-row INSERT: SQLite gives its rows consecutive rowids after the largest one
        # (no AUTOINCREMENT, and BEGIN IMMEDIATE made this the only writer), so the last rowid
        # names them all. SQLite's ordered RETURNING would run one INSERT per row instead.
        keys = list(rows[0])
        row_sql = "(" + ", ".join("?" * len(keys)) + ")"
        sql = f"INSERT INTO {table.name} ({', '.join(keys)}) VALUES " + ", ".join(
            [row_sql] * len(rows)
        )
        params = tuple(row[key] for row in rows for key in keys)
        last = self.conn.exec_driver_sql(sql, params).lastrowid
        return range(last - len(rows) + 1, last + 1)

    def _executemany(self, statement: Any, rows: list[dict[str, Any]]) -> None:
        if self.postgres:
            self.conn.execute(statement, rows)
            return
        # SQLAlchemy prepares every row's parameters in Python; on SQLite that costs more than
        # the inserts themselves, so the statement is compiled once and fed plain tuples.
        sql, keys = _sqlite_sql(statement, tuple(rows[0]))
        self.conn.exec_driver_sql(sql, [tuple(row[key] for key in keys) for row in rows])

    def _result(self, pending: _Pending) -> IngestResult:
        full = self.full and pending.state is not None
        return IngestResult(
            outcome=pending.outcome,
            delivery_id=pending.delivery_id,
            event=pending.event,
            stream_id=pending.stream_id,
            errors=pending.errors,
            detail=pending.detail,
            stream=state_to_stream(pending.state) if full and pending.state else None,
            transition=transition_of(pending.transition) if full and pending.transition else None,
        )
