"""The per-day rollup of stops behind ``stop_reason_stats`` (migration 0014).

``stop_reason_rollup`` holds, per UTC day of ``stopped_at``, scope, stop reason and bucket of
duration, how many rows of ``streams`` stopped then. Triggers on ``streams`` keep it in the
transaction that changes a stop (insert, a stop replaced by an earlier one, reprocess, prune), so
it always counts exactly what ``streams`` holds. The query sums the whole days of a window from
the rollup and counts the partial days at its edges from ``ix_streams_stopped_at``; the median
duration of each group is then read from ``ix_streams_stop_duration``, inside the one bucket
that holds it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Final

from sqlalchemy import Connection, text

from rtms_lifecycle.events import ZOOM_SOURCES

DAY_MS: Final = 86_400_000
# Lower bounds of the duration buckets, in ms (the last is open); negative durations are -1, no
# duration (no start) -2. Finer where streams usually end, so that a median's bucket is small.
MINUTE: Final = 60_000
DURATION_BOUNDS: Final = (
    0,
    1_000,
    10_000,
    30_000,
    *(m * MINUTE for m in (1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 105, 120, 150)),
    *(h * 60 * MINUTE for h in (3, 4, 6, 8, 12, 24, 48)),
    7 * 24 * 60 * MINUTE,
)
NO_DURATION: Final = -2
NEGATIVE: Final = -1
# kind: 0 a stop with a reason code, 1 a webhook's stop without one, 2 an expiry.
WITH_REASON, NOT_PROVIDED, EXPIRED = 0, 1, 2


def day_sql(row: str) -> str:
    """The UTC day of ``row.stopped_at`` (floor division, both databases)."""
    at = f"{row}.stopped_at"
    return f"(CASE WHEN {at} >= 0 THEN {at} / {DAY_MS} ELSE ({at} + 1) / {DAY_MS} - 1 END)"


def bucket_sql(row: str) -> str:
    """The duration bucket of a stopped ``row``: a binary search (5 comparisons, not 28)."""
    took = f"({row}.stopped_at - {row}.started_at)"

    def search(low: int, high: int) -> str:
        if low == high:
            return str(low)
        middle = (low + high + 1) // 2
        return (
            f"CASE WHEN {took} < {DURATION_BOUNDS[middle]} THEN {search(low, middle - 1)}"
            f" ELSE {search(middle, high)} END"
        )

    return (
        f"(CASE WHEN {row}.started_at IS NULL THEN {NO_DURATION} WHEN {took} < 0 THEN {NEGATIVE}"
        f" ELSE {search(0, len(DURATION_BOUNDS) - 1)} END)"
    )


def kind_sql(row: str) -> str:
    """Whether the stop has a code, is a webhook's stop without one, or an expiry."""
    zoom = ", ".join(f"'{source}'" for source in ZOOM_SOURCES)
    return (
        f"(CASE WHEN {row}.stop_reason IS NOT NULL THEN {WITH_REASON}"
        f" WHEN {row}.stop_source IN ({zoom}) THEN {NOT_PROVIDED} ELSE {EXPIRED} END)"
    )


def key_sql(row: str) -> str:
    """The rollup key of ``row``: day, scope, kind, reason, bucket."""
    return (
        f"{day_sql(row)}, coalesce({row}.scope, ''), {kind_sql(row)},"
        f" coalesce({row}.stop_reason, 0), {bucket_sql(row)}"
    )


def _bounds(bucket: int) -> tuple[int | None, int | None]:
    if bucket == NEGATIVE:
        return None, 0
    upper = DURATION_BOUNDS[bucket + 1] if bucket + 1 < len(DURATION_BOUNDS) else None
    return DURATION_BOUNDS[bucket], upper


# (scope or None, kind, reason) -> bucket -> count
Histogram = dict[tuple[str | None, int, int], dict[int, int]]


def _whole_days(since: int | None, until: int | None) -> tuple[int | None, int | None]:
    """The first whole day in [since, until) and the day after the last (None: unbounded)."""
    first = None if since is None else -(-since // DAY_MS)
    end = None if until is None else until // DAY_MS
    return first, end


def _range(
    column: str, name: str, lower: int | None, upper: int | None
) -> tuple[list[str], dict[str, Any]]:
    """``lower <= column < upper`` (each bound optional) as SQL clauses and their parameters."""
    clauses, params = [], {}
    if lower is not None:
        clauses.append(f"{column} >= :{name}_low")
        params[f"{name}_low"] = lower
    if upper is not None:
        clauses.append(f"{column} < :{name}_high")
        params[f"{name}_high"] = upper
    return clauses, params


def histogram(conn: Connection, since: int | None, until: int | None, by_scope: bool) -> Histogram:
    """Stops in [since, until) per group and duration bucket: whole days from the rollup, the
    partial days at the edges from the stop index."""
    first, end = _whole_days(since, until)
    statements: list[tuple[str, dict[str, Any]]] = []
    if first is None or end is None or first < end:
        clauses, params = _range("day", "day", first, end)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        # PostgreSQL refuses a constant in GROUP BY: without scopes, the scope is selected only.
        scope, grouped = ("scope", "scope, ") if by_scope else ("''", "")
        sql = (
            f"SELECT {scope}, kind, stop_reason, bucket, sum(count)"
            f" FROM stop_reason_rollup{where} GROUP BY {grouped}kind, stop_reason, bucket"
        )
        statements.append((sql, params))
    group = f"{kind_sql('s')}, coalesce(s.stop_reason, 0), {bucket_sql('s')}"
    for lower, upper in _edges(since, until, first, end):
        clauses, params = _range("s.stopped_at", "at", lower, upper)
        where = " AND ".join(["s.stopped_at IS NOT NULL", *clauses])
        scope, grouped = ("s.scope", "s.scope, ") if by_scope else ("''", "")
        sql = (
            f"SELECT {scope}, {group}, count(*) FROM streams AS s"
            f" WHERE {where} GROUP BY {grouped}{group}"
        )
        statements.append((sql, params))
    found: Histogram = defaultdict(lambda: defaultdict(int))
    for sql, params in statements:
        for key_scope, kind, reason, bucket, count in conn.execute(text(sql), params):
            found[key_scope or None, kind, reason][bucket] += int(count)
    return found


def _edges(
    since: int | None, until: int | None, first: int | None, end: int | None
) -> list[tuple[int | None, int | None]]:
    """The parts of [since, until) outside the whole days [first, end)."""
    if first is not None and end is not None and first >= end:
        return [(since, until)]  # no whole day: all of it
    edges: list[tuple[int | None, int | None]] = []
    if since is not None and first is not None and since < first * DAY_MS:
        edges.append((since, first * DAY_MS))
    if until is not None and end is not None and end * DAY_MS < until:
        edges.append((end * DAY_MS, until))
    return edges


def median_duration(
    conn: Connection,
    group: tuple[str | None, int, int],
    buckets: dict[int, int],
    since: int | None,
    until: int | None,
    by_scope: bool,
) -> int | None:
    """``int(statistics.median(...))`` of the group's durations, reading only the bucket(s)
    that hold the middle one(s)."""
    timed = sorted((b, n) for b, n in buckets.items() if b != NO_DURATION and n > 0)
    total = sum(n for _, n in timed)
    if total == 0:
        return None
    ranks = [total // 2] if total % 2 else [total // 2 - 1, total // 2]
    middle: list[int] = []
    below = 0
    for bucket, count in timed:
        inside = [rank - below for rank in ranks if below <= rank < below + count]
        if inside:
            middle += _nth_durations(conn, group, bucket, inside, since, until, by_scope)
        below += count
    return int(statistics.median(middle))


def _nth_durations(
    conn: Connection,
    group: tuple[str | None, int, int],
    bucket: int,
    offsets: list[int],
    since: int | None,
    until: int | None,
    by_scope: bool,
) -> list[int]:
    scope, kind, reason = group
    took = "(stopped_at - started_at)"
    # No test of started_at: the duration's bounds imply it, and a column outside the index
    # would make SQLite visit the table for every row the OFFSET skips.
    where = ["stopped_at IS NOT NULL"]
    params: dict[str, Any] = {"offset": offsets[0], "limit": offsets[-1] - offsets[0] + 1}
    if kind == WITH_REASON:
        where.append("stop_reason = :reason")
        params["reason"] = reason
    else:
        zoom = ", ".join(f"'{source}'" for source in ZOOM_SOURCES)
        where.append("stop_reason IS NULL")
        where.append(
            f"stop_source IN ({zoom})"
            if kind == NOT_PROVIDED
            else f"(stop_source IS NULL OR stop_source NOT IN ({zoom}))"
        )
    if by_scope:
        where.append("coalesce(scope, '') = :scope")
        params["scope"] = scope or ""
    for column, name, (lower, upper) in (
        (took, "took", _bounds(bucket)),
        ("stopped_at", "at", (since, until)),
    ):
        clauses, bounds = _range(column, name, lower, upper)
        where += clauses
        params.update(bounds)
    rows = conn.execute(
        text(
            f"SELECT {took} FROM streams WHERE {' AND '.join(where)}"
            f" ORDER BY {took} LIMIT :limit OFFSET :offset"
        ),
        params,
    ).all()
    values = [int(row[0]) for row in rows]
    return [values[offset - offsets[0]] for offset in offsets]
