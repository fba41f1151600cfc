"""End-to-end ingest as a user runs it: whole processes on a new SQLite file.

    python -m tests.benchmarks.bench_e2e                       # 64,000 batched, 19,000 one by one
    python -m tests.benchmarks.bench_e2e --repeat 3 --json /tmp/e2e.json

Ours is ``rtms-lifecycle --db FILE ingest LOAD --json`` (and ``--batch-size 1``) on a file that
does not exist yet: interpreter start-up, imports and schema creation are part of the time, as
they are for a user. The baseline is the plain ``sqlite3`` script a user would otherwise write
(``baseline_sqlite --schema user``: insert the delivery, upsert the stream, insert the transition,
with a unique event identity and an index on the stream state, the store's pragmas), also run as a
whole process that creates its file. Between them, the floor: the same script writing the same
three statements into the library's own schema (its indexes and triggers), in our batches and with
the writer's page cache, on a file made beforehand; what is left between it and ours is our
Python and start-up, what is left between it and the user's script is the schema. Runs alternate
(ours, floor, script), so a drift of the machine's speed hits all three; the ratios are best over
best and median over median, and every run's time is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rtms_lifecycle.defaults import DEFAULT_BATCH_SIZE

from .baseline_sqlite import Result, prepare
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


def script(load: Path, db: Path, batch_size: int, name: str, *options: str) -> Result:
    """``baseline_sqlite`` writing ``db`` in a new process."""
    command = [sys.executable, "-m", "tests.benchmarks.baseline_sqlite", str(load)]
    command += ["--batch-size", str(batch_size), "--db", str(db), *options]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    count = json.loads(done.stdout)["deliveries"]
    return Result(f"{name}, batch {batch_size}", count, seconds)


def baseline(load: Path, db: Path, batch_size: int) -> Result:
    """The user's own ``sqlite3`` script in a new process on a new database."""
    return script(load, db, batch_size, "plain sqlite3 script", "--schema", "user")


def floor(load: Path, db: Path, batch_size: int, schema: Path) -> Result:
    """The script's three statements on a copy of our new schema, set up as our writer is."""
    shutil.copy(schema, db)
    options = ("--schema", "library", "--pragmas", "writer", "--prepared")
    return script(load, db, batch_size, "the script on our schema", *options)


def trio(
    load: Path, batch_size: int, ours_batch: int | None, repeat: int
) -> tuple[list[Result], list[Result], list[Result]]:
    """``repeat`` alternating runs of ours, the floor and the user's script, each on a new file;
    each side fastest first."""
    runs: tuple[list[Result], list[Result], list[Result]] = ([], [], [])
    with tempfile.TemporaryDirectory(prefix="rtms-e2e-") as tmp:
        schema = Path(tmp) / "schema.db"
        prepare(schema, "library")
        for n in range(repeat):
            runs[0].append(ours(load, Path(tmp) / f"ours-{n}.db", ours_batch))
            runs[1].append(
                floor(load, Path(tmp) / f"floor-{n}.db", ours_batch or DEFAULT_BATCH_SIZE, schema)
            )
            runs[2].append(baseline(load, Path(tmp) / f"user-{n}.db", batch_size))
    for side in runs:
        side.sort(key=lambda r: r.seconds)
    return runs


def best_and_median(
    label: str, runs: tuple[list[Result], list[Result], list[Result]]
) -> list[tuple[str, Result, Result | None]]:
    """Best and median (the lower middle of an even count): ours and the floor against the
    user's script, and ours against the floor."""
    mine, least, theirs = runs
    print(
        f"{label}: ours {' '.join(f'{r.seconds:.2f}' for r in mine)} s;"
        f" floor {' '.join(f'{r.seconds:.2f}' for r in least)} s;"
        f" script {' '.join(f'{r.seconds:.2f}' for r in theirs)} s"
    )
    middle = (len(mine) - 1) // 2
    rows: list[tuple[str, Result, Result | None]] = []
    for at, which in ((0, "best"), (middle, "median")):
        rows += [
            (f"{label}, {which}", mine[at], theirs[at]),
            (f"{label}, {which}, floor vs script", least[at], theirs[at]),
            (f"{label}, {which}, ours vs floor", mine[at], least[at]),
        ]
    return rows


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
        rows += best_and_median("batched", trio(batched, 1000, None, args.repeat))
        rows += best_and_median("batch 1", trio(single, 1, 1, args.repeat))
    results: list[dict[str, Any]] = report(rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
