"""The refused deliveries a newer version may accept: webhook bodies stored ``rejected`` or
``unhandled`` that no reprocessed delivery links to yet (``Tracker.reprocess``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, exists, select

from rtms_lifecycle.events import Source
from rtms_lifecycle.records import Outcome
from rtms_lifecycle.store.rows import stored_bytes
from rtms_lifecycle.store.tables import deliveries

__all__ = ["refused"]


def refused(
    conn: Connection,
    outcomes: Sequence[Outcome],
    since: int | None,
    after: int,
    limit: int,
) -> list[tuple[int, int, str, bytes]]:
    """``(id, received_at, outcome, raw)`` of refused webhook deliveries after id ``after``,
    received at or after ``since``, that were not reprocessed yet; oldest first."""
    d = deliveries.c
    linked = deliveries.alias("linked")
    query = (
        select(d.id, d.received_at, d.outcome, d.raw)
        .where(
            d.outcome.in_([Outcome(o).value for o in outcomes]),
            d.source == Source.WEBHOOK.value,
            d.id > after,
            ~exists().where(linked.c.reprocess_of == d.id),
        )
        .order_by(d.id)
        .limit(limit)
    )
    if since is not None:
        query = query.where(d.received_at >= since)
    return [(i, at, outcome, stored_bytes(raw)) for i, at, outcome, raw in conn.execute(query)]
