"""Profile ``Tracker.ingest_many`` on SQLite (pyinstrument tree, or cProfile top functions).

    python -m tests.benchmarks.profile_ingest --batch-size 1000 --deliveries 64000
    python -m tests.benchmarks.profile_ingest --batch-size 1 --deliveries 16000 --streams 5000
    python -m tests.benchmarks.profile_ingest --batch-size 1000 --cprofile

pyinstrument (``pip install pyinstrument``) prints the call tree; ``--cprofile`` prints the
functions with the most own time and the most cumulative time instead. ``--html PATH`` saves
pyinstrument's interactive page.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

from .bench_ingest import lines, make_load

# (label, file suffix, function name): cumulative time of these functions.
CUMULATIVE = (
    ("whole ingest_many", "rtms_lifecycle/tracker.py", "ingest_many"),
    (
        "parse: to_incoming (decode, parse, event time)",
        "rtms_lifecycle/store/batch.py",
        "to_incoming",
    ),
    ("  parse_delivery (pydantic)", "rtms_lifecycle/models.py", "parse_delivery"),
    ("Store._write (one transaction)", "rtms_lifecycle/store/core.py", "_write"),
    ("  Batch._load (streams, stored identities, ids)", "rtms_lifecycle/store/batch.py", "_load"),
    ("  Batch._decide (in-memory decisions)", "rtms_lifecycle/store/batch.py", "_decide"),
    ("    machine.step", "rtms_lifecycle/machine.py", "step"),
    ("    chain_hash (audit chain)", "rtms_lifecycle/store/chain.py", "chain_hash"),
    ("    Batch._delivery (delivery rows)", "rtms_lifecycle/store/batch.py", "_delivery"),
    ("  Batch._write_streams (stream rows)", "rtms_lifecycle/store/batch.py", "_write_streams"),
    ("  SqliteTx.write (inserts, updates)", "rtms_lifecycle/store/writers/sqlite.py", "write"),
    (
        "    _sqlite_changes (changed columns)",
        "rtms_lifecycle/store/writers/sqlite.py",
        "_sqlite_changes",
    ),
    ("  BEGIN and COMMIT", "rtms_lifecycle/store/writers/sqlite.py", "transaction"),
)
# C functions of the sqlite3 module: the time SQLite itself spends.
DRIVER = ("execute", "executemany", "commit", "fetchone", "fetchall", "fetchmany")


def print_categories(stats: pstats.Stats) -> None:
    """Cumulative seconds (and share of the whole) of the functions that matter."""
    table = stats.stats  # type: ignore[attr-defined]
    found: dict[str, float] = {}
    driver = 0.0
    calls = 0
    for (filename, _line, name), (_cc, ncalls, tottime, cumtime, _callers) in table.items():
        for label, suffix, function in CUMULATIVE:
            if filename.endswith(suffix) and name == function:
                found[label] = found.get(label, 0.0) + cumtime
        if filename == "~" and any(
            name == f"<method '{m}' of 'sqlite3.{k}' objects>"
            for m in DRIVER
            for k in ("Cursor", "Connection")
        ):
            driver += tottime
            if "execute" in name:
                calls += ncalls
    whole = found.get("whole ingest_many", 0.0) or 1.0
    print(f"{'category (cProfile cumulative)':<52} {'seconds':>8} {'share':>7}")
    for label, _suffix, _function in CUMULATIVE:
        seconds = found.get(label, 0.0)
        print(f"{label:<52} {seconds:8.3f} {seconds / whole:7.1%}")
    label = f"sqlite3 C calls (execute x{calls:,}, commit, fetch)"
    print(f"{label:<52} {driver:8.3f} {driver / whole:7.1%}")
    print()


def main(argv: list[str] | None = None) -> int:
    """Profile one ingest of a generated in-order load into a fresh SQLite file."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=64_000)
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--cprofile", action="store_true", help="cProfile instead of pyinstrument")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--html", type=Path, help="save pyinstrument's HTML page here")
    args = parser.parse_args(argv)

    from rtms_lifecycle import Tracker

    with tempfile.TemporaryDirectory(prefix="rtms-profile-") as tmp:
        load = make_load(Path(tmp), args.deliveries, args.streams)
        tracker = Tracker(f"sqlite:///{tmp}/profile.db")
        if args.cprofile:
            profile = cProfile.Profile()
            profile.enable()
            tracker.ingest_many(lines(load), batch_size=args.batch_size)
            profile.disable()
            stats = pstats.Stats(profile)
            print_categories(stats)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)
        else:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001)
            with profiler:
                tracker.ingest_many(lines(load), batch_size=args.batch_size)
            print(profiler.output_text(unicode=True, color=False, show_all=False))
            if args.html:
                args.html.write_text(profiler.output_html())
        tracker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
