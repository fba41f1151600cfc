"""Queries at scale, and the cost of one late event, on SQLite.

    python -m tests.benchmarks.bench_queries                 # 1,000,000 streams, 2,000 live
    python -m tests.benchmarks.bench_queries --streams 100000 --late-sizes 1000,100000

The database is created by ``Tracker`` (so its schema, indexes and triggers are the library's),
then filled fast with plain ``sqlite3`` bulk inserts of consistent rows: streams, their events
and their audit transitions, as the library itself would have stored them. Stops are spread
evenly over ``--months`` months (default 3); the live streams are the most recent ones. A built
database is kept (``--db``, default in the temp dir) and reused by the next run with the same
parameters; ``--rebuild`` forces a new one.

Reported: ``active_streams()``, ``stop_reason_stats()`` over one month of stops (and over all
of them), ``stream(id)`` + ``history(id)``, each against a plain ``sqlite3`` baseline that runs
the same SQL without SQLAlchemy or result objects (for the stop statistics: the plain query
over every stop, which the rollup replaced); and the time of one late event
(``Tracker.ingest`` of an ``interrupted`` older than the stream's stop, which re-folds it) for
databases of several sizes: it must not grow with the number of stored streams.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from tests._plans import query_plan

from .baseline_sqlite import connect
from .generate import SCOPE_WEIGHTS, SCOPES, START_MS, STOP_REASONS, LoadSpec, generate

DAY_MS: Final = 86_400_000
MONTH_MS: Final = 30 * DAY_MS
RANK: Final = {"started": 0, "interrupted": 1, "resumed": 2, "stopped": 3}
CHUNK: Final = 50_000

_STREAM_COLUMNS: Final = (
    "stream_id, scope, scope_id, account_id, session_key, operator_id, server_urls, state,"
    " first_event_at, started_at, stopped_at, stop_reason, last_event_at, interruptions, resumes,"
    " failovers, fold_ts, fold_rank, created_at, updated_at"
)
# A stream's events are the deliveries that brought them (outcome applied), raw bytes and all.
_EVENT_COLUMNS: Final = "stream_id, kind, event_ts, source, event, outcome, raw, received_at"
_TRANSITION_COLUMNS: Final = (
    "stream_id, from_state, to_state, name, kind, event_ts, source, late, recorded_at, tx_id,"
    " delivery_id, chain_hash"
)
# The database refuses an audit row without a chain hash; these queries never read it, so a
# placeholder (``audit verify`` would flag it: bench_audit builds real chains).
_UNCHAINED: Final = "0" * 64


def _insert(table: str, columns: str) -> str:
    marks = ", ".join("?" for _ in columns.split(","))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})"


def _stream_rows(
    index: int, total: int, live: int, months: int, rng: random.Random, start_ms: int = START_MS
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """One stream's row, its event rows and its transition rows, consistent with the fold."""
    scope, prefix, id_field = rng.choices(SCOPES, SCOPE_WEIGHTS)[0]
    stream_id = f"q{index:09d}"
    scope_id = f"{rng.getrandbits(128):032x}"
    account = f"acct-{rng.randrange(200):04d}"
    urls = "wss://rtms-01.zoom.us/rtms"
    is_live = index >= total - live
    start = start_ms + index * (months * MONTH_MS) // total
    base: dict[str, Any] = {"rtms_stream_id": stream_id, id_field: scope_id, "account_id": account}
    # (kind, event_ts, state after, transition name)
    steps: list[tuple[str, int, str, str]] = [("started", start, "started", "start")]
    ts = start
    interrupted = rng.random() < (0.2 if is_live else 0.1)
    if interrupted:
        ts += rng.randrange(60_000, 1_800_000)
        steps.append(("interrupted", ts, "interrupted", "interrupt"))
        ts += rng.randrange(1_000, 60_000)
        steps.append(("started", ts, "resumed", "resume"))
    reason = None
    if not is_live:
        ts += rng.randrange(60_000, 7_200_000)
        reason = rng.choices([c for c, _ in STOP_REASONS], [w for _, w in STOP_REASONS])[0]
        steps.append(("stopped", ts, "stopped", "stop"))
    events, transitions = [], []
    before = "new"
    for kind, event_ts, after, name in steps:
        payload = dict(base)
        if kind == "started":
            payload["server_urls"] = urls
        if kind == "stopped":
            payload["stop_reason"] = reason
        event = prefix + kind
        raw = json.dumps({"event": event, "event_ts": event_ts, "payload": payload}).encode()
        events.append((stream_id, kind, event_ts, "webhook", event, "applied", raw, event_ts))
        transitions.append(
            (
                stream_id,
                before,
                after,
                name,
                kind,
                event_ts,
                "webhook",
                0,
                event_ts,
                0,
                None,
                _UNCHAINED,
            )
        )
        before = after
    last_kind, last_ts = steps[-1][0], steps[-1][1]
    row = (stream_id, scope, scope_id, account, None, None, urls, before, start, start)
    folded = (None if is_live else last_ts, reason, last_ts, int(interrupted), int(interrupted))
    stream = (*row, *folded, 0, last_ts, RANK[last_kind], start, last_ts)
    return stream, events, transitions


def build(
    path: Path, streams: int, live: int, months: int, seed: int = 11, start_ms: int = START_MS
) -> float:
    """Create the database with ``Tracker``, then bulk-insert the rows; returns seconds."""
    from rtms_lifecycle import Tracker

    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    Tracker(f"sqlite:///{path}").close()
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")
    conn.execute("BEGIN")
    for first in range(0, streams, CHUNK):
        stream_rows, event_rows, transition_rows = [], [], []
        for index in range(first, min(first + CHUNK, streams)):
            stream, events, transitions = _stream_rows(index, streams, live, months, rng, start_ms)
            stream_rows.append(stream)
            event_rows += events
            transition_rows += transitions
        conn.executemany(_insert("streams", _STREAM_COLUMNS), stream_rows)
        conn.executemany(_insert("deliveries", _EVENT_COLUMNS), event_rows)
        conn.executemany(_insert("transitions", _TRANSITION_COLUMNS), transition_rows)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def ensure_db(
    path: Path, streams: int, live: int, months: int, rebuild: bool, start_ms: int = START_MS
) -> Path:
    """The database at ``path``, built unless a matching one is there; streams start from
    ``start_ms`` on."""
    meta = path.with_name(path.name + ".meta.json")
    wanted: dict[str, Any] = {"streams": streams, "live": live, "months": months, "version": 3}
    if start_ms != START_MS:
        wanted["start_ms"] = start_ms
    if not rebuild and path.exists() and meta.exists() and json.loads(meta.read_text()) == wanted:
        print(f"reusing {path} ({streams:,} streams, {live:,} live)")
        return path
    print(f"building {path}: {streams:,} streams, {live:,} live, stops over {months} months ...")
    seconds = build(path, streams, live, months, start_ms=start_ms)
    meta.write_text(json.dumps(wanted))
    print(f"  built in {seconds:.1f} s")
    return path


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> dict[str, float]:
    """min / median / p95 of ``repeat`` calls, in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "min_ms": round(times[0], 3),
        "median_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3),
    }


def raw_stats(conn: sqlite3.Connection, since: int | None, until: int | None) -> int:
    """The baseline of stop_reason_stats: same rows, same grouping and medians, no SQLAlchemy."""
    sql = "SELECT scope, stop_reason, started_at, stopped_at FROM streams"
    sql += " WHERE stopped_at IS NOT NULL"
    params: list[int] = []
    if since is not None:
        sql += " AND stopped_at >= ?"
        params.append(since)
    if until is not None:
        sql += " AND stopped_at < ?"
        params.append(until)
    durations: dict[Any, list[int]] = defaultdict(list)
    for _scope, reason, started_at, stopped_at in conn.execute(sql, params):
        if started_at is not None:
            durations[reason].append(stopped_at - started_at)
    return len([statistics.median(d) for d in durations.values()])


def bench_queries(path: Path, months: int, repeat: int) -> list[dict[str, Any]]:
    """Each query against its raw baseline."""
    from rtms_lifecycle import Tracker

    tracker = Tracker(f"sqlite:///{path}")
    conn = connect(path, "store")
    total = conn.execute("SELECT count(*) FROM streams").fetchone()[0]
    rng = random.Random(5)
    ids = [f"q{rng.randrange(total):09d}" for _ in range(repeat * 10)]
    picks: Iterator[str] = iter(ids * 2)
    month_start = START_MS + (months - 1) * MONTH_MS  # the last full month of stops
    month_end = month_start + MONTH_MS
    in_month = conn.execute(
        "SELECT count(*) FROM streams WHERE stopped_at >= ? AND stopped_at < ?",
        (month_start, month_end),
    ).fetchone()[0]
    active = len(tracker.active_streams())
    print(f"{total:,} streams, {active:,} active; {in_month:,} stops in the month measured")
    print("active_streams() plan:", *query_plan(tracker, tracker.active_streams), sep="\n  ")
    account = "acct-0007"
    in_account = conn.execute(
        "SELECT count(*) FROM streams WHERE account_id = ? AND stopped_at >= ? AND stopped_at < ?",
        (account, month_start, month_end),
    ).fetchone()[0]

    def account_stats() -> None:
        tracker.stop_reason_stats(month_start, month_end, account_id=account)

    def account_active() -> None:
        tracker.active_streams(account_id=account)

    print("account_id= plans:", *query_plan(tracker, account_stats), sep="\n  ")
    print(*query_plan(tracker, account_active), sep="\n  ")

    def raw_active() -> None:
        conn.execute(
            "SELECT * FROM streams WHERE state != 'stopped' AND state IN ('started', 'resumed')"
            " ORDER BY stream_id"
        ).fetchall()

    def ours_stream_history() -> None:
        stream_id = next(picks)
        tracker.stream(stream_id)
        tracker.history(stream_id)

    raw_picks = iter(ids * 2)

    def raw_stream_history() -> None:
        stream_id = next(raw_picks)
        conn.execute(
            "SELECT * FROM streams WHERE stream_id = ? AND state != 'new'", (stream_id,)
        ).fetchone()
        conn.execute(
            "SELECT * FROM transitions WHERE stream_id = ? ORDER BY event_ts, id", (stream_id,)
        ).fetchall()

    rows = [
        (
            f"active_streams() ({active:,} of {total:,})",
            timed(tracker.active_streams, repeat),
            timed(raw_active, repeat),
            5.0,
        ),
        (
            f"stop_reason_stats() over a month ({in_month:,} stops)",
            timed(lambda: tracker.stop_reason_stats(month_start, month_end), max(repeat // 5, 5)),
            timed(lambda: raw_stats(conn, month_start, month_end), max(repeat // 5, 5)),
            100.0,
        ),
        (
            f"stop_reason_stats() over all ({total - active:,} stops)",
            timed(tracker.stop_reason_stats, 5, warmup=1),
            timed(lambda: raw_stats(conn, None, None), 5, warmup=1),
            100.0,
        ),
        (
            f"active_streams(account_id=) (of {active:,})",
            timed(account_active, repeat),
            timed(raw_active, repeat),
            5.0,
        ),
        (
            f"stop_reason_stats(account_id=), a month ({in_account:,})",
            timed(account_stats, max(repeat // 5, 5)),
            timed(lambda: raw_stats(conn, month_start, month_end), max(repeat // 5, 5)),
            300.0,
        ),
        (
            "stream(id) + history(id)",
            timed(ours_stream_history, repeat * 10),
            timed(raw_stream_history, repeat * 10),
            2.0,
        ),
    ]
    tracker.close()
    conn.close()
    results = []
    print(f"{'query':<48} {'ours (median)':>14} {'raw (median)':>13} {'ratio':>6} {'target':>8}")
    for label, ours, raw, target in rows:
        ratio = ours["median_ms"] / raw["median_ms"]
        target_text = f"< {target:g} ms" if target else "-"
        print(
            f"{label:<48} {ours['median_ms']:>11.3f} ms {raw['median_ms']:>10.3f} ms"
            f" {ratio:>5.1f}x {target_text:>8}"
            + ("" if target is None else ("  met" if ours["median_ms"] < target else "  NOT met"))
        )
        results.append({"query": label, "ours": ours, "raw": raw, "target_ms": target})
    return results


def late_event_cost(path: Path, samples: int, batch_load: int = 8_000) -> dict[str, Any]:
    """Median time of ``Tracker.ingest`` of one late event and of one in-order event, and the
    rate of ``ingest_many`` (default batches) of ``batch_load`` fresh in-order deliveries."""
    from rtms_lifecycle import Outcome, Tracker

    conn = connect(path, "store")
    total = conn.execute("SELECT count(*) FROM streams").fetchone()[0]
    live = conn.execute(
        "SELECT count(*) FROM streams WHERE state != 'stopped' AND stream_id LIKE 'q%'"
    ).fetchone()[0]
    rng = random.Random(time.time_ns())
    # The bulk-built streams are q000000000...; the last `live` of them are not stopped.
    built = conn.execute("SELECT count(*) FROM streams WHERE stream_id LIKE 'q%'").fetchone()[0]
    chosen = rng.sample(range(built - live), min(samples, built - live))
    prefixes = {scope: prefix for scope, prefix, _ in SCOPES}
    fields = {scope: field for scope, _, field in SCOPES}
    bodies = []
    for index in chosen:
        row = conn.execute(
            "SELECT stream_id, scope, scope_id, started_at, stopped_at FROM streams"
            " WHERE stream_id = ?",
            (f"q{index:09d}",),
        ).fetchone()
        stream_id, scope, scope_id, started_at, stopped_at = row
        # A fresh identity each run: a random instant strictly inside the stream's life.
        ts = rng.randrange(started_at + 1, stopped_at)
        payload = {"rtms_stream_id": stream_id, fields[scope]: scope_id}
        bodies.append(
            {"event": prefixes[scope] + "interrupted", "event_ts": ts, "payload": payload}
        )
    conn.close()
    tracker = Tracker(f"sqlite:///{path}")
    late_times, fresh_times = [], []
    nonce = rng.getrandbits(48)
    for n, body in enumerate(bodies):
        started = time.perf_counter()
        result = tracker.ingest(body)
        late_times.append((time.perf_counter() - started) * 1000)
        assert result.outcome is Outcome.APPLIED, result
        assert result.transition is not None
        assert result.transition.late
        ids = {"rtms_stream_id": f"fresh-{nonce:x}-{n}", "meeting_uuid": "m"}
        fresh = {"event": "meeting.rtms_started", "event_ts": START_MS, "payload": ids}
        started = time.perf_counter()
        tracker.ingest(fresh)
        fresh_times.append((time.perf_counter() - started) * 1000)
        # Stop it again (untimed), so that re-runs find the same number of live streams.
        stopped = {**ids, "stop_reason": 1}
        tracker.ingest(
            {"event": "meeting.rtms_stopped", "event_ts": START_MS + 1, "payload": stopped}
        )
    # Batched ingest of a small fresh load: the cost per batch must not grow with the database.
    load = LoadSpec(batch_load, batch_load * 5 // 16, seed=rng.getrandbits(32))
    started = time.perf_counter()
    summary = tracker.ingest_many(generate(load))
    batch_seconds = time.perf_counter() - started
    assert summary["applied"] == batch_load, summary.as_dict()
    tracker.close()
    return {
        "stored_streams": total,
        "late_median_ms": round(statistics.median(late_times), 3),
        "in_order_median_ms": round(statistics.median(fresh_times), 3),
        "samples": len(bodies),
        "batched_ingest_rate": round(batch_load / batch_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the databases and run the measurements."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--live", type=int, default=2_000)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--db", type=Path, help="where to keep the big database")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument(
        "--late-sizes",
        default="1000,100000,main",
        help="comma-separated stored-stream counts for the late-event test ('main': --db's)",
    )
    parser.add_argument("--late-samples", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.gettempdir())
    path = args.db or tmp / f"rtms-bench-queries-{args.streams}.db"
    ensure_db(path, args.streams, args.live, args.months, args.rebuild)
    results: dict[str, Any] = {"queries": bench_queries(path, args.months, args.repeat)}
    late = []
    for size in args.late_sizes.split(","):
        if size == "main":
            late_path = path
        else:
            late_path = tmp / f"rtms-bench-queries-{int(size)}.db"
            ensure_db(
                late_path, int(size), min(args.live, int(size) // 10), args.months, args.rebuild
            )
        cost = late_event_cost(late_path, args.late_samples)
        print(
            f"late event, {cost['stored_streams']:>9,} streams stored:"
            f" {cost['late_median_ms']:.3f} ms; in order: {cost['in_order_median_ms']:.3f} ms;"
            f" ingest_many of 8,000 fresh: {cost['batched_ingest_rate']:,.0f}/s"
        )
        late.append(cost)
    results["late_event"] = late
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
