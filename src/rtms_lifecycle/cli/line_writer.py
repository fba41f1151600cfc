"""The one thread that writes ``rtms-lifecycle work``'s lines, so that no other waits on them.

``work``'s stdout may be a pipe nobody drains (``| less`` left open, a stalled log shipper).
A thread that renews leases, claims, reaps or fences must never wait on it: a renewal missed
for a slow reader lets the lease run out while the child runs on. So one thread owns the
output: ``work``'s own lines are queued without ever waiting (past ``own_limit`` the oldest
are dropped, counted and said in one ``output_dropped`` line once it writes again), and the
children's lines are queued by the thread reading their pipes, which waits while
``child_limit`` are queued: the children then wait on their pipes, as they would writing to a
slow stdout themselves. ``work``'s own lines go first, but a line queued ``after_children``
(a child's exit) waits for every child's line queued before it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Final

__all__ = ["LineWriter"]

#: Children's lines written at most in one write, so that ``work``'s own wait little.
_BATCH: Final = 4096
log = logging.getLogger(__name__)


class LineWriter:
    """Writes lines to ``out`` from a thread of its own; ``dropped(count, since)`` makes the
    line saying ``count`` of ``work``'s own lines were dropped, the first at ``since`` (epoch
    ms)."""

    def __init__(
        self,
        out: IO[str],
        dropped: Callable[[int, int], str],
        *,
        own_limit: int,
        child_limit: int,
        now_ms: Callable[[], int],
    ) -> None:
        self._out = out
        self._dropped_line = dropped
        self._own_limit, self._child_limit = max(1, own_limit), max(1, child_limit)
        self._now_ms = now_ms
        self._fd, self._encoding = _raw(out)
        self._ready = threading.Condition(threading.Lock())
        #: (children's lines to be taken first, text)
        self._own: deque[tuple[int, str]] = deque()
        self._children: deque[str] = deque()
        self._put = 0  # children's lines queued so far
        self._taken = 0  # of them, taken to be written
        self._dropped = 0
        self._dropped_since = 0
        self._give_up: float | None = None  # monotonic: from then on, nothing waits
        self._broken = False
        self._thread = threading.Thread(target=self._run, name="work-output", daemon=True)
        self._thread.start()

    def event(self, text: str, *, after_children: bool = False) -> None:
        """Queue one of ``work``'s own lines; never waits."""
        with self._ready:
            if len(self._own) >= self._own_limit:
                self._own.popleft()
                if not self._dropped:
                    self._dropped_since = self._now_ms()
                self._dropped += 1
            self._own.append((self._put if after_children else 0, text))
            self._ready.notify_all()

    def lines(self, texts: Sequence[str]) -> None:
        """Queue a child's lines, waiting while ``child_limit`` are queued (never past the
        deadline given to :meth:`close_by`; then they are dropped)."""
        with self._ready:
            while len(self._children) >= self._child_limit and not self._broken:
                if self._give_up is None:
                    self._ready.wait()
                    continue
                left = self._give_up - time.monotonic()
                if left <= 0:
                    return
                self._ready.wait(left)
            self._children.extend(texts)
            self._put += len(texts)
            self._ready.notify_all()

    def close_by(self, deadline: float) -> None:
        """Write what is queued until ``deadline`` (monotonic seconds); nothing waits past it."""
        with self._ready:
            self._give_up = deadline
            self._ready.notify_all()

    def close(self) -> bool:
        """Wait for the thread until the deadline given to :meth:`close_by` (now if none);
        whether every line was written. A thread still blocked on a write is left behind."""
        with self._ready:
            if self._give_up is None:
                self._give_up = time.monotonic()
            deadline = self._give_up
            self._ready.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not (self._own or self._children or self._dropped):
                    if self._give_up is not None:
                        return
                    self._ready.wait()
                batch = self._take()
                self._ready.notify_all()  # room for the children's lines
            if not self._broken:
                self._write(batch)

    def _take(self) -> list[str]:
        """What to write next: the dropped lines' count, ``work``'s own lines, then the
        children's, up to the next own line waiting for them."""
        batch = []
        if self._dropped:
            batch.append(self._dropped_line(self._dropped, self._dropped_since))
            self._dropped = 0
        while self._own and self._own[0][0] <= self._taken:
            batch.append(self._own.popleft()[1])
        n = min(len(self._children), _BATCH)
        batch.extend(self._children.popleft() for _ in range(n))
        self._taken += n
        return batch

    def _write(self, batch: list[str]) -> None:
        text = "".join(line + "\n" for line in batch)
        try:
            if self._fd is None:
                self._out.write(text)
                self._out.flush()
                return
            data = memoryview(text.encode(self._encoding, "backslashreplace"))
            while data:
                data = data[os.write(self._fd, data) :]
        except (BrokenPipeError, ValueError):
            self._broken = True  # nobody reads the lines any more: the work goes on
            with self._ready:
                self._ready.notify_all()  # nor waits for room
        except OSError as exc:
            log.warning("could not write %d lines: %s", len(batch), exc)


def _raw(out: IO[str]) -> tuple[int | None, str]:
    """``out``'s file descriptor, written directly: a thread blocked writing to it holds no
    lock of ``out``'s, which Python's exit would wait for (then abort); None if it has none."""
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return None, ""
    with contextlib.suppress(OSError, ValueError):
        out.flush()
    return fd, getattr(out, "encoding", None) or "utf-8"
