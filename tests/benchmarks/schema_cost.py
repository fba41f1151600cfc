"""What each index and trigger a delivery writes costs a load: each dropped in turn, then all.

    python -m tests.benchmarks.schema_cost LOAD.jsonl                   # the script, batch 5,000
    python -m tests.benchmarks.schema_cost LOAD.jsonl --batch-size 1
    python -m tests.benchmarks.schema_cost LOAD.jsonl --ours --repeat 3 # rtms-lifecycle ingest

Our schema is made once in a new file. Each variant copies it, drops one index or trigger of the
tables a delivery writes (``all``: every one of them; ``none``: nothing), then loads ``LOAD``
into the copy. By default the plain script's three statements do it in this process
(``baseline_sqlite --schema library --pragmas writer``), with checkpoints off so that the log
keeps every page written: timed, and the log's pages counted. With ``--ours``,
``rtms-lifecycle ingest`` does it as a whole process, timed. Variants alternate in each round;
each figure is the best of ``--repeat``. Dropping is for measuring only: each object serves a
query or a rule (docs/benchmarks.md, "Round 6").
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from rtms_lifecycle.defaults import DEFAULT_BATCH_SIZE

from .baseline_sqlite import connect, ingest, prepare
from .bench_ingest import _cli_command
from .wal_pages import frame_count

# The tables one delivery writes; their delete triggers never fire during a load.
_WRITTEN = ("deliveries", "streams", "transitions")


def write_path_objects(db: Path) -> list[tuple[str, str]]:
    """``(type, name)`` of every index and trigger a load may touch, by name."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('index', 'trigger')"
            f" AND tbl_name IN ({', '.join('?' for _ in _WRITTEN)}) AND sql IS NOT NULL"
            " AND name NOT LIKE '%\\_delete' ESCAPE '\\' ORDER BY type, name",
            _WRITTEN,
        ).fetchall()
    conn.close()
    return [(kind, name) for kind, name in rows]


def variant(schema: Path, db: Path, dropped: list[tuple[str, str]]) -> None:
    """A copy of ``schema`` at ``db`` without ``dropped``."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(schema, db)
    with sqlite3.connect(db) as conn:
        for kind, name in dropped:
            conn.execute(f"DROP {kind.upper()} {name}")
    conn.close()


def by_script(load: Path, db: Path, batch_size: int) -> tuple[float, int]:
    """Seconds and log pages of the plain script's statements on ``db``."""
    conn = connect(db, "writer")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    started = time.perf_counter()
    with load.open("rb") as lines:
        ingest(lines, conn, batch_size, "library")
    seconds = time.perf_counter() - started
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = frame_count(Path(f"{db}-wal").stat().st_size, page_size)
    conn.close()
    return seconds, pages


def by_ours(load: Path, db: Path, batch_size: int) -> float:
    """Seconds of ``rtms-lifecycle ingest`` on ``db``, start-up included."""
    command = [_cli_command(), "--db", f"sqlite:///{db}", "ingest", str(load), "--json"]
    command += ["--batch-size", str(batch_size)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Print ``variant | seconds | change | log pages | change``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("load", type=Path)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--ours", action="store_true", help="time rtms-lifecycle ingest instead")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    seconds: dict[str, float] = {}
    pages: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="rtms-schema-cost-") as tmp:
        schema, db = Path(tmp) / "schema.db", Path(tmp) / "variant.db"
        prepare(schema, "library")
        objects = write_path_objects(schema)
        variants = {"none": [], "all": objects, **{name: [(k, name)] for k, name in objects}}
        for _ in range(args.repeat):
            for name, dropped in variants.items():
                variant(schema, db, dropped)
                if args.ours:
                    took = by_ours(args.load, db, args.batch_size)
                else:
                    took, pages[name] = by_script(args.load, db, args.batch_size)
                seconds[name] = min(seconds.get(name, took), took)
    logged_header = f" {'log pages':>10} {'change':>8}" if pages else ""
    print(f"{'dropped':<40} {'seconds':>8} {'change':>8}{logged_header}")
    for name, took in seconds.items():
        logged = f"{pages[name]:>10} {pages[name] - pages['none']:>+8}" if pages else ""
        print(f"{name:<40} {took:>8.3f} {took - seconds['none']:>+8.3f} {logged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
