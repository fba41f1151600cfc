"""Time as the record keeps it (epoch milliseconds) and as people read it.

Shared by the store, the trackers, the command line and the dashboard, so that each writes a time
or a duration the same way.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final

__all__ = ["DASH", "format_duration", "format_time", "now_ms"]

#: What a missing time or duration is shown as.
DASH: Final = "—"


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def format_time(ms: int | None) -> str:
    """Epoch ms as a UTC ISO 8601 time to the second, or a dash."""
    if ms is None:
        return DASH
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(ms: int | None) -> str:
    """A duration in its two largest units: ``45s``, ``3m 07s``, ``2h 05m``, ``1d 03h``."""
    if ms is None:
        return DASH
    seconds = max(ms, 0) // 1000
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d {hrs:02d}h"
    if hours:
        return f"{hours}h {mins:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
