"""Retention: removing what is old, through the one path the database lets rows go.

A prune removes, for a cutoff (now minus ``older_than``):

- every stream that stopped before the cutoff, with all of its deliveries and transitions;
- every delivery received before the cutoff that belongs to no stored stream (rejected and
  unhandled bodies, account alerts, URL validations);
- every concurrency alert received before the cutoff;
- every dashboard sign-out whose session has expired anyway (whatever the cutoff).

A stream that is not stopped is kept whole, however old. So are the newest delivery and the newest
transition, with their stream: SQLite numbers a new row after the largest id, and a removed
largest id would be handed out again, behind the durable feed's cursor.

It works in short transactions (a few hundred streams, a few thousand deliveries each), so that
receivers keep writing meanwhile; each one appends a row to ``prunes`` with what it removed, so
that every removed row is accounted for even if the prune is interrupted. Only inside them does
the audit history's guard let transitions go (migration 0006), and only those of streams whose
row is already gone. The freed space is reused by new rows; ``vacuum`` gives it back to the file
system (SQLite: ``VACUUM``) or makes it reusable at once (PostgreSQL: ``VACUUM ANALYZE``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Final

from rtms_lifecycle.records import PruneRecord, PruneResult
from rtms_lifecycle.store import retention as _pruning
from rtms_lifecycle.store.core import Store

__all__ = ["MIN_RETENTION", "PruneRecord", "PruneResult", "prune"]

#: The shortest retention a prune accepts. Zoom retries a delivery for about two hours; a retry of
#: an event of a stream pruned before would start that stream again from that one event.
MIN_RETENTION: Final = timedelta(days=1)


def prune(
    store: Store, older_than: timedelta, now: Callable[[], int], *, dry_run: bool, vacuum: bool
) -> PruneResult:
    """Remove (or with ``dry_run`` count) what is older than ``older_than``; see the module."""
    if older_than < MIN_RETENTION:
        raise ValueError(
            f"older_than must be at least {MIN_RETENTION.days} day: Zoom retries deliveries for "
            "about two hours, and a retry of a pruned stream's event would start it again"
        )
    cutoff = now() - older_than // timedelta(milliseconds=1)
    return _pruning.prune(store, cutoff, now, dry_run=dry_run, vacuum=vacuum)
