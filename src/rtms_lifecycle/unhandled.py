"""Deliveries of events this version does not know: noticed, so that an operator hears of them.

Zoom adds products and renames events (``phone.call_rtms_started``, ``contactcenter.rtms_started``
and ``meeting.rtms.started`` all appear in Zoom's own samples). Such deliveries are stored as
``unhandled``; the receiver warns the first time it sees each name, and
``Tracker.unhandled_stats()`` lists them all.
"""

from __future__ import annotations

import threading
from typing import Final

__all__ = ["FirstSeen", "looks_like_rtms"]

# A receiver remembers this many names; beyond it (a sender inventing names) it stops warning,
# and the store still lists every one.
_MAX_NAMES: Final = 1000


def looks_like_rtms(event: str) -> bool:
    """Whether an event name mentions RTMS: likely a stream event under a name not yet known."""
    return "rtms" in event.lower()


class FirstSeen:
    """Which event names a process has seen, to warn once per name."""

    def __init__(self, limit: int = _MAX_NAMES) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._lock = threading.Lock()

    def first(self, name: str) -> bool:
        """True the first time ``name`` is given (while fewer than ``limit`` names were seen)."""
        with self._lock:
            if name in self._seen or len(self._seen) >= self._limit:
                return False
            self._seen.add(name)
            return True
