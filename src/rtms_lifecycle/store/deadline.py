"""Time budgets: a write that answers a sender gives up at its deadline and leaves nothing.

Deadlines are ``time.monotonic()`` seconds. SQLite bounds its wait for the write lock with its
busy timeout, set per transaction from the time left. PostgreSQL statements are bounded by a
watchdog thread that cancels the statement still running when its transaction's deadline passes
(the server then rolls the transaction back): nothing per transaction but a heap push, where a
``SET statement_timeout`` would cost a round trip and leave the setting on a pooled connection.

A cancel is a request on a new connection: in a network partition it cannot reach the server,
and the statement would wait on for as long as TCP does. So a cancel is bounded
(``CANCEL_TIMEOUT_S``), and a statement still running ``ABORT_AFTER_S`` past its deadline has
its connection's socket shut down: the statement fails at once, and the connection, broken, is
discarded rather than pooled again.
"""

from __future__ import annotations

import heapq
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Final

__all__ = [
    "ABORT_AFTER_S",
    "CANCEL_TIMEOUT_S",
    "DEFAULT_STORE_TIMEOUT",
    "WATCHDOG",
    "Watchdog",
    "bound_connect",
    "connecting_by",
    "postgres_interrupts",
    "remaining",
]

#: The receiver's time budget for recording a delivery, in seconds: Zoom waits 3 s for an
#: answer, and the rest is for the network and the request itself.
DEFAULT_STORE_TIMEOUT: Final = 2.0

#: Seconds a PostgreSQL cancel request may take: it opens a connection of its own.
CANCEL_TIMEOUT_S: Final = 1.0

#: Seconds past its deadline after which a statement that a cancel did not end (the server is
#: out of reach) has its connection cut.
ABORT_AFTER_S: Final = 1.0


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (negative once it has passed)."""
    return deadline - time.monotonic()


_CONNECTING_BY: ContextVar[float | None] = ContextVar("rtms_lifecycle_connect", default=None)
# libpq's and psycopg's shortest connect_timeout, in whole seconds.
_SHORTEST_CONNECT_S: Final = 2


@contextmanager
def connecting_by(deadline: float | None) -> Iterator[None]:
    """Connections opened in the block give up at ``deadline`` (see :func:`bound_connect`)."""
    token = _CONNECTING_BY.set(deadline)
    try:
        yield
    finally:
        _CONNECTING_BY.reset(token)


def bound_connect(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
    """SQLAlchemy's ``do_connect`` event: a connection opened under :func:`connecting_by` has
    a ``connect_timeout`` no longer than the time left (libpq waits 2 s at least)."""
    deadline = _CONNECTING_BY.get()
    if deadline is None:
        return
    left = max(_SHORTEST_CONNECT_S, math.ceil(remaining(deadline)))
    try:
        configured = int(float(params.get("connect_timeout", os.environ["PGCONNECT_TIMEOUT"])))
    except (KeyError, ValueError):
        configured = 0  # none: psycopg waits 130 s
    if configured <= 0 or left < configured:
        params["connect_timeout"] = str(left)


def postgres_interrupts(conn: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """The ``cancel`` and ``abort`` of a statement on psycopg connection ``conn``."""

    def cancel() -> None:
        conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)

    def abort() -> None:
        # Shut down, not closed: the descriptor stays libpq's, which then finds the connection
        # broken. A duplicate descriptor names the same socket.
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    return cancel, abort


@dataclass(slots=True)
class _Guarded:
    cancel: Callable[[], None]
    abort: Callable[[], None] | None = None
    active: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


class Watchdog:
    """Calls a transaction's ``cancel`` if the transaction is still running at its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Guarded]] = []
        self._order = count()  # equal deadlines: first come, first cancelled
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(
        self,
        deadline: float | None,
        cancel: Callable[[], None],
        abort: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """Watch the block: past ``deadline``, ``cancel()`` is called (once) while it runs (and
        ``abort``, as in :meth:`watch`)."""
        if deadline is None:
            yield
            return
        disarm = self.watch(deadline, cancel, abort)
        try:
            yield
        finally:
            disarm()

    def watch(
        self,
        deadline: float,
        cancel: Callable[[], None],
        abort: Callable[[], None] | None = None,
    ) -> Callable[[], None]:
        """Call ``cancel()`` at ``deadline`` unless the returned function was called before.

        With ``abort``, both run in a thread of their own, not this watchdog's (a cancel may
        wait on the network), and ``abort()`` is called if the returned function was still not
        called ``ABORT_AFTER_S`` past ``deadline``.
        """
        guarded = _Guarded(cancel, abort)
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rtms-lifecycle-watchdog", daemon=True
                )
                self._thread.start()
            earliest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._order), guarded))
            if earliest:
                self._wake.notify()

        def disarm() -> None:
            # After this, a cancel can no longer reach the connection, which may serve others.
            with guarded.lock:
                guarded.active = False

        return disarm

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._wake:
                while True:
                    # Transactions end long before their deadlines: the entries of those that
                    # ended are dropped together, instead of a wake-up for each at its deadline
                    # (a thousand a second on a busy writer, each taking the GIL).
                    while heap and not heap[0][2].active:
                        heapq.heappop(heap)
                    if heap and heap[0][0] <= time.monotonic():
                        break
                    self._wake.wait(heap[0][0] - time.monotonic() if heap else None)
                deadline, _, guarded = heapq.heappop(heap)
            if guarded.abort is not None:
                threading.Thread(
                    target=self._interrupt,
                    args=(guarded, deadline),
                    name="rtms-lifecycle-interrupt",
                    daemon=True,
                ).start()
                continue
            with guarded.lock:
                if guarded.active:
                    guarded.active = False
                    # A cancel that fails (the server is gone) changes nothing: the
                    # transaction fails on its own.
                    with suppress(Exception):
                        guarded.cancel()

    @staticmethod
    def _interrupt(guarded: _Guarded, deadline: float) -> None:
        with guarded.lock:
            if not guarded.active:
                return
            with suppress(Exception):
                guarded.cancel()
        if guarded.abort is None:
            return
        # An Event to wait on would cost every transaction its making; this thread is rare.
        time.sleep(max(0.0, remaining(deadline + ABORT_AFTER_S)))
        with guarded.lock:
            # Still running: the connection is still the transaction's, no one else's.
            if guarded.active:
                guarded.active = False
                with suppress(Exception):
                    guarded.abort()


#: The process's watchdog: one thread, which only sleeps until the next deadline.
WATCHDOG: Final = Watchdog()
