"""The children's stdout and stderr of ``rtms-lifecycle work``, read through pipes, line by line.

One thread and one selector serve every child, whatever ``--max``: a thread per pipe would be
20,000 threads at ``--max 10000``. The thread only reads and hands whole lines on (to
``work``'s writer thread, which makes it wait while many are queued: then the children wait on
their pipes, as they would on a slow stdout of their own); no other thread of ``work``'s waits
on a child's output. Each pipe's read end is closed at its end of file
(every process holding the write end is gone), or when the reader is closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["MAX_LINE", "ChildLine", "ChildPipes", "LineReader"]

#: The longest line passed on whole, in bytes; a longer one is cut there and marked cut, the
#: rest of it up to its newline dropped.
MAX_LINE: Final = 16_384
_CHUNK: Final = 65_536
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChildLine:
    """One line a child wrote: ``fd`` "stdout" or "stderr", ``text`` without its newline (invalid
    UTF-8 replaced), ``cut`` if it was longer than :data:`MAX_LINE` bytes."""

    fd: str
    text: str
    cut: bool = False


@dataclass(eq=False, slots=True)
class _Pipe:
    owner: ChildPipes
    name: str
    fd: int
    pending: bytearray = field(default_factory=bytearray)
    skipping: bool = False  # past MAX_LINE: dropping up to the next newline

    def take(self, data: bytes) -> list[ChildLine]:
        """Whole lines out of what was read; an overlong one cut."""
        lines = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            if not self.skipping:
                self.pending += piece
                if len(self.pending) > MAX_LINE:
                    lines.append(self._line(bytes(self.pending[:MAX_LINE]), cut=True))
                    self.pending.clear()
                    self.skipping = True
            if newline < 0:
                return lines
            if self.skipping:
                self.skipping = False
            else:
                lines.append(self._line(bytes(self.pending)))
                self.pending.clear()
            start = newline + 1

    def rest(self) -> list[ChildLine]:
        """The last line, written without a newline before the pipe's end."""
        if self.skipping or not self.pending:
            return []
        line = self._line(bytes(self.pending))
        self.pending.clear()
        return [line]

    def _line(self, raw: bytes, cut: bool = False) -> ChildLine:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return ChildLine(self.name, raw.decode("utf-8", "replace"), cut)


class ChildPipes:
    """One child's two pipes: ``writers`` go to the child (close them in the parent once it
    started), ``done`` is set once both reached their end and every line was handed on."""

    def __init__(self, owner: object) -> None:
        #: Whom the lines are handed on with (``work``'s job).
        self.owner = owner
        self.done = threading.Event()
        out_r, out_w = os.pipe()
        try:
            err_r, err_w = os.pipe()
        except OSError:
            for fd in (out_r, out_w):
                os.close(fd)
            raise
        self.writers: tuple[int, ...] = (out_w, err_w)
        self.pipes = [_Pipe(self, "stdout", out_r), _Pipe(self, "stderr", err_r)]

    def close_writers(self) -> None:
        """The parent's copies of the write ends: closed, so that the child's exit ends them."""
        for fd in self.writers:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.writers = ()

    def abandon(self) -> None:
        """The child never started: every end closed."""
        self.close_writers()
        for pipe in self.pipes:
            os.close(pipe.fd)
        self.pipes = []
        self.done.set()


class LineReader:
    """Reads every child's pipes on one thread and hands each line to ``emit(owner, lines)``
    (several lines at once where one read brought several)."""

    def __init__(self, emit: Callable[[object, list[ChildLine]], None]) -> None:
        self._emit = emit
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._added: list[ChildPipes] = []
        self._lock = threading.Lock()
        self._closing = False
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="work-child-output", daemon=True)
        self._thread.start()

    def add(self, pipes: ChildPipes) -> None:
        """Read ``pipes`` from now on (their child has started)."""
        with self._lock:
            self._added.append(pipes)
        self._wake()

    def close(self, timeout: float) -> None:
        """Read what is left until every pipe ends or ``timeout`` (seconds) passes, then close
        every pipe still open and stop the thread."""
        with self._lock:
            self._closing = True
            self._deadline = timeout
        self._wake()
        self._thread.join()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # woken already
            os.write(self._wake_w, b".")

    def _run(self) -> None:
        pipes: dict[int, _Pipe] = {}
        give_up: float | None = None
        while True:
            with self._lock:
                added, self._added = self._added, []
                if self._closing and give_up is None:
                    give_up = time.monotonic() + self._deadline
            for child in added:
                for pipe in child.pipes:
                    pipes[pipe.fd] = pipe
                    self._selector.register(pipe.fd, selectors.EVENT_READ, pipe)
            if give_up is not None and (not pipes or time.monotonic() >= give_up):
                break
            wait = None if give_up is None else max(0.0, give_up - time.monotonic())
            for key, _ in self._selector.select(wait):
                pipe = key.data
                if pipe is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                self._read(pipe, pipes)
        for pipe in list(pipes.values()):  # a grandchild holds it open still
            self._finish(pipe, pipes)

    def _read(self, pipe: _Pipe, pipes: dict[int, _Pipe]) -> None:
        try:
            data = os.read(pipe.fd, _CHUNK)
        except OSError:
            data = b""
        if data:
            lines = pipe.take(data)
            if lines:
                self._hand_on(pipe.owner.owner, lines)
            return
        self._finish(pipe, pipes)

    def _finish(self, pipe: _Pipe, pipes: dict[int, _Pipe]) -> None:
        rest = pipe.rest()
        if rest:
            self._hand_on(pipe.owner.owner, rest)
        self._selector.unregister(pipe.fd)
        os.close(pipe.fd)
        del pipes[pipe.fd]
        child = pipe.owner
        child.pipes.remove(pipe)
        if not child.pipes:
            child.done.set()

    def _hand_on(self, owner: object, lines: list[ChildLine]) -> None:
        try:
            self._emit(owner, lines)
        except Exception:  # the reader must outlive a bug in writing
            log.exception("could not write a child's output")
