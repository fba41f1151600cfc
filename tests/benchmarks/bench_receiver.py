"""Receiver latency under 16 concurrent senders, on SQLite, against the real server.

The receiver runs as ``rtms-lifecycle serve`` does (``rtms_lifecycle.server.run``, uvicorn, access
log on) in its own process; 16 threads, each with its own keep-alive HTTP client, send signed
deliveries back to back, and every answer's latency is measured from just before the request to
its full response. The load is the project's realistic generator (interruptions, failovers,
duplicates). Targets: median < 50 ms, slowest < 1 s, every answer 200.

Usage (figures go to docs/benchmarks.md, "Receiver")::

    python -m tests.benchmarks.bench_receiver [--senders 16] [--per-sender 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from rtms_lifecycle import Tracker
from tests._live import serving_process, signed
from tests.benchmarks.generate import LoadSpec, generate

MEDIAN_TARGET_MS = 50.0
MAX_TARGET_MS = 1_000.0


@dataclass(frozen=True, slots=True)
class Report:
    """What one run measured (latencies in milliseconds)."""

    senders: int
    deliveries: int
    seconds: float
    per_second: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[int, int]
    stored: int


def _send(url: str, bodies: list[bytes], start: threading.Barrier) -> list[tuple[int, float]]:
    """One sender: its deliveries back to back; (status, latency in s) of each."""
    results = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/healthz")  # open the keep-alive connection before the clock starts
        start.wait()
        for body in bodies:
            headers = signed(body)
            began = time.perf_counter()
            status = client.post("/webhook", content=body, headers=headers).status_code
            results.append((status, time.perf_counter() - began))
    return results


def run_benchmark(senders: int = 16, per_sender: int = 300) -> Report:
    """Serve a fresh SQLite receiver and measure ``senders`` x ``per_sender`` deliveries."""
    total = senders * per_sender
    bodies = list(generate(LoadSpec(deliveries=total, streams=total // 4, duplicates=0.02)))
    with tempfile.TemporaryDirectory(prefix="rtms-bench-") as tmp:
        db_url = f"sqlite:///{tmp}/bench.db"
        with serving_process(db_url, Path(tmp)) as url:
            start = threading.Barrier(senders + 1)
            with ThreadPoolExecutor(senders) as pool:
                futures = [
                    pool.submit(_send, url, bodies[i::senders], start) for i in range(senders)
                ]
                start.wait()
                began = time.perf_counter()
                results = [r for f in futures for r in f.result()]
                seconds = time.perf_counter() - began
        with Tracker(db_url) as tracker:
            stored = len(tracker.deliveries(limit=None))
    latencies = sorted(ms * 1000 for _, ms in results)
    centiles = statistics.quantiles(latencies, n=100)
    return Report(
        senders=senders,
        deliveries=len(results),
        seconds=round(seconds, 2),
        per_second=round(len(results) / seconds, 1),
        median_ms=round(statistics.median(latencies), 1),
        p90_ms=round(centiles[89], 1),
        p99_ms=round(centiles[98], 1),
        max_ms=round(latencies[-1], 1),
        statuses=dict(Counter(status for status, _ in results)),
        stored=stored,
    )


def test_receiver_meets_its_latency_targets() -> None:
    """Under 16 senders on SQLite: all 200, all stored, median < 50 ms, slowest < 1 s."""
    report = run_benchmark()
    print(json.dumps(asdict(report)))
    assert report.statuses == {200: report.deliveries}
    assert report.stored == report.deliveries
    assert report.median_ms < MEDIAN_TARGET_MS
    assert report.max_ms < MAX_TARGET_MS


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report as JSON; exit 1 if a target was missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--per-sender", type=int, default=300)
    args = parser.parse_args(argv)
    report = run_benchmark(args.senders, args.per_sender)
    print(json.dumps(asdict(report), indent=2))
    met = (
        report.statuses == {200: report.deliveries}
        and report.stored == report.deliveries
        and report.median_ms < MEDIAN_TARGET_MS
        and report.max_ms < MAX_TARGET_MS
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
