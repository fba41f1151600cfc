"""Ingest throughput per second of wall-clock time and of this process's CPU time.

The CPU figure moves less than the wall clock on a shared machine (SQLite runs in the process),
so it is the one to compare between two checkouts, run alternately::

    git archive 2a4a881 | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src:/tmp/base python -m tests.benchmarks.ingest_cpu 1000 32000
    python -m tests.benchmarks.ingest_cpu 1000 32000

Arguments: batch size, deliveries (over 5/16 as many streams, plus 5% retries). A batch size
of ``ingest`` calls ``Tracker.ingest(body)`` once per delivery instead (durable: one synced
commit each), after 200 deliveries not timed::

    python -m tests.benchmarks.ingest_cpu ingest 3000
"""

from __future__ import annotations

import sys
import tempfile
import time

from rtms_lifecycle import Tracker

from .generate import LoadSpec, generate

# Deliveries written before the clock starts in ``ingest`` mode (the first commits create the
# log and fill the caches).
_WARM = 200


def main(argv: list[str]) -> int:
    one_by_one, deliveries = argv[0] == "ingest", int(argv[1])
    spec = LoadSpec(deliveries=deliveries, streams=deliveries * 5 // 16, duplicates=0.05)
    bodies = list(generate(spec))
    with tempfile.TemporaryDirectory() as folder, Tracker(f"sqlite:///{folder}/x.db") as tracker:
        if one_by_one:
            for body in bodies[:_WARM]:
                tracker.ingest(body)
            bodies = bodies[_WARM:]
        wall, cpu = time.perf_counter(), time.process_time()
        if one_by_one:
            for body in bodies:
                tracker.ingest(body)
        else:
            tracker.ingest_many(bodies, batch_size=int(argv[0]))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{len(bodies) / wall:.0f} /s wall clock, {len(bodies) / cpu:.0f} /s per CPU second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
