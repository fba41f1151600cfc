"""The embedding API: one :class:`Tracker` per database, shared by every thread of a process."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, overload

from sqlalchemy import Engine

from . import _queries, retention
from .events import EventKind, Scope, Source, check_app_event, parse_delivery
from .exceptions import ConfigurationError, DeliveryRejected, FieldError
from .machine import State, TransitionName
from .records import (
    ConcurrencyAlertRecord,
    DeliveryRecord,
    IngestResult,
    InterruptionStats,
    Outcome,
    StopReasonStat,
    Stream,
    Transition,
)
from .retention import PruneRecord, PruneResult
from .store import Incoming, KnownStreamEvent, Store, now_ms
from .webhook import DEFAULT_REPLAY_WINDOW, WebhookVerifier

__all__ = ["Body", "IngestSummary", "TransitionCallback", "Tracker"]

log = logging.getLogger(__name__)

Body = bytes | bytearray | memoryview | str | Mapping[str, Any]
TransitionCallback = Callable[[Transition, Stream], object]
Timestamp = int | datetime
DEFAULT_BATCH_SIZE: Final = 1000


@dataclass(frozen=True, slots=True)
class _Subscription:
    callback: TransitionCallback
    to: frozenset[State] | None
    name: frozenset[TransitionName] | None
    scope: frozenset[Scope] | None

    def wants(self, transition: Transition, stream: Stream) -> bool:
        return (
            (self.to is None or transition.to_state in self.to)
            and (self.name is None or transition.name in self.name)
            and (self.scope is None or stream.scope in self.scope)
        )


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """How many deliveries of a bulk load ended in each outcome."""

    counts: Mapping[Outcome, int]

    def __getitem__(self, outcome: Outcome | str) -> int:
        return self.counts.get(Outcome(outcome), 0)

    @property
    def total(self) -> int:
        """How many deliveries were read."""
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """The spec's JSON shape: every outcome, zero included."""
        return {outcome.value: self[outcome] for outcome in Outcome}


def _ms(value: Timestamp | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)


def _set(value: Any, kind: Callable[[Any], Any]) -> frozenset[Any] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return frozenset(kind(v) for v in values)


def to_incoming(body: Body, source: Source = Source.WEBHOOK) -> Incoming:
    """Parse a body into what the store records; a rejected body keeps its bytes and errors."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode("utf-8", errors="surrogateescape")
    elif isinstance(body, bytearray | memoryview):
        raw = bytes(body)
    else:
        raw = json.dumps(body, separators=(",", ":"), default=str).encode()
    try:
        parsed = parse_delivery(body)
    except DeliveryRejected as exc:
        return Incoming(
            raw, None, source, errors=exc.errors, event=exc.event, stream_id=exc.stream_id
        )
    return Incoming(raw, parsed, source, event=parsed.event)


class Tracker:
    """Records RTMS deliveries into a database and answers questions about streams.

    ``db`` is an SQLAlchemy URL (``sqlite:///file.db``, ``postgresql://...``) or an ``Engine``;
    by default ``sqlite:///rtms_lifecycle.db``. A new, empty database gets the schema; one at an
    older migration is refused (:class:`SchemaOutdatedError`) until ``rtms-lifecycle db upgrade``.
    """

    def __init__(
        self,
        db: str | Engine | None = None,
        *,
        migrate: bool = True,
        webhook_secrets: Sequence[str] | None = None,
        replay_window: float = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        self._verifier = (
            WebhookVerifier(webhook_secrets, replay_window) if webhook_secrets is not None else None
        )
        self._store = Store(db, migrate=migrate)
        self._subscriptions: tuple[_Subscription, ...] = ()
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine underneath."""
        return self._store.engine

    def close(self) -> None:
        """Release the database connections."""
        self._store.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------

    def ingest(self, body: Body, *, headers: Mapping[str, str] | None = None) -> IngestResult:
        """Record one delivery in its own transaction; a rejected body is stored, not raised.

        With ``headers`` (the request's), the delivery is first verified with the tracker's
        ``webhook_secrets`` (Zoom's signature over the raw bytes, and the replay window): a
        refused request raises :class:`WebhookRefused` and changes nothing in the store.
        """
        if headers is not None:
            if self._verifier is None:
                raise ConfigurationError(
                    "ingest(headers=...) verifies Zoom's signature: create the Tracker with "
                    "webhook_secrets=[...] (or verify yourself and leave headers out)"
                )
            if not isinstance(body, bytes | bytearray | memoryview | str):
                raise TypeError("a signature covers raw bytes: pass the body as received")
            self._verifier.verify(headers, body.encode() if isinstance(body, str) else bytes(body))
        (result,) = self._record([to_incoming(body)])
        assert result is not None
        return result

    def ingest_many(
        self, bodies: Iterable[Body], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> IngestSummary:
        """Record many deliveries, ``batch_size`` per transaction, streaming the input."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        counts: Counter[Outcome] = Counter()
        batch: list[Incoming] = []
        for body in bodies:
            batch.append(to_incoming(body))
            if len(batch) >= batch_size:
                counts.update(r.outcome for r in self._record(batch, full=False) if r)
                batch = []
        if batch:
            counts.update(r.outcome for r in self._record(batch, full=False) if r)
        return IngestSummary(dict(counts))

    def report_resumed(self, stream_id: str, at_ms: int) -> IngestResult:
        """Record the app's word that an interrupted stream's media flows again (``source=app``).

        Zoom sends no webhook for a recovery; only the app's media connector knows of it.
        """
        event = "app.rtms_resumed"
        try:
            sid, ts = check_app_event(stream_id, at_ms)
        except DeliveryRejected as exc:
            item = _synthetic(event, stream_id, at_ms, Source.APP, None, errors=exc.errors)
        else:
            item = _synthetic(
                event, sid, ts, Source.APP, KnownStreamEvent(sid, EventKind.RESUMED, ts)
            )
        (result,) = self._record([item])
        assert result is not None
        return result

    def expire(self, stale_after: timedelta | float) -> list[Stream]:
        """Stop every live stream with no event for ``stale_after`` (spec section 7).

        Each gets a ``source=system`` ``stopped`` event at now with no stop reason. A real
        ``stopped`` arriving later carries an older time, so the fold applies it instead.
        """
        seconds = (
            stale_after.total_seconds()
            if isinstance(stale_after, timedelta)
            else float(stale_after)
        )
        now = now_ms()
        cutoff = now - int(seconds * 1000)
        with self._store.read() as conn:
            stale = _queries.stale_streams(conn, cutoff)
        closed: list[Stream] = []
        for start in range(0, len(stale), DEFAULT_BATCH_SIZE):
            items = [
                _synthetic(
                    "system.rtms_expired",
                    stream_id,
                    now,
                    Source.SYSTEM,
                    KnownStreamEvent(stream_id, EventKind.STOPPED, now),
                    stale_before=cutoff,
                )
                for stream_id in stale[start : start + DEFAULT_BATCH_SIZE]
            ]
            closed.extend(
                r.stream
                for r in self._record(items)
                if r and r.outcome is Outcome.APPLIED and r.stream
            )
        return closed

    def prune(
        self, older_than: timedelta | float, *, dry_run: bool = False, vacuum: bool = False
    ) -> PruneResult:
        """Remove streams that stopped more than ``older_than`` ago (seconds or a timedelta,
        at least a day), with their deliveries and transitions, and older deliveries and
        concurrency alerts that belong to no stream. A stream not stopped is kept whole.

        ``dry_run`` counts instead. Each step is recorded (:meth:`prunes`); new rows reuse the
        freed space; ``vacuum`` then rewrites the database file (SQLite) or runs
        ``VACUUM ANALYZE`` (PostgreSQL). See docs/operations.md.
        """
        if not isinstance(older_than, timedelta):
            older_than = timedelta(seconds=older_than)
        return retention.prune(self._store, older_than, now_ms, dry_run=dry_run, vacuum=vacuum)

    def prunes(self, limit: int | None = None) -> list[PruneRecord]:
        """Recorded prunes, newest first: when, with which cutoff, and what each removed."""
        with self._store.read() as conn:
            return retention.list_prunes(conn, limit)

    def _record(self, items: Sequence[Incoming], *, full: bool = True) -> list[IngestResult | None]:
        subscriptions = self._subscriptions
        # Callbacks need each transition's stream; a bulk load without callbacks needs counts.
        results = self._store.record(items, full=full or bool(subscriptions))
        if subscriptions:
            for result in results:
                if result is not None and result.transition and result.stream:
                    self._notify(subscriptions, result.transition, result.stream)
        return results

    # --- callbacks --------------------------------------------------------------------------

    @overload
    def on_transition(
        self, callback: TransitionCallback, *, to: Any = None, name: Any = None, scope: Any = None
    ) -> TransitionCallback: ...

    @overload
    def on_transition(
        self, callback: None = None, *, to: Any = None, name: Any = None, scope: Any = None
    ) -> Callable[[TransitionCallback], TransitionCallback]: ...

    def on_transition(
        self,
        callback: TransitionCallback | None = None,
        *,
        to: State | str | Iterable[State | str] | None = None,
        name: TransitionName | str | Iterable[TransitionName | str] | None = None,
        scope: Scope | str | Iterable[Scope | str] | None = None,
    ) -> TransitionCallback | Callable[[TransitionCallback], TransitionCallback]:
        """Call ``callback(transition, stream)`` after commit, once per applied transition.

        Filters narrow it to target states, transition names or scopes. Never called for
        duplicates, conflicts or ignored events. A callback that raises is logged; it undoes
        and blocks nothing. Usable as a decorator, with or without arguments.
        """

        def register(fn: TransitionCallback) -> TransitionCallback:
            subscription = _Subscription(
                fn, _set(to, State), _set(name, TransitionName), _set(scope, Scope)
            )
            with self._lock:
                self._subscriptions = (*self._subscriptions, subscription)
            return fn

        return register(callback) if callback is not None else register

    @staticmethod
    def _notify(
        subscriptions: Sequence[_Subscription], transition: Transition, stream: Stream
    ) -> None:
        for subscription in subscriptions:
            if subscription.wants(transition, stream):
                try:
                    subscription.callback(transition, stream)
                except Exception:
                    log.exception(
                        "transition callback %r failed for %s (%s)",
                        subscription.callback,
                        transition.stream_id,
                        transition.name,
                    )

    # --- reading ----------------------------------------------------------------------------

    def stream(self, stream_id: str) -> Stream | None:
        """The stream with this ``rtms_stream_id``, or None."""
        with self._store.read() as conn:
            return _queries.stream(conn, stream_id)

    def active_streams(
        self, scope: Scope | str | None = None, scope_id: str | None = None
    ) -> list[Stream]:
        """Streams whose media flows now (started or resumed), read through a partial index."""
        with self._store.read() as conn:
            return _queries.active_streams(conn, Scope(scope) if scope else None, scope_id)

    def streams(
        self,
        state: State | str | Iterable[State | str] | None = None,
        *,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        limit: int | None = None,
    ) -> list[Stream]:
        """Stored streams, newest activity first; ``since``/``until`` keep streams alive then."""
        states = sorted(_set(state, State) or ())
        with self._store.read() as conn:
            return _queries.list_streams(
                conn,
                states or None,
                Scope(scope) if scope else None,
                scope_id,
                _ms(since),
                _ms(until),
                limit,
            )

    def history(self, stream_id: str) -> list[Transition]:
        """The stream's transitions in event-time order (how it went)."""
        with self._store.read() as conn:
            return _queries.history(conn, stream_id)

    def audit(self, stream_id: str) -> list[Transition]:
        """The stream's transitions in the order they were recorded (how we learnt it)."""
        with self._store.read() as conn:
            return _queries.audit(conn, stream_id)

    def transitions_since(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Transition], str]:
        """A durable feed: transitions after ``cursor`` and the cursor to pass next time.

        Commit order, not id order: a consumer never misses a transition and never sees one
        twice, even while several processes write. Start with ``cursor=None``.
        """
        position = _parse_cursor(cursor)
        with self._store.read() as conn:
            rows = _queries.transitions_since(conn, position, limit)
            if rows:
                position = _queries.feed_cursor_of(conn, rows[-1].id)
        return rows, f"{position[0]}:{position[1]}"

    def deliveries(
        self,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        *,
        stream_id: str | None = None,
        limit: int | None = 100,
    ) -> list[DeliveryRecord]:
        """Stored deliveries, newest first."""
        with self._store.read() as conn:
            return _queries.list_deliveries(conn, _set(outcome, Outcome), stream_id, limit)

    def stop_reason_stats(
        self, since: Timestamp | None = None, until: Timestamp | None = None, by_scope: bool = False
    ) -> list[StopReasonStat]:
        """Per stop reason (and scope): count, share and median duration of streams stopped
        in ``[since, until)``."""
        with self._store.read() as conn:
            return _queries.stop_reason_stats(conn, _ms(since), _ms(until), by_scope)

    def interruption_stats(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        scope: Scope | str | None = None,
    ) -> InterruptionStats:
        """Interruptions of streams that began in ``[since, until)`` and how they recovered."""
        with self._store.read() as conn:
            return _queries.interruption_stats(
                conn, _ms(since), _ms(until), Scope(scope) if scope else None
            )

    def concurrency_alerts(
        self, since: Timestamp | None = None, limit: int | None = None
    ) -> list[ConcurrencyAlertRecord]:
        """Account-level concurrency alerts, newest first."""
        with self._store.read() as conn:
            return _queries.alerts(conn, _ms(since), limit)

    def latest_alert(self) -> ConcurrencyAlertRecord | None:
        """The newest concurrency alert, or None."""
        found = self.concurrency_alerts(limit=1)
        return found[0] if found else None

    def ping(self) -> bool:
        """Whether the database answers."""
        try:
            with self._store.read() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True


def _synthetic(
    event: str,
    stream_id: str,
    event_ts: int,
    source: Source,
    parsed: KnownStreamEvent | None,
    *,
    errors: tuple[FieldError, ...] = (),
    stale_before: int | None = None,
) -> Incoming:
    # Stored like a webhook body, so that every event of a stream can be replayed from deliveries.
    body = {"event": event, "event_ts": event_ts, "payload": {"rtms_stream_id": stream_id}}
    raw = json.dumps(body, separators=(",", ":"), default=repr).encode()
    return Incoming(raw, parsed, source, errors, event=event, stale_before=stale_before)


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    if not cursor:
        return (-1, -1)
    try:
        tx_id, _, transition_id = cursor.partition(":")
        return (int(tx_id), int(transition_id))
    except ValueError:
        raise ValueError(f"not a feed cursor: {cursor!r}") from None
