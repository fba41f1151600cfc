"""What a durable answer costs: one delivery per commit on a SQLite file, synced or not.

``Tracker.ingest`` (what the receiver calls) commits with ``synchronous=FULL`` and, in the
receiver, with a time budget; before, it committed with ``synchronous=NORMAL`` and no budget.
This runs all three, interleaved in rounds on fresh files on the same disk, so that the machine's
drift hits them alike, and prints deliveries per second and the median per delivery.

Usage (figures go to docs/benchmarks.md, "Durable answers")::

    python -m tests.benchmarks.bench_durability [--deliveries 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from rtms_lifecycle import Tracker
from rtms_lifecycle.store.batch import to_incoming
from tests.benchmarks.generate import LoadSpec, generate

Record = Callable[[Tracker, bytes], object]
BUDGET_S = 2.5


def _normal(tracker: Tracker, body: bytes) -> object:
    return tracker._record([to_incoming(body)], durable=False)


def _full(tracker: Tracker, body: bytes) -> object:
    return tracker._record([to_incoming(body)], durable=True)


def _full_budgeted(tracker: Tracker, body: bytes) -> object:
    return tracker.ingest(body, timeout=BUDGET_S)


VARIANTS: dict[str, Record] = {
    "synchronous=NORMAL, no budget (before)": _normal,
    "synchronous=FULL, no budget": _full,
    "synchronous=FULL, 2.5 s budget (receiver now)": _full_budgeted,
}


def _run(record: Record, bodies: list[bytes]) -> list[float]:
    took = []
    with (
        tempfile.TemporaryDirectory(prefix="rtms-bench-", dir=".") as tmp,
        Tracker(f"sqlite:///{tmp}/durable.db") as tracker,
    ):
        for body in bodies:
            begun = time.perf_counter()
            record(tracker, body)
            took.append(time.perf_counter() - begun)
    return took


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print one line per variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    bodies = list(generate(LoadSpec(args.deliveries, args.deliveries // 4, 7)))
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, record in VARIANTS.items():
            samples[name] += _run(record, bodies)
    base = None
    for name, took in samples.items():
        rate = len(took) / sum(took)
        base = base or rate
        print(
            f"{name}: {rate:,.0f} deliveries/s ({rate / base:.2f}x), "
            f"median {statistics.median(took) * 1000:.2f} ms, "
            f"p99 {statistics.quantiles(took, n=100)[98] * 1000:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
