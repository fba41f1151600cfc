"""Failures logged one line each; a traceback only for the first of a kind per minute.

An outage (a database gone, a file-descriptor limit reached) fails every request the same way:
with a traceback each time, thousands of identical tracebacks bury the log (and fill the disk)
while telling nothing new. The first of a kind keeps its traceback; the rest in the following
minute are one line, with the exception's type and message.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

__all__ = ["TracebackThrottle", "throttle_tracebacks"]

#: Loggers whose failures come in floods: ours, asyncio's (``accept()`` out of file
#: descriptors) and uvicorn's.
FLOODED: Final = ("rtms_lifecycle.server", "asyncio", "uvicorn.error")
_LONGEST: Final = 500


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


def throttle_tracebacks(names: tuple[str, ...] = FLOODED) -> None:
    """Attach one :class:`TracebackThrottle` to each named logger (once: idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TracebackThrottle) for f in logger.filters):
            logger.addFilter(TracebackThrottle())
