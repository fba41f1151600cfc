"""The SQL store: records deliveries, folds stream events, appends the audit history.

Every write goes through :meth:`Store.record`, atomic per call, whatever the batch size. On
SQLite every write transaction starts with ``BEGIN IMMEDIATE``; on PostgreSQL a first attempt
is optimistic (compare and swap on the stream rows' versions) and a retry locks the rows (see
``_writers``). The event identity is a unique index, so even a race nobody foresaw cannot apply
one event twice: it fails, and the batch is retried.

Here the batch is decided in memory; ``_writers`` talks to the driver. Reads go through
SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from . import _migrate
from ._bodies import same_json
from ._dburl import DEFAULT_DB_URL, check_driver, default_url, parse
from ._deadline import remaining
from ._writers import (
    SQLITE_BUSY_TIMEOUT_MS,
    Row,
    WriteFailed,
    Writes,
    WriteTx,
    state_row,
    writer_for,
)
from .events import (
    ConcurrencyAlert,
    EventKind,
    ParsedDelivery,
    Scope,
    Source,
    StreamEvent,
    UnhandledDelivery,
    UrlValidation,
    parse_delivery,
)
from .exceptions import FieldError, StoreError, StoreTimeout
from .machine import LIVE_STATES, State, StreamState, TransitionName, fold, step
from .records import IngestResult, Outcome, Stream, Transition

__all__ = ["DEFAULT_DB_URL", "KnownStreamEvent", "Incoming", "Store", "now_ms"]

log = logging.getLogger(__name__)

# How often a transaction that lost a race (deadlock, serialisation, a busy SQLite) is retried.
_ATTEMPTS: Final = 8
# Stored text to enum member, cheaper than calling the enum: rows become objects by the thousand.
SCOPE_OF: Final = {scope.value: scope for scope in Scope}
STATE_OF: Final = {state.value: state for state in State}
#: What every SQLite connection of the store runs first (the raw benchmarks use the same). The
#: busy timeout comes first: switching a new file to WAL waits for the other processes' locks.
SQLITE_PRAGMAS: Final = (
    f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "journal_mode=WAL",
    "synchronous=NORMAL",
)
#: The SQLite guard of the audit history lets a DELETE pass only where this returns 1: every
#: connection of the store defines it as 0, a prune's own connection as 1 (migration 0006).
PRUNING_FUNCTION: Final = "rtms_lifecycle_pruning"


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
    # A verified webhook: when it was signed (epoch ms) and the label of the secret that did.
    signed_at: int | None = None
    secret_label: str | None = None


@dataclass(slots=True)
class _Live:
    """A stream as the batch sees it, and what the batch changed."""

    state: StreamState
    # The row as stored (``_writers.STREAM_COLUMNS``); empty if there is none yet, and the batch
    # inserts it.
    stored: Row = ()
    dirty: bool = False
    # The stream's stored events: read only when a late event needs a re-fold.
    stored_events: list[StreamEvent] | None = None
    new_events: list[StreamEvent] = field(default_factory=list)


@dataclass(slots=True)
class _First:
    """The delivery that brought an event first: what a later copy of the event is compared to."""

    delivery_id: int
    raw: bytes
    # None until needed: a stored event is parsed again only for a copy with other bytes.
    payload: Mapping[str, Any] | None
    # A stored event's row (``_writers.EVENT_COLUMNS``); None for an event of this batch.
    row: Row | None = None


@dataclass(slots=True)
class _Pending:
    """What one delivery came to, until the batch is written."""

    outcome: Outcome
    event: str | None
    stream_id: str | None
    errors: tuple[FieldError, ...]
    detail: str | None
    delivery_id: int
    state: StreamState | None = None
    transition: Row | None = None


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normalise_url(url: str) -> str:
    parsed = parse(url)
    check_driver(parsed)
    return parsed.render_as_string(hide_password=False)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # We issue BEGIN ourselves; pysqlite's own transaction handling would defer it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
    dbapi_connection.create_function(PRUNING_FUNCTION, 0, not_pruning)


def not_pruning() -> int:
    """What ``rtms_lifecycle_pruning()`` says on a connection that is not pruning."""
    return 0


def _sqlite_begin(conn: Connection) -> None:
    # A reader's statements see one snapshot (writers begin their own, in _writers); a schema
    # change takes the write lock up front.
    immediate = conn.get_execution_options().get(_migrate.SQLITE_IMMEDIATE)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


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


class Store:
    """Persistence of the lifecycle: the only module that writes SQL."""

    def __init__(self, db: str | Engine | None = None, *, migrate: bool = True) -> None:
        self.engine = create_store_engine(db or default_url()) if not isinstance(db, Engine) else db
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite" and isinstance(db, Engine):
            _configure_sqlite(self.engine)
        self._writer = writer_for(self.engine)
        # SQLite admits one writer at a time and its busy handler sleeps up to 100 ms between
        # tries: threads of one process queue here instead, at no cost to other processes.
        self._serial: threading.Lock | None = threading.Lock() if self.dialect == "sqlite" else None
        if migrate:
            try:
                _migrate.ensure_schema(self.engine)
            except BaseException:
                # A refused schema (e.g. a newer one) leaves no open connection behind.
                self.close()
                raise

    def close(self) -> None:
        """Release every connection."""
        with self._serialised(None):
            self._writer.close()
        self.engine.dispose()

    @contextmanager
    def _serialised(self, deadline: float | None) -> Iterator[None]:
        # SQLite: this process's writers one at a time; the wait counts against the deadline.
        if self._serial is None:
            yield
            return
        wait = -1 if deadline is None else max(remaining(deadline), 0)
        if not self._serial.acquire(timeout=wait):
            raise WriteFailed(
                "another write of this process held the store past the time budget",
                retryable=False,
                timed_out=True,
            )
        try:
            yield
        finally:
            self._serial.release()

    # --- writing ----------------------------------------------------------------------------

    def record(
        self,
        items: Sequence[Incoming],
        *,
        full: bool = True,
        deadline: float | None = None,
        durable: bool = True,
    ) -> list[IngestResult | None]:
        """Record deliveries in one transaction; None for an expiry that no longer applies.

        Without ``full``, results carry outcomes and ids but no Stream or Transition. Past
        ``deadline`` (``time.monotonic()`` seconds) it gives up with :class:`StoreTimeout`,
        nothing written. ``durable``: the commit survives a power loss (on SQLite, a sync per
        commit); without it (bulk loads), a crash of the machine may undo the last commits.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                # A batch that lost a race is retried cautiously: no more optimism.
                with (
                    self._serialised(deadline),
                    self._writer.transaction(
                        cautious=attempt > 1, size=len(items), deadline=deadline, durable=durable
                    ) as tx,
                ):
                    return _Batch(tx, now_ms(), full).run(items)
            except WriteFailed as exc:
                expired = deadline is not None and remaining(deadline) <= 0
                if exc.timed_out or (exc.retryable and expired):
                    raise StoreTimeout(
                        f"could not record {len(items)} deliveries within the time budget: {exc}"
                    ) from exc
                if not exc.retryable or attempt == _ATTEMPTS:
                    raise StoreError(f"could not record {len(items)} deliveries: {exc}") from exc
                log.debug("retrying a batch that lost a race (attempt %d): %s", attempt, exc)
                time.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")

    def check_writable(self, timeout: float) -> None:
        """Raise :class:`StoreError` (why) unless a write can begin, and a row be written,
        within ``timeout`` seconds; the probe's write is rolled back."""
        deadline = time.monotonic() + timeout
        try:
            with self._serialised(deadline):
                self._writer.probe(deadline)
        except WriteFailed as exc:
            kind = StoreTimeout if exc.timed_out or remaining(deadline) <= 0 else StoreError
            raise kind(str(exc)) from exc

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by every write of this process's store: SQLite admits one writer at a time."""
        return self._serialised(None)

    # --- reading ----------------------------------------------------------------------------

    def read(self) -> Connection:
        """A read-only connection (its transaction ends with the ``with`` block)."""
        return self.engine.connect()


def state_from_row(row: Row) -> StreamState:
    """A stored stream row (``_writers.STREAM_COLUMNS``) as the fold's state."""
    sid, scope, scope_id, account, key, operator, urls, state, *rest = row
    return StreamState(
        sid,
        SCOPE_OF[scope] if scope else None,
        scope_id,
        account,
        key,
        operator,
        urls,
        STATE_OF[state],
        *rest,
    )


def state_to_stream(state: StreamState) -> Stream:
    """The public view of a folded stream."""
    assert state.scope is not None, "a stream takes its scope from its first applied event"
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
        stop_source=state.stop_source,
    )


def transition_from_row(row: Row) -> Transition:
    """An audit row (``_writers.TRANSITION_COLUMNS``) as a Transition."""
    tid, sid, from_state, to_state, name, kind, event_ts, source, late, recorded_at, did = row
    return Transition(
        id=tid,
        stream_id=sid,
        from_state=STATE_OF[from_state],
        to_state=STATE_OF[to_state],
        name=TransitionName(name),
        kind=kind,
        event_ts=event_ts,
        source=Source(source),
        late=bool(late),
        recorded_at=recorded_at,
        delivery_id=did,
    )


def event_from_delivery(
    row: Row, scope: Scope | None = None, scope_id: str | None = None
) -> StreamEvent:
    """A stored event (``_writers.EVENT_COLUMNS``), from the delivery that brought it.

    A webhook's body is parsed again; an app's or the system's event is rebuilt, with the
    stream's ``scope`` and ``scope_id`` (it carries none of its own).
    """
    _, stream_id, source, event, kind, event_ts, raw = row
    if source == Source.WEBHOOK:
        parsed = parse_delivery(raw)
        assert isinstance(parsed, StreamEvent), "a stored webhook event was parsed once already"
        return parsed
    return _known_event(
        event, EventKind(kind), stream_id, event_ts, Source(source), scope, scope_id
    )


def _known_event(
    event: str,
    kind: EventKind,
    stream_id: str,
    event_ts: int,
    source: Source,
    scope: Scope | None,
    scope_id: str | None,
) -> StreamEvent:
    return StreamEvent(
        event=event,
        scope=scope,
        kind=kind,
        stream_id=stream_id,
        scope_id=scope_id,
        event_ts=event_ts,
        source=source,
        payload={"rtms_stream_id": stream_id},
    )


class _Batch:
    """One transaction's worth of deliveries: read what they touch, decide in memory, write."""

    def __init__(self, tx: WriteTx, now: int, full: bool) -> None:
        self.tx = tx
        self.now = now
        # Without full results (bulk loads without callbacks) no Stream or Transition is built.
        self.full = full
        self.live: dict[str, _Live] = {}
        # identity -> the stored event's delivery id, or its first delivery once read (or of
        # this batch)
        self.known: dict[tuple[str, str, int], int | _First] = {}
        self.writes = Writes(now)
        self.delivery_ids: Iterator[int] = iter(())
        self.transition_ids: Iterator[int] = iter(())
        # One per item; None for an expiry that no longer applies (it writes nothing).
        self.pending: list[_Pending | None] = []

    def run(self, items: Sequence[Incoming]) -> list[IngestResult | None]:
        self._load(items)
        for item in items:
            self.pending.append(self._decide(item))
        self._write_streams()
        self.tx.write(self.writes)
        return [self._result(p) if p is not None else None for p in self.pending]

    # --- reading what the batch touches -----------------------------------------------------

    def _load(self, items: Sequence[Incoming]) -> None:
        ids: set[str] = set()
        identities: set[Row] = set()
        for item in items:
            if isinstance(item.parsed, StreamEvent | KnownStreamEvent):
                parsed = item.parsed
                ids.add(parsed.stream_id)
                identities.add((parsed.stream_id, parsed.kind.value, parsed.event_ts))
        loaded = self.tx.load(
            sorted(ids), sorted(identities), len(items), len(identities), self.now
        )
        self.delivery_ids, self.transition_ids = loaded.delivery_ids, loaded.transition_ids
        for row in loaded.streams:
            self.live[row[0]] = _Live(state_from_row(row), row)
        for sid in ids - self.live.keys():
            self.live[sid] = _Live(StreamState(sid), stored_events=[])
        for sid, kind, event_ts, delivery_id in loaded.known:
            self.known[sid, kind, event_ts] = delivery_id

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
            parsed = _known_event(
                item.event or parsed.kind.value,
                parsed.kind,
                parsed.stream_id,
                parsed.event_ts,
                item.source,
                live.state.scope,
                live.state.scope_id,
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
            if isinstance(stored, int):
                # Only a second delivery of a stored event reads the first one's body again.
                row = self.tx.event(stored)
                stored = self.known[identity] = _First(stored, bytes(row[-1]), None, row)
            if item.raw == stored.raw:
                # Zoom's retries repeat the body byte for byte: the copy references the first.
                if stored.row is not None:
                    self.writes.referenced.add(ev.stream_id)
                return self._delivery(
                    item,
                    Outcome.DUPLICATE,
                    about=ev,
                    detail="this event is already stored",
                    same_as=stored.delivery_id,
                )
            if stored.payload is None:
                assert stored.row is not None
                stored.payload = event_from_delivery(
                    stored.row, before.scope, before.scope_id
                ).payload
            # "Same payload": equal as parsed JSON whatever the key order or spacing (a NaN
            # equals a NaN, as its bytes do).
            if same_json(stored.payload, ev.payload):
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
        live.dirty = True
        if ev.position > (before.fold_ts, before.fold_rank):
            after = before.copy()
            name = step(after, ev)
        else:
            if live.stored_events is None:
                live.stored_events = [
                    event_from_delivery(row, before.scope, before.scope_id)
                    for row in self.tx.events(ev.stream_id)
                ]
            after, steps = fold(ev.stream_id, [*live.stored_events, *live.new_events, ev])
            name = next(n for e, n in steps if e is ev)
        live.new_events.append(ev)
        live.state = after
        if name is None:
            pending = self._delivery(
                item,
                Outcome.IGNORED,
                about=ev,
                detail=f"a {ev.kind.value} event changes nothing in state {after.state.value}",
            )
        else:
            pending = self._delivery(item, Outcome.APPLIED, about=ev)
        self.known[identity] = _First(pending.delivery_id, item.raw, ev.payload)
        if name is None:
            return pending
        pending.state = after
        pending.transition = (
            next(self.transition_ids),
            ev.stream_id,
            before.state.value,
            after.state.value,
            name.value,
            ev.kind.value,
            ev.event_ts,
            ev.source.value,
            before.last_event_at is not None and ev.event_ts < before.last_event_at,
            self.now,
            pending.delivery_id,
        )
        self.writes.transitions.append(pending.transition)
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
        same_as: int | None = None,
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
        delivery_id = next(self.delivery_ids)
        self.writes.deliveries.append(
            (
                delivery_id,
                self.now,
                item.source.value,
                event,
                event_ts,
                stream_id,
                kind,
                outcome.value,
                json.dumps([e.as_dict() for e in errors]) if errors else None,
                detail,
                # A duplicate that references the first delivery keeps no copy of the bytes.
                item.raw if same_as is None else b"",
                item.signed_at,
                item.secret_label,
                same_as,
            )
        )
        return _Pending(outcome, event, stream_id, errors, detail, delivery_id)

    def _alert(self, alert: ConcurrencyAlert) -> None:
        payload = _canonical(alert.payload)
        fingerprint = hashlib.sha256(
            f"{alert.event}\x00{alert.event_ts}\x00{payload}".encode()
        ).hexdigest()
        self.writes.alerts.append(
            (
                alert.event,
                alert.event_ts,
                alert.concurrency_number,
                alert.concurrency_limit,
                alert.percentage,
                alert.operator_id,
                alert.id_field,
                alert.id_value,
                alert.account_id,
                payload,
                fingerprint,
                self.now,
            )
        )

    # --- writing ----------------------------------------------------------------------------

    def _write_streams(self) -> None:
        for live in self.live.values():
            if not live.stored:
                self.writes.new_streams.append((*state_row(live.state), self.now, self.now))
            elif live.dirty:
                self.writes.changed_streams.append((live.stored, state_row(live.state)))

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
            transition=(
                transition_from_row(pending.transition) if full and pending.transition else None
            ),
        )
