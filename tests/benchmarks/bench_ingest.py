"""Ingest throughput: ``Tracker`` against the raw baselines, on SQLite and on PostgreSQL.

    python -m tests.benchmarks.bench_ingest sqlite             # 64,000 deliveries, 20,000 streams
    python -m tests.benchmarks.bench_ingest postgres           # 4 processes, fsync on

Both generate their load with tests/benchmarks/generate.py (in order, seeded) into a temporary
file, which every run reads line by line as ``rtms-lifecycle ingest`` does. Each run gets a fresh
database in a temporary directory on the same disk. ``--json PATH`` also writes the results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from . import baseline_postgres, baseline_sqlite
from .baseline_sqlite import Result
from .generate import LoadSpec, write_jsonl


def make_load(directory: Path, deliveries: int, streams: int, seed: int = 7) -> Path:
    """Write the in-order load to ``directory``; returns its path."""
    path = directory / f"load-{deliveries}-{streams}-{seed}.jsonl"
    if not path.exists():
        with path.open("wb") as out:
            write_jsonl(LoadSpec(deliveries, streams, seed), out)
    return path


def lines(path: Path) -> Iterator[bytes]:
    """Non-blank lines, stripped: what the CLI hands to ``ingest_many``."""
    with path.open("rb") as source:
        for line in source:
            body = line.strip()
            if body:
                yield body


def ours_sqlite(load: Path, batch_size: int) -> Result:
    """``Tracker.ingest_many`` into a fresh SQLite file."""
    from rtms_lifecycle import Tracker

    with tempfile.TemporaryDirectory(prefix="rtms-bench-") as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/ours.db")
        started = time.perf_counter()
        summary = tracker.ingest_many(lines(load), batch_size=batch_size)
        seconds = time.perf_counter() - started
        tracker.close()
    _check_applied(summary.as_dict())
    return Result(f"Tracker.ingest_many, batch_size={batch_size}", summary.total, seconds)


def ours_cli(load: Path, batch_size: int) -> Result:
    """``rtms-lifecycle ingest`` in a subprocess (interpreter start-up and imports included).

    The database is created first, untimed, as the raw baselines' is.
    """
    with tempfile.TemporaryDirectory(prefix="rtms-bench-") as tmp:
        db = (_cli_command(), "--db", f"sqlite:///{tmp}/cli.db")
        subprocess.run([*db, "db", "upgrade"], check=True, capture_output=True)
        command = [*db, "ingest", str(load), "--batch-size", str(batch_size), "--json"]
        started = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    counts = json.loads(done.stdout)
    _check_applied(counts)
    return Result(
        f"rtms-lifecycle ingest --batch-size {batch_size} (CLI, incl. start-up)",
        sum(counts.values()),
        seconds,
    )


def _cli_command() -> str:
    beside = Path(sys.executable).with_name("rtms-lifecycle")
    found = str(beside) if beside.exists() else shutil.which("rtms-lifecycle")
    if found is None:
        raise RuntimeError("the rtms-lifecycle command is not installed")
    return found


def _check_applied(counts: dict[str, int]) -> None:
    wrong = {k: v for k, v in counts.items() if k != "applied" and v}
    if wrong:
        raise AssertionError(f"an in-order load must apply every delivery, got {counts}")


def best(runs: int, measure: Callable[[], Result]) -> Result:
    """The fastest of ``runs`` runs."""
    results = [measure() for _ in range(runs)]
    return min(results, key=lambda r: r.seconds)


def report(rows: Sequence[tuple[str, Result, Result | None]]) -> list[dict[str, Any]]:
    """Print ``label | ours | baseline | ratio`` and return it as JSON-ready rows."""
    out = []
    for label, ours, base in rows:
        ratio = ours.rate / base.rate if base else None
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        base_rate = f"{base.rate:,.0f}/s" if base else "-"
        print(f"{label:<48} {ours.rate:>10,.0f}/s {base_rate:>12} {shown:>7}   [{ours.name}]")
        out.append(
            {
                "label": label,
                "ours": ours.as_dict(),
                "baseline": base.as_dict() if base else None,
                "ratio": round(ratio, 3) if ratio is not None else None,
            }
        )
    return out


def bench_sqlite(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Raw baselines, then ours, on one load."""
    with tempfile.TemporaryDirectory(prefix="rtms-load-") as tmp:
        load = make_load(Path(tmp), args.deliveries, args.streams)
        print(f"load: {args.deliveries:,} in-order deliveries over {args.streams:,} streams")
        r = args.repeat

        def raw(batch: int, pragmas: str, schema: str) -> Result:
            return best(
                r,
                lambda: baseline_sqlite.run(load, batch_size=batch, pragmas=pragmas, schema=schema),
            )

        raw_lib_b, raw_lib_1 = raw(1000, "store", "library"), raw(1, "store", "library")
        raw_old_b, raw_old_1 = raw(1000, "store", "library-0002"), raw(1, "store", "library-0002")
        raw_lean_b, raw_lean_1 = raw(1000, "store", "lean"), raw(1, "store", "lean")
        rows: list[tuple[str, Result, Result | None]] = []
        if args.default_pragmas:
            rows += [
                (
                    "raw, lean schema, SQLite default pragmas, batch 1000",
                    raw(1000, "default", "lean"),
                    None,
                ),
                (
                    "raw, lean schema, SQLite default pragmas, batch 1",
                    raw(1, "default", "lean"),
                    None,
                ),
            ]
        ours_b = best(r, lambda: ours_sqlite(load, 1000))
        ours_1 = best(r, lambda: ours_sqlite(load, 1))
        rows += [
            ("ingest_many (batch 1000) vs raw, library schema", ours_b, raw_lib_b),
            ("ingest_many (batch 1) vs raw, library schema", ours_1, raw_lib_1),
            ("ingest_many (batch 1000) vs raw, library schema at 0002", ours_b, raw_old_b),
            ("ingest_many (batch 1) vs raw, library schema at 0002", ours_1, raw_old_1),
            ("ingest_many (batch 1000) vs raw, lean schema", ours_b, raw_lean_b),
            ("ingest_many (batch 1) vs raw, lean schema", ours_1, raw_lean_1),
        ]
        if args.cli:
            rows.append(
                (
                    "CLI ingest (batch 1000) vs raw, library schema",
                    best(r, lambda: ours_cli(load, 1000)),
                    raw_lib_b,
                )
            )
        return report(rows)


def ours_pg_worker(url: str, bodies: Sequence[bytes], barrier: Barrier) -> None:
    """One process of ours: ``Tracker.ingest``, one transaction per delivery."""
    from rtms_lifecycle import Tracker

    tracker = Tracker(url)
    tracker.ping()  # connect before the clock starts, like the baseline does
    counts: Counter[str] = Counter()
    barrier.wait()
    for raw in bodies:
        counts[tracker.ingest(raw).outcome.value] += 1
    barrier.wait()
    tracker.close()
    _check_applied(dict(counts))


def bench_postgres(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Raw psycopg with N processes, then ours with N processes, each on a fresh database."""
    from rtms_lifecycle import Tracker
    from tests._postgres import create_database, running_server, server_version

    with (
        tempfile.TemporaryDirectory(prefix="rtms-load-") as tmp,
        running_server(durable=True) as server,
    ):
        print(f"PostgreSQL {server_version(server)}")
        load = make_load(Path(tmp), args.deliveries, args.streams)
        parts = baseline_postgres.partition(load, args.processes)
        print(f"load: {args.deliveries:,} deliveries, {args.streams:,} streams", end=", ")
        print(f"{args.processes} processes")
        results: dict[str, list[Result]] = {"lean": [], "library": [], "0002": [], "ours": []}
        for _ in range(args.repeat):
            name = create_database(server)
            results["lean"].append(baseline_postgres.run(server.conninfo(name), parts, "lean"))
            for schema, key in (("library", "library"), ("library-0002", "0002")):
                name = create_database(server)
                baseline_sqlite.library_schema(server.url(name), schema)
                results[key].append(baseline_postgres.run(server.conninfo(name), parts))
            name = create_database(server)
            url = server.url(name)
            Tracker(url).close()

            def worker_args(
                part: Sequence[bytes], barrier: Barrier, url: str = url
            ) -> tuple[Any, ...]:
                return (url, part, barrier)

            results["ours"].append(
                baseline_postgres.run_processes(
                    f"Tracker.ingest, {args.processes} processes, 1 transaction/delivery",
                    ours_pg_worker,
                    parts,
                    worker_args,
                )
            )
        fastest = {k: min(v, key=lambda r: r.seconds) for k, v in results.items()}
        return report(
            [
                (
                    "PostgreSQL ingest vs raw psycopg, library schema",
                    fastest["ours"],
                    fastest["library"],
                ),
                (
                    "PostgreSQL ingest vs raw psycopg, library schema at 0002",
                    fastest["ours"],
                    fastest["0002"],
                ),
                ("PostgreSQL ingest vs raw psycopg, lean schema", fastest["ours"], fastest["lean"]),
            ]
        )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="backend", required=True)
    sqlite = sub.add_parser("sqlite", help="Tracker.ingest_many vs raw sqlite3")
    sqlite.add_argument("--deliveries", type=int, default=64_000)
    sqlite.add_argument("--streams", type=int, default=20_000)
    sqlite.add_argument("--repeat", type=int, default=1, help="best of N runs")
    sqlite.add_argument("--default-pragmas", action="store_true", help="also raw with defaults")
    sqlite.add_argument("--cli", action="store_true", help="also time the CLI in a subprocess")
    postgres = sub.add_parser("postgres", help="Tracker.ingest x N processes vs raw psycopg")
    postgres.add_argument("--deliveries", type=int, default=16_000)
    postgres.add_argument("--streams", type=int, default=5_000)
    postgres.add_argument("--processes", type=int, default=4)
    postgres.add_argument("--repeat", type=int, default=1, help="best of N runs")
    for p in (sqlite, postgres):
        p.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rows = bench_sqlite(args) if args.backend == "sqlite" else bench_postgres(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
