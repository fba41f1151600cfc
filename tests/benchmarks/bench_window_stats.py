"""What one computation of the dashboard's window statistics costs, per window.

    python -m tests.benchmarks.bench_window_stats                   # 100,000 streams
    python -m tests.benchmarks.bench_window_stats --streams 1000000

The database is ``bench_dashboard``'s (``bench_queries``'s builder, streams ending today). Each
round computes every window once, in turn (24h, 7d, 30d, all: alternated, so that the machine's
load falls on all alike), in this process, exactly as the dashboard's background computation
does (``window_stats``). The baseline is the 24 h window of the same round. The figures choose
how old the dashboard lets a window's statistics get (``StatsCache``): a recomputation every
``max_age`` keeps a core ``cost / max_age`` busy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rtms_lifecycle.receiver.dashboard.pages import WINDOWS, window_stats
from rtms_lifecycle.tracker import Tracker

from .bench_queries import DAY_MS, MONTH_MS, ensure_db


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the database, time each window's computation."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=2_000)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", type=Path, help="where to keep the big database")
    args = parser.parse_args(argv)
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    path = args.db or Path(tempfile.gettempdir()) / f"rtms-bench-dashboard-{args.streams}.db"
    ensure_db(
        path, args.streams, args.live, args.months, False, start_ms=today - args.months * MONTH_MS
    )
    seconds: dict[str, list[float]] = {key: [] for key in WINDOWS}
    with Tracker(f"sqlite:///{path}") as tracker:
        for _ in range(args.rounds):
            for key, window in WINDOWS.items():
                started = time.perf_counter()
                stats = window_stats(tracker, window)
                seconds[key].append(time.perf_counter() - started)
                stopped = stats.stopped
            print(f"round done (all-time stops: {stopped:,})")
    base = statistics.median(seconds["24h"])
    print(f"{'window':<8} {'best':>9} {'median':>9} {'vs 24h':>8}")
    for key, taken in seconds.items():
        median = statistics.median(taken)
        print(f"{key:<8} {min(taken):>8.2f}s {median:>8.2f}s {median / base:>7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
