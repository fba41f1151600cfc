"""Claims: the latency of ``Tracker.claim`` with many live streams and many claiming processes.

On a throwaway PostgreSQL server (the tests' own: fsync off) it records ``--streams`` live
streams, then ``--processes`` processes claim at once, each timing every ``claim()`` call:

- fill: they claim until none is left (every stream taken once; the later claims skip more
  and more held streams);
- churn: with every stream held, each process releases one of its claims and claims again,
  ``--churn`` times: the steady state of a busy fleet, where a claim must find the one free
  stream among thousands held.

Target: p99 under 20 ms in both phases. Then one process alone renews, releases and claims
again ``--trace`` times, traced by libpq: round trips (ReadyForQuery) and statements per renewal,
release and claim, and the client's CPU time per call. Usage (figures go to docs/benchmarks.md,
"Claims")::

    python -m tests.benchmarks.bench_claims [--streams 10000 --processes 16 --churn 200 --trace 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from rtms_lifecycle import Claim, Tracker
from rtms_lifecycle.clock import now_ms
from tests._deliveries import body
from tests._postgres import create_database, running_server, server_version
from tests.benchmarks.bench_pg_writers import count_trace

P99_TARGET_MS = 20.0


def _claimer(url: str, name: str, churn: int, start: Barrier, out: Connection) -> None:
    fill: list[float] = []
    again: list[float] = []
    held: list[Claim] = []
    with Tracker(url) as tracker:
        tracker.claims(name)  # connect before the clock starts
        start.wait()
        while True:
            began = time.perf_counter()
            claim = tracker.claim(name, lease=600)
            fill.append(time.perf_counter() - began)
            if claim is None:
                break
            held.append(claim)
        start.wait()  # every stream is held
        rng = random.Random(name)
        for _ in range(churn if held else 0):
            tracker.release(held.pop(rng.randrange(len(held))))
            began = time.perf_counter()
            claim = tracker.claim(name, lease=600)
            again.append(time.perf_counter() - began)
            if claim is not None:
                held.append(claim)
    out.send((fill, again))


class _Tracing:
    """Every libpq connection the process opens, traced into ``sink`` while one is set."""

    def __init__(self) -> None:
        import psycopg

        self.conns: list[Any] = []
        self.sink: int | None = None
        connect = psycopg.Connection.connect

        def traced(cls: Any, *args: Any, **kwargs: Any) -> Any:
            conn = connect(*args, **kwargs)
            self.conns.append(conn.pgconn)
            if self.sink is not None:
                conn.pgconn.trace(self.sink)
            return conn

        # SQLAlchemy calls psycopg.connect, an alias of Connection.connect.
        psycopg.connect = lambda *args, **kwargs: traced(psycopg.Connection, *args, **kwargs)

    @contextmanager
    def traced(self, path: Path) -> Iterator[None]:
        with path.open("w") as sink:
            self.sink = sink.fileno()
            for pgconn in self.conns:
                pgconn.trace(self.sink)
            try:
                yield
            finally:
                for pgconn in self.conns:
                    pgconn.untrace()  # flushes libpq's buffer
                self.sink = None


def _traced(url: str, calls: int, out: Connection) -> None:
    """Renew, release and claim again ``calls`` times alone, each kind traced on its own."""
    tracing = _Tracing()
    with Tracker(url) as tracker, tempfile.TemporaryDirectory(prefix="rtms-trace-") as tmp:
        name = "traced"
        held = [tracker.claim(name, lease=600) for _ in range(calls + 1)]
        mine = [c for c in held if c is not None]
        tracker.renew(mine[0])  # every connection opened, every statement prepared
        tracker.release(mine.pop())
        tracker.claim(name, lease=600)
        renewing = iter(list(mine))
        found: dict[str, tuple[float, float, float]] = {}
        for kind, call in (
            ("renew", lambda: tracker.renew(next(renewing))),
            ("release", lambda: tracker.release(mine.pop())),
            ("claim", lambda: tracker.claim(name, lease=600)),
        ):
            path = Path(tmp) / kind
            began = time.process_time()
            with tracing.traced(path):
                for _ in range(len(held) - 1):
                    call()
            cpu = (time.process_time() - began) / (len(held) - 1)
            counted = count_trace(path, len(held) - 1)
            found[kind] = (counted["round_trips"], counted["statements"], cpu * 1000)
    out.send(found)


def _trace(url: str, calls: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_traced, args=(url, calls, send))
    proc.start()
    found = recv.recv()
    proc.join()
    for kind, (trips, statements, cpu) in found.items():
        print(
            f"{kind}: {trips:.2f} round trips, {statements:.2f} statements,"
            f" {cpu:.2f} ms client CPU (traced, one process)"
        )


def _summary(label: str, seconds: list[float]) -> float:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{label}: {len(ms):,} claims, median {statistics.median(ms):.2f} ms, "
        f"p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
    )
    return p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--churn", type=int, default=200)
    parser.add_argument("--trace", type=int, default=200, help="calls traced (0: none)")
    args = parser.parse_args()
    with running_server() as server:
        url = server.url(create_database(server))
        print(f"PostgreSQL {server_version(server)}")
        at = now_ms() - 3_600_000
        with Tracker(url) as tracker:
            for start in range(0, args.streams, 1000):
                tracker.ingest_batch(
                    [
                        body("started", f"s{i:06d}", at + i)
                        for i in range(start, min(args.streams, start + 1000))
                    ]
                )
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(args.processes)
        pipes = [ctx.Pipe(duplex=False) for _ in range(args.processes)]
        procs = [
            ctx.Process(target=_claimer, args=(url, f"w{i:02d}", args.churn, barrier, send))
            for i, (_, send) in enumerate(pipes)
        ]
        began = time.perf_counter()
        for proc in procs:
            proc.start()
        results = [recv.recv() for recv, _ in pipes]
        for proc in procs:
            proc.join()
        print(f"{args.streams:,} live streams, {args.processes} processes: "
              f"{time.perf_counter() - began:.1f} s")  # fmt: skip
        fill = _summary("fill ", [s for r in results for s in r[0]])
        churn = _summary("churn", [s for r in results for s in r[1]])
        with Tracker(url) as tracker:
            held = tracker.claims()
            assert len({c.stream_id for c in held}) == len(held) <= args.streams
        verdict = "meets" if max(fill, churn) < P99_TARGET_MS else "misses"
        print(f"p99 target {P99_TARGET_MS:.0f} ms: {verdict}")
        if args.trace:
            with Tracker(url) as tracker:
                # Streams for the traced process to take: the first ones let go.
                for claim in tracker.claims()[: args.trace + 1]:
                    tracker.release(claim)
            _trace(url, args.trace)


if __name__ == "__main__":
    main()
