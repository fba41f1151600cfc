"""Receiver latency under 16 concurrent senders, on SQLite, against the real server.

The receiver runs as ``rtms-lifecycle serve`` does (``rtms_lifecycle.server.run``, uvicorn, access
log on) in its own process; 16 threads, each with its own keep-alive HTTP client, send signed
deliveries back to back, and every answer's latency is measured from just before the request to
its full response. The load is the project's realistic generator (interruptions, failovers,
duplicates). Targets: median < 50 ms, slowest < 1 s, every answer 200.

With ``--against-raw N`` it runs N rounds, each serving the receiver and then the raw durable
receiver (``baseline_receiver``: signature checked, raw bytes stored, ``synchronous=FULL`` and a
group commit) as whole processes on fresh SQLite files under the same senders, alternating,
and prints each round's throughputs and their ratio, then the median ratio.

Usage (figures go to docs/benchmarks.md, "Receiver")::

    python -m tests.benchmarks.bench_receiver [--senders 16] [--per-sender 300]
    python -m tests.benchmarks.bench_receiver --against-raw 5
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
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
from tests._live import SECRET, server_process, serving_process, signed
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


def _load(senders: int, per_sender: int) -> list[bytes]:
    total = senders * per_sender
    return list(generate(LoadSpec(deliveries=total, streams=total // 4, duplicates=0.02)))


def _drive(url: str, bodies: list[bytes], senders: int) -> tuple[list[tuple[int, float]], float]:
    start = threading.Barrier(senders + 1)
    with ThreadPoolExecutor(senders) as pool:
        futures = [pool.submit(_send, url, bodies[i::senders], start) for i in range(senders)]
        start.wait()
        began = time.perf_counter()
        results = [r for f in futures for r in f.result()]
        return results, time.perf_counter() - began


def run_benchmark(
    senders: int = 16, per_sender: int = 300, bodies: list[bytes] | None = None
) -> Report:
    """Serve a fresh SQLite receiver and measure ``senders`` x ``per_sender`` deliveries."""
    bodies = bodies if bodies is not None else _load(senders, per_sender)
    with tempfile.TemporaryDirectory(prefix="rtms-bench-") as tmp:
        db_url = f"sqlite:///{tmp}/bench.db"
        with serving_process(db_url, Path(tmp)) as url:
            results, seconds = _drive(url, bodies, senders)
        with Tracker(db_url) as tracker:
            stored = len(tracker.deliveries(limit=None))
    return _report(senders, results, seconds, stored)


def run_raw(senders: int, bodies: list[bytes]) -> Report:
    """The same senders against ``baseline_receiver`` in its own process, on a fresh file."""
    with tempfile.TemporaryDirectory(prefix="rtms-bench-raw-") as tmp:
        db_path = f"{tmp}/raw.db"

        def argv(port: int) -> list[str]:
            module = "tests.benchmarks.baseline_receiver"
            return [sys.executable, "-m", module, str(port), db_path]

        env = {**os.environ, "ZOOM_WEBHOOK_SECRET_TOKEN": SECRET, "PYTHONPATH": os.getcwd()}
        with server_process(argv, Path(tmp), env, "raw.log", probe="/") as (url, _, _):
            results, seconds = _drive(url, bodies, senders)
        with sqlite3.connect(db_path) as conn:
            (stored,) = conn.execute("SELECT count(*) FROM deliveries").fetchone()
        conn.close()
    return _report(senders, results, seconds, stored)


def _report(senders: int, results: list[tuple[int, float]], seconds: float, stored: int) -> Report:
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
    parser.add_argument(
        "--against-raw", type=int, default=0, metavar="ROUNDS", help="alternate with the raw one"
    )
    args = parser.parse_args(argv)
    if args.against_raw:
        return _against_raw(args.senders, args.per_sender, args.against_raw)
    report = run_benchmark(args.senders, args.per_sender)
    print(json.dumps(asdict(report), indent=2))
    met = (
        report.statuses == {200: report.deliveries}
        and report.stored == report.deliveries
        and report.median_ms < MEDIAN_TARGET_MS
        and report.max_ms < MAX_TARGET_MS
    )
    return 0 if met else 1


def _against_raw(senders: int, per_sender: int, rounds: int) -> int:
    bodies = _load(senders, per_sender)
    ratios = []
    for round_ in range(1, rounds + 1):
        load = os.getloadavg()[0]
        ours = run_benchmark(senders, per_sender, bodies)
        raw = run_raw(senders, bodies)
        ratio = ours.per_second / raw.per_second
        ratios.append(ratio)
        line = {
            "round": round_,
            "load_1min": round(load, 1),
            "ours": asdict(ours),
            "raw": asdict(raw),
            "ratio": round(ratio, 3),
        }
        print(json.dumps(line), flush=True)
    print(json.dumps({"median_ratio": round(statistics.median(ratios), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
