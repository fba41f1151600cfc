"""Peak memory of ingesting a large load: does RSS stay flat as the count grows?

    python -m tests.benchmarks.bench_memory                       # 1,000,000 deliveries
    python -m tests.benchmarks.bench_memory --deliveries 250000

A child process streams the generated load (in order, produced on the fly: no file, no list)
into ``Tracker.ingest_many`` on a fresh SQLite file with the default batch size, and samples
its own resident set size (``VmRSS`` in /proc/self/status) at checkpoints. The parent reports
the child's peak from ``getrusage(RUSAGE_CHILDREN).ru_maxrss``. The child's RSS includes the
generator's (a few MB for the open streams' heap), so the figure is an upper bound for ours.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .generate import LoadSpec, generate


def rss_kb(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(deliveries: int, streams: int, every: int) -> None:
    """Ingest the load, printing one JSON line per checkpoint and a summary."""
    from rtms_lifecycle import Tracker

    samples: list[dict[str, int]] = []

    def sampled(bodies: Iterator[bytes]) -> Iterator[bytes]:
        for count, body in enumerate(bodies, 1):
            yield body
            if count % every == 0:
                samples.append({"deliveries": count, "rss_kb": rss_kb()})

    with tempfile.TemporaryDirectory(prefix="rtms-mem-") as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mem.db")
        baseline = rss_kb()
        started = time.perf_counter()
        summary = tracker.ingest_many(sampled(generate(LoadSpec(deliveries, streams))))
        seconds = time.perf_counter() - started
        tracker.close()
    print(
        json.dumps(
            {
                "deliveries": summary.total,
                "outcomes": summary.as_dict(),
                "seconds": round(seconds, 1),
                "rss_after_start_kb": baseline,
                "samples": samples,
                "peak_kb": rss_kb("VmHWM"),
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Run the child, then report its peak RSS and its RSS along the way."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=0, help="default: deliveries / 3.2")
    parser.add_argument("--every", type=int, default=50_000, help="sample RSS this often")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    streams = args.streams or int(args.deliveries / 3.2)
    if args.child:
        child(args.deliveries, streams, args.every)
        return 0
    command = [sys.executable, "-m", "tests.benchmarks.bench_memory", "--child"]
    command += ["--deliveries", str(args.deliveries), "--streams", str(streams)]
    command += ["--every", str(args.every)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.splitlines()[-1])
    result["ru_maxrss_children_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rate = result["deliveries"] / result["seconds"]
    print(f"{result['deliveries']:,} deliveries in {result['seconds']} s ({rate:,.0f}/s)")
    print(f"outcomes: {result['outcomes']}")
    print(f"RSS after start-up: {result['rss_after_start_kb'] / 1024:.1f} MB")
    for sample in result["samples"]:
        print(f"  RSS at {sample['deliveries']:>9,}: {sample['rss_kb'] / 1024:6.1f} MB")
    print(f"peak RSS (ru_maxrss of the child): {result['ru_maxrss_children_kb'] / 1024:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
