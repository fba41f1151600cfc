"""The largest numbers the store can hold, checked where a number comes in (CLI and read API).

A number past them used to reach the database driver and come back as an ``OverflowError``:
a traceback on the command line, a 500 from the API. Both now refuse it as bad input.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "MAX_COUNT",
    "MAX_DURATION",
    "MAX_EPOCH_MS",
    "MAX_WAIT_SECONDS",
    "MIN_EPOCH_MS",
    "arrival_time_problem",
    "iso_utc",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: A limit or a count: a signed 64-bit integer, as both databases store them.
MAX_COUNT: Final = 2**63 - 1
#: Times: what a date and time can say, from year 1 to the end of year 9999 (UTC).
MIN_EPOCH_MS: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
MAX_EPOCH_MS: Final = (
    datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH
) // timedelta(milliseconds=1)
#: Durations (``--stale-after``): ten thousand years is longer than any stream has lived.
MAX_DURATION: Final = timedelta(days=3_652_425)
#: Waits (the store's timeout, a forwarded POST's): a day. A lock cannot wait past
#: ``threading.TIMEOUT_MAX`` (292 years) and said so with an ``OverflowError`` on every request.
MAX_WAIT_SECONDS: Final = 86_400.0


def arrival_time_problem(
    event_ts: int, received_ms: int, max_ahead_ms: int, earliest_ms: int
) -> str | None:
    """Why a delivery's ``event_ts`` is not a time it can have been sent at, or None.

    Checked once, when the delivery arrives: a stored event is never re-judged against a later
    clock (a re-fold re-reads stored bodies), so what was accepted stays accepted. A time before
    ``earliest_ms`` is most likely seconds where milliseconds belong, a zero or garbage.
    """
    if event_ts < earliest_ms:
        return (
            f"{event_ts} is before {iso_utc(earliest_ms)} (milliseconds since the epoch expected)"
        )
    if event_ts - received_ms > max_ahead_ms:
        return (
            f"must not be more than {max_ahead_ms // 1000:,} s ahead of the receiving clock, "
            f"got {event_ts} ({(event_ts - received_ms) // 1000:,} s ahead)"
        )
    return None


def iso_utc(ms: int) -> str:
    """Epoch ms from year 1 to 9999 in ISO 8601, UTC; milliseconds only when there are some."""
    moment = (_EPOCH + timedelta(milliseconds=ms)).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds") + "Z"
