"""The ``rtms-lifecycle`` command: ingest, query, expire, migrate, demo and serve.

Every read command has ``--json``, whose shapes are the contract of spec section 9 (docs/cli.md).
Human output goes through Rich: aligned tables, UTC ISO times, colours only on a terminal.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import IO, Any, Final, NoReturn

import click
from click.core import ParameterSource
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from . import _migrate
from .events import Scope
from .exceptions import RTMSLifecycleError, SchemaOutdatedError
from .machine import ACTIVE_STATES, State
from .records import (
    ConcurrencyAlertRecord,
    DeliveryRecord,
    InterruptionStats,
    Outcome,
    StopReasonStat,
    Stream,
    Transition,
)
from .retention import MIN_RETENTION
from .store import DEFAULT_DB_URL, create_store_engine
from .tracker import DEFAULT_BATCH_SIZE, IngestSummary, Tracker

__all__ = ["cli", "main"]

DB_ENV: Final = "RTMS_LIFECYCLE_DB"
DEMO_RESOURCE: Final = "data/demo_day.jsonl.gz"
# Piped output is read by grep and friends: never wrap a row because an imagined terminal is
# 80 columns wide.
_PIPE_WIDTH: Final = 240
# Updating the progress bar per line would cost more than parsing the line.
_PROGRESS_EVERY: Final = 500
_DASH: Final = "—"
# Epoch milliseconds below this are before 1973: such a number is almost surely epoch seconds.
_MIN_EPOCH_MS: Final = 100_000_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART: Final = re.compile(r"(\d+)([smhd])")
_OPTIONAL_EXTRAS: Final = {"psycopg": "postgres", "fastapi": "server", "uvicorn": "server"}

_STATE_STYLE: Final = {
    State.STARTED: "green",
    State.RESUMED: "green",
    State.INTERRUPTED: "yellow",
    State.STOPPED: "dim",
    State.NEW: "dim",
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
    Outcome.APPLIED: "green",
    Outcome.IGNORED: "dim",
    Outcome.DUPLICATE: "dim",
    Outcome.CONFLICT: "yellow",
    Outcome.REJECTED: "red",
    Outcome.UNHANDLED: "yellow",
}


# --- errors ---------------------------------------------------------------------------------------


class _Failure(click.ClickException):
    """A clean one-line error on stderr and a non-zero exit, never a traceback."""

    exit_code = 1


class _Refused(_Failure):
    """The database must be upgraded first: 2, like a usage error, since nothing ran."""

    exit_code = 2


def _missing_extra(exc: ModuleNotFoundError) -> _Failure | None:
    extra = _OPTIONAL_EXTRAS.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    return _Failure(
        f"{exc.name} is not installed: install the '{extra}' extra, "
        f"e.g. pip install 'rtms-lifecycle[{extra}]'"
    )


def _database_error(exc: SQLAlchemyError) -> _Failure:
    # SQLAlchemy's own text spans lines (SQL, parameters, a link); the driver's first line says it.
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return _Failure(f"database error: {first_line}")


class _Group(click.Group):
    """Turns every library error into a message: operators read these, not tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SchemaOutdatedError as exc:
            raise _Refused(str(exc)) from exc
        except RTMSLifecycleError as exc:
            raise _Failure(str(exc)) from exc
        except SQLAlchemyError as exc:
            raise _database_error(exc) from exc
        except ModuleNotFoundError as exc:
            failure = _missing_extra(exc)
            if failure is None:
                raise
            raise failure from exc


# --- parameters -----------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Epoch milliseconds from epoch ms or an ISO 8601 date/time (UTC unless it says otherwise)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        value = int(text)
        if 0 < value < _MIN_EPOCH_MS:
            raise ValueError(f"{text} looks like epoch seconds: give epoch milliseconds")
        return value
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
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def parse_duration(text: str) -> timedelta:
    """A duration such as ``90s``, ``15m``, ``6h``, ``2d`` or ``1h30m``."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 15m, 6h, 2d or 1h30m")
    seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be longer than zero")
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


# --- the application object -----------------------------------------------------------------------


@dataclass
class _App:
    """What every command shares: the database URL, the consoles and a lazily opened tracker."""

    db: str
    db_given: bool
    out: Console
    err: Console
    _tracker: Tracker | None = field(default=None, repr=False)

    def tracker(self) -> Tracker:
        # Opened on first use, so that `db upgrade` and `db current` never auto-migrate.
        if self._tracker is None:
            self._tracker = Tracker(self.db)
        return self._tracker

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()

    @property
    def shown_db(self) -> str:
        """The database URL without its password: it ends up in terminals and logs."""
        try:
            return make_url(self.db).render_as_string(hide_password=True)
        except ArgumentError:
            return self.db

    def command_prefix(self) -> str:
        """How to repeat this invocation's database choice in a suggested command."""
        return f"rtms-lifecycle --db {self.shown_db}" if self.db_given else "rtms-lifecycle"


_pass_app = click.make_pass_decorator(_App)


def _console(stderr: bool = False) -> Console:
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
    return Text(value if value is not None else _DASH, style=style or "")


def _stop_reason(stream: Stream) -> Text:
    if not stream.stopped:
        return _styled(None, None)
    name = stream.stop_reason_name or _DASH
    label = name if stream.stop_reason is None else f"{stream.stop_reason} {name}"
    category = stream.stop_reason_category
    return _styled(label, _CATEGORY_STYLE.get(category or ""))


def _table(title: str | None, *columns: str, right: Iterable[str] = ()) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    aligned = set(right)
    for column in columns:
        table.add_column(column, justify="right" if column in aligned else "left")
    return table


def _streams_table(title: str, streams: Sequence[Stream]) -> Table:
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
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("stream", stream.stream_id),
        ("scope", f"{stream.scope.value} {stream.scope_id}"),
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


def _deliveries_table(records: Sequence[DeliveryRecord]) -> Table:
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


class _RateColumn(ProgressColumn):
    """Deliveries so far and how many per second."""

    def render(self, task: Task) -> Text:
        count = int(task.fields.get("count", 0))
        elapsed = task.elapsed or 0.0
        rate = count / elapsed if elapsed > 0 else 0.0
        return Text(f"{count:,} deliveries  {rate:,.0f}/s")


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
    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("reading")]
    if total:
        columns += [BarColumn(), TaskProgressColumn()]
    columns += [_RateColumn(), TimeElapsedColumn()]
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


def _replay(app: _App, tracker: Tracker, raw: IO[bytes], batch_size: int) -> IngestSummary:
    """Ingest JSON Lines (gzipped or not) from a file or a pipe, streaming it line by line."""
    total, position = _size_and_position(raw)
    with _decompressed(raw) as source, _progress(app.err, total, position) as report:
        return tracker.ingest_many(_json_lines(source, report), batch_size=batch_size)


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
    help="SQLAlchemy database URL (sqlite:///file.db, postgresql://user@host/db).",
)
@click.version_option(package_name="rtms-lifecycle")
@click.pass_context
def cli(ctx: click.Context, db: str) -> None:
    """A trustworthy, queryable record of every Zoom RTMS stream, built from its webhooks.

    Start with `rtms-lifecycle demo`.
    """
    given = ctx.get_parameter_source("db") is ParameterSource.COMMANDLINE
    app = _App(db=db, db_given=given, out=_console(), err=_console(stderr=True))
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
        summary = _replay(app, tracker, sys.stdin.buffer, batch_size)
    else:
        with open(path, "rb") as raw:
            summary = _replay(app, tracker, raw, batch_size)
    if as_json:
        _emit_json(summary.as_dict())
    else:
        _report_ingest(app, summary, time.perf_counter() - started)


@cli.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in State if s is not State.NEW]),
    help="Only streams in this state (repeatable).",
)
@click.option("--scope", type=click.Choice([s.value for s in Scope]), help="Only this product.")
@click.option("--active", is_flag=True, help="Only streams whose media flows (started, resumed).")
@click.option("--limit", type=click.IntRange(min=1), help="At most N streams (newest first).")
@_JSON_OPTION
@_pass_app
def streams(
    app: _App,
    states: tuple[str, ...],
    scope: str | None,
    active: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    """List stored streams, most recent activity first (all of them unless filtered)."""
    if active and states:
        raise click.UsageError("--active means --state started --state resumed: give one or other")
    wanted: Iterable[State | str] | None = ACTIVE_STATES if active else (states or None)
    found = app.tracker().streams(wanted, scope=scope, limit=limit)
    if as_json:
        _emit_json([s.as_dict() for s in found])
        return
    app.out.print(_streams_table(f"{len(found):,} streams", found))


@cli.command("stream")
@click.argument("stream_id")
@_JSON_OPTION
@_pass_app
def stream_command(app: _App, stream_id: str, as_json: bool) -> None:
    """Show one stream (by rtms_stream_id) and its history."""
    tracker = app.tracker()
    found = tracker.stream(stream_id)
    if found is None:
        raise _Failure(f"no stream with rtms_stream_id {stream_id!r} is stored in {app.shown_db}")
    history = tracker.history(stream_id)
    if as_json:
        _emit_json({"stream": found.as_dict(), "history": [t.as_dict() for t in history]})
        return
    app.out.print(_stream_details(found))
    app.out.print(_history_table(history))


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
@click.option(
    "--interruptions",
    is_flag=True,
    help="Interruption statistics (of streams that began in the window) instead.",
)
@_JSON_OPTION
@_pass_app
def stats(
    app: _App,
    since: int | None,
    until: int | None,
    by_scope: bool,
    interruptions: bool,
    as_json: bool,
) -> None:
    """Why streams stopped: count, share and median duration per stop reason."""
    tracker = app.tracker()
    if interruptions:
        scopes: list[Scope | None] = list(Scope) if by_scope else [None]
        rows = [(s, tracker.interruption_stats(since, until, scope=s)) for s in scopes]
        if as_json:
            data = [{"scope": s.value, **r.as_dict()} for s, r in rows if s is not None]
            _emit_json(data if by_scope else rows[0][1].as_dict())
            return
        app.out.print(_interruptions_table([(s.value if s else None, r) for s, r in rows]))
        return
    found = tracker.stop_reason_stats(since, until, by_scope=by_scope)
    if as_json:
        _emit_json([s.as_dict() for s in found])
        return
    app.out.print(_stop_reasons_table(found, by_scope))


@cli.command()
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice([o.value for o in Outcome]),
    help="Only deliveries with this outcome (repeatable).",
)
@click.option("--stream", "stream_id", metavar="ID", help="Only deliveries for this stream.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
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
    found = app.tracker().deliveries(outcomes or None, stream_id=stream_id, limit=limit or None)
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
    found = app.tracker().concurrency_alerts(since)
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
@_JSON_OPTION
@_pass_app
def expire(app: _App, stale_after: timedelta, as_json: bool) -> None:
    """Stop live streams whose stopped webhook never came (stop reason EXPIRED)."""
    closed = app.tracker().expire(stale_after)
    if as_json:
        _emit_json([s.as_dict() for s in closed])
        return
    app.out.print(_streams_table(f"Expired {len(closed):,} streams", closed))


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
    if older_than < MIN_RETENTION:
        raise click.BadParameter(
            f"keep at least {MIN_RETENTION.days} day: Zoom retries deliveries for about two "
            "hours, and a retry of a pruned stream's event would start the stream again",
            param_hint="--older-than",
        )
    result = app.tracker().prune(older_than, dry_run=dry_run, vacuum=vacuum)
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
    found = app.tracker().prunes(limit)
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
    current, head = _revisions(app.db)
    if as_json:
        _emit_json({"current": current, "head": head, "up_to_date": current == head})
        return
    if current == head:
        verdict = "up to date"
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
    engine = create_store_engine(app.db)
    try:
        before = _migrate.current_revision(engine)
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
@_pass_app
def serve(app: _App, host: str, port: int, path: str) -> None:
    """Receive Zoom's webhooks over HTTP (needs ZOOM_WEBHOOK_SECRET_TOKEN; extra 'server')."""
    try:
        from . import server  # the 'server' extra: imported only when asked for
    except ImportError as exc:
        raise _Failure(str(exc)) from exc
    server.run(host=host, port=port, path=path, db=app.db)


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
@_pass_app
def demo(app: _App, top: int) -> None:
    """Replay a bundled day of RTMS webhooks, then show what the record tells."""
    tracker = app.tracker()
    transitions = _count_transitions(tracker)
    app.out.print(f"Replaying a day of Zoom RTMS webhooks into {app.shown_db} ...", markup=False)
    started = time.perf_counter()
    with _demo_file() as raw:
        summary = _replay(app, tracker, raw, DEFAULT_BATCH_SIZE)
    _report_ingest(app, summary, time.perf_counter() - started)
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
