"""Event-loop lag while 20,000 deliveries are ingested: how long an asyncio backend stalls.

A ticker task sleeps 5 ms at a time and records how late each wake-up is (its lag: what every
other request of the backend would wait too). Meanwhile one bulk load of the project's
realistic load runs on a fresh database, in each of these ways, on the same event loop:

- ``idle``: no load for 2 s, the control: what this machine's scheduler alone costs;
- ``blocking``: ``Tracker.ingest_many`` called from a coroutine (what an async backend did
  before ``AsyncTracker``);
- ``to_thread``: ``asyncio.to_thread(Tracker.ingest_many, ...)``, the whole load in one thread;
- ``async``: ``await AsyncTracker.ingest_many(...)``;
- ``async+callback``: the same with an ``async def`` callback on every transition.

Target: the worst lag under 20 ms with ``AsyncTracker``, without ``gc.freeze()``. With
``--gc-freeze`` the process calls ``gc.freeze()`` once its tracker is open, as an application
might after start-up: a full garbage collection pass stalls every thread, wherever the work
runs, and freezing takes the start-up objects out of it. ``--modes`` picks the loads to run;
the last line gives each mode's best and median worst lag over the repeats.

Usage (figures go to docs/benchmarks.md, "Event-loop lag")::

    python -m tests.benchmarks.bench_loop_lag [--deliveries 20000] [--repeat 3] [--postgres]
        [--gc-freeze] [--modes async,async+callback]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from rtms_lifecycle import AsyncTracker, IngestSummary, Stream, Transition
from tests.benchmarks.generate import LoadSpec, generate

TICK_S = 0.005
TARGET_MS = 20.0
MODES = ("idle", "blocking", "to_thread", "async", "async+callback")
IDLE_S = 2.0


@dataclass(frozen=True, slots=True)
class Report:
    """One load in one mode (lags in milliseconds beyond the 5 ms tick)."""

    backend: str
    mode: str
    gc_freeze: bool
    deliveries: int
    seconds: float
    ticks: int
    worst_lag_ms: float
    p99_lag_ms: float
    median_lag_ms: float
    callbacks: int


async def _tick(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        due = time.perf_counter() + TICK_S
        await asyncio.sleep(TICK_S)
        lags.append(max(0.0, time.perf_counter() - due))


async def _measure(backend: str, mode: str, url: str, bodies: list[bytes], freeze: bool) -> Report:
    calls = 0

    async def count(transition: Transition, stream: Stream) -> None:
        nonlocal calls
        calls += 1

    async with AsyncTracker(url) as tracker:
        if mode == "async+callback":
            tracker.on_transition(count)
        if freeze:
            gc.freeze()
        loads: dict[str, Callable[[], Awaitable[IngestSummary | None]]] = {
            "idle": lambda: asyncio.sleep(IDLE_S),
            "blocking": lambda: _now(tracker.sync.ingest_many(bodies)),
            "to_thread": lambda: asyncio.to_thread(tracker.sync.ingest_many, bodies),
            "async": lambda: tracker.ingest_many(bodies),
            "async+callback": lambda: tracker.ingest_many(bodies),
        }
        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_tick(lags, stop))
        await asyncio.sleep(0.05)  # the ticker is running before the load starts
        lags.clear()
        began = time.perf_counter()
        summary = await loads[mode]()
        seconds = time.perf_counter() - began
        stop.set()
        await ticker
    assert summary is None or summary.total == len(bodies)
    ms = sorted(lag * 1000 for lag in lags) or [0.0]
    return Report(
        backend=backend,
        mode=mode,
        gc_freeze=freeze,
        deliveries=summary.total if summary else 0,
        seconds=round(seconds, 2),
        ticks=len(lags),
        worst_lag_ms=round(ms[-1], 1),
        p99_lag_ms=round(statistics.quantiles(ms, n=100)[98] if len(ms) > 1 else ms[0], 1),
        median_lag_ms=round(statistics.median(ms), 2),
        callbacks=calls,
    )


async def _now(summary: IngestSummary) -> IngestSummary:
    return summary


@contextmanager
def _databases(postgres: bool) -> Iterator[Callable[[], tuple[str, str]]]:
    """Factory of fresh databases: (backend, url)."""
    with tempfile.TemporaryDirectory(prefix="rtms-lag-") as tmp:
        made = 0

        def sqlite() -> tuple[str, str]:
            nonlocal made
            made += 1
            return "sqlite", f"sqlite:///{tmp}/lag-{made}.db"

        if not postgres:
            yield sqlite
            return
        from tests._postgres import create_database, running_server

        with running_server(durable=True) as server:
            yield lambda: ("postgres", server.url(create_database(server)))


def run(
    deliveries: int, repeat: int, postgres: bool, freeze: bool, modes: Sequence[str] = MODES
) -> list[Report]:
    """Every mode, ``repeat`` times, each on a fresh database."""
    bodies = list(generate(LoadSpec(deliveries=deliveries, streams=deliveries // 4)))
    reports = []
    with _databases(postgres) as fresh:
        for _ in range(repeat):
            for mode in modes:
                backend, url = fresh()
                report = asyncio.run(_measure(backend, mode, url, bodies, freeze))
                print(json.dumps(asdict(report)), flush=True)
                reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per measurement; exit 1 if AsyncTracker missed the target."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once started")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of " + ", ".join(MODES)
    )
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}")
    reports = run(args.deliveries, args.repeat, args.postgres, args.gc_freeze, modes)
    summary = {
        mode: {
            "best_ms": min(lags),
            "median_ms": round(statistics.median(lags), 1),
            "all_ms": sorted(lags),
        }
        for mode in modes
        if (lags := [r.worst_lag_ms for r in reports if r.mode == mode])
    }
    print(json.dumps({"worst_lag": summary}), flush=True)
    missed = [r for r in reports if r.mode.startswith("async") and r.worst_lag_ms >= TARGET_MS]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
