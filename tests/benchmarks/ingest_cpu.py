"""Ingest throughput per second of wall-clock time and of this process's CPU time.

The CPU figure moves less than the wall clock on a shared machine (SQLite runs in the process),
so it is the one to compare between two checkouts, run alternately::

    git archive 2a4a881 | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src:/tmp/base python -m tests.benchmarks.ingest_cpu 1000 32000
    python -m tests.benchmarks.ingest_cpu 1000 32000

Arguments: batch size, deliveries (over 5/16 as many streams, plus 5% retries).
"""

from __future__ import annotations

import sys
import tempfile
import time

from rtms_lifecycle import Tracker

from .generate import LoadSpec, generate


def main(argv: list[str]) -> int:
    batch_size, deliveries = int(argv[0]), int(argv[1])
    spec = LoadSpec(deliveries=deliveries, streams=deliveries * 5 // 16, duplicates=0.05)
    bodies = list(generate(spec))
    with tempfile.TemporaryDirectory() as folder, Tracker(f"sqlite:///{folder}/x.db") as tracker:
        wall, cpu = time.perf_counter(), time.process_time()
        tracker.ingest_many(bodies, batch_size=batch_size)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{len(bodies) / wall:.0f} /s wall clock, {len(bodies) / cpu:.0f} /s per CPU second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
