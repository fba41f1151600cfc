"""End-to-end ingest as a user runs it: whole processes on a new SQLite file.

    python -m tests.benchmarks.bench_e2e                       # 64,000 batched, 19,000 one by one
    python -m tests.benchmarks.bench_e2e --repeat 3 --json /tmp/e2e.json

Ours is ``rtms-lifecycle --db FILE ingest LOAD --json`` (and ``--batch-size 1``) on a file that
does not exist yet: interpreter start-up, imports and schema creation are part of the time, as
they are for a user. The baseline is the plain ``sqlite3`` script a user would otherwise write
(``baseline_sqlite --schema user``: insert the delivery, upsert the stream, insert the transition,
with a unique event identity and an index on the stream state, the store's pragmas), also run as a
whole process that creates its file. Runs alternate ours and the baseline, so a drift of the
machine's speed hits both; the ratios are best over best and median over median, and every run's
time is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .baseline_sqlite import Result
from .bench_ingest import _check_applied, _cli_command, make_load, report

# What a user's load looks like: the throughput benchmark's in-order load, and a smaller one for
# one transaction per delivery (each commit waits for the disk).
BATCHED = (64_000, 20_000)
ONE_BY_ONE = (19_000, 6_000)


def ours(load: Path, db: Path, batch_size: int | None) -> Result:
    """``rtms-lifecycle ingest`` in a new process on a new database."""
    command = [_cli_command(), "--db", f"sqlite:///{db}", "ingest", str(load), "--json"]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    counts = json.loads(done.stdout)
    _check_applied(counts)
    shown = "default" if batch_size is None else batch_size
    return Result(f"rtms-lifecycle ingest, batch {shown}", sum(counts.values()), seconds)


def baseline(load: Path, db: Path, batch_size: int) -> Result:
    """The user's own ``sqlite3`` script in a new process on a new database."""
    command = [
        sys.executable,
        "-m",
        "tests.benchmarks.baseline_sqlite",
        str(load),
        "--schema",
        "user",
        "--batch-size",
        str(batch_size),
        "--db",
        str(db),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    count = json.loads(done.stdout)["deliveries"]
    return Result(f"plain sqlite3 script, batch {batch_size}", count, seconds)


def pair(
    load: Path, batch_size: int, ours_batch: int | None, repeat: int
) -> tuple[list[Result], list[Result]]:
    """``repeat`` alternating runs of ours and the baseline, each on a new file, fastest first."""
    mine: list[Result] = []
    theirs: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="rtms-e2e-") as tmp:
        for n in range(repeat):
            mine.append(ours(load, Path(tmp) / f"ours-{n}.db", ours_batch))
            theirs.append(baseline(load, Path(tmp) / f"user-{n}.db", batch_size))
    return sorted(mine, key=lambda r: r.seconds), sorted(theirs, key=lambda r: r.seconds)


def best_and_median(
    label: str, mine: list[Result], theirs: list[Result]
) -> list[tuple[str, Result, Result | None]]:
    """The best and the median run of each side (the lower middle of an even count)."""
    print(
        f"{label}: ours {' '.join(f'{r.seconds:.2f}' for r in mine)} s;"
        f" script {' '.join(f'{r.seconds:.2f}' for r in theirs)} s"
    )
    middle = (len(mine) - 1) // 2
    return [
        (f"{label}, best", mine[0], theirs[0]),
        (f"{label}, median", mine[middle], theirs[middle]),
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure both loads and print ``label | ours | baseline | ratio``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rows: list[tuple[str, Result, Result | None]] = []
    with tempfile.TemporaryDirectory(prefix="rtms-load-") as tmp:
        batched = make_load(Path(tmp), *BATCHED)
        single = make_load(Path(tmp), *ONE_BY_ONE)
        # The CLI's default batch size against the baseline's commit every 1,000.
        rows += best_and_median("batched", *pair(batched, 1000, None, args.repeat))
        rows += best_and_median("batch 1", *pair(single, 1, 1, args.repeat))
    results: list[dict[str, Any]] = report(rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
