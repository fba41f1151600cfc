"""The row mapping: column orders checked at import, and rows back to records."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table

from rtms_lifecycle import EventKind, State
from rtms_lifecycle._rows import _columns, state_from_row, state_row
from rtms_lifecycle.events import StreamEvent, parse_delivery
from rtms_lifecycle.machine import fold

from ._deliveries import raw


def test_a_column_the_table_lacks_is_an_error_even_under_python_o() -> None:
    """A column order naming a column its table lacks raises (an assert would vanish under -O)."""
    table = Table("t", MetaData(), Column("a", Integer))
    with pytest.raises(RuntimeError, match=r"table t has no column \['b'\]"):
        _columns(table, ("a", "b"))


def test_a_stream_state_survives_its_row() -> None:
    """A folded state written as a stream row reads back equal."""
    events = [
        parse_delivery(raw(kind, "s1", ts))
        for kind, ts in [(EventKind.STARTED, 1), (EventKind.STOPPED, 2)]
    ]
    state, _ = fold("s1", [ev for ev in events if isinstance(ev, StreamEvent)])
    assert state.state is State.STOPPED
    assert state_from_row(state_row(state)) == state
