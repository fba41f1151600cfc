"""Pruning a large SQLite database: how long it takes and how much space comes back.

Builds a database from a generated load (Zoom-style retries included), puts the cutoff in the
middle of it (half of the streams stopped before), then times a dry run, the prune (which leaves
free pages inside the file, reused by new rows) and ``prune --vacuum`` (which gives them back to
the file system).

``--ab-only``: what SQLite's incremental auto-vacuum (which would let every prune give space back
on its own) would cost the write path: ingest into fresh databases with and without it,
alternating, per second of wall-clock time and of CPU time.

Usage::

    python -m tests.benchmarks.bench_prune                       # 500,000 deliveries
    python -m tests.benchmarks.bench_prune --ab-only --ab-deliveries 32000
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from rtms_lifecycle import Tracker
from rtms_lifecycle.clock import now_ms

from .generate import LoadSpec, generate


def size(path: Path) -> int:
    """The database's bytes on disk, write-ahead log included."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def create(path: Path, auto_vacuum: bool) -> None:
    """A database as the library creates it, or one with incremental auto-vacuum."""
    if auto_vacuum:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("CREATE TABLE placeholder (x)")  # writes the setting into the file
        conn.execute("DROP TABLE placeholder")
        conn.close()
    Tracker(f"sqlite:///{path}").close()


def ingest(path: Path, spec: LoadSpec) -> tuple[float, float]:
    """Deliveries per second of ``ingest_many`` (default batch) into ``path``: per second of
    wall-clock time, and per second of this process's CPU time (less moved by other work on a
    shared machine; SQLite runs in the process)."""
    with Tracker(f"sqlite:///{path}") as tracker:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = tracker.ingest_many(generate(spec))
        return (
            summary.total / (time.perf_counter() - wall),
            summary.total / (time.process_time() - cpu),
        )


def ingest_ab(folder: Path, spec: LoadSpec, rounds: int) -> dict[str, Any]:
    """Ingest the load into fresh databases with and without auto-vacuum, alternating."""
    rates: dict[str, dict[str, list[float]]] = {
        kind: {"wall": [], "cpu": []} for kind in ("incremental", "none")
    }
    for n in range(rounds):
        for kind in ("none", "incremental") if n % 2 == 0 else ("incremental", "none"):
            path = folder / f"ab-{kind}-{n}.db"
            create(path, kind == "incremental")
            wall, cpu = ingest(path, spec)
            rates[kind]["wall"].append(round(wall))
            rates[kind]["cpu"].append(round(cpu))
            for leftover in folder.glob(f"ab-{kind}-{n}.db*"):
                leftover.unlink()
    median = {
        kind: {clock: statistics.median(found) for clock, found in clocks.items()}
        for kind, clocks in rates.items()
    }
    return {
        "rates": rates,
        "median": median,
        "ratio": {
            clock: round(median["incremental"][clock] / median["none"][clock], 3)
            for clock in ("wall", "cpu")
        },
    }


def median_stop(path: Path) -> int:
    conn = sqlite3.connect(path)
    stops = [row[0] for row in conn.execute("SELECT stopped_at FROM streams WHERE stopped_at > 0")]
    conn.close()
    return int(statistics.median(stops))


def counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    found = {
        table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("streams", "deliveries", "transitions")
    }
    found["referencing duplicates"] = conn.execute(
        "SELECT count(*) FROM deliveries WHERE same_as IS NOT NULL"
    ).fetchone()[0]
    conn.close()
    return found


def prune(path: Path, older_than: timedelta, **options: bool) -> dict[str, Any]:
    before = size(path)
    with Tracker(f"sqlite:///{path}") as tracker:
        started = time.perf_counter()
        result = tracker.prune(older_than, **options)
        took = time.perf_counter() - started
    return {
        "seconds": round(took, 2),
        "removed": result.as_dict(),
        "bytes_before": before,
        "bytes_after": size(path),
        "free_bytes": result.free_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=500_000)
    parser.add_argument("--streams", type=int, default=150_000)
    parser.add_argument("--duplicates", type=float, default=0.05)
    parser.add_argument("--ab-deliveries", type=int, default=64_000)
    parser.add_argument("--ab-rounds", type=int, default=6)
    parser.add_argument("--ab-only", action="store_true", help="only the ingest comparison")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        deliveries=args.deliveries, streams=args.streams, duplicates=args.duplicates, shuffle=0
    )
    results: dict[str, Any] = {"load": vars(args) | {"json": None}}
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        folder = Path(tmp)
        ab_spec = LoadSpec(
            deliveries=args.ab_deliveries,
            streams=args.ab_deliveries * 5 // 16,
            duplicates=args.duplicates,
            shuffle=0,
        )
        if args.ab_rounds:
            results["ingest"] = ingest_ab(folder, ab_spec, args.ab_rounds)
            print(json.dumps({"ingest": results["ingest"]}))
        if args.ab_only:
            return 0
        path = folder / "rtms.db"
        create(path, auto_vacuum=False)
        rate, _ = ingest(path, spec)
        results["ingest_per_s"] = round(rate)
        results["rows"] = counts(path)
        older_than = timedelta(milliseconds=now_ms() - median_stop(path))
        results["older_than_days"] = round(older_than / timedelta(days=1), 2)
        with Tracker(f"sqlite:///{path}") as tracker:
            started = time.perf_counter()
            predicted = tracker.prune(older_than, dry_run=True).as_dict()
            results["dry_run"] = {
                "seconds": round(time.perf_counter() - started, 2),
                "would_remove": predicted,
            }
        results["prune"] = prune(path, older_than)
        # Streams that crossed the cutoff meanwhile go too; the rewrite is the main cost.
        results["vacuum"] = prune(path, older_than, vacuum=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
