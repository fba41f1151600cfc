"""``rtms-lifecycle serve`` in this process, with its memory sampled every ``--every`` seconds.

Each sample is a CSV row: RSS, SQLite's own allocations (``sqlite3_memory_used``: the page caches
of the writer's and the readers' connections), glibc's main arena, and with ``--trace`` the
memory ``tracemalloc`` follows, the collector's counts and live objects, threads and open files.
With ``--trace`` the ten source lines whose allocations grew most since the first sample (taken
after start-up's imports) go to ``CSV.top.txt``. ``--writer-cache-kb`` sets the writer
connection's page cache instead of ``SQLITE_WRITER_CACHE_KB``. Load comes from any signed
sender; the figures are in docs/benchmarks.md, "Receiver memory".

Usage::

    python -m tests.benchmarks.serve_memory --csv mem.csv [--trace] [--writer-cache-kb 2000] \\
        -- --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import threading
import time
import tracemalloc
from pathlib import Path

COLUMNS = (
    "t_s,rss_kb,sqlite_kb,sqlite_peak_kb,malloc_arena_kb,malloc_used_kb,malloc_mmap_kb,"
    "traced_kb,traced_peak_kb,gc0,gc1,gc2,gc_objects,threads,fds"
)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _sample(csv: Path, top: Path, every: float, trace: bool) -> None:
    # The library _sqlite3 links, already loaded: the same allocator counters.
    sqlite = ctypes.CDLL("libsqlite3.so.0")
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    sqlite.sqlite3_memory_highwater.restype = ctypes.c_int64
    sqlite.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    started = time.monotonic()
    first: tracemalloc.Snapshot | None = None
    with csv.open("w", buffering=1) as out, top.open("w", buffering=1) as tops:
        out.write(COLUMNS + "\n")
        while True:
            time.sleep(every)
            rss = _rss_kb()
            used = sqlite.sqlite3_memory_used() // 1024
            peak = sqlite.sqlite3_memory_highwater(0) // 1024
            heap = libc.mallinfo2()
            traced, traced_peak = tracemalloc.get_traced_memory() if trace else (0, 0)
            counts = gc.get_count()
            objects = len(gc.get_objects())
            fds = len(os.listdir("/proc/self/fd"))
            t = round(time.monotonic() - started)
            out.write(
                f"{t},{rss},{used},{peak},{heap.arena // 1024},{heap.uordblks // 1024},"
                f"{heap.hblkhd // 1024},{traced // 1024},{traced_peak // 1024},"
                f"{counts[0]},{counts[1]},{counts[2]},{objects},{threading.active_count()},{fds}\n"
            )
            if not trace:
                continue
            snapshot = tracemalloc.take_snapshot()
            if first is None:
                first = snapshot
                continue
            tops.write(f"=== t={t}s rss={rss}kB sqlite={used}kB traced={traced // 1024}kB\n")
            for stat in snapshot.compare_to(first, "lineno")[:10]:
                tops.write(f"  {stat}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slows Python)")
    parser.add_argument("--writer-cache-kb", type=int, help="the writer's page cache, KiB")
    parser.add_argument("serve", nargs="*", help="arguments of `rtms-lifecycle serve`, after --")
    args = parser.parse_args(argv)
    if args.trace:
        tracemalloc.start(1)
    if args.writer_cache_kb:
        # Before the store opens its writer, which reads the pragmas at that moment.
        import rtms_lifecycle.store.writers.sqlite as writer

        pragmas = (f"cache_size=-{args.writer_cache_kb}", "temp_store=MEMORY")
        setattr(writer, "SQLITE_WRITER_PRAGMAS", pragmas)  # noqa: B010 (a Final, replaced here)
    threading.Thread(
        target=_sample,
        args=(args.csv, args.csv.with_suffix(".top.txt"), args.every, args.trace),
        name="memory-sampler",
        daemon=True,
    ).start()
    from rtms_lifecycle.cli import main as cli

    cli(["serve", *args.serve])


if __name__ == "__main__":
    main()
