"""The ``rtms-lifecycle`` command: ingest, query, expire, migrate, demo and serve.

Every read command has ``--json``, whose shapes are a documented contract (docs/cli.md).
Human output goes through Rich: aligned tables, UTC ISO times, colours only on a terminal.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn

import click
from click.core import ParameterSource

from ._bounds import MAX_COUNT, MAX_DURATION, MAX_EPOCH_MS, MIN_EPOCH_MS
from ._cli_errors import BadInput, Failure, cli_errors
from ._cli_reading import Reading
from ._defaults import (
    DB_ENV,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DB_URL,
    DEFAULT_FORWARD_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
    OUTCOMES,
    SCOPES,
    STATES,
)
from ._logging import LOG_FORMATS, LOG_LEVELS

# Only Click is imported to build the commands: `--help` starts fast. What a command needs (Rich,
# SQLAlchemy, the tracker) is imported in the functions that use it.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Task
    from rich.table import Table
    from rich.text import Text

    from .machine import State
    from .records import (
        ConcurrencyAlertRecord,
        DeliveryRecord,
        InterruptionStats,
        StopReasonStat,
        Stream,
        Transition,
        UnhandledEventStat,
    )
    from .subscriptions import SubscriptionStatus
    from .tracker import IngestSummary, Tracker

__all__ = ["cli", "main"]

DEMO_RESOURCE: Final = "data/demo_day.jsonl.gz"
# Piped output is read by grep and friends: never wrap a row because an imagined terminal is
# 80 columns wide.
_PIPE_WIDTH: Final = 240
# Updating the progress bar per line would cost more than parsing the line.
_PROGRESS_EVERY: Final = 500
_DASH: Final = "—"
# The streams table without --limit: the newest this many (--json still lists every stream).
_TABLE_STREAMS: Final = 50
# Epoch milliseconds below this are before 1973: such a number is almost surely epoch seconds.
_MIN_EPOCH_MS: Final = 100_000_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART: Final = re.compile(r"(\d+)([smhd])")

# Keyed by the enums' values (StrEnum members look them up): building these imports nothing.
_STATE_STYLE: Final = {
    "started": "green",
    "resumed": "green",
    "interrupted": "yellow",
    "stopped": "dim",
    "new": "dim",
}
_CATEGORY_STYLE: Final = {
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


# --- errors ---------------------------------------------------------------------------------------

# The name the commands raise a failure by (the mapping itself lives in _cli_errors).
_Failure = Failure


class _Group(click.Group):
    """Maps errors to one line and an exit code; gives every command the global options."""

    group_class = type  # subgroups (`db`) are _Groups too, so their commands get --db

    def invoke(self, ctx: click.Context) -> Any:
        with cli_errors(lambda: _sqlite_path(ctx)):
            return super().invoke(ctx)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        # `rtms-lifecycle streams --db x` works like `rtms-lifecycle --db x streams`.
        if not any(param.name == "db" for param in cmd.params):
            cmd.params.append(_db_after_command())
        super().add_command(cmd, name)


def _sqlite_path(ctx: click.Context) -> Path | None:
    """The SQLite file the command was given, to say why it cannot be opened; None otherwise."""
    from . import _dburl
    from .exceptions import DatabaseURLError

    app = ctx.find_object(_App)
    if app is None:
        return None
    try:
        return _dburl.sqlite_file(_dburl.parse(app.db))
    except DatabaseURLError:
        return None


# --- parameters -----------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Epoch milliseconds from epoch ms or an ISO 8601 date/time (UTC unless it says otherwise)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        value = int(text)
        if 0 < value < _MIN_EPOCH_MS:
            raise ValueError(f"{text} looks like epoch seconds: give epoch milliseconds")
        return _in_time_range(value, text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 date/time "
            "(e.g. 2025-03-11 or 2025-03-11T14:30:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic: a float timestamp can be a millisecond off.
    return _in_time_range((moment - _EPOCH) // timedelta(milliseconds=1), text)


def _in_time_range(ms: int, text: str) -> int:
    if not MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
        raise ValueError(f"{text} is out of range: times go from year 1 to year 9999")
    return ms


def parse_duration(text: str) -> timedelta:
    """A duration such as ``90s``, ``15m``, ``6h``, ``2d`` or ``1h30m``."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 15m, 6h, 2d or 1h30m")
    seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{text!r} is out of range: at most {MAX_DURATION.days}d")
    return timedelta(seconds=seconds)


def _parsed_by(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback reading the value with one of the parsers above."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


_JSON_OPTION: Final = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (docs/cli.md) instead of a table."
)
_ACCOUNT_OPTION: Final = click.option(
    "--account", "account_id", metavar="ID", help="Only streams of this Zoom account_id."
)


# --- the application object -----------------------------------------------------------------------


@dataclass
class _App:
    """What every command shares: the database URL, the consoles and a lazily opened tracker."""

    db: str
    db_given: bool
    out: Console
    err: Console
    _tracker: Tracker | None = field(default=None, repr=False)

    def use_db(self, text: str, given: bool) -> None:
        """Take ``--db`` (a URL or a file path) as the commands will use it, or refuse it."""
        from . import _dburl

        url = _dburl.parse(text)
        _dburl.refuse_memory(url)
        self.db = url.render_as_string(hide_password=False)
        self.db_given = given

    def tracker(self, *, create: bool = True) -> Tracker:
        """The tracker; with ``create=False`` (read commands) a missing SQLite file is an error."""
        from .tracker import Tracker

        # Opened on first use, so that `db upgrade` and `db current` never auto-migrate.
        if self._tracker is None:
            if not create:
                self.require_database()
            self._tracker = Tracker(self.db)
        return self._tracker

    def require_database(self) -> None:
        """Reading never creates a database: refuse a SQLite file that does not exist."""
        from sqlalchemy.engine import make_url

        from . import _dburl

        _dburl.require_existing_file(make_url(self.db))

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()

    @property
    def shown_db(self) -> str:
        """The database URL without its password: it ends up in terminals and logs."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return make_url(self.db).render_as_string(hide_password=True)
        except ArgumentError:
            return self.db

    def command_prefix(self) -> str:
        """How to repeat this invocation's database choice in a suggested command."""
        return f"rtms-lifecycle --db {self.shown_db}" if self.db_given else "rtms-lifecycle"


_pass_app = click.make_pass_decorator(_App)


def _set_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    app = ctx.find_object(_App)
    if value is not None and app is not None:
        app.use_db(value, given=True)


def _db_after_command() -> click.Option:
    return click.Option(
        ["--db"],
        metavar="URL",
        expose_value=False,
        callback=_set_db,
        help="The database, as the global --db (which may also come after the command).",
    )


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = _PIPE_WIDTH
    return console


def _emit_json(data: Any) -> None:
    # ASCII escapes: a stored lone surrogate or a legacy stdout encoding cannot break the output.
    click.echo(json.dumps(data))


# --- formatting -----------------------------------------------------------------------------------


def format_time(ms: int | None) -> str:
    """Epoch ms as a UTC ISO 8601 time to the second, or a dash."""
    if ms is None:
        return _DASH
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(ms: int | None) -> str:
    """A duration in its two largest units: ``45s``, ``3m 07s``, ``2h 05m``, ``1d 03h``."""
    if ms is None:
        return _DASH
    seconds = max(ms, 0) // 1000
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d {hrs:02d}h"
    if hours:
        return f"{hours}h {mins:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _styled(value: str | None, style: str | None) -> Text:
    from rich.text import Text

    return Text(value if value is not None else _DASH, style=style or "")


def _stop_reason(stream: Stream) -> Text:
    if not stream.stopped:
        return _styled(None, None)
    name = stream.stop_reason_name or _DASH
    label = name if stream.stop_reason is None else f"{stream.stop_reason} {name}"
    category = stream.stop_reason_category
    return _styled(label, _CATEGORY_STYLE.get(category or ""))


def _table(title: str | None, *columns: str, right: Iterable[str] = ()) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    aligned = set(right)
    for column in columns:
        table.add_column(column, justify="right" if column in aligned else "left")
    return table


def _whole(table: Table, column: int, values: Iterable[str | None]) -> None:
    """Never shorten this column (stream ids are copied from it); the others give way."""
    table.columns[column].no_wrap = True
    table.columns[column].min_width = max((len(v or _DASH) for v in values), default=None)


def _streams_table(title: str, streams: Sequence[Stream]) -> Table:
    from rich.text import Text

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
    )
    _whole(table, 0, (stream.stream_id for stream in streams))
    for stream in streams:
        duration = (
            stream.stopped_at - stream.started_at
            if stream.stopped_at is not None and stream.started_at is not None
            else None
        )
        table.add_row(
            Text(stream.stream_id),
            stream.scope.value,
            _styled(stream.state.value, _STATE_STYLE[stream.state]),
            format_time(stream.started_at),
            format_duration(duration),
            _stop_reason(stream),
            str(stream.interruptions),
            str(stream.failovers),
        )
    return table


def _stream_details(stream: Stream) -> Table:
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("stream", stream.stream_id),
        ("scope", f"{stream.scope.value} {stream.scope_id or _DASH}"),
        ("state", _styled(stream.state.value, _STATE_STYLE[stream.state])),
        ("account", stream.account_id or _DASH),
        ("operator", stream.operator_id or _DASH),
        ("session key", stream.session_key or _DASH),
        ("server urls", stream.server_urls or _DASH),
        ("started", format_time(stream.started_at)),
        ("stopped", format_time(stream.stopped_at)),
        ("last event", format_time(stream.last_event_at)),
        ("stop reason", _stop_reason(stream)),
        (
            "counts",
            f"{stream.interruptions} interruptions, {stream.resumes} resumes, "
            f"{stream.failovers} failovers",
        ),
    ]
    for key, value in rows:
        grid.add_row(key, value if isinstance(value, Text) else Text(value))
    return grid


def _history_table(history: Sequence[Transition]) -> Table:
    table = _table(
        "History (event time)",
        "Event time (UTC)",
        "Event",
        "Transition",
        "State",
        "Source",
        "Recorded (UTC)",
    )
    for transition in history:
        late = " (late)" if transition.late else ""
        table.add_row(
            format_time(transition.event_ts),
            transition.kind,
            transition.name.value,
            f"{transition.from_state.value} → {transition.to_state.value}",
            transition.source.value,
            format_time(transition.recorded_at) + late,
        )
    return table


def _outcomes_table(summary: IngestSummary) -> Table:
    from rich.text import Text

    from .records import Outcome

    table = _table(None, "Outcome", "Deliveries", right=("Deliveries",))
    for outcome in Outcome:
        table.add_row(_styled(outcome.value, _OUTCOME_STYLE[outcome]), f"{summary[outcome]:,}")
    table.add_row(Text("total", style="bold"), f"{summary.total:,}")
    return table


def _stop_reasons_table(stats: Sequence[StopReasonStat], by_scope: bool) -> Table:
    columns = ["Scope"] if by_scope else []
    columns += ["Code", "Name", "Category", "Streams", "Share", "Median duration"]
    table = _table(
        "Why streams stopped", *columns, right=("Code", "Streams", "Share", "Median duration")
    )
    for stat in stats:
        cells: list[str | Text] = [stat.scope.value if stat.scope else _DASH] if by_scope else []
        cells += [
            _DASH if stat.stop_reason is None else str(stat.stop_reason),
            stat.stop_reason_name,
            _styled(stat.stop_reason_category.value, _CATEGORY_STYLE[stat.stop_reason_category]),
            f"{stat.count:,}",
            f"{stat.share:.1%}",
            format_duration(stat.median_duration_ms),
        ]
        table.add_row(*cells)
    return table


def _interruptions_table(rows: Sequence[tuple[str | None, InterruptionStats]]) -> Table:
    by_scope = any(scope is not None for scope, _ in rows)
    columns = ["Scope"] if by_scope else []
    columns += [
        "Streams",
        "Interrupted",
        "Interruptions",
        "Recovered",
        "Median recovery",
        "Stopped while interrupted",
    ]
    table = _table("Interruptions", *columns, right=columns[1:] if by_scope else columns)
    for scope, stats in rows:
        cells = [scope or _DASH] if by_scope else []
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


def _unhandled_table(stats: Sequence[UnhandledEventStat]) -> Table:
    from rich.text import Text

    table = _table(
        "Unhandled event names",
        "Event",
        "Deliveries",
        "First seen (UTC)",
        "Last seen (UTC)",
        "RTMS?",
        right=("Deliveries",),
    )
    for stat in stats:
        table.add_row(
            Text(stat.event, style="yellow" if stat.rtms else ""),
            f"{stat.count:,}",
            format_time(stat.first_seen),
            format_time(stat.last_seen),
            "yes" if stat.rtms else "",
        )
    return table


def _deliveries_table(records: Sequence[DeliveryRecord]) -> Table:
    from rich.text import Text

    table = _table(
        "Deliveries (newest first)",
        "ID",
        "Received (UTC)",
        "Source",
        "Event",
        "Outcome",
        "Stream",
        "Error / detail",
        right=("ID",),
    )
    _whole(table, 5, (record.stream_id for record in records))
    for record in records:
        problem = "; ".join(f"{e['field']}: {e['reason']}" for e in record.error or ())
        table.add_row(
            str(record.id),
            format_time(record.received_at),
            record.source.value,
            Text(record.event or _DASH),
            _styled(record.outcome.value, _OUTCOME_STYLE[record.outcome]),
            Text(record.stream_id or _DASH),
            Text(problem or record.detail or ""),
        )
    return table


def _alerts_table(alerts: Sequence[ConcurrencyAlertRecord]) -> Table:
    from rich.text import Text

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
    )
    for alert in alerts:
        refused = f"{alert.id_field} {alert.id_value}" if alert.id_field else _DASH
        table.add_row(
            format_time(alert.event_ts),
            alert.event,
            f"{alert.concurrency_number:,}",
            _DASH if alert.concurrency_limit is None else f"{alert.concurrency_limit:,}",
            _DASH if alert.percentage is None else f"{alert.percentage}%",
            Text(alert.operator_id or _DASH),
            Text(refused),
        )
    return table


# --- reading JSON Lines ---------------------------------------------------------------------------


def _json_lines(source: Iterable[bytes], report: Callable[[int], None]) -> Iterator[bytes]:
    """Each non-blank line, read one at a time; ``report`` hears the running count."""
    count = 0
    for line in source:
        body = line.strip()
        if not body:
            continue
        yield body
        count += 1
        if count % _PROGRESS_EVERY == 0:
            report(count)
    report(count)


@contextmanager
def _progress(
    err: Console, total: int | None, position: Callable[[], int]
) -> Iterator[Callable[[int], None]]:
    """A progress reporter: a bar with a rate when stderr is a terminal, else nothing."""
    if not err.is_terminal:
        yield lambda _count: None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        """Deliveries so far and how many per second."""

        def render(self, task: Task) -> Text:
            count = int(task.fields.get("count", 0))
            elapsed = task.elapsed or 0.0
            rate = count / elapsed if elapsed > 0 else 0.0
            return Text(f"{count:,} deliveries  {rate:,.0f}/s")

    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("reading")]
    if total:
        columns += [BarColumn(), TaskProgressColumn()]
    columns += [_RateColumn(), TimeElapsedColumn()]
    if total:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("ingest", total=total, count=0)

        def report(count: int) -> None:
            progress.update(task, completed=position() if total else None, count=count)

        yield report


def _size_and_position(raw: IO[bytes]) -> tuple[int | None, Callable[[], int]]:
    # The raw (possibly compressed) bytes consumed so far, against the file's size.
    try:
        size = raw.seek(0, 2)
        raw.seek(0)
    except (OSError, ValueError):
        return None, lambda: 0
    return size, raw.tell


def _starts_with(raw: IO[bytes], magic: bytes) -> bool:
    # peek() works on pipes too; only a plain unbuffered stream has to be rewound.
    peek = getattr(raw, "peek", None)
    if peek is not None:
        return bytes(peek(len(magic))[: len(magic)]) == magic
    head = raw.read(len(magic))
    raw.seek(0)
    return head == magic


@contextmanager
def _decompressed(raw: IO[bytes]) -> Iterator[Iterable[bytes]]:
    """The bytes of a file, gunzipped when it starts with gzip's magic number."""
    if _starts_with(raw, b"\x1f\x8b"):
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield unzipped
    else:
        yield raw


def _replay(
    app: _App, tracker: Tracker, raw: IO[bytes], batch_size: int
) -> tuple[IngestSummary, Reading]:
    """Ingest JSON Lines (gzipped or not) from a file or a pipe, streaming it line by line.

    Damaged input or a Ctrl-C ends the input early; what was read is recorded (``Reading.check``).
    """
    total, position = _size_and_position(raw)
    reading = Reading()
    with (
        _decompressed(raw) as source,
        _progress(app.err, total, position) as report,
        reading.interruptible(),
    ):
        lines = _json_lines(reading.lines_of(source), report)
        return tracker.ingest_many(lines, batch_size=batch_size), reading


def _report_ingest(app: _App, summary: IngestSummary, seconds: float) -> None:
    rate = summary.total / seconds if seconds > 0 else 0.0
    app.out.print(
        f"Read {summary.total:,} deliveries in {seconds:.1f} s ({rate:,.0f}/s).", markup=False
    )
    app.out.print(_outcomes_table(summary))


# --- the commands ---------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    metavar="URL",
    envvar=DB_ENV,
    default=DEFAULT_DB_URL,
    show_default=True,
    show_envvar=True,
    help="SQLAlchemy database URL (sqlite:///file.db, postgresql://user@host/db) or a SQLite "
    "file's path.",
)
@click.version_option(package_name="rtms-lifecycle")
@click.pass_context
def cli(ctx: click.Context, db: str) -> None:
    """A trustworthy, queryable record of every Zoom RTMS stream, built from its webhooks.

    Start with `rtms-lifecycle demo`.
    """
    given = ctx.get_parameter_source("db") is ParameterSource.COMMANDLINE
    app = _App(db=db, db_given=given, out=_console(), err=_console(stderr=True))
    app.use_db(db, given)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True, exists=True))
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Deliveries per transaction; 1 commits each delivery on its own (slower, safest).",
)
@_JSON_OPTION
@_pass_app
def ingest(app: _App, path: str, batch_size: int, as_json: bool) -> None:
    """Record deliveries from a JSON Lines file or - for stdin (gzip too), one per line.

    Blank lines are skipped; a line that is not a valid delivery is stored as rejected and the
    run goes on.
    """
    tracker = app.tracker()
    started = time.perf_counter()
    if path == "-":
        summary, reading = _replay(app, tracker, sys.stdin.buffer, batch_size)
    else:
        with open(path, "rb") as raw:
            summary, reading = _replay(app, tracker, raw, batch_size)
    if as_json:
        _emit_json(summary.as_dict())
    else:
        _report_ingest(app, summary, time.perf_counter() - started)
    reading.check(summary.total)


@cli.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES[1:]),
    help="Only streams in this state (repeatable).",
)
@click.option("--scope", type=click.Choice(SCOPES), help="Only this product.")
@click.option("--active", is_flag=True, help="Only streams whose media flows (started, resumed).")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_COUNT),
    help=f"At most N streams (newest first); the table shows {_TABLE_STREAMS} unless given.",
)
@_ACCOUNT_OPTION
@_JSON_OPTION
@_pass_app
def streams(
    app: _App,
    states: tuple[str, ...],
    scope: str | None,
    active: bool,
    limit: int | None,
    account_id: str | None,
    as_json: bool,
) -> None:
    """List stored streams, most recent activity first (all of them unless filtered)."""
    from .machine import ACTIVE_STATES

    if active and states:
        raise click.UsageError("--active means --state started --state resumed: give one or other")
    wanted: Iterable[State | str] | None = ACTIVE_STATES if active else (states or None)
    tracker = app.tracker(create=False)
    if as_json:
        found = tracker.streams(wanted, scope=scope, limit=limit, account_id=account_id)
        _emit_json([s.as_dict() for s in found])
        return
    if limit is not None:
        found = tracker.streams(wanted, scope=scope, limit=limit, account_id=account_id)
        app.out.print(_streams_table(f"{len(found):,} streams", found))
        return
    # Drawing tens of thousands of rows takes a minute and helps nobody, and reading a million
    # streams to count them takes longer: the newest rows, and a count from the database.
    found = tracker.streams(wanted, scope=scope, limit=_TABLE_STREAMS, account_id=account_id)
    total = (
        len(found)
        if len(found) < _TABLE_STREAMS
        else tracker.count_streams(wanted, scope=scope, account_id=account_id)
    )
    if total > len(found):
        title = (
            f"Newest streams: showing {len(found)} of {total:,} "
            "(--limit N shows more, --json lists all)"
        )
        app.out.print(_streams_table(title, found))
        return
    app.out.print(_streams_table(f"{total:,} streams", found))


@cli.command("stream")
@click.argument("stream_id")
@_JSON_OPTION
@_pass_app
def stream_command(app: _App, stream_id: str, as_json: bool) -> None:
    """Show one stream (by rtms_stream_id) and its history."""
    from ._store import now_ms
    from ._terminal_charts import timeline_bar

    tracker = app.tracker(create=False)
    found = tracker.stream(stream_id)
    if found is None:
        raise _Failure(f"no stream with rtms_stream_id {stream_id!r} is stored in {app.shown_db}")
    history = tracker.history(stream_id)
    if as_json:
        _emit_json({"stream": found.as_dict(), "history": [t.as_dict() for t in history]})
        return
    app.out.print(_stream_details(found))
    app.out.print(_history_table(history))
    if history:
        app.out.print(timeline_bar(found, history, now_ms(), format_time))


@cli.command()
@click.option(
    "--since",
    metavar="T",
    callback=_parsed_by(parse_time),
    help="Streams stopped at or after T (epoch ms or ISO 8601).",
)
@click.option(
    "--until",
    metavar="T",
    callback=_parsed_by(parse_time),
    help="Streams stopped before T (epoch ms or ISO 8601).",
)
@click.option("--by-scope", is_flag=True, help="One row per scope and reason.")
@click.option("--chart", is_flag=True, help="Draw the reasons as horizontal bars.")
@click.option(
    "--interruptions",
    is_flag=True,
    help="Interruption statistics (of streams that began in the window) instead.",
)
@_ACCOUNT_OPTION
@click.option(
    "--unhandled",
    is_flag=True,
    help="Event names this version does not handle (received in the window) instead.",
)
@_JSON_OPTION
@_pass_app
def stats(
    app: _App,
    since: int | None,
    until: int | None,
    by_scope: bool,
    chart: bool,
    interruptions: bool,
    account_id: str | None,
    unhandled: bool,
    as_json: bool,
) -> None:
    """Why streams stopped: count, share and median duration per stop reason."""
    from ._terminal_charts import stop_reason_bars
    from .events import Scope

    if chart and interruptions:
        raise click.UsageError("--chart draws stop reasons: it does not go with --interruptions")
    tracker = app.tracker(create=False)
    if unhandled:
        if interruptions or by_scope or chart or account_id is not None:
            raise click.UsageError(
                "--unhandled lists event names: no --interruptions, --by-scope, --chart, --account"
            )
        names = tracker.unhandled_stats(since, until)
        if as_json:
            _emit_json([n.as_dict() for n in names])
            return
        app.out.print(_unhandled_table(names))
        return
    if interruptions:
        scopes: list[Scope | None] = list(Scope) if by_scope else [None]
        rows = [
            (s, tracker.interruption_stats(since, until, scope=s, account_id=account_id))
            for s in scopes
        ]
        if as_json:
            data = [{"scope": s.value, **r.as_dict()} for s, r in rows if s is not None]
            _emit_json(data if by_scope else rows[0][1].as_dict())
            return
        app.out.print(_interruptions_table([(s.value if s else None, r) for s, r in rows]))
        return
    found = tracker.stop_reason_stats(since, until, by_scope=by_scope, account_id=account_id)
    if as_json:
        _emit_json([s.as_dict() for s in found])
        return
    app.out.print(_stop_reasons_table(found, by_scope))
    if chart:
        app.out.print(stop_reason_bars(found, _CATEGORY_STYLE))


@cli.command()
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice(OUTCOMES),
    help="Only deliveries with this outcome (repeatable).",
)
@click.option("--stream", "stream_id", metavar="ID", help="Only deliveries for this stream.")
@click.option(
    "--limit",
    type=click.IntRange(min=0, max=MAX_COUNT),
    default=100,
    show_default=True,
    help="At most N deliveries; 0 for all.",
)
@_JSON_OPTION
@_pass_app
def deliveries(
    app: _App, outcomes: tuple[str, ...], stream_id: str | None, limit: int, as_json: bool
) -> None:
    """Stored deliveries, newest first, with their outcome and why one was rejected."""
    tracker = app.tracker(create=False)
    found = tracker.deliveries(outcomes or None, stream_id=stream_id, limit=limit or None)
    if as_json:
        _emit_json([d.as_dict() for d in found])
        return
    app.out.print(_deliveries_table(found))


@cli.command()
@click.option(
    "--since",
    metavar="T",
    callback=_parsed_by(parse_time),
    help="Alerts at or after T (epoch ms or ISO 8601).",
)
@_JSON_OPTION
@_pass_app
def alerts(app: _App, since: int | None, as_json: bool) -> None:
    """Account concurrency alerts (near the limit, or a stream refused), newest first."""
    found = app.tracker(create=False).concurrency_alerts(since)
    if as_json:
        _emit_json([a.as_dict() for a in found])
        return
    app.out.print(_alerts_table(found))


@cli.command()
@click.option(
    "--stale-after",
    metavar="DURATION",
    callback=_parsed_by(parse_duration),
    required=True,
    help="Close live streams with no event for this long: 90s, 15m, 6h, 2d, 1h30m.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be expired, and write nothing.")
@_JSON_OPTION
@_pass_app
def expire(app: _App, stale_after: timedelta, dry_run: bool, as_json: bool) -> None:
    """Stop live streams whose stopped webhook never came (stop reason EXPIRED).

    Each stops at its last event plus --stale-after, when it became stale.
    """
    closed = app.tracker(create=not dry_run).expire(stale_after, dry_run=dry_run)
    if as_json:
        _emit_json([s.as_dict() for s in closed])
        return
    verb = "Would expire" if dry_run else "Expired"
    app.out.print(_streams_table(f"{verb} {len(closed):,} streams", closed))


def _size(n: int) -> str:
    """A byte count in the largest unit that keeps it at 1 or more: ``512 bytes``, ``3.4 MB``."""
    if n < 1024:
        return f"{n:,} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            break
    return f"{value:,.1f} {unit}"


@cli.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_parsed_by(parse_duration),
    required=True,
    help="Remove streams that stopped longer ago than this (at least 1d): 30d, 90d.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option(
    "--vacuum",
    is_flag=True,
    help="Then rewrite the database file (SQLite VACUUM) or run VACUUM ANALYZE (PostgreSQL).",
)
@_JSON_OPTION
@_pass_app
def prune(app: _App, older_than: timedelta, dry_run: bool, vacuum: bool, as_json: bool) -> None:
    """Remove old stopped streams (with their deliveries and history), old alerts and old
    deliveries of no stream. Live streams are kept, however old."""
    from .retention import MIN_RETENTION

    if older_than < MIN_RETENTION:
        raise click.BadParameter(
            f"keep at least {MIN_RETENTION.days} day: Zoom retries deliveries for about two "
            "hours, and a retry of a pruned stream's event would start the stream again",
            param_hint="--older-than",
        )
    result = app.tracker(create=False).prune(older_than, dry_run=dry_run, vacuum=vacuum)
    if as_json:
        _emit_json(result.as_dict())
        return
    verb = "Would remove" if dry_run else "Removed"
    app.out.print(f"{verb} what is older than {format_time(result.cutoff)}:", markup=False)
    table = _table(None, "Rows", "Count", right=["Count"])
    for key, count in result.as_dict().items():
        table.add_row(key, f"{count:,}")
    app.out.print(table)
    if result.reclaimed_bytes:
        app.out.print(f"The database is {_size(result.reclaimed_bytes)} smaller.", markup=False)
    if result.free_bytes:
        app.out.print(
            f"{_size(result.free_bytes)} are free inside the database file: new rows reuse them "
            "(prune --vacuum gives them back to the file system).",
            markup=False,
        )


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), help="At most N prunes (newest first).")
@_JSON_OPTION
@_pass_app
def prunes(app: _App, limit: int | None, as_json: bool) -> None:
    """Recorded prunes, newest first: when, the cutoff, and what each removed."""
    found = app.tracker(create=False).prunes(limit)
    if as_json:
        _emit_json([p.as_dict() for p in found])
        return
    table = _table(
        "Prunes (newest first)",
        "Started (UTC)",
        "Finished (UTC)",
        "Cutoff (UTC)",
        "Streams",
        "Deliveries",
        "Transitions",
        "Alerts",
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
        )
    app.out.print(table)


@cli.group()
def db() -> None:
    """The database schema: which migration it is at, and upgrading it."""


def _revisions(url: str) -> tuple[str | None, str]:
    from . import _migrate
    from ._engine import create_store_engine

    engine = create_store_engine(url)
    try:
        return _migrate.current_revision(engine), _migrate.head_revision()
    finally:
        engine.dispose()


@db.command("current")
@_JSON_OPTION
@_pass_app
def db_current(app: _App, as_json: bool) -> None:
    """Show the database's migration and the one this version needs."""
    from . import _migrate

    app.require_database()
    current, head = _revisions(app.db)
    if as_json:
        _emit_json({"current": current, "head": head, "up_to_date": current == head})
        return
    if current == head:
        verdict = "up to date"
    elif current is not None and not _migrate.is_known(current):
        verdict = "newer than this version of rtms-lifecycle: upgrade rtms-lifecycle"
    elif current is None:
        verdict = "no schema yet: created on first use"
    else:
        verdict = "outdated: run `rtms-lifecycle db upgrade`"
    app.out.print(f"current: {current or _DASH}\nhead:    {head}\n{verdict}", markup=False)


@db.command("upgrade")
@_JSON_OPTION
@_pass_app
def db_upgrade(app: _App, as_json: bool) -> None:
    """Migrate the database to the newest schema (run before starting a new version)."""
    from . import _migrate
    from ._engine import create_store_engine

    engine = create_store_engine(app.db)
    try:
        before = _migrate.current_revision(engine)
        _migrate.refuse_newer(before)
        _migrate.upgrade(engine)
        after = _migrate.current_revision(engine)
    finally:
        engine.dispose()
    if as_json:
        _emit_json({"from": before, "to": after})
    elif before == after:
        app.out.print(f"Already at the newest revision {after}.", markup=False)
    else:
        app.out.print(f"Upgraded from {before or 'an empty database'} to {after}.", markup=False)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--path", default="/webhook", show_default=True, help="The webhook's URL path.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="The receiver's and uvicorn's log level.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log lines on stderr as text, or as JSON objects (docs/operations.md).",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Serve GET /metrics (Prometheus; behind the API token when one is set).",
)
@click.option(
    "--store-timeout",
    type=click.FloatRange(0, min_open=True),
    default=2.5,
    show_default=True,
    help="Seconds a delivery may take to commit; past it the answer is 503 (Zoom retries).",
)
@click.option(
    "--keep-alive-timeout",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Seconds an idle connection stays open after a response.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds a request has to arrive whole; slower connections are closed.",
)
@click.option(
    "--limit-concurrency",
    type=click.IntRange(1),
    default=None,
    help="Open connections at most [default: 1000, less under a low file descriptor limit].",
)
@click.option(
    "--backlog",
    type=click.IntRange(1),
    default=None,
    help="Connections the kernel queues before they are accepted [default: 256, less under a "
    "low file descriptor limit].",
)
@click.option(
    "--replay-window",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Refuse requests signed longer ago than this (docs/receiver.md weighs a longer one).",
)
@_pass_app
def serve(
    app: _App,
    host: str,
    port: int,
    path: str,
    store_timeout: float,
    keep_alive_timeout: int,
    request_timeout: float,
    limit_concurrency: int | None,
    backlog: int | None,
    log_level: str,
    log_format: str,
    metrics: bool,
    replay_window: float,
) -> None:
    """Receive Zoom's webhooks over HTTP (needs ZOOM_WEBHOOK_SECRET_TOKEN; extra 'server')."""
    try:
        from . import server  # the 'server' extra: imported only when asked for
    except ImportError as exc:
        raise _Failure(str(exc)) from exc
    server.run(
        host=host,
        port=port,
        path=path,
        db=app.db,
        log_level=log_level,
        log_format="json" if log_format == "json" else "text",
        metrics=metrics,
        store_timeout=store_timeout,
        keep_alive_timeout=keep_alive_timeout,
        request_timeout=request_timeout,
        limit_concurrency=limit_concurrency,
        backlog=backlog,
        replay_window=replay_window,
    )


# --- durable subscriptions ------------------------------------------------------------------------


_CONSUMER_ARGUMENT: Final = click.argument("consumer")
_FROM_START_OPTION: Final = click.option(
    "--from-start",
    is_flag=True,
    help="A new consumer starts at the first transition stored (else at the end of the feed).",
)
_IDLE_EXIT_OPTION: Final = click.option(
    "--idle-exit",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    help="Exit after this many seconds with nothing to deliver (default: run until stopped).",
)


def _follow_line(transition: Transition, stream: Stream, as_json: bool) -> str:
    from .machine import State
    from .subscriptions import transition_message

    if as_json:
        return json.dumps(transition_message(transition, stream))
    # The stream's stop reason, on the stop's own line only: beside a start it reads as the
    # start's reason.
    stopping = transition.to_state is State.STOPPED and stream.stop_reason_name
    reason = f" {stream.stop_reason_name}" if stopping else ""
    return (
        f"{format_time(transition.event_ts)} {transition.stream_id} {stream.scope.value} "
        f"{transition.from_state.value} -> {transition.to_state.value} ({transition.name.value})"
        f"{reason}"
    )


def _run_consumer(
    app: _App,
    consumer: str,
    callback: Callable[[Transition, Stream], object],
    idle_exit: float | None,
    **options: Any,
) -> None:
    # A consumer of a database that is not there follows a typo: refuse, as read commands do.
    tracker = app.tracker(create=False)
    try:
        tracker.subscribe(consumer, callback, **options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="CONSUMER") from None
    tracker.run_subscriptions(idle_exit=idle_exit)


@cli.command()
@_CONSUMER_ARGUMENT
@_JSON_OPTION
@_FROM_START_OPTION
@_IDLE_EXIT_OPTION
@_pass_app
def follow(
    app: _App, consumer: str, as_json: bool, from_start: bool, idle_exit: float | None
) -> None:
    """Print every transition, from any process, as the named durable CONSUMER.

    One line each (JSON with --json); the consumer's cursor moves past a transition once its line
    is written, so `follow billing --json | my-tool` is a durable pipe: a restart resumes there.
    """
    out = sys.stdout

    def write(transition: Transition, stream: Stream) -> None:
        try:
            out.write(_follow_line(transition, stream, as_json) + "\n")
            out.flush()
        except BrokenPipeError:
            # Nobody reads any more: stop without moving the cursor past this transition.
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            raise _PipeClosed(transition.id) from None

    try:
        _run_consumer(app, consumer, write, idle_exit, from_start=from_start, max_attempts=1)
    except _PipeClosed as closed:
        raise _Failure(
            f"the output closed; consumer {consumer!r} resumes at transition {closed.args[0]}"
        ) from None


class _PipeClosed(BaseException):
    """Ends ``follow`` from inside a callback: a BaseException, so it is not retried or parked."""


@cli.command()
@_CONSUMER_ARGUMENT
@click.argument("url")
@click.option(
    "--secret-env",
    metavar="VAR",
    required=True,
    help="Environment variable holding the Standard Webhooks signing secret (whsec_...).",
)
@_FROM_START_OPTION
@_IDLE_EXIT_OPTION
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_FORWARD_TIMEOUT,
    show_default=True,
    help="Wait this long for the receiver's answer.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Attempts at one transition before it is parked.",
)
@click.option(
    "--retry-delay",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=DEFAULT_RETRY_DELAY,
    show_default=True,
    help="Wait before the first retry; each further retry waits twice as long.",
)
@_pass_app
def forward(
    app: _App,
    consumer: str,
    url: str,
    secret_env: str,
    from_start: bool,
    idle_exit: float | None,
    timeout: float,
    max_attempts: int,
    retry_delay: float,
) -> None:
    """POST every transition to URL as the named durable CONSUMER, signed (Standard Webhooks).

    A non-2xx answer or a timeout is retried with back-off, then the transition is parked (see
    `subscriptions`). The webhook-id is the same on every retry, for the receiver to dedupe.
    """
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="URL")
    secret = os.environ.get(secret_env)
    if not secret:
        raise click.BadParameter(f"${secret_env} is not set", param_hint="--secret-env")
    from . import _forward  # httpx and standardwebhooks: the 'forward' extra

    forwarder = _forward.Forwarder(
        consumer, url, _forward.check_secret(secret, f"${secret_env}"), timeout=timeout
    )
    try:
        _run_consumer(
            app,
            consumer,
            forwarder,
            idle_exit,
            from_start=from_start,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
        )
    finally:
        forwarder.close()


def _subscriptions_table(found: Sequence[SubscriptionStatus]) -> Table:
    table = _table(
        f"{len(found):,} subscriptions",
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
            status.consumer,
            status.cursor,
            f"{status.lag:,}",
            _styled(f"{status.parked:,}", "red" if status.parked else None),
            f"{status.delivered:,}",
            status.holder or _DASH,
            _styled(error, "red"),
        )
    return table


@cli.group(invoke_without_command=True)
@_JSON_OPTION
@click.pass_context
def subscriptions(ctx: click.Context, as_json: bool) -> None:
    """List durable consumers: cursor, lag, parked transitions, last error."""
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(_App)
    assert app is not None
    found = app.tracker(create=False).subscriptions()
    if as_json:
        _emit_json([status.as_dict() for status in found])
        return
    app.out.print(_subscriptions_table(found))


@subscriptions.command("retry")
@_CONSUMER_ARGUMENT
@_JSON_OPTION
@_pass_app
def subscriptions_retry(app: _App, consumer: str, as_json: bool) -> None:
    """Queue CONSUMER's parked transitions for delivery again (by its running follow/forward)."""
    count = app.tracker(create=False).retry_parked(consumer)
    if as_json:
        _emit_json({"consumer": consumer, "requeued": count})
        return
    app.out.print(f"Re-queued {count:,} parked transitions of {consumer}.", markup=False)


# --- demo -----------------------------------------------------------------------------------------


@contextmanager
def _demo_file() -> Iterator[IO[bytes]]:
    with files("rtms_lifecycle").joinpath(DEMO_RESOURCE).open("rb") as raw:
        yield raw


def _count_transitions(tracker: Tracker) -> Callable[[], int]:
    seen = [0]

    def count(_transition: Transition, _stream: Stream) -> None:
        seen[0] += 1

    tracker.on_transition(count)
    return lambda: seen[0]


def _demo_verdict(summary: IngestSummary, transitions: int) -> str:
    from .records import Outcome

    if transitions:
        return (
            f"Recorded a day of RTMS webhooks: {transitions:,} lifecycle transitions. Bad and "
            "unknown deliveries were stored too, with their errors: nothing is dropped."
        )
    noise = summary[Outcome.REJECTED] + summary[Outcome.UNHANDLED]
    return (
        f"The demo day was already here: all {summary[Outcome.DUPLICATE]:,} stream deliveries "
        "were duplicates and no stream changed. Concurrency alerts are recognised and not "
        f"stored twice; the {noise} malformed or unknown deliveries are recorded again, as "
        "every delivery is."
    )


def _demo_next_steps(prefix: str, example: Stream | None) -> str:
    example_id = example.stream_id if example else "STREAM_ID"
    commands = [
        ("streams --active", "every stream whose media flows now"),
        (f"stream {example_id}", "one stream and its history"),
        ("stats --by-scope", "stop reasons per product"),
        ("stats --interruptions --by-scope", "interruptions and recoveries per product"),
        ("deliveries --outcome rejected", "bad deliveries and why they were refused"),
        ("alerts", "account concurrency alerts"),
        ("streams --state stopped --limit 5 --json", "the machine-readable form"),
        ("expire --stale-after 6h", "close streams whose stopped webhook never came"),
    ]
    width = max(len(command) for command, _ in commands) + len(prefix) + 1
    lines = [f"  {prefix + ' ' + command:<{width}}  # {why}" for command, why in commands]
    return "Try next:\n" + "\n".join(lines)


def _eventfulness(stream: Stream) -> tuple[int, int]:
    # The stream worth opening first in the demo: the most happened to it.
    return (stream.interruptions + stream.failovers, stream.resumes)


@cli.command()
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--force", is_flag=True, help="Replay even into a database that already holds streams."
)
@_pass_app
def demo(app: _App, top: int, force: bool) -> None:
    """Replay a bundled day of RTMS webhooks, then show what the record tells.

    Refuses a database that already holds streams (the fake ones could not be told apart or
    removed) unless --force.
    """
    from .machine import ACTIVE_STATES, State

    tracker = app.tracker()
    held = len(tracker.streams(limit=1))
    if held and not force:
        raise BadInput(
            f"{app.shown_db} already holds streams: the demo would mix a day of made-up streams "
            "into them, for good. Give the demo its own database (--db demo.db), or --force"
        )
    transitions = _count_transitions(tracker)
    app.out.print(f"Replaying a day of Zoom RTMS webhooks into {app.shown_db} ...", markup=False)
    started = time.perf_counter()
    with _demo_file() as raw:
        summary, reading = _replay(app, tracker, raw, DEFAULT_BATCH_SIZE)
    _report_ingest(app, summary, time.perf_counter() - started)
    reading.check(summary.total)
    app.out.print(_demo_verdict(summary, transitions()), markup=False)
    active = tracker.streams(ACTIVE_STATES)
    title = f"Active streams ({len(active):,}; latest {min(top, len(active))})"
    app.out.print()
    app.out.print(_streams_table(title, active[:top]))
    app.out.print(_stop_reasons_table(tracker.stop_reason_stats(), by_scope=False))
    app.out.print(_interruptions_table([(None, tracker.interruption_stats())]))
    example = max(tracker.streams(State.STOPPED), key=_eventfulness, default=None)
    app.out.print(_demo_next_steps(app.command_prefix(), example), markup=False)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script ``rtms-lifecycle``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="rtms-lifecycle")
    raise AssertionError("unreachable: Click exits")
