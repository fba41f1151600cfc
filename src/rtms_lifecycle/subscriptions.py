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

from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.defaults import (
    DEFAULT_FORWARD_TIMEOUT,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETRY_DELAY,
)
from rtms_lifecycle.exceptions import ConfigurationError
from rtms_lifecycle.records import Stream, SubscriptionStatus, Transition
from rtms_lifecycle.store import subscriptions as _rows
from rtms_lifecycle.store.core import Store
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.store.subscriptions import NOTIFY_CHANNEL, START, FeedWaker, Position

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
    "ROUND",
    "SubscriptionRunner",
    "SubscriptionStatus",
    "check_consumer_name",
    "transition_message",
]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY: Final = 300.0
MAX_CONSUMER_LENGTH: Final = 200
_CONSUMER_NAME: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_CONSUMER_LENGTH - 1}}}")
_PAGE: Final = 100
#: A round delivers at most this many per consumer, so that one busy consumer starves no other.
ROUND: Final = 100
_ERROR_LENGTH: Final = 2000
# Longest wait between looks at a database that does not answer.
_MAX_OUTAGE_PAUSE: Final = 30.0

Wants = Callable[[Transition, Stream], bool]


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


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Consumer:
    """One named consumer's delivery core, for one process: no waiting, no callbacks.

    Call :meth:`next` for what is due; call the consumer's callback with it; then call
    :meth:`succeeded` or :meth:`failed`. Not thread-safe: one driver per instance. Each write
    must commit within half the lease (the lease must still hold when it does), else it raises
    :class:`StoreTimeout` and the runner looks again later.
    """

    def __init__(
        self,
        store: Store,
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
        self.store = store
        self.wants = wants
        self.from_start = from_start
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.lease_ms = int(lease * 1000)
        self.owner = owner or _owner()
        self._held_until = 0
        self._position: Position = START
        self._saved: Position = START
        self._attempts = 0
        #: When the failing head may be tried again (epoch ms), or None.
        self.retry_at: int | None = None
        self._buffer: deque[tuple[Position, Transition]] = deque()
        if create:
            self.create()

    def _deadline(self) -> float:
        return time.monotonic() + self.lease_ms / 2000

    def create(self) -> None:
        """Store the consumer's row unless it exists (``create=False`` left it to this call):
        a new one starts at the end of the feed as it is now, or at its start."""
        # No lease is held yet, so none bounds it: a short lease (0.3 s) left 0.15 s, which a
        # loaded machine spent before the write began.
        deadline = max(self._deadline(), time.monotonic() + DEFAULT_STORE_TIMEOUT)
        _rows.ensure_consumer(self.store, self.name, from_start=self.from_start, deadline=deadline)

    # --- the lease --------------------------------------------------------------------------

    @property
    def holds_lease(self) -> bool:
        """Whether this process delivers for the consumer now."""
        return now_ms() < self._held_until

    def _hold(self, now: int) -> bool:
        fresh = now >= self._held_until
        if not fresh and self._held_until - now > self.lease_ms // 2:
            return True
        taken, cursor = _rows.take_lease(
            self.store,
            self.name,
            self.owner,
            now,
            now + self.lease_ms,
            read=fresh,
            deadline=self._deadline(),
        )
        if not taken:
            self._lost()
            return False
        if cursor is not None:
            # Another process may have delivered meanwhile: start from what is stored.
            self._position = self._saved = cursor.position
            self._attempts, self.retry_at = cursor.attempts, cursor.retry_at
            self._buffer.clear()
        self._held_until = now + self.lease_ms
        return True

    def _lost(self) -> None:
        self._held_until = 0
        self._buffer.clear()

    def release(self) -> None:
        """Give up the lease now, so that another process takes over without waiting for it."""
        self._save_skipped()
        _rows.release_lease(self.store, self.name, self.owner, self._deadline())
        self._lost()

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
                self._buffer.extend(_rows.feed_page(self.store, self._position, _PAGE))
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
        stream = _rows.stream_of(self.store, transition.stream_id)
        if stream is None:
            log.warning(
                "subscription %s: stream %s of transition %d is no longer stored; passing it",
                self.name,
                transition.stream_id,
                transition.id,
            )
        return stream

    def _requeued(self, now: int) -> Delivery | None:
        found = _rows.next_requeued(self.store, self.name, now)
        if found is None:
            return None
        stream = self._stream(found.transition)
        if stream is None:
            _rows.drop_parked(self.store, self.name, found.transition.id, self._deadline())
            return None
        return Delivery(
            self.name, found.transition, stream, found.attempts + 1, found.position, requeued=True
        )

    def _save_skipped(self) -> None:
        if self._position == self._saved or not self.holds_lease:
            return
        saved = _rows.save_cursor(
            self.store, self.name, self.owner, self._position, now_ms(), self._deadline()
        )
        if saved:
            self._saved = self._position
        else:
            self._lost()

    # --- what became of it ------------------------------------------------------------------

    def succeeded(self, delivery: Delivery) -> None:
        """The callback returned: move the cursor past the transition (or unpark it)."""
        held = _rows.consumer_succeeded(
            self.store,
            self.name,
            self.owner,
            delivery.transition.id,
            delivery.position,
            requeued=delivery.requeued,
            now=now_ms(),
            deadline=self._deadline(),
        )
        if not delivery.requeued:
            self._advanced(delivery.position, held)

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
        held = _rows.consumer_failed(
            self.store,
            self.name,
            self.owner,
            delivery.transition.id,
            delivery.position,
            attempt=delivery.attempt,
            error=message,
            requeued=delivery.requeued,
            give_up=give_up,
            retry_at=now + delay,
            now=now,
            deadline=self._deadline(),
        )
        if delivery.requeued:
            return
        if give_up:
            self._advanced(delivery.position, held)
        elif held:
            self._attempts, self.retry_at = delivery.attempt, now + delay
        else:
            self._lost()

    def _advanced(self, position: Position, held: bool) -> None:
        if not held:
            # Another process took the consumer over; it delivers this transition again.
            log.warning("subscription %s: lease lost to another process", self.name)
            self._lost()
            return
        while self._buffer and self._buffer[0][0] <= position:
            self._buffer.popleft()
        self._position = self._saved = position
        self._attempts, self.retry_at = 0, None


# --- running consumers with plain callbacks ---------------------------------------------------


Callback = Callable[[Transition, Stream], object]


class SubscriptionRunner:
    """Delivers to consumers with plain callbacks until stopped or idle."""

    def __init__(
        self,
        store: Store,
        consumers: Sequence[tuple[Consumer, Callback]],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not consumers:
            raise ConfigurationError("no subscriptions: call subscribe(...) first")
        if poll_interval <= 0:
            raise ValueError("poll_interval: more than zero seconds")
        self.store = store
        self.consumers = consumers
        self.poll_interval = poll_interval

    def step(self) -> int:
        """One round: deliver what is due to each consumer. How many callbacks ran."""
        ran = 0
        for consumer, callback in self.consumers:
            for _ in range(ROUND):
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
                    waker = waker or FeedWaker(self.store)
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
