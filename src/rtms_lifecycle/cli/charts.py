"""Pictures for the terminal: a stream's timeline as a bar, stop reasons as horizontal bars."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from rich.console import Group
from rich.table import Table
from rich.text import Text

from rtms_lifecycle.machine import TransitionName
from rtms_lifecycle.records import StopReasonStat, Stream, Transition
from rtms_lifecycle.timeline import (
    FLOWING,
    INTERRUPTED,
    timeline_marks,
    timeline_span,
    timeline_spans,
)

__all__ = ["stop_reason_bars", "timeline_bar"]

_MARK: Final = {
    TransitionName.START: "S",
    TransitionName.INTERRUPT: "I",
    TransitionName.RESUME: "R",
    TransitionName.FAILOVER: "F",
    TransitionName.STOP: "X",
}


def timeline_bar(
    stream: Stream,
    history: Sequence[Transition],
    now_ms: int,
    label: Callable[[int], str],
    *,
    width: int = 64,
) -> Group:
    """One row per column of time: green ``█`` while media flows, yellow ``▒`` while interrupted
    (two glyphs: output without colours tells them apart); under it a letter per transition
    (S start, I interrupt, R resume, F failover, X stop, as the fold reads the events in
    event-time order; red: arrived late; ``*``: several in one column). ``label`` writes the
    first and last instants. ``width``: the bar's, at most the terminal's."""
    first, end = timeline_span(stream, history, now_ms)
    span = max(end - first, 1)
    # Each column shows the states the stream went through in its slice of time: interrupted
    # wins (a 20-second interruption in a long stream must not vanish), then flowing.
    spans = timeline_spans(history, end)
    bar = Text()
    for column in range(width):
        lo, hi = first + span * column // width, first + span * (column + 1) // width
        seen = {doing for a, b, doing in spans if a < hi and b > lo}
        if INTERRUPTED in seen:
            bar.append("▒", style="yellow")
        elif FLOWING in seen:
            bar.append("█", style="green")
        else:
            bar.append("·", style="dim")
    marks: list[Text | None] = [None] * width
    for transition, name in timeline_marks(history):
        column = min((transition.event_ts - first) * width // span, width - 1)
        style = "bold red" if transition.late else "bold"
        marks[column] = Text("*" if marks[column] else _MARK[name], style=style)
    mark_row = Text()
    for mark in marks:
        mark_row.append_text(mark or Text(" "))
    return Group(
        Text.assemble(("Timeline ", "bold"), f"{label(first)} → {label(end)}"),
        bar,
        mark_row,
        # Two lines that wrap between their entries, never inside one.
        Text(
            "█ media flowing  ▒ interrupted  (red: arrived late)\n"
            "S start  I interrupt  R resume  F failover  X stop",
            style="dim",
        ),
    )


def stop_reason_bars(
    stats: Sequence[StopReasonStat],
    category_style: Mapping[str, str],
    *,
    width: int = 40,
    room: int | None = None,
) -> Table:
    """A bar per stop reason (and scope), as long as its count, coloured by its category.

    ``room``: the terminal's width; the bars are shortened to fit in it beside their labels
    (to 10 columns at least), then the reasons' labels (with an ellipsis), rather than wrap.
    """
    table = Table.grid(padding=(0, 1))
    by_scope = any(stat.scope is not None for stat in stats)
    reason_width = None
    if room is not None:
        labels = [
            (stat.scope.value if stat.scope else "", _reason_label(stat), _count_label(stat))
            for stat in stats
        ]
        scopes, reasons, counts = (
            max((len(cell) for cell in column), default=0) for column in zip(*labels, strict=True)
        )
        gaps = 3 if by_scope else 2
        width = max(10, min(width, room - scopes - reasons - counts - gaps))
        reason_width = max(1, room - scopes - counts - gaps - width)
    if by_scope:
        table.add_column()
    table.add_column(justify="right", no_wrap=True, overflow="ellipsis", max_width=reason_width)
    table.add_column()
    table.add_column(justify="right")
    biggest = max((stat.count for stat in stats), default=0) or 1
    for stat in stats:
        length = max(round(stat.count * width / biggest), 1)
        style = category_style.get(stat.stop_reason_category.value, "")
        cells: list[str | Text] = [stat.scope.value if stat.scope else ""] if by_scope else []
        cells += [_reason_label(stat), Text("█" * length, style=style), _count_label(stat)]
        table.add_row(*cells)
    return table


def _reason_label(stat: StopReasonStat) -> str:
    code = "" if stat.stop_reason is None else f"{stat.stop_reason} "
    return f"{code}{stat.stop_reason_name}"


def _count_label(stat: StopReasonStat) -> str:
    return f"{stat.count:,} ({stat.share:.1%})"
