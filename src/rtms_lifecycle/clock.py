"""Time as the record keeps it (epoch milliseconds) and as people read it.

Shared by the store, the trackers, the command line and the dashboard, so that each writes a time
or a duration the same way.
"""

from __future__ import annotations

import re
import time
from typing import Final

__all__ = ["DASH", "format_duration", "format_time", "format_utc", "now_ms", "utc_fields"]

#: What a missing time or duration is shown as.
DASH: Final = "—"


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def format_time(ms: int | None) -> str:
    """Epoch ms as a UTC ISO 8601 time to the second, or a dash."""
    if ms is None:
        return DASH
    return format_utc(ms, "%Y-%m-%dT%H:%M:%SZ")


def utc_fields(ms: int) -> tuple[int, int, int, int, int, int]:
    """Year, month, day, hour, minute and second (UTC) of any epoch ms, in the proleptic
    Gregorian calendar: integer arithmetic, so a year past 9999 or before 1 is no error
    (``datetime`` refuses them, and a database may hold them)."""
    days, second_of_day = divmod(ms // 1000, 86_400)
    # Days to a civil date (H. Hinnant's algorithm), exact for every integer.
    z = days + 719_468
    era, day_of_era = divmod(z, 146_097)
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + era * 400 + (month <= 2)
    hour, rest = divmod(second_of_day, 3600)
    return year, month, day, hour, *divmod(rest, 60)


def format_utc(ms: int, fmt: str) -> str:
    """Epoch ms in ``fmt``, which may use ``%Y %m %d %H %M %S``; a year outside 0-9999 is
    written with its sign, as ISO 8601 writes expanded years (``+10000``)."""
    year, month, day, hour, minute, second = utc_fields(ms)
    fields = {
        "%Y": f"{year:04d}" if 0 <= year <= 9999 else f"{year:+05d}",
        "%m": f"{month:02d}",
        "%d": f"{day:02d}",
        "%H": f"{hour:02d}",
        "%M": f"{minute:02d}",
        "%S": f"{second:02d}",
    }
    return re.sub(r"%[YmdHMS]", lambda found: fields[found.group()], fmt)


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
