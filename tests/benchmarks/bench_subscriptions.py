"""Durable subscriptions: latency from a writer's commit to the callback in another process.

A consumer process runs ``Tracker.run_subscriptions``; the benchmark process records one delivery
at a time (``Tracker.ingest``, one transaction each) and notes the wall-clock time when the commit
returned; the consumer notes the time its callback ran. Both run on this machine, so their clocks
agree. Writes are spaced by a random 20-80 ms, so the consumer is idle (waiting) when each one
lands, as it is in production between webhooks.

PostgreSQL (fsync on) wakes the consumer with ``LISTEN``/``NOTIFY``; SQLite, measured in the same
run as the baseline, is polled every ``poll_interval`` (0.5 s by default). Target: PostgreSQL
median under 100 ms. It also times ``ingest`` on PostgreSQL with the notifying trigger enabled and
disabled, alternating, to show what the notification costs each commit. The same latency is
measured with an ``AsyncTracker`` consumer (``await run_subscriptions`` on an event loop), which
also reports the event loop's longest stall while it ran (a task that sleeps 5 ms in a loop notes
how late it woke).

Usage (figures go to docs/benchmarks.md, "Subscriptions")::

    python -m tests.benchmarks.bench_subscriptions [--deliveries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from rtms_lifecycle import AsyncTracker, Stream, Tracker, Transition
from tests._deliveries import body
from tests._postgres import create_database, running_server, server_version

MEDIAN_TARGET_MS = 100.0
T0 = 1_700_000_000_000


def _consume(url: str, out: Connection) -> None:
    def record(transition: Transition, stream: Stream) -> None:
        out.send((transition.stream_id, time.time_ns()))

    with Tracker(url) as tracker:
        tracker.subscribe("bench", record)
        out.send(("ready", 0))
        tracker.run_subscriptions(idle_exit=3.0)


def _consume_on_loop(url: str, out: Connection) -> None:
    asyncio.run(_consume_async(url, out))


async def _consume_async(url: str, out: Connection) -> None:
    stalls: list[float] = []

    async def tick() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls.append(time.perf_counter() - start - 0.005)

    async with AsyncTracker(url) as tracker:

        @tracker.subscribe("bench")
        async def record(transition: Transition, stream: Stream) -> None:
            out.send((transition.stream_id, time.time_ns()))

        ticker = asyncio.create_task(tick())
        run = asyncio.create_task(tracker.run_subscriptions(idle_exit=3.0))
        while not await tracker.subscriptions():  # stored when the run starts
            await asyncio.sleep(0.01)
        out.send(("ready", 0))
        await run
        ticker.cancel()
    out.send(("stall", int(max(stalls) * 1e9)))


def measure(url: str, deliveries: int, seed: int = 7, on_loop: bool = False) -> dict[str, float]:
    """Milliseconds from commit to callback, over ``deliveries`` single-delivery commits; with
    ``on_loop``, through an AsyncTracker, and the event loop's longest stall meanwhile."""
    Tracker(url).close()
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    target = _consume_on_loop if on_loop else _consume
    consumer = multiprocessing.get_context("spawn").Process(target=target, args=(url, send))
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
    results: dict[str, float] = {}
    if on_loop:
        results["loop_stall_max_ms"] = round(receive.recv()[1] / 1e6, 1)
    consumer.join(30)
    latencies.sort()
    return {
        "deliveries": deliveries,
        "median_ms": round(statistics.median(latencies), 1),
        "p90_ms": round(latencies[int(0.9 * len(latencies))], 1),
        "p99_ms": round(latencies[int(0.99 * len(latencies))], 1),
        "max_ms": round(latencies[-1], 1),
        **results,
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
    parser.add_argument(
        "--skip-notify-cost", action="store_true", help="only the commit-to-callback latencies"
    )
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite (poll 0.5 s)"] = measure(f"sqlite:///{Path(tmp) / 'b.db'}", args.deliveries)
        results["sqlite, AsyncTracker (poll 0.5 s)"] = measure(
            f"sqlite:///{Path(tmp) / 'c.db'}", args.deliveries, on_loop=True
        )
    with running_server(durable=True) as server:
        results["postgres"] = {"server": server_version(server)}
        results["postgres (LISTEN/NOTIFY)"] = measure(
            server.url(create_database(server)), args.deliveries
        )
        results["postgres, AsyncTracker (LISTEN/NOTIFY)"] = measure(
            server.url(create_database(server)), args.deliveries, on_loop=True
        )
        if not args.skip_notify_cost:
            results["postgres ingest, one delivery per commit (best of 2 rounds)"] = notify_cost(
                server.url(create_database(server)), 1000
            )
    print(json.dumps(results, indent=2))
    median = results["postgres (LISTEN/NOTIFY)"]["median_ms"]  # type: ignore[index]
    print(f"PostgreSQL median {median} ms (target < {MEDIAN_TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
