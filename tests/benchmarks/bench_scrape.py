"""The cost of one ``/metrics`` scrape's store part, and of the capacity gauges in it.

    python -m tests.benchmarks.bench_scrape                       # SQLite in the temp dir
    python -m tests.benchmarks.bench_scrape --db postgresql+psycopg://...  --scrapes 400

Records ``--live`` live streams and ``--stopped`` stopped ones, then times, interleaved in one
process, ``--scrapes`` rounds of: the whole exposition of a receiver's registry (every gauge read
from the store, the process counters), and ``Tracker.capacity()`` alone (what the database and
disk gauges add). Reported: best and median of each, and the median ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from rtms_lifecycle import Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.receiver.metrics import add_store_gauges, exposition, new_registry
from tests import _deliveries


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a new SQLite file)")
    parser.add_argument("--live", type=int, default=200)
    parser.add_argument("--stopped", type=int, default=2000)
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    url = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='bench-scrape-')}/rtms.db"
    with Tracker(url) as tracker:
        t0 = now_ms() - 3_600_000
        bodies = [_deliveries.body("started", f"s-{i}", t0 + i) for i in range(args.stopped)]
        bodies += [
            _deliveries.body("stopped", f"s-{i}", t0 + 60_000 + i) for i in range(args.stopped)
        ]
        bodies += [_deliveries.body("started", f"l-{i}", t0 + i) for i in range(args.live)]
        tracker.ingest_batch(bodies)
        registry = new_registry()
        add_store_gauges(registry, tracker)
        scrape: list[float] = []
        capacity: list[float] = []
        for _ in range(10):  # warm: connections, statements
            exposition(registry)
        for _ in range(args.scrapes):
            scrape.append(_timed(lambda: exposition(registry)))
            capacity.append(_timed(tracker.capacity))
    ms = 1000
    print(f"database: {tracker.engine.url.render_as_string(hide_password=True)}")
    for name, times in (("whole scrape", scrape), ("capacity()", capacity)):
        best, median = min(times) * ms, statistics.median(times) * ms
        print(f"{name:>14}: best {best:.3f} ms, median {median:.3f} ms")
    share = statistics.median(c / s for c, s in zip(capacity, scrape, strict=True))
    print(f"capacity / scrape, median of the rounds: {share:.1%}")


if __name__ == "__main__":
    main()
