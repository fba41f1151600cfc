"""The store's recent delivery writes: failing ones in a row make it report itself unwritable.

A health probe rolls its write back, so it never meets what only a commit meets (a full disk:
SQLite writes its log at commit). The real writes' own failures say it instead.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Final

__all__ = ["FAILED_WRITES_UNHEALTHY", "FailureStreak"]

#: Durable delivery writes failed in a row before the store reports itself unwritable.
FAILED_WRITES_UNHEALTHY: Final = 3


class FailureStreak:
    """Consecutive failed durable writes, since when, and the last one's reason."""

    def __init__(self, threshold: int = FAILED_WRITES_UNHEALTHY) -> None:
        self._threshold = threshold
        self._lock = threading.Lock()
        self._failed = 0
        self._since: datetime | None = None
        self._reason = ""

    def succeeded(self) -> tuple[int, float] | None:
        """End the streak: how many writes had failed in a row, over how many seconds."""
        if not self._failed:
            return None
        with self._lock:
            failed, since = self._failed, self._since
            self._failed, self._since = 0, None
        if not failed or since is None:
            return None
        return failed, (datetime.now(UTC) - since).total_seconds()

    def failed(self, reason: str) -> None:
        with self._lock:
            if not self._failed:
                self._since = datetime.now(UTC)
            self._failed += 1
            self._reason = reason

    def problem(self) -> str | None:
        """Why the store is unwritable by its own writes' account; None if it is not."""
        with self._lock:
            if self._failed < self._threshold or self._since is None:
                return None
            since = self._since.isoformat(timespec="seconds").replace("+00:00", "Z")
            return (
                f"the last {self._failed} delivery writes failed (since {since}; reset by the "
                f"next that succeeds): {self._reason}"
            )
