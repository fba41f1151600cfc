"""How long the command and the library take to start: each measured in a fresh process.

    python -m tests.benchmarks.bench_startup              # median of 10 runs each
    python -m tests.benchmarks.bench_startup --runs 20

Measured, each as a new Python process (wall time from spawn to exit, as a user waits):
``python -c pass`` and ``import sqlalchemy, pydantic`` (references for this machine's speed at
the moment: it is shared, and its speed varies 1.5x within an hour), ``import rtms_lifecycle``,
``rtms-lifecycle --help``, ``rtms-lifecycle stream --help``, ``rtms-lifecycle stream ID`` on an
existing SQLite database, a one-event ``rtms-lifecycle ingest`` into it, and the schema creation
of a new SQLite database (``Tracker(url)`` on a new file, timed inside the process: everything
it imports beyond ``rtms_lifecycle`` itself counts). The commands are interleaved in rounds, so
that a busy moment on the machine weighs on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

EXAMPLES: Final = Path(__file__).resolve().parents[1] / "zoom" / "examples"
# The console script itself, as installed next to this interpreter.
_CLI: Final = [str(Path(sys.executable).with_name("rtms-lifecycle"))]
_SCHEMA: Final = (
    "import sys, time\n"
    "from rtms_lifecycle import Tracker\n"
    "t0 = time.perf_counter()\n"
    "Tracker(sys.argv[1]).close()\n"
    "print(time.perf_counter() - t0)\n"
)


def _wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _schema_creation(folder: Path, run: int) -> float:
    url = f"sqlite:///{folder / f'new-{run}.db'}"
    out = subprocess.run(
        [sys.executable, "-c", _SCHEMA, url], check=True, capture_output=True, text=True
    )
    return float(out.stdout)


def main() -> None:
    """Time every start-up case ``--runs`` times, interleaved, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = f"sqlite:///{folder / 'existing.db'}"
        started = json.loads((EXAMPLES / "meeting.rtms_started.json").read_text())
        stream_id = started["payload"]["rtms_stream_id"]
        one_event = folder / "one.jsonl"
        one_event.write_text(json.dumps(started) + "\n")
        subprocess.run(
            [*_CLI, "--db", db, "ingest", str(one_event)], check=True, stdout=subprocess.DEVNULL
        )
        cases: dict[str, Callable[[int], float]] = {
            "python -c pass": lambda _: _wall([sys.executable, "-c", "pass"]),
            "import sqlalchemy, pydantic": lambda _: _wall(
                [sys.executable, "-c", "import sqlalchemy, pydantic"]
            ),
            "import rtms_lifecycle": lambda _: _wall(
                [sys.executable, "-c", "import rtms_lifecycle"]
            ),
            "rtms-lifecycle --help": lambda _: _wall([*_CLI, "--help"]),
            "rtms-lifecycle stream --help": lambda _: _wall([*_CLI, "stream", "--help"]),
            "rtms-lifecycle stream ID": lambda _: _wall([*_CLI, "--db", db, "stream", stream_id]),
            "rtms-lifecycle ingest (one event)": lambda _: _wall(
                [*_CLI, "--db", db, "ingest", str(one_event)]
            ),
            "schema creation, new SQLite file (in process)": lambda run: _schema_creation(
                folder, run
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for run in range(args.runs):
            for name, case in cases.items():
                times[name].append(case(run))
    print(f"| case | median of {args.runs} | fastest | slowest |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(
            f"| {name} | {statistics.median(values) * 1000:.0f} ms "
            f"| {min(values) * 1000:.0f} ms | {max(values) * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
