"""The SQL of durable subscriptions: consumers' rows (cursor, lease, attempts), parked transitions,
and the PostgreSQL notifications that wake a runner.

Every write runs in :meth:`Store.transaction`, under the store's fault rules; every read in
:meth:`Store.read`. What to deliver when, and what a failure leads to, is decided by
:mod:`rtms_lifecycle.subscriptions`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, and_, delete, func, or_, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite

from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.exceptions import DatabaseUnavailable
from rtms_lifecycle.records import Stream, SubscriptionStatus, Transition
from rtms_lifecycle.store import queries as _queries
from rtms_lifecycle.store.core import Store
from rtms_lifecycle.store.errors import first_line, translated
from rtms_lifecycle.store.tables import subscription_parked as parked_table
from rtms_lifecycle.store.tables import subscriptions as subscriptions_table
from rtms_lifecycle.store.tables import transitions as transitions_table

__all__ = [
    "NOTIFY_CHANNEL",
    "START",
    "Cursor",
    "FeedWaker",
    "Position",
    "Requeued",
    "consumer_failed",
    "consumer_succeeded",
    "cursor_text",
    "drop_parked",
    "ensure_consumer",
    "feed_page",
    "list_subscriptions",
    "next_requeued",
    "release_lease",
    "requeue_parked",
    "save_cursor",
    "stream_of",
    "take_lease",
]

log = logging.getLogger("rtms_lifecycle.subscriptions")

#: The channel the PostgreSQL feed notifies on each commit that appended transitions.
NOTIFY_CHANNEL: Final = "rtms_lifecycle_feed"
Position = tuple[int, int]
#: Before the first transition of the feed.
START: Final[Position] = (-1, -1)


@dataclass(frozen=True, slots=True)
class Cursor:
    """A consumer's stored progress: its feed position and the failing head's attempts."""

    position: Position
    attempts: int
    retry_at: int | None


@dataclass(frozen=True, slots=True)
class Requeued:
    """A parked transition ``retry`` queued again, due now."""

    position: Position
    transition: Transition
    attempts: int


def cursor_text(position: Position) -> str:
    """A feed position as ``tx:id``, as the feed's cursors are written."""
    return f"{position[0]}:{position[1]}"


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
    return (row[0], row[1]) if row else START


def _held(consumer: str, owner: str) -> Any:
    s = subscriptions_table.c
    return and_(s.consumer == consumer, s.lease_owner == owner)


def _parked(consumer: str, transition_id: int) -> tuple[Any, ...]:
    p = parked_table.c
    return (p.consumer == consumer, p.transition_id == transition_id)


def ensure_consumer(
    store: Store, consumer: str, *, from_start: bool, deadline: float | None = None
) -> None:
    """Create the consumer's row unless it exists: at the start or at the end of the feed."""
    s = subscriptions_table.c
    # Reads first, then a one-statement write: on SQLite a transaction that read before writing
    # fails at once, rather than waiting, if a receiver committed in between.
    with store.read() as conn:
        if conn.execute(select(s.consumer).where(s.consumer == consumer)).first():
            return
        tx, tid = START if from_start else _feed_end(conn)
    now = now_ms()
    with store.transaction(deadline) as conn:
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


def take_lease(
    store: Store,
    consumer: str,
    owner: str,
    now: int,
    until: int,
    *,
    read: bool,
    deadline: float | None = None,
) -> tuple[bool, Cursor | None]:
    """Take or renew the consumer's lease until ``until``: whether it was taken, and (``read``)
    the stored cursor, which another process may have moved meanwhile."""
    s = subscriptions_table.c
    with store.transaction(deadline) as conn:
        taken = conn.execute(
            sql_update(subscriptions_table)
            .where(
                s.consumer == consumer,
                or_(s.lease_owner == owner, s.lease_owner.is_(None), s.lease_until < now),
            )
            .values(lease_owner=owner, lease_until=until, updated_at=now)
        ).rowcount
        if not taken or not read:
            return bool(taken), None
        row = conn.execute(
            select(s.cursor_tx, s.cursor_id, s.attempts, s.retry_at).where(s.consumer == consumer)
        ).one()
    return True, Cursor((row[0], row[1]), row[2], row[3])


def release_lease(store: Store, consumer: str, owner: str, deadline: float | None = None) -> None:
    """Give up the lease, if ``owner`` still holds it."""
    with store.transaction(deadline) as conn:
        conn.execute(
            sql_update(subscriptions_table)
            .where(_held(consumer, owner))
            .values(lease_owner=None, lease_until=None)
        )


def save_cursor(
    store: Store,
    consumer: str,
    owner: str,
    position: Position,
    now: int,
    deadline: float | None = None,
) -> bool:
    """Move the cursor past transitions the consumer does not want; False: the lease was lost."""
    with store.transaction(deadline) as conn:
        done = conn.execute(
            sql_update(subscriptions_table)
            .where(_held(consumer, owner))
            .values(cursor_tx=position[0], cursor_id=position[1], updated_at=now)
        ).rowcount
    return bool(done)


def feed_page(store: Store, position: Position, limit: int) -> list[tuple[Position, Transition]]:
    """The next transitions of the feed after ``position``, with their positions."""
    with store.read() as conn:
        return list(_queries.feed_page(conn, position, limit))


def stream_of(store: Store, stream_id: str) -> Stream | None:
    """The stream, as stored now."""
    with store.read() as conn:
        return _queries.stream(conn, stream_id)


def next_requeued(store: Store, consumer: str, now: int) -> Requeued | None:
    """The consumer's first re-queued parked transition that is due, or None."""
    p = parked_table.c
    with store.read() as conn:
        row = conn.execute(
            select(p.transition_id, p.attempts)
            .where(
                p.consumer == consumer,
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
    return Requeued(found[0], found[1], row[1])


def drop_parked(
    store: Store, consumer: str, transition_id: int, deadline: float | None = None
) -> None:
    """Forget a parked transition (its stream is no longer stored)."""
    with store.transaction(deadline) as conn:
        conn.execute(delete(parked_table).where(*_parked(consumer, transition_id)))


def _advance(
    conn: Connection, consumer: str, owner: str, position: Position, now: int, delivered: int
) -> bool:
    s = subscriptions_table.c
    done = conn.execute(
        sql_update(subscriptions_table)
        .where(_held(consumer, owner))
        .values(
            cursor_tx=position[0],
            cursor_id=position[1],
            attempts=0,
            retry_at=None,
            delivered=s.delivered + delivered,
            updated_at=now,
        )
    ).rowcount
    return bool(done)


def consumer_succeeded(
    store: Store,
    consumer: str,
    owner: str,
    transition_id: int,
    position: Position,
    *,
    requeued: bool,
    now: int,
    deadline: float | None = None,
) -> bool:
    """Record a delivery: unpark it, or move the cursor to ``position``. False: the lease was
    lost (the cursor did not move)."""
    with store.transaction(deadline) as conn:
        if requeued:
            conn.execute(delete(parked_table).where(*_parked(consumer, transition_id)))
            conn.execute(
                sql_update(subscriptions_table)
                .where(subscriptions_table.c.consumer == consumer)
                .values(delivered=subscriptions_table.c.delivered + 1, updated_at=now)
            )
            return True
        return _advance(conn, consumer, owner, position, now, 1)


def consumer_failed(
    store: Store,
    consumer: str,
    owner: str,
    transition_id: int,
    position: Position,
    *,
    attempt: int,
    error: str,
    requeued: bool,
    give_up: bool,
    retry_at: int,
    now: int,
    deadline: float | None = None,
) -> bool:
    """Record a failed delivery: the error, then a retry at ``retry_at``, or (``give_up``) the
    transition parked and the cursor past it. False: the lease was lost."""
    s = subscriptions_table.c
    with store.transaction(deadline) as conn:
        conn.execute(
            sql_update(subscriptions_table)
            .where(s.consumer == consumer)
            .values(last_error=error, last_error_at=now, updated_at=now)
        )
        if requeued:
            conn.execute(
                sql_update(parked_table)
                .where(*_parked(consumer, transition_id))
                .values(
                    attempts=attempt,
                    error=error,
                    queued=not give_up,
                    retry_at=None if give_up else retry_at,
                )
            )
            return True
        if give_up:
            _insert_ignore(
                conn,
                parked_table,
                {
                    "consumer": consumer,
                    "transition_id": transition_id,
                    "attempts": attempt,
                    "error": error,
                    "parked_at": now,
                    "queued": False,
                },
            )
            return _advance(conn, consumer, owner, position, now, 0)
        done = conn.execute(
            sql_update(subscriptions_table)
            .where(_held(consumer, owner))
            .values(attempts=attempt, retry_at=retry_at)
        ).rowcount
    return bool(done)


def list_subscriptions(store: Store) -> list[SubscriptionStatus]:
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
    with store.read() as conn:
        rows = conn.execute(
            select(subscriptions_table, parked.c.parked, parked.c.requeued)
            .outerjoin(parked, parked.c.consumer == s.consumer)
            .order_by(s.consumer)
        ).all()
        found = []
        for row in rows:
            position = (row.cursor_tx, row.cursor_id)
            # FROM named: on SQLite a cursor before the feed's start is a bare ``true()``.
            lag = conn.execute(
                select(func.count())
                .select_from(transitions_table)
                .where(_queries.feed_after(conn, position))
            ).scalar_one()
            leased = row.lease_until is not None and row.lease_until > now_ms()
            found.append(
                SubscriptionStatus(
                    consumer=row.consumer,
                    cursor=cursor_text(position),
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


def requeue_parked(store: Store, consumer: str) -> int | None:
    """Queue the consumer's parked transitions for delivery again; None for no such consumer."""
    s, p = subscriptions_table.c, parked_table.c
    with store.transaction() as conn:
        if conn.execute(select(s.consumer).where(s.consumer == consumer)).first() is None:
            return None
        return conn.execute(
            sql_update(parked_table)
            .where(p.consumer == consumer, p.queued.is_(False))
            .values(queued=True, attempts=0, retry_at=None)
        ).rowcount


class FeedWaker:
    """Sleeps until the feed may have news: a PostgreSQL notification, or the poll interval.

    Blocking; an asynchronous driver runs :meth:`wait` in a worker thread. One per driver.
    """

    def __init__(self, store: Store) -> None:
        self._conn: Any = None
        if store.dialect == "postgresql":
            with translated(store.sqlite_path):
                raw = store.engine.raw_connection()
            self._conn = raw.driver_connection
            raw.detach()  # its own session for good: LISTEN lasts as long as the connection
            try:
                self._conn.autocommit = True
                self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            except Exception as exc:
                self.close()
                raise _lost(exc) from exc

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
        try:
            # Short slices: a stop request is seen within a quarter of a second.
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._notified(min(left, 0.25)):
                    # Take every notification already queued: one look at the feed answers all.
                    while self._notified(0):
                        pass
                    return
        except Exception as exc:
            raise _lost(exc) from exc

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


def _lost(exc: Exception) -> DatabaseUnavailable:
    # Only the driver raises here: the listening connection is the database's.
    return DatabaseUnavailable(f"database unavailable: {first_line(exc)}")
