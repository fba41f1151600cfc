"""The audit hash chains: verifying a million transitions, and what hashing costs a delivery.

``verify``: builds a SQLite database of ``--transitions`` transitions (four per stream: start,
interrupt, resume, stop), written row by row with their chain hashes as the write path computes
them, then times ``Tracker.verify_audit()`` (every chain recomputed) and ``audit_head()``.

``--write-cost``: ingests a generated load into fresh databases, alternating three variants: as
shipped; with the hash replaced by a constant (what hashing costs); and without the trigger that
refuses an INSERT over an existing id (what it costs). Per delivery, best of ``--rounds``.

Usage::

    python -m tests.benchmarks.bench_audit                        # 1,000,000 transitions
    python -m tests.benchmarks.bench_audit --write-cost --deliveries 64000 --rounds 3
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from rtms_lifecycle import Tracker
from rtms_lifecycle.store import batch
from rtms_lifecycle.store.chain import chain_hash

from .generate import LoadSpec, generate

_STEPS = (
    ("new", "started", "start", "started"),
    ("started", "interrupted", "interrupt", "interrupted"),
    ("interrupted", "resumed", "resume", "started"),
    ("resumed", "stopped", "stop", "stopped"),
)


def build(path: Path, transitions: int) -> None:
    """A database of ``transitions`` chained transitions (and their streams), fast: rows are
    inserted directly, hashed as the write path hashes them."""
    Tracker(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.create_function("rtms_lifecycle_pruning", 0, lambda: 0)
    rows: list[tuple[Any, ...]] = []
    streams: list[tuple[Any, ...]] = []
    at = 1_700_000_000_000
    for n in range(transitions // len(_STEPS)):
        sid, previous = f"stream-{n:08d}", None
        for k, (before, after, name, kind) in enumerate(_STEPS):
            tid = n * len(_STEPS) + k + 1
            row = (tid, sid, before, after, name, kind, at + tid, "webhook", False, at, tid)
            previous = chain_hash(previous, row)
            rows.append((*row, previous))
        streams.append((sid, at, previous))
        if len(rows) >= 100_000:
            _flush(conn, rows, streams)
    _flush(conn, rows, streams)
    conn.close()


def _flush(conn: sqlite3.Connection, rows: list[Any], streams: list[Any]) -> None:
    with conn:
        conn.executemany(
            "INSERT INTO transitions (id, stream_id, from_state, to_state, name, kind, event_ts,"
            " source, late, recorded_at, delivery_id, chain_hash, tx_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            rows,
        )
        conn.executemany(
            "INSERT INTO streams (stream_id, scope, scope_id, state, interruptions, resumes,"
            " failovers, fold_ts, fold_rank, created_at, updated_at, stopped_at, chain_head)"
            " VALUES (?, 'meeting', 'm', 'stopped', 1, 1, 0, 0, 0, 0, 0, ?, ?)",
            streams,
        )
    rows.clear()
    streams.clear()


def verify(transitions: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.db"
        started = time.perf_counter()
        build(path, transitions)
        print(f"built {transitions:,} transitions in {time.perf_counter() - started:.1f} s")
        with Tracker(f"sqlite:///{path}") as tracker:
            started = time.perf_counter()
            report = tracker.verify_audit()
            took = time.perf_counter() - started
            assert report.ok, report.breaks[:3]
            print(
                f"audit verify: {report.transitions:,} transitions, {report.streams:,} chains"
                f" in {took:.1f} s ({took / report.transitions * 1e6:.1f} us per transition)"
            )
            started = time.perf_counter()
            tracker.audit_head()
            print(f"audit head: {time.perf_counter() - started:.1f} s")


def _ingest(path: Path, spec: LoadSpec, variant: str) -> tuple[float, int]:
    Tracker(f"sqlite:///{path}").close()
    if variant == "no trigger":
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER transitions_append_only_insert")
        conn.close()
    names = vars(batch)  # the write path's own reference to the hash function
    hashing = names["chain_hash"]
    if variant == "no hash":
        names["chain_hash"] = lambda previous, row: "0" * 64
    try:
        with Tracker(f"sqlite:///{path}") as tracker:
            started = time.process_time()
            summary = tracker.ingest_many(generate(spec))
            return time.process_time() - started, summary.total
    finally:
        names["chain_hash"] = hashing


def write_cost(deliveries: int, rounds: int) -> None:
    spec = LoadSpec(deliveries=deliveries, streams=deliveries // 4)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for variant in ("shipped", "no hash", "no trigger"):
            with tempfile.TemporaryDirectory() as tmp:
                cpu, total = _ingest(Path(tmp) / "w.db", spec, variant)
            per = cpu / total * 1e6
            best[variant] = min(best.get(variant, per), per)
    for variant, per in best.items():
        print(f"{variant:>10}: {per:.1f} us CPU per delivery (best of {rounds})")
    print(f"hashing: {best['shipped'] - best['no hash']:+.1f} us per delivery")
    print(f"insert trigger: {best['shipped'] - best['no trigger']:+.1f} us per delivery")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--write-cost", action="store_true")
    parser.add_argument("--deliveries", type=int, default=64_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.write_cost:
        write_cost(args.deliveries, args.rounds)
    else:
        verify(args.transitions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
