"""A stream's timeline, its span and marks: shared by the dashboard's SVG and the terminal's bar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from rtms_lifecycle.events import EventKind
from rtms_lifecycle.machine import State, TransitionName, transition_table
from rtms_lifecycle.records import Stream, Transition

__all__ = ["FLOWING", "INTERRUPTED", "timeline_marks", "timeline_span", "timeline_spans"]

FLOWING: Final = "flowing"
INTERRUPTED: Final = "interrupted"
# What each transition leaves the stream doing.
_AFTER: Final = {
    TransitionName.START: FLOWING,
    TransitionName.RESUME: FLOWING,
    TransitionName.FAILOVER: FLOWING,
    TransitionName.INTERRUPT: INTERRUPTED,
    TransitionName.STOP: None,
}
_CELLS: Final = transition_table()


def timeline_marks(history: Sequence[Transition]) -> list[tuple[Transition, TransitionName]]:
    """Each row of ``history`` (in event-time order) with what it means in that order, as the
    fold that counts interruptions, resumes and failovers reads it; a row the fold ignores in
    that order (a ``resumed`` after media flows again, anything after the stop) is left out.

    A row's recorded ``name`` and ``to_state`` say what was known at its arrival (the audit
    history is never rewritten): a ``started`` that arrived before a late ``interrupted`` of an
    earlier time was recorded as a failover, yet in event-time order it is a resume.
    """
    state = State.NEW
    marks = []
    for row in history:
        cell = _CELLS.get((state, EventKind(row.kind)))
        if cell is None:
            continue
        state, name = cell
        marks.append((row, name))
    return marks


def timeline_span(stream: Stream, history: Sequence[Transition], now_ms: int) -> tuple[int, int]:
    """First and last instant (epoch ms) of the stream's timeline: its first transition to its
    stop, or to now while it is live, however long ago its last event was (a stream whose stopped
    webhook never came shows as live to now, until ``expire`` closes it). ``history`` is in
    event-time order."""
    first = history[0].event_ts if history else now_ms
    last = max((t.event_ts for t in history), default=now_ms)
    if stream.state is State.STOPPED:
        return first, last
    return first, max(now_ms, last)


def timeline_spans(history: Sequence[Transition], end: int) -> list[tuple[int, int, str]]:
    """``(start, stop, FLOWING or INTERRUPTED)`` spans of the stream up to ``end``."""
    marks = timeline_marks(history)
    spans = []
    for (this, name), following in zip(marks, [*marks[1:], None], strict=True):
        doing = _AFTER[name]
        if doing is not None:
            spans.append((this.event_ts, following[0].event_ts if following else end, doing))
    return spans
