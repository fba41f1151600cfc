"""Charts as SVG drawn on the server: no script, no CDN, nothing for the browser to fetch.

Colours come from classes (``cat-abnormal``, ``state-interrupted`` ...) styled by the packaged
stylesheet, so the pages keep a strict Content-Security-Policy (no inline styles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from rtms_lifecycle.clock import format_utc
from rtms_lifecycle.display import printable
from rtms_lifecycle.records import Stream, Transition
from rtms_lifecycle.stop_reasons import StopReasonCategory
from rtms_lifecycle.timeline import (
    FLOWING,
    INTERRUPTED,
    timeline_marks,
    timeline_span,
    timeline_spans,
)

__all__ = ["ReasonBar", "ShareBucket", "reason_bars", "share_columns", "timeline"]

_WIDTH = 720


@dataclass(frozen=True, slots=True)
class ReasonBar:
    """One stop reason's bar: how many streams stopped for it in the window."""

    code: int | None
    name: str
    category: StopReasonCategory
    count: int
    share: float


@dataclass(frozen=True, slots=True)
class ShareBucket:
    """One hour or day of stops: how many there were and how many were abnormal."""

    start_ms: int
    abnormal: int
    total: int


def _escaped(text: str) -> Markup:
    """Text for the SVG: HTML escaped, and its control and bidi characters (from ids a delivery
    carries) written as escapes."""
    return escape(printable(text))


def _framed(svg: Markup, label: str) -> Markup:
    """``svg`` at its own size in a frame that scrolls sideways on a narrow screen (the page
    does not), focusable so that a keyboard scrolls it too."""
    return (
        Markup(
            f'<div class="chart-frame" tabindex="0" role="region" aria-label="{_escaped(label)}">'
        )
        + svg
        + Markup("</div>")
    )


def _as_text(summary: str, body: str) -> Markup:
    """What a chart's tooltips say, as text to open: reachable without a pointer."""
    return Markup(
        f'<details class="as-text"><summary>{_escaped(summary)}</summary>{body}</details>'
    )


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_escaped(label)}">'
    )
    return Markup(head + "".join(body) + "</svg>")


def reason_bars(bars: Sequence[ReasonBar]) -> Markup:
    """A row per stop reason, longest first as given: its name and count as HTML text (which
    wraps on a narrow screen and keeps its size) around a bar drawn as a small SVG."""
    biggest = max((bar.count for bar in bars), default=0) or 1
    rows: list[str] = []
    for bar in bars:
        length = max(bar.count * 100 / biggest, 0.5)
        label = bar.name if bar.code is None else f"{bar.code} {bar.name}"
        code = "" if bar.code is None else str(bar.code)
        rows.append(
            f'<li><span class="label">{_escaped(label)} '
            f'<span class="muted">{bar.category.value}</span></span>'
            '<svg xmlns="http://www.w3.org/2000/svg" class="barline" viewBox="0 0 100 10" '
            'preserveAspectRatio="none" aria-hidden="true">'
            f'<g class="bar" data-reason="{code}" data-name="{_escaped(bar.name)}" '
            f'data-count="{bar.count}">'
            f'<rect class="cat-{bar.category.value}" x="0" y="1" width="{length:.1f}" '
            'height="8" rx="0.6"/></g></svg>'
            f'<span class="value">{bar.count:,} · {bar.share:.1%}</span></li>'
        )
    return Markup(
        '<ol class="bars" aria-label="Streams stopped per stop reason">' + "".join(rows) + "</ol>"
    )


def share_columns(buckets: Sequence[ShareBucket], label_fmt: str) -> Markup:
    """One column per bucket: the share of its stops that were abnormal (0 to 100%)."""
    height, left, bottom, top = 170, 44, 26, 8
    plot_w, plot_h = _WIDTH - left - 8, height - bottom - top
    body = [
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}"/>'
    ]
    for pct in (0, 50, 100):
        y = top + plot_h - pct * plot_h / 100
        body.append(
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{pct}%</text>'
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>'
        )
    n = max(len(buckets), 1)
    step = plot_w / n
    rows: list[str] = []
    for i, bucket in enumerate(buckets):
        x = left + i * step
        when = format_utc(bucket.start_ms, label_fmt)
        if bucket.total:
            share = bucket.abnormal / bucket.total
            tip = (
                f"{when} UTC: {bucket.abnormal:,} of {bucket.total:,} stops abnormal ({share:.1%})"
            )
            h = max(share * plot_h, 1.0 if bucket.abnormal else 0.0)
            rows.append(
                f"<tr><td>{format_utc(bucket.start_ms, '%Y-%m-%d %H:%M')}</td>"
                f'<td class="num">{bucket.abnormal:,}</td><td class="num">{bucket.total:,}</td>'
                f'<td class="num">{share:.1%}</td></tr>'
            )
            body.append(
                f'<g class="share" data-start="{bucket.start_ms}" data-abnormal="{bucket.abnormal}"'
                f' data-total="{bucket.total}"><title>{_escaped(tip)}</title>'
                f'<rect class="hit" x="{x:.1f}" y="{top}" width="{step:.1f}" height="{plot_h}"/>'
                f'<rect class="cat-abnormal" x="{x + step * 0.1:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(step * 0.8, 1):.1f}" height="{h:.1f}"/></g>'
            )
        if i in {0, n // 2, n - 1}:
            anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
            tick_x = x if i == 0 else x + step if i == n - 1 else x + step / 2
            body.append(
                f'<text class="tick" x="{tick_x:.1f}" y="{height - 8}" '
                f'text-anchor="{anchor}">{_escaped(when)}</text>'
            )
    label = "Share of stops that were abnormal over time"
    table = (
        '<div class="scroll"><table><thead><tr><th>From (UTC)</th><th class="num">Abnormal</th>'
        '<th class="num">Stops</th><th class="num">Share</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    return _framed(_svg(_WIDTH, height, label, body), label) + _as_text(
        "The counts as a table", table
    )


_SPAN_CLASS = {FLOWING: "state-live", INTERRUPTED: "state-interrupted"}


# Label rows above the bar (y of the text baseline), and a label's width per character: 12 px
# DejaVu Sans runs to 7.6 px a character, its semi-bold (a late mark's label) to 8.2.
_LABEL_LANES = (16, 34, 52)
_CHAR_W = 8.4
_EDGE = 2


def _ticks(first: int, last: int, count: int = 5) -> list[int]:
    span = max(last - first, 1)
    return [first + span * i // (count - 1) for i in range(count)]


def timeline(stream: Stream, history: Sequence[Transition], now_ms: int) -> Markup:
    """The stream on a time axis: live (green) and interrupted (amber) spans, a mark per
    transition as it reads in event-time order (late ones ringed in red and labelled), time
    ticks in UTC."""
    height, left, right, bar_y, bar_h = 160, 24, 24, 66, 22
    plot_w = _WIDTH - left - right
    label = f"Timeline of stream {stream.stream_id}"
    if not history:
        none = _svg(_WIDTH, 40, "No transitions", ['<text x="24" y="24">No transitions</text>'])
        return _framed(none, label)
    first, end = timeline_span(stream, history, now_ms)
    span = max(end - first, 1)

    def x_of(ms: int) -> float:
        return left + (ms - first) * plot_w / span

    body = [
        f'<rect class="track" x="{left}" y="{bar_y}" width="{plot_w}" height="{bar_h}" rx="3"/>'
    ]
    for start, stop, doing in timeline_spans(history, end):
        x0, x1 = x_of(start), x_of(stop)
        body.append(
            f'<rect class="{_SPAN_CLASS[doing]}" x="{x0:.1f}" y="{bar_y}" '
            f'width="{max(x1 - x0, 1.5):.1f}" height="{bar_h}"/>'
        )
    # Labelled from the right: where marks crowd, the stop's label is the one that matters.
    lane_starts = [1e9] * len(_LABEL_LANES)
    notes: list[str] = []
    for t, name in reversed(timeline_marks(history)):
        x = x_of(t.event_ts)
        text = name.value + (" (late)" if t.late else "")
        width = len(text) * _CHAR_W
        # Centred on its mark unless that would run past an edge of the chart.
        anchor = (
            "start"
            if x - width / 2 < _EDGE
            else "end"
            if x + width / 2 > _WIDTH - _EDGE
            else "middle"
        )
        x_from = x if anchor == "start" else x - width if anchor == "end" else x - width / 2
        # The first lane with room; marks too close to label are still drawn, and every
        # transition is in the history table and in the mark's tooltip.
        lane = next((n for n, at in enumerate(lane_starts) if x_from + width + 6 < at), None)
        label = ""
        if lane is not None:
            lane_starts[lane] = x_from
            label = (
                f'<text x="{x:.1f}" y="{_LABEL_LANES[lane]}" text-anchor="{anchor}">'
                f"{_escaped(text)}</text>"
            )
        top_y = _LABEL_LANES[lane] + 4 if lane is not None else bar_y - 6
        late = " late" if t.late else ""
        # The recorded row says what was known at its arrival; the mark, what it is in
        # event-time order (the counts' reading).
        recorded = "" if name is t.name else f"; recorded as {t.name.value} at its arrival"
        tip = (
            f"{name.value} at {format_utc(t.event_ts, '%Y-%m-%d %H:%M:%S')} UTC "
            f"({t.kind}, {t.source.value}" + (", arrived late" if t.late else "") + f"{recorded})"
        )
        notes.append(f"<li>{_escaped(tip)}</li>")
        body.append(
            f'<g class="mark name-{name.value}{late}" data-transition-id="{t.id}" '
            f'data-name="{name.value}" data-late="{str(t.late).lower()}">'
            f"<title>{_escaped(tip)}</title>"
            f'<line x1="{x:.1f}" y1="{top_y}" x2="{x:.1f}" y2="{bar_y + bar_h + 6}"/>'
            f'<circle cx="{x:.1f}" cy="{bar_y + bar_h / 2}" r="{7 if t.late else 5}"/>'
            f"{label}</g>"
        )
    fmt = "%H:%M:%S" if span < 86_400_000 else "%m-%d %H:%M"
    for tick in _ticks(first, end):
        x = x_of(tick)
        anchor = "start" if tick == first else "end" if tick == end else "middle"
        body.append(
            f'<line class="grid" x1="{x:.1f}" y1="{bar_y + bar_h + 8}" x2="{x:.1f}" '
            f'y2="{bar_y + bar_h + 14}"/>'
            f'<text class="tick" x="{x:.1f}" y="{bar_y + bar_h + 28}" text-anchor="{anchor}">'
            f"{format_utc(tick, fmt)}</text>"
        )
    day = format_utc(first, "%Y-%m-%d")
    body.append(f'<text class="tick" x="{left}" y="{height - 6}">{day} (UTC)</text>')
    marks = f'<ol class="marks">{"".join(reversed(notes))}</ol>'
    return _framed(_svg(_WIDTH, height, label, body), label) + _as_text("The marks as text", marks)
