"""Failures logged one line each, a traceback only for the first of a kind per minute; and
lines that a sender can repeat at will grouped per key (:class:`LineGroups`).

An outage (a database gone, a file-descriptor limit reached) fails every request the same way:
with a traceback each time, thousands of identical tracebacks bury the log (and fill the disk)
while telling nothing new. The first of a kind keeps its traceback; the rest in the following
minute are one line, with the exception's type and message.
"""

from __future__ import annotations

import logging
import threading
import time
from contextvars import ContextVar
from typing import Final

__all__ = [
    "ACCESS_LINE_SKIPPED",
    "GROUPS_HELD",
    "OTHERS",
    "LineGroups",
    "SkipAccessLine",
    "TracebackThrottle",
    "skip_access_lines",
    "throttle_tracebacks",
]

#: Loggers whose failures come in floods: ours, asyncio's (``accept()`` out of file
#: descriptors) and uvicorn's.
FLOODED: Final = ("rtms_lifecycle.server", "asyncio", "uvicorn.error")
_LONGEST: Final = 500
#: Keys :class:`LineGroups` follows at once; beyond, new keys share one group.
GROUPS_HELD: Final = 4096
#: The key of that shared group.
OTHERS: Final = "others"


class TracebackThrottle(logging.Filter):
    """A logging filter: keeps a record's traceback only if its kind had none in ``period``.

    The kind is the logger, the message template and the exception type. A record stripped of
    its traceback says the exception in its one line instead.
    """

    def __init__(self, period: float = 60.0) -> None:
        super().__init__()
        self._period = period
        self._last: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        kind = (record.name, str(record.msg), type(exc).__qualname__)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is None or now - last >= self._period:
                self._last[kind] = now
                return True
        said = " ".join(str(exc).split())[:_LONGEST]
        # One line: asyncio's messages span several.
        message = "; ".join(record.getMessage().splitlines())
        record.msg = f"{message} ({type(exc).__name__}: {said})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


#: Set while a request whose answer is logged otherwise (a refused webhook request) sends it:
#: uvicorn writes its access line from inside that ``send``, in the request's context.
ACCESS_LINE_SKIPPED: Final[ContextVar[bool]] = ContextVar("access_line_skipped", default=False)


class SkipAccessLine(logging.Filter):
    """A filter for uvicorn's access logger: leaves out the line of a request that set
    :data:`ACCESS_LINE_SKIPPED`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ACCESS_LINE_SKIPPED.get()


def _attach_once(name: str, kind: type[logging.Filter]) -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def skip_access_lines(name: str = "uvicorn.access") -> None:
    """Attach one :class:`SkipAccessLine` to the access logger (once: idempotent)."""
    _attach_once(name, SkipAccessLine)


def throttle_tracebacks(names: tuple[str, ...] = FLOODED) -> None:
    """Attach one :class:`TracebackThrottle` to each named logger (once: idempotent)."""
    for name in names:
        _attach_once(name, TracebackThrottle)


class LineGroups:
    """Which lines of a kind to write, per key (a client address and a reason): the first, then
    at most one every ``period`` seconds, which says how many were left out before it.

    A flood of refused requests from one address then costs a line every ``period``, not one
    per request. At most ``held`` keys are followed; past them, new keys share the group
    :data:`OTHERS` until old groups have nothing left to report.
    """

    def __init__(self, period: float = 60.0, held: int = GROUPS_HELD) -> None:
        self._period = period
        self._held = held
        # key -> [when its last line was written, lines left out since]
        self._groups: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> tuple[str, int] | None:
        """``(group, lines left out before this one)`` if this line is to be written, else None."""
        now = time.monotonic()
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                if len(self._groups) >= self._held:
                    self._forget(now)
                if len(self._groups) >= self._held:
                    key = OTHERS
                    group = self._groups.get(key)
            if group is None:
                self._groups[key] = [now, 0]
                return key, 0
            if now - group[0] < self._period:
                group[1] += 1
                return None
            left_out = int(group[1])
            group[0], group[1] = now, 0
            return key, left_out

    def _forget(self, now: float) -> None:
        # Groups whose period is over with nothing left out: their next line is a first one.
        self._groups = {
            key: group
            for key, group in self._groups.items()
            if group[1] or now - group[0] < self._period
        }
