"""Durable subscriptions: named consumers get every transition, from any process, at least once.

A consumer is a row in the database: its cursor (a feed position), the lease of the process that
delivers for it now, and the attempts of the transition it keeps failing on. The delivery core,
:class:`Consumer`, does no waiting and calls no callback: :meth:`Consumer.next` takes (or renews)
the lease and says what is due, :meth:`Consumer.succeeded` and :meth:`Consumer.failed` record what
became of it. :class:`SubscriptionRunner` drives consumers with plain callbacks and waits between
rounds (``LISTEN`` on PostgreSQL, a poll on SQLite); an asynchronous driver can use the same core.

The cursor moves only after the callback returned, so a process that dies mid-callback leaves the
transition to be delivered again by whoever holds the lease next: at least once, never skipped.
A callback that keeps raising is retried with exponential back-off, and after ``max_attempts``
the transition is parked (set aside for that consumer) so that the ones after it flow.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite

from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.defaults import (
    DEFAULT_FORWARD_TIMEOUT,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETRY_DELAY,
)
from rtms_lifecycle.exceptions import ConfigurationError
from rtms_lifecycle.records import Stream, Transition
from rtms_lifecycle.store import queries as _queries
from rtms_lifecycle.store.tables import subscription_parked as parked_table
from rtms_lifecycle.store.tables import subscriptions as subscriptions_table
from rtms_lifecycle.store.tables import transitions as transitions_table

__all__ = [
    "DEFAULT_FORWARD_TIMEOUT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_RETRY_DELAY",
    "NOTIFY_CHANNEL",
    "Consumer",
    "Delivery",
    "FeedWaker",
    "SubscriptionRunner",
    "SubscriptionStatus",
    "list_subscriptions",
    "requeue_parked",
    "transition_message",
]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY: Final = 300.0
#: The channel the PostgreSQL feed notifies on each commit that appended transitions.
NOTIFY_CHANNEL: Final = "rtms_lifecycle_feed"
MAX_CONSUMER_LENGTH: Final = 200
_CONSUMER_NAME: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_CONSUMER_LENGTH - 1}}}")
_PAGE: Final = 100
# A round delivers at most this many per consumer, so that one busy consumer starves no other.
_ROUND: Final = 100
_ERROR_LENGTH: Final = 2000
_START: Final = (-1, -1)
# Longest wait between looks at a database that does not answer.
_MAX_OUTAGE_PAUSE: Final = 30.0

Wants = Callable[[Transition, Stream], bool]
Position = tuple[int, int]


def _cursor_text(position: Position) -> str:
    return f"{position[0]}:{position[1]}"


def _error_text(error: BaseException | str) -> str:
    text_ = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text_[:_ERROR_LENGTH]


def check_consumer_name(consumer: str) -> str:
    """The consumer's name, or a ValueError saying what is wrong with it."""
    # A name ends up in webhook ids, logs and command lines: keep it plain.
    if not isinstance(consumer, str) or not _CONSUMER_NAME.fullmatch(consumer):
        raise ValueError(
            f"consumer {consumer!r}: a name is 1 to {MAX_CONSUMER_LENGTH} letters, digits, "
            "'.', '_', ':' or '-', starting with a letter or digit"
        )
    return consumer


def transition_message(transition: Transition, stream: Stream) -> dict[str, Any]:
    """A transition as ``follow`` prints it and ``forward`` posts it: the feed's keys, plus the
    stream's ``state``, ``scope`` and ``stop_reason_name`` (as the stream is now)."""
    return {
        **transition.as_dict(),
        "state": stream.state.value,
        "scope": stream.scope.value,
        "stop_reason_name": stream.stop_reason_name,
    }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One transition due for one consumer: hand it to the callback, then report the outcome."""

    consumer: str
    transition: Transition
    stream: Stream
    #: 1 for the first try; counts on across retries (and restarts).
    attempt: int
    #: Its feed position; the consumer's cursor moves here when it succeeds.
    position: Position
    #: A parked transition that ``retry`` re-queued, rather than the head of the feed.
    requeued: bool = False


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    """Where one consumer is: for ``rtms-lifecycle subscriptions``."""

    consumer: str
    cursor: str
    #: Transitions in the feed after the cursor (whether or not the consumer's filters want them).
    lag: int
    #: Transitions set aside after ``max_attempts`` failures (re-queued ones included).
    parked: int
    #: Of those, how many ``retry`` re-queued and still wait for delivery.
    requeued: int
    delivered: int
    #: Failed attempts at the transition after the cursor, and when the next one is due.
    attempts: int
    retry_at: int | None
    last_error: str | None
    last_error_at: int | None
    #: The process delivering for it now (host:pid:id), while its lease lasts.
    holder: str | None
    lease_until: int | None
    updated_at: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


def _feed_end(conn: Connection) -> Position:
    # The last position the feed shows now: what a consumer that starts at the end has seen.
    t = transitions_table
    query = select(t.c.tx_id, t.c.id).order_by(*(c.desc() for c in _queries.feed_order(conn)))
    query = query.limit(1)
    if conn.dialect.name == "postgresql":
        query = query.where(t.c.tx_id < text(_queries.FEED_HORIZON))
    row = conn.execute(query).first()
    return (row[0], row[1]) if row else _START


def ensure_consumer(engine: Engine, consumer: str, *, from_start: bool) -> None:
    """Create the consumer's row unless it exists: at the start or at the end of the feed."""
    check_consumer_name(consumer)
    s = subscriptions_table.c
    # Reads first, then a one-statement write: on SQLite a transaction that read before writing
    # fails at once, rather than waiting, if a receiver committed in between.
    with engine.connect() as conn:
        if conn.execute(select(s.consumer).where(s.consumer == consumer)).first():
            return
        tx, tid = _START if from_start else _feed_end(conn)
    now = now_ms()
    with engine.begin() as conn:
        _insert_ignore(
            conn,
            subscriptions_table,
            {
                "consumer": consumer,
                "cursor_tx": tx,
                "cursor_id": tid,
                "attempts": 0,
                "delivered": 0,
                "created_at": now,
                "updated_at": now,
            },
        )


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Consumer:
    """One named consumer's delivery core, for one process: no waiting, no callbacks.

    Call :meth:`next` for what is due; call the consumer's callback with it; then call
    :meth:`succeeded` or :meth:`failed`. Not thread-safe: one driver per instance.
    """

    def __init__(
        self,
        engine: Engine,
        consumer: str,
        *,
        wants: Wants | None = None,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
        owner: str | None = None,
        create: bool = True,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts: at least 1")
        # Written "not >=": nan, which every comparison lets through, is refused too.
        if not retry_delay >= 0:
            raise ValueError("retry_delay: zero or more seconds")
        if not lease > 0:
            raise ValueError("lease: more than zero seconds")
        self.name = check_consumer_name(consumer)
        self.engine = engine
        self.wants = wants
        self.from_start = from_start
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.lease_ms = int(lease * 1000)
        self.owner = owner or _owner()
        self._held_until = 0
        self._position: Position = _START
        self._saved: Position = _START
        self._attempts = 0
        #: When the failing head may be tried again (epoch ms), or None.
        self.retry_at: int | None = None
        self._buffer: deque[tuple[Position, Transition]] = deque()
        if create:
            self.create()

    def create(self) -> None:
        """Store the consumer's row unless it exists (``create=False`` left it to this call):
        a new one starts at the end of the feed as it is now, or at its start."""
        ensure_consumer(self.engine, self.name, from_start=self.from_start)

    # --- the lease --------------------------------------------------------------------------

    @property
    def holds_lease(self) -> bool:
        """Whether this process delivers for the consumer now."""
        return now_ms() < self._held_until

    def _hold(self, now: int) -> bool:
        fresh = now >= self._held_until
        if not fresh and self._held_until - now > self.lease_ms // 2:
            return True
        s = subscriptions_table.c
        with self.engine.begin() as conn:
            taken = conn.execute(
                sql_update(subscriptions_table)
                .where(
                    s.consumer == self.name,
                    or_(s.lease_owner == self.owner, s.lease_owner.is_(None), s.lease_until < now),
                )
                .values(lease_owner=self.owner, lease_until=now + self.lease_ms, updated_at=now)
            ).rowcount
            if not taken:
                self._lost()
                return False
            if fresh:
                # Another process may have delivered meanwhile: start from what is stored.
                row = conn.execute(
                    select(s.cursor_tx, s.cursor_id, s.attempts, s.retry_at).where(
                        s.consumer == self.name
                    )
                ).one()
                self._position = self._saved = (row[0], row[1])
                self._attempts, self.retry_at = row[2], row[3]
                self._buffer.clear()
        self._held_until = now + self.lease_ms
        return True

    def _lost(self) -> None:
        self._held_until = 0
        self._buffer.clear()

    def release(self) -> None:
        """Give up the lease now, so that another process takes over without waiting for it."""
        s = subscriptions_table.c
        self._save_skipped()
        with self.engine.begin() as conn:
            conn.execute(
                sql_update(subscriptions_table)
                .where(s.consumer == self.name, s.lease_owner == self.owner)
                .values(lease_owner=None, lease_until=None)
            )
        self._lost()

    def _where_held(self) -> Any:
        s = subscriptions_table.c
        return and_(s.consumer == self.name, s.lease_owner == self.owner)

    # --- what is due ------------------------------------------------------------------------

    def next(self) -> Delivery | None:
        """The transition to deliver now, or None: nothing due, or another process holds it."""
        now = now_ms()
        if not self._hold(now):
            return None
        requeued = self._requeued(now)
        if requeued is not None:
            return requeued
        if self.retry_at is not None and self.retry_at > now:
            return None
        while True:
            if not self._buffer:
                with self.engine.connect() as conn:
                    self._buffer.extend(_queries.feed_page(conn, self._position, _PAGE))
                if not self._buffer:
                    self._save_skipped()
                    return None
            position, transition = self._buffer[0]
            stream = self._stream(transition)
            if stream is not None and (self.wants is None or self.wants(transition, stream)):
                return Delivery(self.name, transition, stream, self._attempts + 1, position)
            # Not for this consumer: the cursor passes it, saved with the next write.
            self._buffer.popleft()
            self._position = position

    def _stream(self, transition: Transition) -> Stream | None:
        with self.engine.connect() as conn:
            stream = _queries.stream(conn, transition.stream_id)
        if stream is None:
            log.warning(
                "subscription %s: stream %s of transition %d is no longer stored; passing it",
                self.name,
                transition.stream_id,
                transition.id,
            )
        return stream

    def _requeued(self, now: int) -> Delivery | None:
        p = parked_table.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(p.transition_id, p.attempts)
                .where(
                    p.consumer == self.name,
                    p.queued.is_(True),
                    or_(p.retry_at.is_(None), p.retry_at <= now),
                )
                .order_by(p.transition_id)
                .limit(1)
            ).first()
            if row is None:
                return None
            found = _queries.transition(conn, row[0])
        if found is None:
            return None
        position, transition = found
        stream = self._stream(transition)
        if stream is None:
            with self.engine.begin() as conn:
                conn.execute(delete(parked_table).where(*self._parked(transition.id)))
            return None
        return Delivery(self.name, transition, stream, row[1] + 1, position, requeued=True)

    def _parked(self, transition_id: int) -> tuple[Any, ...]:
        p = parked_table.c
        return (p.consumer == self.name, p.transition_id == transition_id)

    def _save_skipped(self) -> None:
        if self._position == self._saved or not self.holds_lease:
            return
        now = now_ms()
        with self.engine.begin() as conn:
            done = conn.execute(
                sql_update(subscriptions_table)
                .where(self._where_held())
                .values(cursor_tx=self._position[0], cursor_id=self._position[1], updated_at=now)
            ).rowcount
        if done:
            self._saved = self._position
        else:
            self._lost()

    # --- what became of it ------------------------------------------------------------------

    def succeeded(self, delivery: Delivery) -> None:
        """The callback returned: move the cursor past the transition (or unpark it)."""
        now = now_ms()
        with self.engine.begin() as conn:
            if delivery.requeued:
                conn.execute(delete(parked_table).where(*self._parked(delivery.transition.id)))
                conn.execute(
                    sql_update(subscriptions_table)
                    .where(subscriptions_table.c.consumer == self.name)
                    .values(delivered=subscriptions_table.c.delivered + 1, updated_at=now)
                )
                return
            self._advance(conn, delivery.position, now, delivered=1)

    def failed(self, delivery: Delivery, error: BaseException | str) -> None:
        """The callback raised: retry later with back-off, or park it after ``max_attempts``."""
        now = now_ms()
        message = _error_text(error)
        give_up = delivery.attempt >= self.max_attempts
        delay = int(min(self.retry_delay * 2 ** (delivery.attempt - 1), MAX_RETRY_DELAY) * 1000)
        log.warning(
            "subscription %s: callback failed on transition %d (attempt %d of %d%s): %s",
            self.name,
            delivery.transition.id,
            delivery.attempt,
            self.max_attempts,
            ", parking it" if give_up else "",
            message,
        )
        s = subscriptions_table.c
        with self.engine.begin() as conn:
            conn.execute(
                sql_update(subscriptions_table)
                .where(s.consumer == self.name)
                .values(last_error=message, last_error_at=now, updated_at=now)
            )
            if delivery.requeued:
                conn.execute(
                    sql_update(parked_table)
                    .where(*self._parked(delivery.transition.id))
                    .values(
                        attempts=delivery.attempt,
                        error=message,
                        queued=not give_up,
                        retry_at=None if give_up else now + delay,
                    )
                )
                return
            if give_up:
                _insert_ignore(
                    conn,
                    parked_table,
                    {
                        "consumer": self.name,
                        "transition_id": delivery.transition.id,
                        "attempts": delivery.attempt,
                        "error": message,
                        "parked_at": now,
                        "queued": False,
                    },
                )
                self._advance(conn, delivery.position, now, delivered=0)
                return
            done = conn.execute(
                sql_update(subscriptions_table)
                .where(self._where_held())
                .values(attempts=delivery.attempt, retry_at=now + delay)
            ).rowcount
            if done:
                self._attempts, self.retry_at = delivery.attempt, now + delay
            else:
                self._lost()

    def _advance(self, conn: Connection, position: Position, now: int, *, delivered: int) -> None:
        s = subscriptions_table.c
        done = conn.execute(
            sql_update(subscriptions_table)
            .where(self._where_held())
            .values(
                cursor_tx=position[0],
                cursor_id=position[1],
                attempts=0,
                retry_at=None,
                delivered=s.delivered + delivered,
                updated_at=now,
            )
        ).rowcount
        if not done:
            # Another process took the consumer over; it delivers this transition again.
            log.warning("subscription %s: lease lost to another process", self.name)
            self._lost()
            return
        while self._buffer and self._buffer[0][0] <= position:
            self._buffer.popleft()
        self._position = self._saved = position
        self._attempts, self.retry_at = 0, None


# --- running consumers with plain callbacks ---------------------------------------------------


class FeedWaker:
    """Sleeps until the feed may have news: a PostgreSQL notification, or the poll interval.

    Blocking; an asynchronous driver runs :meth:`wait` in a worker thread. One per driver.
    """

    def __init__(self, engine: Engine) -> None:
        self._conn: Any = None
        if engine.dialect.name == "postgresql":
            raw = engine.raw_connection()
            self._conn = raw.driver_connection
            raw.detach()  # its own session for good: LISTEN lasts as long as the connection
            try:
                self._conn.autocommit = True
                self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            except Exception:
                self.close()
                raise

    @property
    def listens(self) -> bool:
        """Whether a notification can end :meth:`wait` (PostgreSQL); else it only sleeps."""
        return self._conn is not None

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Return after ``seconds``, on a notification (PostgreSQL), or soon after ``stop``."""
        if self._conn is None:
            stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        # Short slices: a stop request is seen within a quarter of a second.
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._notified(min(left, 0.25)):
                # Take every notification already queued: one look at the feed answers them all.
                while self._notified(0):
                    pass
                return

    def _notified(self, timeout: float) -> bool:
        # The generator holds the connection's lock until closed: close it before the next call.
        notifies = self._conn.notifies(timeout=timeout, stop_after=1)
        try:
            return next(notifies, None) is not None
        finally:
            notifies.close()

    def close(self) -> None:
        """Close the listening connection."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:  # a connection the server already dropped
                log.debug("closing the notification connection: %s", exc)


Callback = Callable[[Transition, Stream], object]


class SubscriptionRunner:
    """Delivers to consumers with plain callbacks until stopped or idle."""

    def __init__(
        self,
        engine: Engine,
        consumers: Sequence[tuple[Consumer, Callback]],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not consumers:
            raise ConfigurationError("no subscriptions: call subscribe(...) first")
        if poll_interval <= 0:
            raise ValueError("poll_interval: more than zero seconds")
        self.engine = engine
        self.consumers = consumers
        self.poll_interval = poll_interval

    def step(self) -> int:
        """One round: deliver what is due to each consumer. How many callbacks ran."""
        ran = 0
        for consumer, callback in self.consumers:
            for _ in range(_ROUND):
                delivery = consumer.next()
                if delivery is None:
                    break
                ran += 1
                try:
                    outcome = callback(delivery.transition, delivery.stream)
                    if inspect.iscoroutine(outcome):
                        outcome.close()  # else: "never awaited", far from the cause
                        raise _coroutine_returned(callback)
                except Exception as exc:
                    consumer.failed(delivery, exc)
                else:
                    consumer.succeeded(delivery)
        return ran

    def sleep_for(self) -> float:
        """Seconds to wait for news: the poll interval, or less until a retry is due."""
        now = now_ms()
        due = [c.retry_at for c, _ in self.consumers if c.holds_lease and c.retry_at is not None]
        soonest = min(due, default=None)
        if soonest is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, (soonest - now) / 1000))

    def run(self, stop: threading.Event | None = None, idle_exit: float | None = None) -> None:
        """Deliver until ``stop`` is set, or until ``idle_exit`` seconds passed with nothing to do.

        On the way out the leases are released, so that another process takes over at once.
        """
        stop = stop or threading.Event()
        waker: FeedWaker | None = None
        idle_since = time.monotonic()
        outage = 0
        try:
            while not stop.is_set():
                try:
                    waker = waker or FeedWaker(self.engine)
                    ran = self.step()
                except Exception as exc:
                    outage += 1
                    if waker is not None:
                        waker.close()
                        waker = None
                    stop.wait(self.outage_pause(outage, exc))
                    continue
                outage = 0
                if ran:
                    idle_since = time.monotonic()
                    continue
                if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                    return
                try:
                    waker.wait(self.sleep_for(), stop)
                except Exception as exc:
                    log.warning("subscriptions: lost the notification connection: %s", exc)
                    waker.close()
                    waker = None
        finally:
            if waker is not None:
                waker.close()
            self.release()

    def outage_pause(self, outage: int, error: Exception) -> float:
        """Seconds to wait after the ``outage``-th round in a row that failed with ``error``."""
        # Callbacks' errors are handled in a round: this is the database or its driver. A worker
        # outlives an outage: it waits, longer each time, then looks again. What was being
        # delivered is delivered again (its cursor had not moved).
        pause: float = min(self.poll_interval * 2**outage, _MAX_OUTAGE_PAUSE)
        log.warning("subscriptions: database unavailable, retrying in %.1f s: %s", pause, error)
        return pause

    def release(self) -> None:
        """Give up every consumer's lease (on the way out), so another process takes over."""
        for consumer, _ in self.consumers:
            try:
                consumer.release()
            except Exception:
                log.exception("subscription %s: could not release its lease", consumer.name)


def _coroutine_returned(callback: Callback) -> TypeError:
    # A coroutine nobody awaits did nothing: a failure, retried then parked, never a delivery.
    return TypeError(f"{callback!r} returned a coroutine: subscribe it on an AsyncTracker")


# --- looking at consumers ---------------------------------------------------------------------


def list_subscriptions(conn: Connection) -> list[SubscriptionStatus]:
    """Every consumer, by name, with its lag and parked transitions."""
    s, p = subscriptions_table.c, parked_table.c
    parked = (
        select(
            p.consumer,
            func.count().label("parked"),
            func.count().filter(p.queued.is_(True)).label("requeued"),
        )
        .group_by(p.consumer)
        .subquery()
    )
    rows = conn.execute(
        select(subscriptions_table, parked.c.parked, parked.c.requeued)
        .outerjoin(parked, parked.c.consumer == s.consumer)
        .order_by(s.consumer)
    ).all()
    found = []
    for row in rows:
        lag = conn.execute(
            select(func.count()).where(_queries.feed_after(conn, (row.cursor_tx, row.cursor_id)))
        ).scalar_one()
        leased = row.lease_until is not None and row.lease_until > now_ms()
        found.append(
            SubscriptionStatus(
                consumer=row.consumer,
                cursor=_cursor_text((row.cursor_tx, row.cursor_id)),
                lag=lag,
                parked=row.parked or 0,
                requeued=row.requeued or 0,
                delivered=row.delivered,
                attempts=row.attempts,
                retry_at=row.retry_at,
                last_error=row.last_error,
                last_error_at=row.last_error_at,
                holder=row.lease_owner if leased else None,
                lease_until=row.lease_until if leased else None,
                updated_at=row.updated_at,
            )
        )
    return found


def requeue_parked(conn: Connection, consumer: str) -> int | None:
    """Queue the consumer's parked transitions for delivery again; None for no such consumer."""
    s, p = subscriptions_table.c, parked_table.c
    if conn.execute(select(s.consumer).where(s.consumer == consumer)).first() is None:
        return None
    return conn.execute(
        sql_update(parked_table)
        .where(p.consumer == consumer, p.queued.is_(False))
        .values(queued=True, attempts=0, retry_at=None)
    ).rowcount
