"""The largest numbers the store can hold, checked where a number comes in (CLI and read API).

A number past them used to reach the database driver and come back as an ``OverflowError``:
a traceback on the command line, a 500 from the API. Both now refuse it as bad input.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["MAX_COUNT", "MAX_EPOCH_MS", "MIN_EPOCH_MS", "MAX_DURATION", "MAX_WAIT_SECONDS"]

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
