"""What :class:`Tracker` and :class:`AsyncTracker` share: their arguments' checks and the
logging of a failed callback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from enum import Enum, EnumMeta
from typing import TYPE_CHECKING, Any

from rtms_lifecycle.bounds import arrival_time_problem
from rtms_lifecycle.defaults import MAX_BATCH_SIZE

if TYPE_CHECKING:
    from rtms_lifecycle.records import Transition

__all__ = [
    "DEFAULT_CLAIM_LEASE",
    "DEFAULT_CONNECT_BUCKETS",
    "MAX_CLAIM_EXCLUDE",
    "as_kind",
    "as_set",
    "callback_failed",
    "check_account",
    "check_batch_size",
    "check_report_time",
    "check_worker",
    "lease_ms",
]

#: Seconds a claim holds a stream unless renewed.
DEFAULT_CLAIM_LEASE = 30.0
_MAX_LEASE = 86_400.0
#: Upper bounds (seconds) of the start-to-connected histogram: an SDK join takes seconds, a
#: stream no worker could join for minutes is what to see.
DEFAULT_CONNECT_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
#: Stream ids one claim may pass over (each is a bound parameter of the claim's query).
MAX_CLAIM_EXCLUDE = 500
_WORKER_LENGTH = 200

# Both trackers log under one name: operators' log filters match it.
log = logging.getLogger("rtms_lifecycle.tracker")


def as_set(value: Any, kind: Callable[[Any], Any], name: str) -> frozenset[Any] | None:
    """One value or many (a string is one) as a set of ``kind``; None stays None. A value
    ``kind`` refuses is a :class:`ValueError` naming the argument (``name``)."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return frozenset(as_kind(v, kind, name) for v in values)


def as_kind(value: Any, kind: Callable[[Any], Any], name: str) -> Any:
    """``kind(value)``, or a :class:`ValueError` naming the argument and, for an enum, its
    valid values."""
    try:
        return kind(value)
    except ValueError as exc:
        members: list[Enum] = list(kind) if isinstance(kind, EnumMeta) else []
        valid = ", ".join(str(m.value) for m in members)
        raise ValueError(f"{name}: {exc}" + (f"; valid: {valid}" if valid else "")) from None


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size out of range (:class:`ValueError`, naming the range)."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be from 1 to {MAX_BATCH_SIZE:,}, not {batch_size:,}")


def callback_failed(callback: object, transition: Transition) -> None:
    """Log a callback's failure (from inside its ``except``): it undoes and blocks nothing."""
    log.exception(
        "transition callback %r failed for %s (%s)",
        callback,
        transition.stream_id,
        transition.name,
    )


def check_worker(worker: object) -> str:
    """A worker's name, or :class:`ValueError` naming what is wrong with it."""
    if not isinstance(worker, str) or not worker.strip():
        raise ValueError(f"worker: must be a non-empty name, not {worker!r}")
    if len(worker) > _WORKER_LENGTH or "\x00" in worker:
        raise ValueError(f"worker: at most {_WORKER_LENGTH} characters and no NUL")
    return worker


def check_account(account_id: object) -> str | None:
    """An account filter (None: every account), or :class:`ValueError`: a blank one would
    match no stream, silently."""
    if account_id is not None and (not isinstance(account_id, str) or not account_id.strip()):
        raise ValueError(f"account_id: must be a Zoom account id or None, not {account_id!r}")
    return account_id


def lease_ms(seconds: object, name: str = "lease") -> int:
    """A number of seconds or a :class:`~datetime.timedelta` (from 0.001 s to a day;
    ``older_than`` from 0) in milliseconds."""
    low = 0.0 if name != "lease" else 0.001
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not low <= seconds <= _MAX_LEASE
    ):
        raise ValueError(
            f"{name}: must be from {low:g} to {_MAX_LEASE:g} seconds (a number or a timedelta), "
            f"not {seconds!r}"
        )
    return max(int(seconds * 1000), 1 if name == "lease" else 0)


def check_report_time(at_ms: object, now: int, max_ahead_ms: int, earliest_ms: int) -> int:
    """A worker's report time (epoch ms), checked as an event time is on arrival."""
    if isinstance(at_ms, bool) or not isinstance(at_ms, int) or at_ms < 0:
        raise ValueError(f"at_ms: must be epoch milliseconds, not {at_ms!r}")
    problem = arrival_time_problem(at_ms, now, max_ahead_ms, earliest_ms)
    if problem is not None:
        raise ValueError(f"at_ms: {problem}")
    return at_ms
