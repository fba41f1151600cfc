"""What a stream's timeline spans: shared by the dashboard's SVG and the terminal's bar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from rtms_lifecycle.machine import State, TransitionName
from rtms_lifecycle.records import Stream, Transition

__all__ = ["FLOWING", "INTERRUPTED", "timeline_span", "timeline_spans"]

FLOWING: Final = "flowing"
INTERRUPTED: Final = "interrupted"
# What each transition leaves the stream doing. Read from the names, not the rows' to_state:
# the history records what was known at each arrival, so a late row's to_state is the re-folded
# state of the whole stream, not the state that began at its event time.
_AFTER: Final = {
    TransitionName.START: FLOWING,
    TransitionName.RESUME: FLOWING,
    TransitionName.FAILOVER: FLOWING,
    TransitionName.INTERRUPT: INTERRUPTED,
    TransitionName.STOP: None,
}


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
    spans = []
    for this, following in zip(history, [*history[1:], None], strict=True):
        doing = _AFTER[this.name]
        if doing is not None:
            spans.append((this.event_ts, following.event_ts if following else end, doing))
    return spans
