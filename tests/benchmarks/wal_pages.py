"""Log pages per commit of one delivery, by b-tree: ours (``rtms-lifecycle ingest``) or the script.

    python -m tests.benchmarks.wal_pages LOAD.jsonl --warm 15000 --commits 1000
    python -m tests.benchmarks.wal_pages LOAD.jsonl --script       # baseline_sqlite --schema user

Loads the first ``--warm`` deliveries one per transaction, empties the log, then records the next
``--commits`` the same way while a second connection keeps the log from being deleted at close;
a read transaction held meanwhile keeps checkpoints from resetting the log. Each frame is then
attributed to the table or index that owns its page (``dbstat``).
"""

from __future__ import annotations

import argparse
import sqlite3
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from .bench_ingest import _cli_command

# SQLite's WAL format: a 32-byte file header, then frames of a 24-byte header and a page.
WAL_HEADER = 32
FRAME_HEADER = 24


def frame_count(wal_bytes: int, page_size: int) -> int:
    """How many whole frames a log of ``wal_bytes`` holds."""
    return (wal_bytes - WAL_HEADER) // (FRAME_HEADER + page_size)


def _ingest(db: Path, lines: Path, script: bool, create: bool) -> None:
    if not script:
        command = [_cli_command(), "--db", f"sqlite:///{db}", "ingest", str(lines)]
        subprocess.run([*command, "--json", "--batch-size", "1"], check=True, capture_output=True)
        return
    if create:
        command = [sys.executable, "-m", "tests.benchmarks.baseline_sqlite", str(lines)]
        command += ["--schema", "user", "--batch-size", "1", "--db", str(db)]
        subprocess.run(command, check=True, capture_output=True)
        return
    from .baseline_sqlite import connect, ingest

    conn = connect(db, "store")
    with lines.open("rb") as source:
        ingest(source, conn, 1, "user")
    conn.close()


def frames(wal: bytes) -> tuple[list[int], int]:
    """The page number of every frame in a log, and how many frames end a commit."""
    (page_size,) = struct.unpack(">I", wal[8:12])
    pages: list[int] = []
    commits = 0
    offset = WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(wal):
        page, size_after = struct.unpack(">II", wal[offset : offset + 8])
        pages.append(page)
        commits += size_after != 0
        offset += FRAME_HEADER + page_size
    return pages, commits


def main(argv: list[str] | None = None) -> int:
    """Print log pages per commit, in all and per b-tree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("load", type=Path)
    parser.add_argument("--warm", type=int, default=15_000)
    parser.add_argument("--commits", type=int, default=1_000)
    parser.add_argument("--script", action="store_true", help="the plain sqlite3 script's")
    args = parser.parse_args(argv)
    lines = args.load.read_bytes().splitlines()
    with tempfile.TemporaryDirectory(prefix="rtms-wal-") as tmp:
        db, warm, measured = Path(tmp) / "x.db", Path(tmp) / "warm.jsonl", Path(tmp) / "m.jsonl"
        warm.write_bytes(b"\n".join(lines[: args.warm]) + b"\n")
        measured.write_bytes(b"\n".join(lines[args.warm : args.warm + args.commits]) + b"\n")
        _ingest(db, warm, args.script, create=True)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # A read transaction on the empty log: no checkpoint can reset it under the reader.
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        _ingest(db, measured, args.script, create=False)
        holder.execute("COMMIT")
        pages, commits = frames(Path(f"{db}-wal").read_bytes())
        owner = dict(holder.execute("SELECT pageno, name FROM dbstat"))
        holder.close()
    if not commits:
        print("no commit in the log")
        return 1
    print(f"{len(pages):,} pages in {commits:,} commits: {len(pages) / commits:.2f} per commit")
    for name, count in Counter(owner.get(page, "?") for page in pages).most_common():
        print(f"  {count / commits:5.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
