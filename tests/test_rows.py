"""The row mapping: column orders that name their tables' columns, and rows back to records."""

from __future__ import annotations

import pytest
from sqlalchemy import Table

from rtms_lifecycle import EventKind, State
from rtms_lifecycle.events import StreamEvent
from rtms_lifecycle.machine import fold
from rtms_lifecycle.parsing import parse_delivery
from rtms_lifecycle.store import rows as _rows
from rtms_lifecycle.store import tables as _tables
from rtms_lifecycle.store.rows import state_from_row, state_row

from ._deliveries import raw


@pytest.mark.parametrize(
    ("names", "table"),
    [
        (_rows.STREAM_COLUMNS, _tables.streams),
        (_rows.STREAM_RECORD_COLUMNS, _tables.streams),
        (_rows.EVENT_COLUMNS, _tables.deliveries),
        (_rows.DELIVERY_COLUMNS, _tables.deliveries),
        (_rows.TRANSITION_COLUMNS, _tables.transitions),
        (_rows.ALERT_COLUMNS, _tables.concurrency_alerts),
    ],
    ids=["stream", "stream record", "event", "delivery", "transition", "alert"],
)
def test_every_column_order_names_its_tables_columns(names: tuple[str, ...], table: Table) -> None:
    """Each column order of the row mapping names only columns its table has."""
    assert [name for name in names if name not in table.c] == []


def test_a_stream_state_survives_its_row() -> None:
    """A folded state written as a stream row reads back equal."""
    events = [
        parse_delivery(raw(kind, "s1", ts))
        for kind, ts in [(EventKind.STARTED, 1), (EventKind.STOPPED, 2)]
    ]
    state, _ = fold("s1", [ev for ev in events if isinstance(ev, StreamEvent)])
    assert state.state is State.STOPPED
    assert state_from_row(state_row(state)) == state
