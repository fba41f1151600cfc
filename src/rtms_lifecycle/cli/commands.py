"""The ``rtms-lifecycle`` command: ingest, query, expire, migrate, demo and serve.

Every read command has ``--json``, whose shapes are a documented contract (docs/cli.md).
Human output goes through Rich: aligned tables, UTC ISO times, colours only on a terminal.
What a command shares lives in ``_cli_app``, its parameters in ``_cli_params``, what it prints
in ``_cli_rendering``, how ``ingest`` reads in ``_cli_reading``; the demo, the receiver and the
durable consumers' commands in ``_cli_demo``, ``_cli_serve`` and ``_cli_consumers``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import click
from click.core import ParameterSource

from rtms_lifecycle.bounds import MAX_COUNT
from rtms_lifecycle.cli.app import App, Group, pass_app
from rtms_lifecycle.cli.consumers import follow, forward, subscriptions
from rtms_lifecycle.cli.demo import demo
from rtms_lifecycle.cli.errors import BadInput, Failure, interrupted
from rtms_lifecycle.cli.params import (
    ACCOUNT_OPTION,
    JSON_OPTION,
    TEXT,
    check_window,
    parse_duration,
    parse_time,
    parsed_by,
)
from rtms_lifecycle.cli.reading import replay
from rtms_lifecycle.cli.rendering import (
    CATEGORY_STYLE,
    alerts_table,
    audit_report,
    claim_history_table,
    claims_table,
    deliveries_table,
    emit_json,
    emit_json_pages,
    history_table,
    interruptions_table,
    plural,
    print_pages,
    print_table,
    prune_table,
    prunes_table,
    report_ingest,
    size,
    stop_reasons_table,
    stream_details,
    streams_table,
    unhandled_table,
)
from rtms_lifecycle.cli.serve import serve
from rtms_lifecycle.cli.work import work
from rtms_lifecycle.clock import DASH, format_duration, format_time
from rtms_lifecycle.defaults import (
    DB_ENV,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DB_URL,
    MAX_BATCH_SIZE,
    OUTCOMES,
    SCOPES,
    STATES,
)

# Only Click is imported to build the commands: `--help` starts fast. What a command needs (Rich,
# SQLAlchemy, the tracker) is imported in the functions that use it.
if TYPE_CHECKING:
    from rtms_lifecycle.machine import State
    from rtms_lifecycle.records import DeliveryRecord
    from rtms_lifecycle.tracker import Tracker

# The parsers and formatters are part of what the command line offers (the tests use them).
__all__ = ["cli", "format_duration", "format_time", "main", "parse_duration", "parse_time"]

# The streams table without --limit: the newest this many (--json still lists every stream).
_TABLE_STREAMS: Final = 50
# Rows read and written at a time by a long listing: 1,000 deliveries are read and drawn in
# about 0.1 s, so a closed pipe ends the command that soon.
_PAGE: Final = 1000
# prune --older-than: a cutoff a thousand years back is before any stream; much further back it
# would be before year 1, which no date (nor the prune's own report) can show.
_MAX_OLDER_THAN: Final = timedelta(days=365_000)


def _check_lock_wait() -> None:
    """Refuse a bad lock wait (``RTMS_LIFECYCLE_LOCK_WAIT``) before anything is done."""
    from rtms_lifecycle.exceptions import ConfigurationError
    from rtms_lifecycle.store.sqlite import lock_wait_s

    try:
        lock_wait_s()
    except ConfigurationError as exc:
        raise BadInput(str(exc)) from exc


def _window(since: int | None, until: int | None) -> str:
    """`` at or after T``, `` before T``, `` in [T, U)``, or nothing: for the empty sentences."""
    if since is not None and until is not None:
        return f" in [{format_time(since)}, {format_time(until)})"
    if since is not None:
        return f" at or after {format_time(since)}"
    if until is not None:
        return f" before {format_time(until)}"
    return ""


# --- the commands ---------------------------------------------------------------------------------


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    app = App(given_db=db, db_given=given)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True, exists=True))
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Deliveries per transaction; 1 commits each delivery on its own (slower, safest).",
)
@JSON_OPTION
@pass_app
def ingest(app: App, path: str, batch_size: int, as_json: bool) -> None:
    """Record deliveries from a JSON Lines file or - for stdin (gzip too), one per line.

    Blank lines are skipped; a line that is not a valid delivery is stored as rejected and the
    run goes on.
    """
    _check_lock_wait()
    tracker = app.tracker()
    started = time.perf_counter()
    if path == "-":
        summary, reading = replay(app.err, tracker, sys.stdin.buffer, batch_size)
    else:
        with open(path, "rb") as raw:
            summary, reading = replay(app.err, tracker, raw, batch_size)
    if as_json:
        emit_json(summary.as_dict())
    else:
        # Writes that stopped before what was read: only what was committed is counted.
        verb = "Read" if reading.writes_kept_up else "Recorded"
        report_ingest(app.out, summary, time.perf_counter() - started, verb)
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
@click.option(
    "--since",
    metavar="T",
    callback=parsed_by(parse_time),
    help="Streams that began (first event) at or after T (epoch ms or ISO 8601).",
)
@click.option(
    "--until",
    metavar="T",
    callback=parsed_by(parse_time),
    help="Streams that began before T (epoch ms or ISO 8601).",
)
@ACCOUNT_OPTION
@JSON_OPTION
@pass_app
def streams(
    app: App,
    states: tuple[str, ...],
    scope: str | None,
    active: bool,
    limit: int | None,
    since: int | None,
    until: int | None,
    account_id: str | None,
    as_json: bool,
) -> None:
    """List stored streams, most recent activity first (all of them unless filtered)."""
    from rtms_lifecycle.machine import ACTIVE_STATES

    check_window(since, until)

    if active and states:
        raise click.UsageError(
            "'--active' means '--state started --state resumed': give one or the other"
        )
    wanted: Iterable[State | str] | None = ACTIVE_STATES if active else (states or None)
    filtered = wanted is not None or any(v is not None for v in (scope, since, until, account_id))
    empty = "No streams match." if filtered else "No streams are stored yet."
    tracker = app.tracker(create=False)
    if as_json or limit is not None:
        found = tracker.streams(
            wanted,
            scope=scope,
            limit=limit,
            began_since=since,
            began_until=until,
            account_id=account_id,
        )
        app.show(
            as_json,
            found,
            lambda found: streams_table(plural(len(found), "stream"), found),
            empty,
        )
        return
    # Drawing tens of thousands of rows takes a minute and helps nobody, and reading a million
    # streams to count them takes longer: the newest rows, and a count from the database.
    found = tracker.streams(
        wanted,
        scope=scope,
        limit=_TABLE_STREAMS,
        began_since=since,
        began_until=until,
        account_id=account_id,
    )
    total = (
        len(found)
        if len(found) < _TABLE_STREAMS
        else tracker.count_streams(
            wanted, scope=scope, began_since=since, began_until=until, account_id=account_id
        )
    )
    if not found:
        app.say(empty)
        return
    if total > len(found):
        title = (
            f"Newest streams: showing {len(found)} of {total:,} "
            "(--limit N shows more, --json lists all)"
        )
        print_table(app.out, streams_table(title, found))
        return
    print_table(app.out, streams_table(plural(total, "stream"), found))


@cli.command("stream")
@click.argument("stream_id", type=TEXT)
@JSON_OPTION
@pass_app
def stream_command(app: App, stream_id: str, as_json: bool) -> None:
    """Show one stream (by rtms_stream_id) and its history."""
    from rtms_lifecycle.cli.charts import timeline_bar
    from rtms_lifecycle.clock import now_ms

    tracker = app.tracker(create=False)
    found = tracker.stream(stream_id)
    if found is None:
        raise Failure(f"no stream with rtms_stream_id {stream_id!r} is stored in {app.shown_db}")
    history = tracker.history(stream_id)
    claims = tracker.claim_history(stream_id)
    if as_json:
        emit_json(
            {
                "stream": found.as_dict(),
                "history": [t.as_dict() for t in history],
                "claims": [e.as_dict() for e in claims],
            }
        )
        return
    app.out.print(stream_details(found))
    if history:
        print_table(app.out, history_table(history))
        # The bar is as wide as the terminal allows, up to 64 columns: a wrapped one reads wrong.
        width = max(10, min(64, app.out.width))
        app.out.print(timeline_bar(found, history, now_ms(), format_time, width=width))
    else:
        app.say("No transitions are recorded for this stream.")
    if claims:
        print_table(app.out, claim_history_table(claims))


@cli.command()
@click.option("--worker", type=TEXT, help="Only this worker's claims.")
@JSON_OPTION
@pass_app
def claims(app: App, worker: str | None, as_json: bool) -> None:
    """Which worker holds which live stream: tokens, lease ages, connection state."""
    from rtms_lifecycle.clock import now_ms
    from rtms_lifecycle.tracking import check_worker

    if worker is not None:
        try:
            check_worker(worker)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--worker'") from None
    found = app.tracker(create=False).claims(worker)
    now = now_ms()
    if as_json:
        emit_json([{**claim.as_dict(), "expired": claim.expires_at <= now} for claim in found])
        return
    print_table(app.out, claims_table(found, now, worker))


@cli.command()
@click.option(
    "--since",
    metavar="T",
    callback=parsed_by(parse_time),
    help="Streams stopped at or after T (epoch ms or ISO 8601).",
)
@click.option(
    "--until",
    metavar="T",
    callback=parsed_by(parse_time),
    help="Streams stopped before T (epoch ms or ISO 8601).",
)
@click.option("--by-scope", is_flag=True, help="One row per scope and reason.")
@click.option("--chart", is_flag=True, help="Draw the reasons as horizontal bars.")
@click.option(
    "--interruptions",
    is_flag=True,
    help="Interruption statistics (of streams that began in the window) instead.",
)
@ACCOUNT_OPTION
@click.option(
    "--unhandled",
    is_flag=True,
    help="Event names this version does not handle (received in the window) instead.",
)
@JSON_OPTION
@pass_app
def stats(
    app: App,
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
    from rtms_lifecycle.cli.charts import stop_reason_bars
    from rtms_lifecycle.events import Scope

    check_window(since, until)
    if chart and interruptions:
        raise click.UsageError(
            "'--chart' draws stop reasons: it does not go with '--interruptions'"
        )
    tracker = app.tracker(create=False)
    if unhandled:
        if interruptions or by_scope or chart or account_id is not None:
            raise click.UsageError(
                "'--unhandled' lists event names: it does not go with '--interruptions', "
                "'--by-scope', '--chart' or '--account'"
            )
        app.show(
            as_json,
            tracker.unhandled_stats(since, until),
            unhandled_table,
            f"No deliveries of unhandled event names were received{_window(since, until)}.",
        )
        return
    if interruptions:
        scopes: list[Scope | None] = list(Scope) if by_scope else [None]
        rows = [
            (s, tracker.interruption_stats(since, until, scope=s, account_id=account_id))
            for s in scopes
        ]
        if as_json:
            data = [{"scope": s.value, **r.as_dict()} for s, r in rows if s is not None]
            emit_json(data if by_scope else rows[0][1].as_dict())
            return
        print_table(app.out, interruptions_table([(s.value if s else None, r) for s, r in rows]))
        return
    found = tracker.stop_reason_stats(since, until, by_scope=by_scope, account_id=account_id)
    app.show(
        as_json,
        found,
        lambda found: stop_reasons_table(found, by_scope),
        f"No streams stopped{_window(since, until)}"
        + (f" of account {account_id!r}." if account_id is not None else "."),
    )
    if chart and not as_json and found:
        app.out.print(stop_reason_bars(found, CATEGORY_STYLE, room=app.out.width))


@cli.group(invoke_without_command=True)
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice(OUTCOMES),
    help="Only deliveries with this outcome (repeatable).",
)
@click.option(
    "--stream", "stream_id", metavar="ID", type=TEXT, help="Only deliveries for this stream."
)
@click.option(
    "--limit",
    type=click.IntRange(min=0, max=MAX_COUNT),
    default=100,
    show_default=True,
    help="At most N deliveries; 0 for all.",
)
@JSON_OPTION
@click.pass_context
def deliveries(
    ctx: click.Context,
    outcomes: tuple[str, ...],
    stream_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Stored deliveries, newest first, with their outcome and why one was rejected
    (``deliveries reprocess`` parses refused ones again)."""
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(App)
    assert app is not None
    tracker = app.tracker(create=False)
    filtered = bool(outcomes) or stream_id is not None
    empty = "No deliveries match." if filtered else "No deliveries are stored yet."
    if limit == 0 or limit > _PAGE:
        # Written a page at a time: `| head` ends at once, `less` shows the first screen.
        pages = _delivery_pages(tracker, outcomes, stream_id, limit)
        if as_json:
            emit_json_pages([record.as_dict() for record in page] for page in pages)
            return
        tables = (
            deliveries_table(page, None if n else "Deliveries (newest first)")
            for n, page in enumerate(pages)
        )
        if not print_pages(app.out, tables):
            app.say(empty)
        return
    # The table says when the default limit cut it (a --limit given is what was asked for, as
    # for `streams`): one row past the limit tells, without counting them all.
    noted = not as_json and ctx.get_parameter_source("limit") is ParameterSource.DEFAULT
    found = tracker.deliveries(
        outcomes or None, stream_id=stream_id, limit=limit + 1 if noted else limit
    )
    cut = noted and len(found) > limit
    found = found[:limit] if cut else found
    app.show(as_json, found, deliveries_table, empty)
    if cut:
        app.say(f"Showed the newest {limit:,}; use --limit N to see more (--limit 0 for all).")


def _delivery_pages(
    tracker: Tracker, outcomes: tuple[str, ...], stream_id: str | None, limit: int
) -> Iterator[list[DeliveryRecord]]:
    """The newest ``limit`` deliveries (0: all), newest first, a page at a time."""
    cursor, left = None, limit or None
    while True:
        size = _PAGE if left is None else min(_PAGE, left)
        page = tracker.delivery_page(
            outcomes or None, stream_id=stream_id, limit=size, cursor=cursor
        )
        yield page.items
        if left is not None:
            left -= len(page.items)
        if page.next is None or left == 0:
            return
        cursor = page.next


@deliveries.command("reprocess")
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice(["rejected", "unhandled"]),
    help="Only deliveries with this outcome (repeatable; default: both).",
)
@click.option(
    "--since",
    metavar="T",
    callback=parsed_by(parse_time),
    help="Only deliveries received at or after T (epoch ms or ISO 8601).",
)
@click.option("--dry-run", is_flag=True, help="Count what now parses, and write nothing.")
@JSON_OPTION
@pass_app
def reprocess(
    app: App, outcomes: tuple[str, ...], since: int | None, dry_run: bool, as_json: bool
) -> None:
    """Parse refused deliveries again with this version and fold in those now valid."""
    result = app.tracker(create=False).reprocess(outcomes or None, since=since, dry_run=dry_run)
    if as_json:
        emit_json(result.as_dict())
        return
    read = ", ".join(f"{n} {o}" for o, n in sorted(result.before.items())) or "nothing"
    became = ", ".join(f"{n} {o}" for o, n in sorted(result.after.items())) or "nothing"
    verb = "would become" if dry_run else "became"
    app.out.print(f"Read {read} again: they {verb} {became}.")


@cli.command()
@click.option(
    "--since",
    metavar="T",
    callback=parsed_by(parse_time),
    help="Alerts whose event time (Zoom's event_ts, not when received) is at or after T "
    "(epoch ms or ISO 8601).",
)
@JSON_OPTION
@pass_app
def alerts(app: App, since: int | None, as_json: bool) -> None:
    """Account concurrency alerts (near the limit, or a stream refused), newest event first."""
    app.show(
        as_json,
        app.tracker(create=False).concurrency_alerts(since),
        alerts_table,
        f"No concurrency alerts{_window(since, None)}.",
    )


@cli.command()
@click.option(
    "--stale-after",
    metavar="DURATION",
    callback=parsed_by(parse_duration),
    required=True,
    help="Close live streams with no event for this long: 90s, 15m, 6h, 2d, 1h30m.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be expired, and write nothing.")
@JSON_OPTION
@pass_app
def expire(app: App, stale_after: timedelta, dry_run: bool, as_json: bool) -> None:
    """Stop live streams whose stopped webhook never came (stop reason EXPIRED).

    Each stops now; a real stop that arrives later is older, so it wins.
    """
    closed = app.tracker(create=False).expire(stale_after, dry_run=dry_run)
    verb = "Would expire" if dry_run else "Expired"
    app.show(
        as_json,
        closed,
        lambda closed: streams_table(f"{verb} {plural(len(closed), 'stream')}", closed),
        f"{verb} 0 streams: no live stream has gone "
        f"{format_duration(int(stale_after.total_seconds() * 1000))} without an event.",
    )


@cli.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=parsed_by(parse_duration),
    required=True,
    help="Remove streams that stopped longer ago than this (1d to 365000d): 30d, 90d.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option(
    "--vacuum",
    is_flag=True,
    help="Then rewrite the database file (SQLite VACUUM) or run VACUUM ANALYZE (PostgreSQL).",
)
@JSON_OPTION
@pass_app
def prune(app: App, older_than: timedelta, dry_run: bool, vacuum: bool, as_json: bool) -> None:
    """Remove old stopped streams (with their deliveries and history), old alerts and old
    deliveries of no stream. Live streams are kept, however old."""
    from rtms_lifecycle.retention import MIN_RETENTION

    if older_than < MIN_RETENTION:
        raise click.BadParameter(
            f"keep at least {MIN_RETENTION.days} day: Zoom retries deliveries for about two "
            "hours, and a retry of a pruned stream's event would start the stream again",
            param_hint="'--older-than'",
        )
    if older_than > _MAX_OLDER_THAN:
        raise click.BadParameter(
            f"at most {_MAX_OLDER_THAN.days}d (1,000 years)", param_hint="'--older-than'"
        )
    from rtms_lifecycle.store.retention import PruneInterrupted

    _check_lock_wait()
    try:
        result = app.tracker(create=False).prune(older_than, dry_run=dry_run, vacuum=vacuum)
    except PruneInterrupted as stop:
        if as_json:
            emit_json(stop.result.as_dict())
        else:
            app.out.print(
                f"Removed what is older than {format_time(stop.result.cutoff)}, until the "
                "interruption:",
                markup=False,
            )
            app.out.print(prune_table(stop.result))
        if stop.complete:
            raise interrupted(
                "Interrupted after the last step: everything older than the cutoff is removed "
                "(`prunes` lists the run as complete); the space it freed is reused by new rows"
                f"{' (the VACUUM did not run)' if vacuum else ''}."
            ) from None
        raise interrupted(
            "Interrupted: the prune stopped before its end. What it removed is above, and "
            "recorded (`prunes` lists the run as partial); older streams are left: run it "
            "again to remove them."
        ) from None
    if as_json:
        emit_json(result.as_dict())
        return
    verb = "Would remove" if dry_run else "Removed"
    app.out.print(f"{verb} what is older than {format_time(result.cutoff)}:", markup=False)
    app.out.print(prune_table(result))
    if result.reclaimed_bytes:
        app.out.print(f"The database is {size(result.reclaimed_bytes)} smaller.", markup=False)
    if result.free_bytes:
        app.out.print(
            f"{size(result.free_bytes)} are free inside the database file: new rows reuse them "
            "(`prune --vacuum` gives them back to the file system).",
            markup=False,
        )


@cli.command()
@click.option(
    "--limit", type=click.IntRange(min=1, max=MAX_COUNT), help="At most N prunes (newest first)."
)
@JSON_OPTION
@pass_app
def prunes(app: App, limit: int | None, as_json: bool) -> None:
    """Recorded prunes, newest first: when, the cutoff, what each removed, and whether it ran
    to its end."""
    found = app.tracker(create=False).prunes(limit)
    app.show(as_json, found, prunes_table)
    if not as_json and found and not found[0].complete:
        app.say(
            "The newest prune is partial: it was interrupted (or is still running), and removed "
            "only part of what was older than its cutoff. Run `prune` again to remove the rest."
        )


@cli.group()
def db() -> None:
    """The database schema: which migration it is at, its history, upgrading and downgrading it."""


@db.command("backup")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def db_backup(app: App, target: Path) -> None:
    """Copy the live SQLite database into the new file TARGET, consistently (SQLite's online
    backup: safe while a receiver writes). PostgreSQL: use pg_dump."""
    from rtms_lifecycle.store.backup import backup_sqlite
    from rtms_lifecycle.store.urls import plain_sqlite_file

    app.require_database()
    plain = plain_sqlite_file(app.db)
    if plain is None:
        raise BadInput(
            "db backup copies an SQLite file; for PostgreSQL use pg_dump "
            "(pg_dump --format=custom --file=rtms.dump DATABASE_URL; restore with pg_restore)"
        )
    try:
        pages = backup_sqlite(plain[1], target)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    app.out.print(f"backed up {plain[1].path} into {target} ({pages} pages)", markup=False)


@db.command("current")
@JSON_OPTION
@pass_app
def db_current(app: App, as_json: bool) -> None:
    """Show the database's migration and the one this version needs."""
    from rtms_lifecycle.store import migrate as _migrate

    app.require_database()
    current, head = _migrate.revisions(app.db)
    if as_json:
        emit_json({"current": current, "head": head, "up_to_date": current == head})
        return
    if current == head:
        verdict = "up to date"
    elif current is not None and not _migrate.is_known(current):
        verdict = "newer than this version of rtms-lifecycle: upgrade rtms-lifecycle"
    elif current is None:
        verdict = "no schema yet: created on first use"
    else:
        verdict = "outdated: run `rtms-lifecycle db upgrade`"
    app.out.print(f"current: {current or DASH}\nhead:    {head}\n{verdict}", markup=False)


@db.command("history")
@JSON_OPTION
@pass_app
def db_history(app: App, as_json: bool) -> None:
    """List the migrations this version ships, oldest first: applied or pending."""
    from rtms_lifecycle.store import migrate as _migrate

    app.require_database()
    current, head = _migrate.revisions(app.db)
    shipped = _migrate.migrations()
    known = [revision for revision, _ in shipped]
    applied = set(known[: known.index(current) + 1] if current in known else [])
    if current is not None and current not in known:
        applied = set(known)  # a newer version migrated it past everything shipped here
    if as_json:
        emit_json(
            {
                "current": current,
                "head": head,
                "migrations": [
                    {"revision": revision, "title": title, "applied": revision in applied}
                    for revision, title in shipped
                ],
            }
        )
        return
    lines = [
        f"{'→' if revision == current else ' '} {revision}  "
        f"{'applied' if revision in applied else 'pending'}  {title}"
        for revision, title in shipped
    ]
    if current is not None and current not in known:
        lines.append(f"→ {current}  applied  (written by a newer rtms-lifecycle: upgrade it)")
    pending = len(known) - len(applied)
    if pending:
        lines.append(f"{plural(pending, 'migration')} pending: run `rtms-lifecycle db upgrade`.")
    else:
        lines.append("Up to date.")
    app.out.print("\n".join(lines), markup=False)


@db.command("upgrade")
@JSON_OPTION
@pass_app
def db_upgrade(app: App, as_json: bool) -> None:
    """Migrate the database to the newest schema (run before starting a new version)."""
    from rtms_lifecycle.store import migrate as _migrate

    before, after = _migrate.upgrade_url(app.db)
    if as_json:
        emit_json({"from": before, "to": after})
    elif before == after:
        app.out.print(f"Already at the newest revision {after}.", markup=False)
    else:
        app.out.print(f"Upgraded from {before or 'an empty database'} to {after}.", markup=False)


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do it: without, only say what it would undo and drop.")
@JSON_OPTION
@pass_app
def db_downgrade(app: App, revision: str, yes: bool, as_json: bool) -> None:
    """Undo the migrations after REVISION, to run the older version that needs it: streams,
    deliveries, their history and alerts stay; what each undone migration added goes. Stop this
    version's receivers and workers first; run it as the database's owner."""
    from rtms_lifecycle.store import migrate as _migrate

    app.require_database()
    current, _ = _migrate.revisions(app.db)
    try:
        undone = _migrate.downgrade_plan(current, revision)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    plan = [
        f"  {rev}  {title}\n        drops: {_migrate.DOWNGRADE_DROPS[rev]}" for rev, title in undone
    ]
    if not yes:
        click.echo(
            f"Downgrading {app.shown_db} from {current} to {revision} undoes "
            f"{plural(len(undone), 'migration')}, newest first:\n" + "\n".join(plan) + "\n"
            "Streams, deliveries, transitions, alerts and prune records are kept.",
            err=True,
        )
        raise BadInput(f"nothing downgraded: run again with --yes to downgrade to {revision}")
    assert current is not None  # downgrade_plan refuses a database without a schema
    _migrate.downgrade_url(app.db, current, revision)
    if as_json:
        emit_json({"from": current, "to": revision, "undone": [rev for rev, _ in undone]})
        return
    app.out.print(
        f"Downgraded {app.shown_db} from {current} to {revision}: undid "
        f"{plural(len(undone), 'migration')} ({', '.join(rev for rev, _ in undone)}). "
        "Start the version that needs it; `db upgrade` with a newer one brings them back.",
        markup=False,
    )


@db.command("grant")
@click.argument("role")
@JSON_OPTION
@pass_app
def db_grant(app: App, role: str, as_json: bool) -> None:
    """PostgreSQL: let ROLE run a receiver (record deliveries, read everything), but neither
    delete nor rewrite the audit history nor prune. Run it as the database's owner."""
    from rtms_lifecycle.store.roles import grant_receiver

    statements = grant_receiver(app.tracker(create=False).engine, role)
    if as_json:
        emit_json({"role": role, "statements": statements})
        return
    app.out.print("\n".join(f"{statement};" for statement in statements), markup=False)


@cli.group()
def audit() -> None:
    """The audit history's hash chains: verify them, and take a digest of them all."""


@audit.command("verify")
@click.option("--stream", "stream_id", metavar="ID", type=TEXT, help="Only this stream's chain.")
@click.option(
    "--head",
    metavar="DIGEST",
    help="Also check a digest `audit head` printed earlier: the history it covers is unchanged.",
)
@JSON_OPTION
@pass_app
def audit_verify(app: App, stream_id: str | None, head: str | None, as_json: bool) -> None:
    """Recompute every transition's hash and name each chain's first broken link (exit 1 on any
    break, or if the --head digest does not verify)."""
    if stream_id is not None and head is not None:
        raise click.UsageError("'--head' covers every stream: give it without '--stream'")
    tracker = app.tracker(create=False)
    try:
        report = tracker.verify_audit(stream_id, head=head)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--head'") from exc
    if stream_id is not None and report.streams == 0 and tracker.stream(stream_id) is None:
        # As `stream ID` answers it: an unknown stream is not a verified one.
        raise Failure(
            f"no stream with rtms_stream_id {stream_id!r} is stored in {app.shown_db}: "
            "nothing to verify"
        )
    if as_json:
        emit_json(report.as_dict())
    else:
        app.out.print(audit_report(report), markup=False)
    if report.breaks or report.head_matches is False:
        raise click.exceptions.Exit(1)
    if report.inconclusive:
        raise click.exceptions.Exit(4)  # not a break: an alert can tell the two apart


@audit.command("head")
@JSON_OPTION
@pass_app
def audit_head(app: App, as_json: bool) -> None:
    """Print one digest of every chain's head (and of the chains pruned): keep it elsewhere,
    and later check it with `audit verify --head DIGEST`. Refused while a chain is broken."""
    report = app.tracker(create=False).verify_audit()
    if not report.ok:
        raise Failure(
            f"the audit history has {plural(len(report.breaks), 'broken chain')}: see "
            "`rtms-lifecycle audit verify`; no digest of it is printed"
        )
    if as_json:
        emit_json({"head": report.head, "streams": report.streams})
        return
    click.echo(report.head)


cli.add_command(demo)
cli.add_command(serve)
cli.add_command(follow)
cli.add_command(forward)
cli.add_command(subscriptions)
cli.add_command(work)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script ``rtms-lifecycle``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="rtms-lifecycle")
    raise AssertionError("unreachable: Click exits")
