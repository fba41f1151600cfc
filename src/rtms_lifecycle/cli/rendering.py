"""What the command line prints: styles, time and size formats, and its tables.

Rich is imported inside the functions that draw, so that importing this module (to build the
commands, to serve `--help`) costs nothing; the dashboard shares the time formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final
from weakref import WeakKeyDictionary

import click

from rtms_lifecycle.clock import DASH, format_duration, format_time
from rtms_lifecycle.display import printable

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

    from rtms_lifecycle.records import (
        AuditReport,
        Claim,
        ClaimEvent,
        ConcurrencyAlertRecord,
        DeliveryRecord,
        InterruptionStats,
        StopReasonStat,
        Stream,
        Transition,
        UnhandledEventStat,
    )
    from rtms_lifecycle.retention import PruneRecord, PruneResult
    from rtms_lifecycle.subscriptions import SubscriptionStatus
    from rtms_lifecycle.tracker import IngestSummary

__all__ = [
    "CATEGORY_STYLE",
    "audit_report",
    "alerts_table",
    "deliveries_table",
    "emit_json",
    "emit_json_pages",
    "follow_line",
    "history_table",
    "interruptions_table",
    "make_console",
    "outcomes_table",
    "plural",
    "prune_table",
    "prunes_table",
    "print_pages",
    "print_table",
    "report_ingest",
    "size",
    "stop_reasons_table",
    "stream_details",
    "streams_table",
    "subscriptions_table",
    "unhandled_table",
]

# What a narrow terminal drops of a table, and which column wraps instead (_table's arguments).
_NARROW: Final[WeakKeyDictionary[Table, tuple[tuple[str, ...], str | None]]] = WeakKeyDictionary()
# A flexible column wraps down to this width before a column is dropped.
_FLEXIBLE_WIDTH: Final = 20
# Rich lays a table out at a few hundred microseconds a cell: past this many rows, a table whose
# cells all fit on one line is drawn by print_table itself.
_QUICK_ROWS: Final = 200
# Piped output is read by grep and friends: never wrap a row because an imagined terminal is
# 80 columns wide.
_PIPE_WIDTH: Final = 240

# Keyed by the enums' values (StrEnum members look them up): building these imports nothing.
_STATE_STYLE: Final = {
    "started": "green",
    "resumed": "green",
    "interrupted": "yellow",
    "stopped": "dim",
    "new": "dim",
}
CATEGORY_STYLE: Final = {
    "normal": "green",
    "abnormal": "red",
    "config_error": "red",
    "blocked": "magenta",
    "revoked": "magenta",
    "app_closed": "cyan",
    "expired": "yellow",
    "unknown": "yellow",
}
_OUTCOME_STYLE: Final = {
    "applied": "green",
    "ignored": "dim",
    "duplicate": "dim",
    "conflict": "yellow",
    "rejected": "red",
    "unhandled": "yellow",
}


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    from rtms_lifecycle.cli.errors import output_closed

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # Rich's own exits 1, which reads as a failure under `set -o pipefail`.
            self.quiet = True
            raise output_closed()

    console = (Console if stderr else _Console)(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = _PIPE_WIDTH
    return console


def emit_json(data: Any) -> None:
    # ASCII escapes: a stored lone surrogate or a legacy stdout encoding cannot break the output.
    click.echo(json.dumps(data))


def emit_json_pages(pages: Iterable[Sequence[Any]]) -> None:
    """A JSON list written a page of items at a time, byte for byte ``emit_json(list)``."""
    sep = "["
    for page in pages:
        if page:
            click.echo(sep + ", ".join(json.dumps(item) for item in page), nl=False)
            sep = ", "
    click.echo("[]" if sep == "[" else "]")


# --- formats --------------------------------------------------------------------------------------


def _styled(value: str | None, style: str | None) -> Text:
    """A cell of ``value`` as it is (never read as markup), its control and bidi characters
    escaped: ids and names come from deliveries, whose senders chose them."""
    from rich.text import Text

    return Text(printable(value) if value is not None else DASH, style=style or "")


def _shown(value: str | None) -> Text:
    """An untrusted value's cell: see :func:`_styled`."""
    return _styled(value or None, None)


def _stop_reason(stream: Stream) -> Text:
    if not stream.stopped:
        return _styled(None, None)
    name = stream.stop_reason_name or DASH
    label = name if stream.stop_reason is None else f"{stream.stop_reason} {name}"
    category = stream.stop_reason_category
    return _styled(label, CATEGORY_STYLE.get(category or ""))


def _table(
    title: str | None,
    *columns: str,
    right: Iterable[str] = (),
    narrow: Sequence[str] = (),
    flexible: str | None = None,
) -> Table:
    """A table of these columns. ``narrow``: the columns a narrow terminal does without, the
    least needed first; ``flexible``: the free-text column that wraps rather than go."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    aligned = set(right)
    for column in columns:
        table.add_column(column, justify="right" if column in aligned else "left")
    if narrow:
        _NARROW[table] = (tuple(narrow), flexible)
    return table


def _whole(table: Table, column: int, values: Iterable[str | None]) -> None:
    """Never shorten this column (stream ids are copied from it); the others give way."""
    table.columns[column].no_wrap = True
    table.columns[column].min_width = max(
        (len(printable(v) if v else DASH) for v in values), default=None
    )


def streams_table(title: str, streams: Sequence[Stream]) -> Table:
    from rtms_lifecycle.clock import now_ms

    now = now_ms()

    table = _table(
        title,
        "Stream",
        "Scope",
        "State",
        "Started (UTC)",
        "Duration",
        "Stop reason",
        "Interruptions",
        "Failovers",
        right=("Duration", "Interruptions", "Failovers"),
        narrow=("Failovers", "Interruptions", "Started (UTC)", "Scope"),
        flexible="Stop reason",
    )
    _whole(table, 0, (stream.stream_id for stream in streams))
    for stream in streams:
        # A live stream's duration so far, as the dashboard shows it.
        end = now if stream.stopped_at is None and not stream.stopped else stream.stopped_at
        duration = (
            end - stream.started_at if end is not None and stream.started_at is not None else None
        )
        table.add_row(
            _shown(stream.stream_id),
            stream.scope.value,
            _styled(stream.state.value, _STATE_STYLE[stream.state]),
            format_time(stream.started_at),
            format_duration(duration),
            _stop_reason(stream),
            str(stream.interruptions),
            str(stream.failovers),
        )
    return table


def stream_details(stream: Stream) -> Table:
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("stream", stream.stream_id),
        ("scope", f"{stream.scope.value} {stream.scope_id or DASH}"),
        ("state", _styled(stream.state.value, _STATE_STYLE[stream.state])),
        ("account", stream.account_id or DASH),
        ("operator", stream.operator_id or DASH),
        ("session key", stream.session_key or DASH),
        ("server urls", stream.server_urls or DASH),
        ("started", format_time(stream.started_at)),
        ("stopped", format_time(stream.stopped_at)),
        ("last event", format_time(stream.last_event_at)),
        ("stop reason", _stop_reason(stream)),
        (
            "counts",
            f"{plural(stream.interruptions, 'interruption')}, "
            f"{plural(stream.resumes, 'resume')}, {plural(stream.failovers, 'failover')}",
        ),
    ]
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(printable(value)))
    return grid


def history_table(history: Sequence[Transition]) -> Table:
    table = _table(
        "History (event time)",
        "Event time (UTC)",
        "Event",
        "Transition",
        "State",
        "Source",
        "Recorded (UTC)",
        narrow=("Recorded (UTC)", "Source", "Event"),
    )
    for transition in history:
        late = " (late)" if transition.late else ""
        table.add_row(
            format_time(transition.event_ts),
            _shown(transition.kind),
            transition.name.value,
            f"{transition.from_state.value} → {transition.to_state.value}",
            transition.source.value,
            format_time(transition.recorded_at) + late,
        )
    return table


def claim_history_table(events: Sequence[ClaimEvent]) -> Table:
    table = _table(
        "Claims (as recorded)",
        "At (UTC)",
        "Event",
        "Worker",
        "Token",
        "Source",
        "Reason",
        right=("Token",),
        narrow=("Source", "Reason"),
        flexible="Reason",
    )
    for event in events:
        table.add_row(
            format_time(event.at),
            _shown(event.event),
            _shown(event.worker),
            f"{event.token:,}",
            _shown(event.source),
            _shown(event.reason),
        )
    return table


def claims_table(claims: Sequence[Claim], now: int, worker: str | None = None) -> Table | Text:
    from rich.text import Text

    if not claims and worker is not None:
        return Text(f"No claims held by worker {printable(repr(worker))}.")
    if not claims:
        # All a read of the claims knows: a worker may run and hold none (between streams, or
        # its children failing at once: see `work`'s children_failing lines).
        return Text(
            "No claims held now: no live stream is claimed. A running worker holds none while "
            "it has no stream to take, or while its children keep failing (its "
            "children_failing lines say so)."
        )
    table = _table(
        "Claims (by worker)",
        "Worker",
        "Stream",
        "Token",
        "State",
        "Connected",
        "Held for",
        "Renewed",
        "Expires in",
        right=("Token", "Held for", "Renewed", "Expires in"),
        narrow=("Renewed", "Held for"),
    )
    _whole(table, 1, (c.stream_id for c in claims))
    for claim in claims:
        left = claim.expires_at - now
        table.add_row(
            _shown(claim.worker),
            _shown(claim.stream_id),
            f"{claim.token:,}",
            claim.stream.state.value,
            "yes" if claim.connected else "no",
            format_duration(max(now - claim.claimed_at, 0)),
            f"{format_duration(max(now - claim.renewed_at, 0))} ago",
            format_duration(left)
            if left > 0
            else _styled(f"EXPIRED {format_duration(-left)} ago", "bold red"),
        )
    return table


def outcomes_table(summary: IngestSummary) -> Table:
    from rich.text import Text

    from rtms_lifecycle.records import Outcome

    table = _table(None, "Outcome", "Deliveries", right=("Deliveries",))
    for outcome in Outcome:
        table.add_row(_styled(outcome.value, _OUTCOME_STYLE[outcome]), f"{summary[outcome]:,}")
    table.add_row(Text("total", style="bold"), f"{summary.total:,}")
    return table


def stop_reasons_table(stats: Sequence[StopReasonStat], by_scope: bool) -> Table:
    columns = ["Scope"] if by_scope else []
    columns += ["Code", "Name", "Category", "Streams", "Share", "Median duration"]
    table = _table(
        "Why streams stopped",
        *columns,
        right=("Code", "Streams", "Share", "Median duration"),
        narrow=("Median duration", "Category", "Code"),
    )
    for stat in stats:
        cells: list[str | Text] = [stat.scope.value if stat.scope else DASH] if by_scope else []
        cells += [
            DASH if stat.stop_reason is None else str(stat.stop_reason),
            _shown(stat.stop_reason_name),
            _styled(stat.stop_reason_category.value, CATEGORY_STYLE[stat.stop_reason_category]),
            f"{stat.count:,}",
            f"{stat.share:.1%}",
            format_duration(stat.median_duration_ms),
        ]
        table.add_row(*cells)
    return table


def interruptions_table(rows: Sequence[tuple[str | None, InterruptionStats]]) -> Table:
    by_scope = any(scope is not None for scope, _ in rows)
    columns = ["Scope"] if by_scope else []
    # Headers that differ in their first word: a narrow column wraps them, never confuses them.
    columns += [
        "Streams",
        "Interrupted streams",
        "Interruptions",
        "Recovered",
        "Median recovery",
        "Stopped while interrupted",
    ]
    table = _table(
        "Interruptions",
        *columns,
        right=columns[1:] if by_scope else columns,
        narrow=(
            "Stopped while interrupted",
            "Recovered",
            "Median recovery",
            "Streams",
            "Interrupted streams",
        ),
    )
    for scope, stats in rows:
        cells: list[str | Text] = [_shown(scope)] if by_scope else []
        cells += [
            f"{stats.streams:,}",
            f"{stats.interrupted_streams:,}",
            f"{stats.interruptions:,}",
            f"{stats.recovered:,}",
            format_duration(stats.median_recovery_ms),
            f"{stats.stopped_while_interrupted:,}",
        ]
        table.add_row(*cells)
    return table


def unhandled_table(stats: Sequence[UnhandledEventStat]) -> Table:
    table = _table(
        "Unhandled event names",
        "Event",
        "Deliveries",
        "First seen (UTC)",
        "Last seen (UTC)",
        "RTMS?",
        right=("Deliveries",),
        narrow=("First seen (UTC)", "Last seen (UTC)", "RTMS?", "Deliveries"),
    )
    # The names it exists to show: whole, folded onto a second line if the terminal is narrower.
    table.columns[0].overflow = "fold"
    for stat in stats:
        table.add_row(
            _styled(stat.event, "yellow" if stat.rtms else None),
            f"{stat.count:,}",
            format_time(stat.first_seen),
            format_time(stat.last_seen),
            "yes" if stat.rtms else "",
        )
    return table


def deliveries_table(
    records: Sequence[DeliveryRecord], title: str | None = "Deliveries (newest first)"
) -> Table:
    from rich.text import Text

    table = _table(
        title,
        "ID",
        "Received (UTC)",
        "Source",
        "Event",
        "Outcome",
        "Stream",
        "Error / detail",
        right=("ID",),
        narrow=("Source", "Received (UTC)", "Event", "ID"),
        flexible="Error / detail",
    )
    _whole(table, 5, (record.stream_id for record in records))
    for record in records:
        problem = "; ".join(f"{e['field']}: {e['reason']}" for e in record.error or ())
        table.add_row(
            str(record.id),
            format_time(record.received_at),
            record.source.value,
            _shown(record.event),
            _styled(record.outcome.value, _OUTCOME_STYLE[record.outcome]),
            _shown(record.stream_id),
            Text(printable(problem or record.detail or "")),
        )
    return table


def alerts_table(alerts: Sequence[ConcurrencyAlertRecord]) -> Table:
    table = _table(
        "Concurrency alerts (newest first)",
        "Event time (UTC)",
        "Event",
        "Streams",
        "Limit",
        "Percent",
        "Operator",
        "Refused",
        right=("Streams", "Limit", "Percent"),
        narrow=("Operator", "Limit", "Event", "Percent", "Refused"),
        flexible="Refused",
    )
    for alert in alerts:
        refused = f"{alert.id_field} {alert.id_value}" if alert.id_field else DASH
        table.add_row(
            format_time(alert.event_ts),
            _shown(alert.event),
            f"{alert.concurrency_number:,}",
            DASH if alert.concurrency_limit is None else f"{alert.concurrency_limit:,}",
            DASH if alert.percentage is None else f"{alert.percentage}%",
            _shown(alert.operator_id),
            _shown(refused),
        )
    return table


def report_ingest(out: Console, summary: IngestSummary, seconds: float, verb: str = "Read") -> None:
    rate = summary.total / seconds if seconds > 0 else 0.0
    read = plural(summary.total, "delivery", "deliveries")
    out.print(f"{verb} {read} in {seconds:.1f} s ({rate:,.0f}/s).", markup=False)
    out.print(outcomes_table(summary))


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 stream``, ``2 streams``: the count and its noun (``nouns``: an irregular plural)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def size(n: int) -> str:
    """A byte count in the largest unit that keeps it at 1 or more: ``512 bytes``, ``3.4 MB``."""
    if n < 1024:
        return plural(n, "byte")
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            break
    return f"{value:,.1f} {unit}"


def follow_line(transition: Transition, stream: Stream, as_json: bool) -> str:
    from rtms_lifecycle.machine import State
    from rtms_lifecycle.subscriptions import transition_message

    if as_json:
        return json.dumps(transition_message(transition, stream))
    # The stream's stop reason, on the stop's own line only: beside a start it reads as the
    # start's reason.
    stopping = transition.to_state is State.STOPPED and stream.stop_reason_name
    reason = f" {stream.stop_reason_name}" if stopping else ""
    return printable(
        f"{format_time(transition.event_ts)} {transition.stream_id} {stream.scope.value} "
        f"{transition.from_state.value} -> {transition.to_state.value} ({transition.name.value})"
        f"{reason}"
    )


def subscriptions_table(found: Sequence[SubscriptionStatus]) -> Table | Text:
    from rich.text import Text

    if not found:
        return Text(
            "No durable consumers yet: `rtms-lifecycle follow NAME` or `forward NAME URL` "
            "starts one."
        )
    table = _table(
        plural(len(found), "subscription"),
        "consumer",
        "cursor",
        "lag",
        "parked",
        "delivered",
        "held by",
        "last error",
        right=("lag", "parked", "delivered"),
    )
    for status in found:
        error = (
            f"{format_time(status.last_error_at)} {status.last_error}"
            if status.last_error
            else None
        )
        table.add_row(
            _shown(status.consumer),
            _shown(status.cursor),
            f"{status.lag:,}",
            _styled(f"{status.parked:,}", "red" if status.parked else None),
            f"{status.delivered:,}",
            _shown(status.holder),
            _styled(error, "red"),
        )
    return table


def prune_table(result: PruneResult) -> Table:
    table = _table(None, "Rows", "Count", right=["Count"])
    for key, count in result.as_dict().items():
        table.add_row(key, f"{count:,}")
    return table


def prunes_table(found: Sequence[PruneRecord]) -> Table | Text:
    from rich.text import Text

    if not found:
        return Text(
            "No prunes yet: `rtms-lifecycle prune --older-than 90d` removes old stopped streams "
            "(`--dry-run` first counts what it would remove)."
        )
    table = _table(
        "Prunes (newest first)",
        "Started (UTC)",
        "Finished (UTC)",
        "Cutoff (UTC)",
        "Streams",
        "Deliveries",
        "Transitions",
        "Alerts",
        "Run",
        right=("Streams", "Deliveries", "Transitions", "Alerts"),
    )
    for record in found:
        table.add_row(
            format_time(record.started_at),
            format_time(record.finished_at),
            format_time(record.cutoff),
            *(
                f"{n:,}"
                for n in (record.streams, record.deliveries, record.transitions, record.alerts)
            ),
            "complete" if record.complete else "partial",
        )
    return table


def print_table(out: Console, table: RenderableType) -> None:
    """Print ``table`` as Rich draws it; a long one whose cells fit on a line, drawn here, in a
    fraction of the time (``deliveries --limit 0`` draws thousands of rows).

    On a terminal too narrow for the whole table, its less needed columns are left out (and
    named under it) rather than every column squeezed to a letter and an ellipsis.
    """
    from rich.table import Table

    if not isinstance(table, Table):
        out.print(table)
        return
    hidden = _fit(out, table)
    quick = _quick_table(out, table) if table.row_count >= _QUICK_ROWS else None
    out.print(table if quick is None else quick, soft_wrap=quick is not None)
    if hidden:
        _say_hidden(out, hidden)


def _say_hidden(out: Console, hidden: Sequence[str]) -> None:
    out.print(
        f"Left out at this width: {', '.join(hidden)} (a wider terminal shows them; --json "
        "has every field).",
        style="dim",
        markup=False,
    )


def _cell_texts(out: Console, table: Table) -> list[list[Text]] | None:
    """Each column's header and cells as Texts, or None if a cell is anything else."""
    from rich.text import Text

    columns = []
    for column in table.columns:
        texts = []
        for cell in (column.header, *column.cells):
            text = out.render_str(cell) if isinstance(cell, str) else cell
            if not isinstance(text, Text):
                return None
            texts.append(text)
        columns.append(texts)
    return columns


def _fit(out: Console, table: Table) -> list[str]:
    """Leave out the columns ``table`` can do without until it fits the console; their names."""
    from rich.cells import cell_len

    narrow, flexible = _NARROW.get(table, ((), None))
    columns = _cell_texts(out, table) if narrow else None
    if columns is None:
        return []
    # What each column needs: its longest line and the padding (a header wraps between its
    # words); a flexible one can wrap.
    needs = {}
    for column, (head, *cells) in zip(table.columns, columns, strict=True):
        words = [cell_len(word) for word in head.plain.split()]
        lines = [cell_len(line) for text in cells for line in text.plain.split("\n")]
        width = 2 + max(words + lines, default=0)
        flexes = column.header == flexible
        needs[str(column.header)] = min(width, _FLEXIBLE_WIDTH) if flexes else width
    hidden = []
    for header in narrow:
        if sum(needs.values()) + len(needs) + 1 <= out.width:
            break
        del needs[header]
        hidden.append(header)
    table.columns[:] = [column for column in table.columns if column.header in needs]
    return hidden


def _quick_table(out: Console, table: Table) -> Text | None:
    """The table as one Text, line for line what Rich draws, or None if Rich must lay it out:
    a cell over a line, a table wider than the console, or a style this does not draw."""
    layout = _quick_layout(out, table)
    if layout is None:
        return None
    widths, columns = layout
    return _quick_lines(out, table, widths, columns, head=True, foot=True)


def _quick_layout(
    out: Console, table: Table, at_least: Sequence[int] = ()
) -> tuple[list[int], list[list[Text]]] | None:
    """The widths :func:`_quick_table` draws ``table`` at (each at least ``at_least``'s) and its
    cells, or None if Rich must lay it out."""
    from rich.box import Box
    from rich.cells import cell_len

    if (
        not isinstance(table.box, Box)
        or (table.padding, table.show_edge, table.show_header, table.expand)
        != ((0, 1, 0, 1), True, True, False)
        or table.show_lines
        or table.show_footer
        or table.caption
        or table.row_styles
        or any(row.style or row.end_section for row in table.rows)
        or not (table.title is None or isinstance(table.title, str))
    ):
        return None
    columns = _cell_texts(out, table)
    if columns is None or any("\n" in text.plain for texts in columns for text in texts):
        return None
    # Rich's widths include the padding, a space each side.
    widths = [
        max(column.min_width or 0, 2 + max(cell_len(t.plain) for t in texts))
        for column, texts in zip(table.columns, columns, strict=True)
    ]
    if len(at_least) == len(widths):
        widths = [max(a, b) for a, b in zip(widths, at_least, strict=True)]
    if sum(widths) + len(widths) + 1 > out.width:
        return None
    return widths, columns


def _quick_lines(
    out: Console,
    table: Table,
    widths: Sequence[int],
    columns: Sequence[Sequence[Text]],
    *,
    head: bool,
    foot: bool,
) -> Text:
    """The table's rows drawn at ``widths``; ``head``: its title, top and header before them;
    ``foot``: its bottom line after them."""
    from rich.box import Box
    from rich.cells import cell_len
    from rich.text import Text

    assert isinstance(table.box, Box)
    box = table.box.substitute(out.options, safe=out.safe_box)
    lines: list[Text] = []
    if head and isinstance(table.title, str):
        lines.append(Text(table.title.ljust(sum(widths) + len(widths) + 1), style="table.title"))
    if head:
        lines.append(Text(box.get_top(widths)))
    for row in range(0 if head else 1, table.row_count + 1):
        left, middle, right = (
            (box.head_left, box.head_vertical, box.head_right)
            if row == 0
            else (box.mid_left, box.mid_vertical, box.mid_right)
        )
        line = Text(left)
        for number, (column, texts) in enumerate(zip(table.columns, columns, strict=True)):
            cell = texts[row]
            gap = " " * (widths[number] - 2 - cell_len(cell.plain))
            line.append(" ")
            if column.justify == "right":
                line.append(gap)
            line.append_text(cell if row else Text.assemble(cell, style=table.header_style or ""))
            if column.justify != "right":
                line.append(gap)
            line.append(" ")
            line.append(right if number == len(widths) - 1 else middle)
        lines.append(line)
        if row == 0:
            lines.append(Text(box.get_row(widths, "head")))
    if foot:
        lines.append(Text(box.get_bottom(widths)))
    return Text("\n").join(lines)


def print_pages(out: Console, pages: Iterable[Table]) -> bool:
    """Print one listing read a page at a time (each page a table of the same columns, only
    the first with a title) as one table, each page as soon as it is read: ``| head`` and
    ``less`` see the first rows at once, and a closed pipe ends the command at the next page.
    Whether any page had a row.

    The first page decides which columns a narrow terminal leaves out. A later page with a
    wider cell widens its rows only; a page Rich must lay out (a cell over a line) is drawn as
    a table of its own, its header repeated.
    """
    from rich.box import Box

    hidden: list[str] | None = None
    widths: list[int] = []  # of the table being drawn; empty: none is open
    box: Box | None = None
    rows = False
    for table in pages:
        if hidden is None:
            if not table.row_count:
                return False
            hidden = _fit(out, table)
        else:
            table.columns[:] = [c for c in table.columns if c.header not in hidden]
        rows = rows or bool(table.row_count)
        layout = _quick_layout(out, table, widths)
        if layout is None or not isinstance(table.box, Box):
            if box is not None:
                out.print(box.get_bottom(widths), soft_wrap=True)
                widths, box = [], None
            if table.row_count:
                out.print(table)
            continue
        head = box is None
        widths, columns = layout
        box = table.box.substitute(out.options, safe=out.safe_box)
        if table.row_count or head:
            out.print(
                _quick_lines(out, table, widths, columns, head=head, foot=False), soft_wrap=True
            )
    if box is not None:
        out.print(box.get_bottom(widths), soft_wrap=True)
    if hidden:
        _say_hidden(out, hidden)
    return rows


def audit_report(report: AuditReport) -> str:
    """What ``audit verify`` found, in lines: the chains checked, then each break."""
    checked = (
        f"{plural(report.streams, 'chain')}, {plural(report.transitions, 'transition')} and "
        f"{plural(report.pruned_chains, 'pruned chain')} checked"
    )
    lines = [f"{checked}: {'no break' if not report.breaks else 'BROKEN'}."]
    for found in report.breaks:
        at = f"transition {found.transition_id}" if found.transition_id is not None else "head"
        lines.append(f"stream {found.stream_id}, {at}: {found.reason}")
        lines.append(f"  expected {found.expected or DASH}")
        lines.append(f"  stored   {found.stored or DASH}")
    if report.head_matches is not None:
        verdict = (
            "verifies" if report.head_matches else "DOES NOT verify: the history it covers changed"
        )
        lines.append(f"The digest given {verdict}.")
    if report.inconclusive:
        lines.append(
            "The digest given CANNOT BE CHECKED: chains it covered were pruned since it was taken"
            " (take a new digest after each prune, and check it before the next)."
        )
    if report.unverifiable:
        lines.append(
            "Pruned since that digest, with rows it covered (their part cannot be recomputed): "
            + ", ".join(report.unverifiable)
        )
    lines.append(f"Digest now: {report.head}")
    # Each line escaped on its own (a stream id cannot add one): no line may hold a line break.
    return "\n".join(printable(line) for line in lines)
