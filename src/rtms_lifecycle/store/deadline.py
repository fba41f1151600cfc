"""Time budgets: a write that answers a sender gives up at its deadline and leaves nothing.

Deadlines are ``time.monotonic()`` seconds. SQLite bounds its wait for the write lock with its
busy timeout, set per transaction from the time left. PostgreSQL statements are bounded by a
watchdog thread that cancels the statement still running when its transaction's deadline passes
(the server then rolls the transaction back): nothing per transaction but a heap push, where a
``SET statement_timeout`` would cost a round trip and leave the setting on a pooled connection.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import count
from typing import Final

__all__ = ["DEFAULT_STORE_TIMEOUT", "WATCHDOG", "Watchdog", "remaining"]

#: The receiver's time budget for recording a delivery, in seconds: Zoom waits 3 s for an
#: answer, and the rest is for the network and the request itself.
DEFAULT_STORE_TIMEOUT: Final = 2.0


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (negative once it has passed)."""
    return deadline - time.monotonic()


@dataclass(slots=True)
class _Guarded:
    cancel: Callable[[], None]
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
    def guard(self, deadline: float | None, cancel: Callable[[], None]) -> Iterator[None]:
        """Watch the block: past ``deadline``, ``cancel()`` is called (once) while it runs."""
        if deadline is None:
            yield
            return
        disarm = self.watch(deadline, cancel)
        try:
            yield
        finally:
            disarm()

    def watch(self, deadline: float, cancel: Callable[[], None]) -> Callable[[], None]:
        """Call ``cancel()`` at ``deadline`` unless the returned function was called before."""
        guarded = _Guarded(cancel)
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
                _, _, guarded = heapq.heappop(heap)
            with guarded.lock:
                if guarded.active:
                    guarded.active = False
                    # A cancel that fails (the server is gone) changes nothing: the
                    # transaction fails on its own.
                    with suppress(Exception):
                        guarded.cancel()


#: The process's watchdog: one thread, which only sleeps until the next deadline.
WATCHDOG: Final = Watchdog()
