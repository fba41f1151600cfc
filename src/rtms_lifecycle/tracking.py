"""What :class:`Tracker` and :class:`AsyncTracker` share: their arguments' checks and the
logging of a failed callback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rtms_lifecycle.defaults import MAX_BATCH_SIZE

if TYPE_CHECKING:
    from rtms_lifecycle.records import Transition

__all__ = ["as_set", "callback_failed", "check_batch_size"]

# Both trackers log under one name: operators' log filters match it.
log = logging.getLogger("rtms_lifecycle.tracker")


def as_set(value: Any, kind: Callable[[Any], Any]) -> frozenset[Any] | None:
    """One value or many (a string is one) as a set of ``kind``; None stays None."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return frozenset(kind(v) for v in values)


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
