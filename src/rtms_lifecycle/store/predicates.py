"""The conditions of the partial indexes on deliveries, spelt once.

The schema (``_tables``, the migrations) declares its partial indexes with them, and every query
repeats them word for word: SQLite's planner uses a partial index only for a query that states
its condition in the same words. No SQLAlchemy here: the write path reads them too.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EVENT_PREDICATE",
    "NOT_EVENT_PREDICATE",
    "STREAM_DELIVERY_PREDICATES",
    "UNAPPLIED_PREDICATE",
]

# The deliveries that are a stream's events: queries must repeat this exact predicate for the
# planners to use the partial index.
EVENT_PREDICATE: Final = "outcome IN ('applied', 'ignored')"
#: Every other delivery of a stream (duplicates, conflicts, rejections): listed by a second
#: partial index, so that an applied event writes one stream-keyed index entry, not two.
NOT_EVENT_PREDICATE: Final = "outcome NOT IN ('applied', 'ignored')"
#: Deliveries listed by outcome: all but the applied ones, the bulk of the table, whose newest
#: are simply the newest rows.
UNAPPLIED_PREDICATE: Final = "outcome != 'applied'"
#: A stream's deliveries, in the words of the two partial indexes that list them by stream: a
#: query or delete by stream runs once for each.
STREAM_DELIVERY_PREDICATES: Final = (EVENT_PREDICATE, NOT_EVENT_PREDICATE)
