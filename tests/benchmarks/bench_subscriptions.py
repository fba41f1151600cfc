"""Durable subscriptions: latency from a writer's commit to the callback in another process.

A consumer process runs ``Tracker.run_subscriptions``; the benchmark process records one delivery
at a time (``Tracker.ingest``, one transaction each) and notes the wall-clock time when the commit
returned; the consumer notes the time its callback ran. Both run on this machine, so their clocks
agree. Writes are spaced by a random 20-80 ms, so the consumer is idle (waiting) when each one
lands, as it is in production between webhooks.

PostgreSQL (fsync on) wakes the consumer with ``LISTEN``/``NOTIFY``; SQLite, measured in the same
run as the baseline, is polled every ``poll_interval`` (0.5 s by default). Target: PostgreSQL
median under 100 ms. It also times ``ingest`` on PostgreSQL with the notifying trigger enabled and
disabled, alternating, to show what the notification costs each commit.

Usage (figures go to docs/benchmarks.md, "Subscriptions")::

    python -m tests.benchmarks.bench_subscriptions [--deliveries 200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from rtms_lifecycle import Stream, Tracker, Transition
from tests._deliveries import body
from tests.benchmarks._pg import create_database, postgres_server, server_version

MEDIAN_TARGET_MS = 100.0
T0 = 1_700_000_000_000


def _consume(url: str, out: Connection) -> None:
    def record(transition: Transition, stream: Stream) -> None:
        out.send((transition.stream_id, time.time_ns()))

    with Tracker(url) as tracker:
        tracker.subscribe("bench", record)
        out.send(("ready", 0))
        tracker.run_subscriptions(idle_exit=3.0)


def measure(url: str, deliveries: int, seed: int = 7) -> dict[str, float]:
    """Milliseconds from commit to callback, over ``deliveries`` single-delivery commits."""
    Tracker(url).close()
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    consumer = multiprocessing.get_context("spawn").Process(target=_consume, args=(url, send))
    consumer.start()
    assert receive.recv()[0] == "ready"
    rng = random.Random(seed)
    committed: dict[str, int] = {}
    with Tracker(url) as tracker:
        for n in range(deliveries):
            time.sleep(rng.uniform(0.02, 0.08))
            sid = f"bench-{n}"
            tracker.ingest(body("started", sid, T0 + n, scope_id=sid))
            committed[sid] = time.time_ns()
    latencies = []
    for _ in range(deliveries):
        sid, at = receive.recv()
        latencies.append((at - committed[sid]) / 1e6)
    consumer.join(30)
    latencies.sort()
    return {
        "deliveries": deliveries,
        "median_ms": round(statistics.median(latencies), 1),
        "p90_ms": round(latencies[int(0.9 * len(latencies))], 1),
        "p99_ms": round(latencies[int(0.99 * len(latencies))], 1),
        "max_ms": round(latencies[-1], 1),
    }


def notify_cost(url: str, deliveries: int, rounds: int = 2) -> dict[str, float]:
    """Per-delivery ingest time (ms) with the feed's NOTIFY trigger and with it dropped,
    alternating rounds on one database: what waking subscribers costs the receivers."""
    from sqlalchemy import text

    timings: dict[str, list[float]] = {"with_notify_ms": [], "without_notify_ms": []}
    with Tracker(url) as tracker:
        for r in range(rounds):
            for notify in (True, False):
                with tracker.engine.begin() as conn:
                    conn.execute(
                        text(
                            f"ALTER TABLE transitions {'ENABLE' if notify else 'DISABLE'}"
                            " TRIGGER transitions_feed_notify"
                        )
                    )
                start = time.perf_counter()
                for n in range(deliveries):
                    sid = f"cost-{r}-{notify}-{n}"
                    tracker.ingest(body("started", sid, T0 + n, scope_id=sid))
                elapsed = (time.perf_counter() - start) * 1000 / deliveries
                timings["with_notify_ms" if notify else "without_notify_ms"].append(elapsed)
        with tracker.engine.begin() as conn:
            conn.execute(text("ALTER TABLE transitions ENABLE TRIGGER transitions_feed_notify"))
    return {key: round(min(values), 3) for key, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite (poll 0.5 s)"] = measure(f"sqlite:///{Path(tmp) / 'b.db'}", args.deliveries)
    with postgres_server() as server:
        results["postgres"] = {"server": server_version(server)}
        results["postgres (LISTEN/NOTIFY)"] = measure(
            server.url(create_database(server)), args.deliveries
        )
        results["postgres ingest, one delivery per commit (best of 2 rounds)"] = notify_cost(
            server.url(create_database(server)), 1000
        )
    print(json.dumps(results, indent=2))
    median = results["postgres (LISTEN/NOTIFY)"]["median_ms"]  # type: ignore[index]
    print(f"PostgreSQL median {median} ms (target < {MEDIAN_TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
