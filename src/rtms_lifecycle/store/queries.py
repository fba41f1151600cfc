"""Read queries behind the Tracker: plain functions of a connection."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
)

from rtms_lifecycle.events import ZOOM_SOURCES, EventKind, Scope
from rtms_lifecycle.machine import ACTIVE_STATES, State, TransitionName, fold
from rtms_lifecycle.records import (
    ConcurrencyAlertRecord,
    DeliveryRecord,
    InterruptionStats,
    Outcome,
    StopReasonCount,
    StopReasonStat,
    Stream,
    Transition,
    UnhandledEventStat,
)
from rtms_lifecycle.stop_reasons import describe_stop_reason
from rtms_lifecycle.store import rollup
from rtms_lifecycle.store.predicates import (
    EVENT_PREDICATE,
    STREAM_DELIVERY_PREDICATES,
    UNAPPLIED_PREDICATE,
)
from rtms_lifecycle.store.rows import (
    EVENT_COLUMNS,
    STREAM_RECORD_COLUMNS,
    TRANSITION_COLUMNS,
    alert_from_row,
    delivery_from_row,
    event_from_delivery,
    held_streams_from_rows,
    in_lists,
    streams_from_rows,
    transition_from_row,
)
from rtms_lifecycle.store.tables import (
    LIVE_PREDICATE,
    concurrency_alerts,
    deliveries,
    stream_claims,
    streams,
)
from rtms_lifecycle.store.tables import transitions as transitions_table
from rtms_lifecycle.unhandled import looks_like_rtms

_LIVE: Final = text(LIVE_PREDICATE)
_RANK: Final = case({kind.value: kind.rank for kind in EventKind}, value=transitions_table.c.kind)


_STREAM_COLUMNS: Final = [streams.c[name] for name in STREAM_RECORD_COLUMNS]


def _streams(conn: Connection, query: Any) -> list[Stream]:
    return streams_from_rows(conn.execute(query))


_TRANSITION_COLUMNS: Final = [transitions_table.c[name] for name in TRANSITION_COLUMNS]
_EVENT_COLUMNS: Final = [deliveries.c[name] for name in EVENT_COLUMNS]


def _transitions(conn: Connection, query: Any) -> list[Transition]:
    return [transition_from_row(tuple(row)) for row in conn.execute(query)]


def stream(conn: Connection, stream_id: str) -> Stream | None:
    query = select(*_STREAM_COLUMNS).where(
        streams.c.stream_id == stream_id, streams.c.state != State.NEW.value
    )
    found = _streams(conn, query)
    return found[0] if found else None


def stored_stream_ids(conn: Connection, stream_ids: Iterable[str]) -> set[str]:
    """Which of ``stream_ids`` name a stream :func:`stream` finds."""
    found: set[str] = set()
    for ids in in_lists(sorted(set(stream_ids))):
        query = select(streams.c.stream_id).where(
            streams.c.stream_id.in_(ids), streams.c.state != State.NEW.value
        )
        found.update(conn.execute(query).scalars())
    return found


def _of_account(query: Any, account_id: str | None) -> Any:
    return query if account_id is None else query.where(streams.c.account_id == account_id)


# Live streams with their claims' holders, built once: the unfiltered form is the hot one.
_HELD: Final = and_(
    stream_claims.c.stream_id == streams.c.stream_id,
    stream_claims.c.ended_at.is_(None),
    stream_claims.c.expires_at > bindparam("now"),
)
# Constants written into the SQL: no parameters to expand at each call.
_FLOWING: Final = text(
    "streams.state IN (" + ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES)) + ")"
)
_ACTIVE: Final = select(*_STREAM_COLUMNS).where(_LIVE, _FLOWING)
_ACTIVE_HELD: Final = (
    select(*_STREAM_COLUMNS, stream_claims.c.worker, stream_claims.c.connected)
    .select_from(streams.outerjoin(stream_claims, _HELD))
    .where(_LIVE, _FLOWING)
)


_ALL_ACTIVE_HELD: Final = _ACTIVE_HELD.order_by(streams.c.stream_id)
# Each statement compiled once per dialect, with its parameters' names in order (positional).
_COMPILED: dict[tuple[str, int], tuple[str, tuple[str, ...] | None]] = {}


def _driver_rows(conn: Connection, statement: Any, values: dict[str, Any]) -> list[Any]:
    """``statement``'s rows as the driver's tuples, for reads of thousands of rows: SQLAlchemy's
    compilation per call and its Row objects were a fifth of ``active_streams()`` at 2,000 live
    streams (5.3 against 4.4 ms, SQLite, 1,000,000 streams)."""
    key = (conn.dialect.name, id(statement))
    compiled = _COMPILED.get(key)
    if compiled is None:
        done = statement.compile(dialect=conn.dialect)
        names = tuple(done.positiontup or ()) if done.positional else None
        compiled = _COMPILED[key] = (done.string, names)
    sql, names = compiled
    params = values if names is None else tuple(values[name] for name in names)
    result = conn.exec_driver_sql(sql, params)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def active_streams(
    conn: Connection,
    scope: Scope | None,
    scope_id: str | None,
    account_id: str | None = None,
    now: int | None = None,
) -> list[Stream]:
    """Live streams; with ``now``, each with its claim's worker and connection state, read in
    the same query (a primary-key lookup per stream, instead of thousands of bound ids)."""
    # The live predicate is repeated verbatim so that SQLite picks the partial index (which
    # holds every column, account_id included: the filters never leave it).
    if now is not None and scope is None and scope_id is None and account_id is None:
        return held_streams_from_rows(_driver_rows(conn, _ALL_ACTIVE_HELD, {"now": now}))
    query = _ACTIVE if now is None else _ACTIVE_HELD
    if scope is not None:
        query = query.where(streams.c.scope == Scope(scope).value)
    if scope_id is not None:
        query = query.where(streams.c.scope_id == scope_id)
    query = _of_account(query, account_id).order_by(streams.c.stream_id)
    if now is None:
        return _streams(conn, query)
    return held_streams_from_rows(conn.execute(query, {"now": now}))


def _matching_streams(
    query: Select[Any],
    states: Sequence[State] | None,
    scope: Scope | None,
    scope_id: str | None,
    since: int | None,
    until: int | None,
    account_id: str | None,
    began: tuple[int | None, int | None] = (None, None),
) -> Select[Any]:
    """``query`` narrowed to the streams that ``list_streams`` and ``count_streams`` select:
    alive in ``[since, until)``, and begun in ``began`` (``[since, until)`` of the start)."""
    query = _of_account(query.where(streams.c.state != State.NEW.value), account_id)
    if began != (None, None):
        query = query.where(_window(streams.c.first_event_at, *began))
    if states:
        values = [State(s).value for s in states]
        if State.STOPPED.value not in values:
            query = query.where(_LIVE)
        query = query.where(streams.c.state.in_(values))
    if scope is not None:
        query = query.where(streams.c.scope == Scope(scope).value)
    if scope_id is not None:
        query = query.where(streams.c.scope_id == scope_id)
    if until is not None:
        query = query.where(streams.c.first_event_at < until)
    if since is not None:
        query = query.where(or_(streams.c.stopped_at.is_(None), streams.c.stopped_at >= since))
    return query


def list_streams(
    conn: Connection,
    states: Sequence[State] | None,
    scope: Scope | None,
    scope_id: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
    account_id: str | None = None,
    began: tuple[int | None, int | None] = (None, None),
) -> list[Stream]:
    query = _matching_streams(
        select(*_STREAM_COLUMNS), states, scope, scope_id, since, until, account_id, began
    )
    query = query.order_by(streams.c.last_event_at.desc(), streams.c.stream_id)
    if limit is not None:
        query = query.limit(limit)
    return _streams(conn, query)


def stream_page(
    conn: Connection,
    states: Sequence[State] | None,
    scope: Scope | None,
    scope_id: str | None,
    since: int | None,
    until: int | None,
    account_id: str | None,
    after: tuple[int, str] | None,
    limit: int,
) -> list[tuple[int, Stream]]:
    """Streams that began in ``[since, until)``, newest start first, ``limit`` after ``after``;
    each with its start time (``first_event_at``), the first half of its keyset position.

    Keyset order on ``(first_event_at, stream_id)``, read from ix_streams_first_event_at: a page
    boundary is a position, not a count, so rows inserted between pages neither shift nor repeat.
    """
    began = streams.c.first_event_at
    query = _matching_streams(
        select(began, *_STREAM_COLUMNS), states, scope, scope_id, None, None, account_id
    ).where(_window(began, since, until))
    if after is not None:
        at, sid = after
        query = query.where(or_(began < at, and_(began == at, streams.c.stream_id < sid)))
    query = query.order_by(began.desc(), streams.c.stream_id.desc()).limit(limit)
    rows = conn.execute(query).all()
    return list(
        zip((row[0] for row in rows), streams_from_rows(row[1:] for row in rows), strict=True)
    )


def count_streams(
    conn: Connection,
    states: Sequence[State] | None,
    scope: Scope | None,
    scope_id: str | None,
    since: int | None,
    until: int | None,
    account_id: str | None = None,
    began: tuple[int | None, int | None] = (None, None),
) -> int:
    query = _matching_streams(
        select(func.count()).select_from(streams),
        states,
        scope,
        scope_id,
        since,
        until,
        account_id,
        began,
    )
    count: int = conn.execute(query).scalar_one()
    return count


def history(conn: Connection, stream_id: str) -> list[Transition]:
    query = (
        select(*_TRANSITION_COLUMNS)
        .where(transitions_table.c.stream_id == stream_id)
        .order_by(transitions_table.c.event_ts, _RANK, transitions_table.c.id)
    )
    return _transitions(conn, query)


def audit(conn: Connection, stream_id: str) -> list[Transition]:
    query = (
        select(*_TRANSITION_COLUMNS)
        .where(transitions_table.c.stream_id == stream_id)
        .order_by(transitions_table.c.id)
    )
    return _transitions(conn, query)


# PostgreSQL: the oldest transaction still running. Feed rows below it are final (no older
# transaction can still commit one), so the feed shows only those.
FEED_HORIZON: Final = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def transitions_since(conn: Connection, cursor: tuple[int, int], limit: int) -> list[Transition]:
    return [transition for _, transition in feed_page(conn, cursor, limit)]


def feed_after(conn: Connection, cursor: tuple[int, int]) -> ColumnElement[bool]:
    """The transitions after ``cursor`` in the feed's order."""
    t = transitions_table.c
    if conn.dialect.name != "sqlite":
        return tuple_(t.tx_id, t.id) > tuple_(literal(cursor[0]), literal(cursor[1]))
    # SQLite's writers take turns, so ids are in commit order and every row's tx_id is 0: the
    # feed is the rowid order, read without an index on (tx_id, id) that every commit would
    # write a page of. The cursor compares with (0, id) as it would in that index.
    tx, after = cursor
    if tx == 0:
        return t.id > after
    return true() if tx < 0 else false()


def feed_order(conn: Connection) -> tuple[ColumnElement[int], ...]:
    """The columns the feed is ordered by: ``(tx_id, id)``, on SQLite the rowid alone."""
    t = transitions_table.c
    return (t.id,) if conn.dialect.name == "sqlite" else (t.tx_id, t.id)


def feed_page(
    conn: Connection, cursor: tuple[int, int], limit: int
) -> list[tuple[tuple[int, int], Transition]]:
    """The feed after ``cursor``: each transition with its own feed position ``(tx, id)``."""
    t = transitions_table
    query = select(t.c.tx_id, *_TRANSITION_COLUMNS).where(feed_after(conn, cursor))
    if conn.dialect.name == "postgresql":
        # Only transactions older than every running one: no row can still appear below them.
        query = query.where(t.c.tx_id < text(FEED_HORIZON))
    query = query.order_by(*feed_order(conn)).limit(limit)
    return [
        ((tx_id, row[0]), transition_from_row(tuple(row))) for tx_id, *row in conn.execute(query)
    ]


def transition(conn: Connection, transition_id: int) -> tuple[tuple[int, int], Transition] | None:
    """One transition by id, with its feed position."""
    t = transitions_table
    query = select(t.c.tx_id, *_TRANSITION_COLUMNS).where(t.c.id == transition_id)
    row = conn.execute(query).first()
    if row is None:
        return None
    tx_id, *rest = row
    return (tx_id, rest[0]), transition_from_row(tuple(rest))


def feed_cursor_of(conn: Connection, transition_id: int) -> tuple[int, int]:
    tx_id = conn.execute(
        select(transitions_table.c.tx_id).where(transitions_table.c.id == transition_id)
    ).scalar_one()
    return (tx_id, transition_id)


def _window(column: Any, since: int | None, until: int | None) -> Any:
    clauses = [column.is_not(None)]
    if since is not None:
        clauses.append(column >= since)
    if until is not None:
        clauses.append(column < until)
    return and_(*clauses)


def _stop_stats_from_rows(
    conn: Connection, since: int | None, until: int | None, by_scope: bool, account_id: str | None
) -> dict[tuple[str | None, int | None, bool], tuple[int, int | None]]:
    """Count and median duration per group of stops, from the rows themselves: one account's
    (the rollup has no account: it would hold about a row per stop), or to check the rollup."""
    scope_column = streams.c.scope if by_scope else literal(None)
    duration = streams.c.stopped_at - streams.c.started_at
    # An expiry and a webhook's stop without a reason both have no code: the source tells them.
    expired = streams.c.stop_source.not_in(ZOOM_SOURCES)
    query = _of_account(
        select(scope_column, streams.c.stop_reason, expired, duration).where(
            _window(streams.c.stopped_at, since, until)
        ),
        account_id,
    )
    groups: dict[tuple[str | None, int | None, bool], list[int | None]] = defaultdict(list)
    for key_scope, reason, by_expiry, took in conn.execute(query):
        groups[key_scope, reason, reason is None and by_expiry is not False].append(took)
    found = {}
    for key, durations in groups.items():
        timed = [took for took in durations if took is not None]
        found[key] = (len(durations), int(statistics.median(timed)) if timed else None)
    return found


def stop_reason_stats(
    conn: Connection,
    since: int | None,
    until: int | None,
    by_scope: bool,
    account_id: str | None = None,
    *,
    from_rows: bool = False,
) -> list[StopReasonStat]:
    """``from_rows`` reads every stop of the window instead of the rollup (the same answer)."""
    # (scope, reason, expired) -> (count, median duration)
    found: dict[tuple[str | None, int | None, bool], tuple[int, int | None]] = {}
    if account_id is None and not from_rows:
        # Whole days from the rollup, medians from the one bucket that holds each: several
        # statements, which must see one snapshot (SQLite's readers always do).
        if conn.dialect.name == "postgresql" and not conn.in_transaction():
            conn.execution_options(isolation_level="REPEATABLE READ")
        for group, buckets in rollup.histogram(conn, since, until, by_scope).items():
            count = sum(buckets.values())
            if count:
                median = rollup.median_duration(conn, group, buckets, since, until, by_scope)
                found[group[0], None if group[1] else group[2], group[1] == rollup.EXPIRED] = (
                    count,
                    median,
                )
    else:
        found = _stop_stats_from_rows(conn, since, until, by_scope, account_id)
    totals: dict[str | None, int] = defaultdict(int)
    for (scope, _, _), (count, _) in found.items():
        totals[scope] += count
    stats = []
    for (scope, reason, by_expiry), (count, median) in found.items():
        described = describe_stop_reason(reason, expired=by_expiry)
        stats.append(
            StopReasonStat(
                stop_reason=reason,
                stop_reason_name=described.name,
                stop_reason_category=described.category,
                count=count,
                share=round(count / totals[scope], 6),
                median_duration_ms=median,
                scope=Scope(scope) if scope else None,
            )
        )
    stats.sort(
        key=lambda s: (
            s.scope or "",
            -s.count,
            s.stop_reason if s.stop_reason is not None else -1,
            s.stop_reason_name,
        )
    )
    return stats


def stop_reason_counts(
    conn: Connection, since: int | None, until: int | None, bucket_ms: int
) -> list[StopReasonCount]:
    # Counted by the database from ix_streams_stopped_at alone: a month of stops is a few
    # hundred groups, not hundreds of thousands of rows to fetch.
    stopped_at = streams.c.stopped_at
    bucket = (stopped_at - stopped_at % literal(bucket_ms)).label("bucket")
    # As in stop_reason_stats: a stop without a code is an expiry unless a webhook sent it.
    expired = streams.c.stop_source.not_in(ZOOM_SOURCES).label("expired")
    query = (
        select(bucket, streams.c.stop_reason, expired, func.count())
        .where(_window(stopped_at, since, until))
        .group_by(bucket, streams.c.stop_reason, expired)
        .order_by(bucket, streams.c.stop_reason, expired)
    )
    return [
        StopReasonCount(int(b), reason, count, reason is None and by_expiry is not False)
        for b, reason, by_expiry, count in conn.execute(query)
    ]


def interruption_stats(
    conn: Connection,
    since: int | None,
    until: int | None,
    scope: Scope | None,
    account_id: str | None = None,
) -> InterruptionStats:
    return _interruptions(conn, since, until, scope, account_id, by_scope=False)[None]


def interruption_stats_by_scope(
    conn: Connection, since: int | None, until: int | None, account_id: str | None = None
) -> dict[Scope, InterruptionStats]:
    # One pass over the window for every scope: a filter on scope would steer the planner to
    # the scope index (a fifth of all streams) instead of the window's.
    found = _interruptions(conn, since, until, None, account_id, by_scope=True)
    return {Scope(key): stats for key, stats in sorted(found.items()) if key is not None}


def _interruptions(
    conn: Connection,
    since: int | None,
    until: int | None,
    scope: Scope | None,
    account_id: str | None,
    by_scope: bool,
) -> dict[str | None, InterruptionStats]:
    began = streams.c.first_event_at
    where = [_window(began, since, until), streams.c.state != State.NEW.value]
    if scope is not None:
        where.append(streams.c.scope == Scope(scope).value)
    if account_id is not None:
        where.append(streams.c.account_id == account_id)
    if by_scope:
        # Counted here, not by GROUP BY: grouping steers SQLite to scan the scope index (every
        # stream) instead of seeking the window in ix_streams_first_event_at.
        totals: dict[str | None, int] = dict(
            Counter(conn.execute(select(streams.c.scope).where(*where)).scalars())
        )
    else:
        total = select(func.count()).select_from(streams).where(*where)
        totals = {None: conn.execute(total).scalar_one()}
    interrupted = select(streams.c.stream_id, streams.c.scope).where(
        *where, streams.c.interruptions > 0
    )
    scope_of = {sid: key if by_scope else None for sid, key in conn.execute(interrupted)}
    events: dict[str, list[Any]] = defaultdict(list)
    rows = conn.execute(
        select(*_EVENT_COLUMNS).where(
            deliveries.c.stream_id.in_(select(interrupted.subquery().c.stream_id)),
            text(EVENT_PREDICATE),
        )
    )
    for row in rows:
        events[row.stream_id].append(event_from_delivery(tuple(row)))
    counts: dict[str | None, Counter[str]] = defaultdict(Counter)
    recovery_times: dict[str | None, list[int]] = defaultdict(list)
    for stream_id, stream_events_ in events.items():
        key = scope_of.get(stream_id)
        counted = counts[key]
        counted["streams"] += 1
        _, steps = fold(stream_id, stream_events_)
        interrupted_at: int | None = None
        for ev, name in steps:
            if name is TransitionName.INTERRUPT:
                counted["interruptions"] += 1
                interrupted_at = ev.event_ts if interrupted_at is None else interrupted_at
            elif name is TransitionName.RESUME and interrupted_at is not None:
                counted["recovered"] += 1
                recovery_times[key].append(ev.event_ts - interrupted_at)
                interrupted_at = None
            elif name is TransitionName.STOP and interrupted_at is not None:
                counted["stopped"] += 1
    return {
        key: InterruptionStats(
            streams=total,
            interrupted_streams=counts[key]["streams"],
            interruptions=counts[key]["interruptions"],
            recovered=counts[key]["recovered"],
            median_recovery_ms=(
                int(statistics.median(recovery_times[key])) if recovery_times[key] else None
            ),
            stopped_while_interrupted=counts[key]["stopped"],
        )
        for key, total in totals.items()
    }


def alerts(
    conn: Connection,
    since: int | None,
    limit: int | None,
    until: int | None = None,
    account_id: str | None = None,
    before: tuple[int, int] | None = None,
) -> list[ConcurrencyAlertRecord]:
    a = concurrency_alerts.c
    query = select(concurrency_alerts)
    if since is not None:
        query = query.where(a.event_ts >= since)
    if until is not None:
        query = query.where(a.event_ts < until)
    if account_id is not None:
        query = query.where(a.account_id == account_id)
    if before is not None:
        # Keyset on (event_ts, id), newest first: ix_concurrency_alerts_event_ts holds the id.
        query = query.where(
            or_(a.event_ts < before[0], and_(a.event_ts == before[0], a.id < before[1]))
        )
    query = query.order_by(a.event_ts.desc(), a.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [alert_from_row(r) for r in conn.execute(query)]


def list_deliveries(
    conn: Connection,
    outcomes: Iterable[Outcome] | None,
    stream_id: str | None,
    limit: int | None,
    *,
    event: str | None = None,
    since: int | None = None,
    until: int | None = None,
    before: int | None = None,
) -> list[DeliveryRecord]:
    """Deliveries newest first (by id, the primary key: ``before`` is a keyset position);
    ``since``/``until`` on the time they were received."""
    # A duplicate that references the delivery it repeats is read with that delivery's bytes.
    first = deliveries.alias("first")
    query = select(deliveries, first.c.raw.label("first_raw")).outerjoin_from(
        deliveries, first, first.c.id == deliveries.c.same_as
    )
    wanted = [Outcome(o).value for o in outcomes or ()]
    if wanted:
        query = query.where(deliveries.c.outcome.in_(wanted))
        if Outcome.APPLIED.value not in wanted:
            # In the partial index's own words, or SQLite does not use it.
            query = query.where(text(f"deliveries.{UNAPPLIED_PREDICATE}"))
    if stream_id is not None:
        # A stream's deliveries sit in two partial indexes: its events, and everything else.
        query = query.where(
            deliveries.c.id.in_(
                union_all(
                    *(
                        select(deliveries.c.id).where(
                            deliveries.c.stream_id == stream_id, text(predicate)
                        )
                        for predicate in STREAM_DELIVERY_PREDICATES
                    )
                )
            )
        )
    if event is not None:
        query = query.where(deliveries.c.event == event)
    if since is not None:
        query = query.where(deliveries.c.received_at >= since)
    if until is not None:
        query = query.where(deliveries.c.received_at < until)
    if before is not None:
        query = query.where(deliveries.c.id < before)
    query = query.order_by(deliveries.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [delivery_from_row(r) for r in conn.execute(query)]


def stale_streams(conn: Connection, cutoff: int) -> list[Stream]:
    query = select(*_STREAM_COLUMNS).where(
        _LIVE, streams.c.state != State.NEW.value, streams.c.last_event_at < cutoff
    )
    return _streams(conn, query.order_by(streams.c.stream_id))


def active_counts(conn: Connection) -> dict[Scope, int]:
    # Grouped inside the live partial index: a scrape costs what active_streams() costs.
    query = (
        select(streams.c.scope, func.count())
        .where(_LIVE, streams.c.state.in_([s.value for s in ACTIVE_STATES]))
        .group_by(streams.c.scope)
    )
    return {Scope(scope): count for scope, count in conn.execute(query)}


def live_counts(conn: Connection, started_before: int) -> list[tuple[Scope, State, int, int]]:
    """Per scope and live state: how many streams, and how many of them started before
    ``started_before``; grouped inside the live partial index, as :func:`active_counts`."""
    old = func.sum(case((streams.c.started_at < started_before, 1), else_=0))
    query = (
        select(streams.c.scope, streams.c.state, func.count(), old)
        .where(_LIVE, streams.c.state != State.NEW.value)
        .group_by(streams.c.scope, streams.c.state)
    )
    return [
        (Scope(scope), State(state), count, int(older or 0))
        for scope, state, count, older in conn.execute(query)
        if scope is not None
    ]


def recent_stops(conn: Connection, since: int) -> tuple[int, int]:
    """Streams stopped at or after ``since``: ``(by a webhook, by an expiry)``, counted inside
    ``ix_streams_stopped_at``."""
    kind = rollup.kind_sql("s")
    expired = f"CASE WHEN {kind} = {rollup.EXPIRED} THEN 1 ELSE 0 END"
    query = text(
        f"SELECT count(*), coalesce(sum({expired}), 0) FROM streams AS s"
        " WHERE s.stopped_at IS NOT NULL AND s.stopped_at >= :since"
    )
    row = conn.execute(query, {"since": since}).one()
    total, expiries = int(row[0]), int(row[1])
    return total - expiries, expiries


def unhandled_stats(
    conn: Connection, since: int | None, until: int | None
) -> list[UnhandledEventStat]:
    d = deliveries
    query = (
        select(d.c.event, func.count(), func.min(d.c.received_at), func.max(d.c.received_at))
        .where(d.c.outcome == Outcome.UNHANDLED.value, d.c.event.is_not(None))
        .group_by(d.c.event)
    )
    if since is not None:
        query = query.where(d.c.received_at >= since)
    if until is not None:
        query = query.where(d.c.received_at < until)
    stats = [
        UnhandledEventStat(event, count, first, last, looks_like_rtms(event))
        for event, count, first, last in conn.execute(query)
    ]
    # What most likely needs a new version first: RTMS-looking names, then the most frequent.
    stats.sort(key=lambda s: (not s.rtms, -s.count, s.event))
    return stats
