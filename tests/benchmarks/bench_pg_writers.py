"""PostgreSQL writers against raw psycopg: rate, CPU and round trips per delivery.

    python -m tests.benchmarks.bench_pg_writers                  # 5 rounds, 4 processes, fsync on
    python -m tests.benchmarks.bench_pg_writers --statements     # + server time per statement

One durable server (fsync and synchronous_commit on); every run gets a new database and its own
worker processes, each with one connection, one transaction (or autocommit statement) per
delivery, the load split among them by stream (baseline_postgres.partition). Variants:

- ``raw``: baseline_postgres on the library's schema: insert the delivery, upsert the stream,
  insert the transition; ``read``: the same, reading the stream's row first;
- ``ours``: ``Tracker.ingest``; ``budget``: ``Tracker.ingest(timeout=2.5)`` (the receiver's time
  budget: the watchdog is armed per write).

The variants alternate within a round and their order rotates from round to round. Per run: the
rate (all workers connected to the last one done), the workers' CPU time per delivery (client)
and that of their server backends (``/proc/PID/stat``), and the load average. CPU and round
trips are what a shared machine distorts least. Round trips and statements per delivery are
counted once per variant in one traced process (libpq's trace: one ReadyForQuery per round
trip). ``--statements`` restarts the server with ``pg_stat_statements`` and prints each
statement's planning and execution time per delivery, one process per variant.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pwd
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final

from . import baseline_postgres
from .bench_ingest import make_load

VARIANTS: Final = ("raw", "read", "ours", "budget")
BUDGET: Final = 2.5
_TICK: Final = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One run of one variant."""

    variant: str
    deliveries: int
    seconds: float
    client_cpu: float  # seconds, all workers
    server_cpu: float  # seconds, their backends
    load: float  # 1-minute load average at the end

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    def per_delivery(self, seconds: float) -> float:
        return seconds / self.deliveries * 1e6


def _backend_cpu(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def _backends(conninfo: str, count: int) -> list[int]:
    """The pids of the ``count`` other sessions on this database, once they are all there."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        for _ in range(500):
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
            if len(rows) >= count:
                return [row[0] for row in rows]
            time.sleep(0.01)
    raise RuntimeError("the workers did not connect")


def _raw_worker(
    conninfo: str, bodies: Sequence[bytes], read: bool, barrier: Barrier, out: Queue[float]
) -> None:
    started = time.process_time()
    baseline_postgres.raw_worker(conninfo, bodies, "library", barrier, read_stream=read)
    out.put(time.process_time() - started)


def _ours_worker(
    url: str, bodies: Sequence[bytes], budget: bool, barrier: Barrier, out: Queue[float]
) -> None:
    from rtms_lifecycle import Tracker
    from tests._deliveries import raw as warm_up

    tracker = Tracker(url)
    tracker.ping()  # connected before the clock starts, like the baseline
    # A process's first delivery imports the parsing and deciding modules (about 50: 0.9 s
    # on the loaded machine, more than the budget when four start at once). A stream of its own.
    tracker.ingest(warm_up("started", f"warm-up-{os.getpid()}", 1))
    timeout = BUDGET if budget else None
    counts: Counter[str] = Counter()
    barrier.wait()
    started = time.process_time()
    for raw in bodies:
        counts[tracker.ingest(raw, timeout=timeout).outcome.value] += 1
    cpu = time.process_time() - started
    barrier.wait()
    tracker.close()
    if set(counts) != {"applied"}:
        raise AssertionError(f"an in-order load must apply every delivery, got {counts}")
    out.put(cpu)


def _fresh_database(server: Any, variant: str) -> tuple[str, str]:
    """A new database with the library's schema: (SQLAlchemy URL, libpq conninfo)."""
    from rtms_lifecycle import Tracker
    from tests._postgres import create_database

    name = create_database(server)
    Tracker(server.url(name)).close()
    return server.url(name), server.conninfo(name)


def run_variant(server: Any, variant: str, parts: Sequence[Sequence[bytes]]) -> Run:
    """One run of ``variant`` on a fresh database, one process per part."""
    url, conninfo = _fresh_database(server, variant)
    context = mp.get_context("fork")
    barrier = context.Barrier(len(parts) + 1)
    out: Queue[float] = context.Queue()
    target: Callable[..., None]
    if variant in ("raw", "read"):
        target, first = _raw_worker, conninfo
    else:
        target, first = _ours_worker, url
    flag = variant in ("read", "budget")
    processes = [
        context.Process(target=target, args=(first, part, flag, barrier, out)) for part in parts
    ]
    for process in processes:
        process.start()
    pids = _backends(conninfo, len(parts))
    server_before = _backend_cpu(pids)
    barrier.wait()
    started = time.perf_counter()
    barrier.wait()
    seconds = time.perf_counter() - started
    server_cpu = _backend_cpu(pids) - server_before
    client_cpu = sum(out.get(timeout=60) for _ in processes)
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"{variant}: a worker failed with exit code {process.exitcode}")
    deliveries = sum(len(part) for part in parts)
    return Run(variant, deliveries, seconds, client_cpu, server_cpu, os.getloadavg()[0])


def count_trace(path: Path, deliveries: int) -> dict[str, float]:
    """Round trips (ReadyForQuery) and statements (Bind or simple Query) per delivery (or
    per call) in a libpq trace."""
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 4:
            counts[f"{fields[1]} {fields[3].strip()}"] += 1
    return {
        "round_trips": counts["B ReadyForQuery"] / deliveries,
        "statements": (counts["F Bind"] + counts["F Query"]) / deliveries,
    }


def _traced(variant: str, url: str, conninfo: str, bodies: Sequence[bytes], trace: Path) -> None:
    # In a child process: the psycopg module is patched there only.
    import psycopg

    with trace.open("w") as sink:
        if variant in ("raw", "read"):
            connect = psycopg.connect

            def traced_connect(*args: Any, **kwargs: Any) -> Any:
                conn = connect(*args, **kwargs)
                conn.pgconn.trace(sink.fileno())
                return conn

            psycopg.connect = traced_connect

            class NoBarrier:
                def wait(self) -> None:
                    pass

            baseline_postgres.raw_worker(
                conninfo,
                bodies,
                "library",
                NoBarrier(),  # type: ignore[arg-type]
                read_stream=variant == "read",
            )
            return
        from rtms_lifecycle import Tracker

        tracker = Tracker(url)
        tracker.ping()
        held = tracker.engine.raw_connection()
        held.driver_connection.pgconn.trace(sink.fileno())  # type: ignore[union-attr]
        held.close()
        for raw in bodies:
            tracker.ingest(raw, timeout=BUDGET if variant == "budget" else None)
        tracker.close()


def round_trips(server: Any, variant: str, bodies: Sequence[bytes]) -> dict[str, float]:
    """Round trips and statements per delivery of ``variant``, from a libpq trace."""
    url, conninfo = _fresh_database(server, variant)
    with tempfile.TemporaryDirectory(prefix="rtms-trace-") as tmp:
        trace = Path(tmp) / "trace"
        process = mp.get_context("fork").Process(
            target=_traced, args=(variant, url, conninfo, bodies, trace)
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"{variant}: the traced run failed")
        return count_trace(trace, len(bodies))


def enable_statement_stats(server: Any) -> None:
    """Restart ``server`` with pg_stat_statements loaded, planning time tracked."""
    import psycopg

    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    user: dict[str, Any] = {}
    if os.geteuid() == 0:  # the server runs as the postgres account, as tests/_postgres does
        entry = pwd.getpwnam("postgres")
        user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    pg_ctl = [str(server.bindir / "pg_ctl"), "restart", "-w", "-D", str(server.data_dir)]
    subprocess.run(
        [*pg_ctl, "-l", str(server.log_file)], check=True, capture_output=True, cwd="/", **user
    )
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
        conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        conn.execute("SELECT pg_reload_conf()")


def statement_times(server: Any, variant: str, bodies: Sequence[bytes]) -> list[tuple[Any, ...]]:
    """(calls, plans, planning us, execution us, statement) per delivery, one process."""
    import psycopg

    url, conninfo = _fresh_database(server, variant)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    context = mp.get_context("fork")
    barrier = context.Barrier(1)
    out: Queue[float] = context.Queue()
    target = _raw_worker if variant in ("raw", "read") else _ours_worker
    first = conninfo if variant in ("raw", "read") else url
    process = context.Process(
        target=target, args=(first, bodies, variant in ("read", "budget"), barrier, out)
    )
    process.start()
    out.get(timeout=600)
    process.join()
    n = len(bodies)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(
            "SELECT calls, plans, round((total_plan_time * 1000 / %s)::numeric, 1),"
            " round((total_exec_time * 1000 / %s)::numeric, 1),"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 70)"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database()) AND calls > %s"
            " ORDER BY total_plan_time + total_exec_time DESC",
            (n, n, n // 10),
        ).fetchall()


def summarise(runs: Sequence[Run], variants: Sequence[str]) -> dict[str, dict[str, float]]:
    """Best and median rate, median CPU per delivery, per variant."""
    out = {}
    for variant in variants:
        mine = [r for r in runs if r.variant == variant]
        rates = [r.rate for r in mine]
        out[variant] = {
            "best_rate": max(rates),
            "median_rate": statistics.median(rates),
            "client_us": statistics.median(r.per_delivery(r.client_cpu) for r in mine),
            "server_us": statistics.median(r.per_delivery(r.server_cpu) for r in mine),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print every run and the summary."""
    from tests._postgres import running_server, server_version

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=16_000)
    parser.add_argument("--streams", type=int, default=5_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--trace", type=int, default=500, help="deliveries traced per variant")
    parser.add_argument("--statements", action="store_true", help="pg_stat_statements per variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    with (
        tempfile.TemporaryDirectory(prefix="rtms-load-") as tmp,
        running_server(durable=True) as server,
    ):
        load = make_load(Path(tmp), args.deliveries, args.streams)
        parts = baseline_postgres.partition(load, args.processes)
        print(f"PostgreSQL {server_version(server)}; {args.deliveries:,} deliveries over")
        print(f"{args.streams:,} streams, {args.processes} processes; load {os.getloadavg()}")
        trips = {v: round_trips(server, v, parts[0][: args.trace]) for v in variants}
        for variant, counted in trips.items():
            print(f"{variant:<7} round trips/delivery {counted['round_trips']:.2f},", end=" ")
            print(f"statements/delivery {counted['statements']:.2f}")
        runs: list[Run] = []
        print(f"{'round':>5} {'variant':<7} {'rate':>9} {'client us':>10} {'server us':>10} load")
        for number in range(args.rounds):
            shift = number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                run = run_variant(server, variant, parts)
                runs.append(run)
                print(
                    f"{number + 1:>5} {variant:<7} {run.rate:>7,.0f}/s"
                    f" {run.per_delivery(run.client_cpu):>10.0f}"
                    f" {run.per_delivery(run.server_cpu):>10.0f} {run.load:.1f}",
                    flush=True,
                )
        summary = summarise(runs, variants)
        print(f"\n{'variant':<7} {'best':>9} {'median':>9} {'client us':>10} {'server us':>10}")
        for variant, s in summary.items():
            print(
                f"{variant:<7} {s['best_rate']:>7,.0f}/s {s['median_rate']:>7,.0f}/s"
                f" {s['client_us']:>10.0f} {s['server_us']:>10.0f}"
            )
        for ours in ("ours", "budget"):
            for base in ("raw", "read"):
                if ours in summary and base in summary:
                    best = summary[ours]["best_rate"] / summary[base]["best_rate"]
                    median = summary[ours]["median_rate"] / summary[base]["median_rate"]
                    cpu = sum(summary[base][k] for k in ("client_us", "server_us")) / sum(
                        summary[ours][k] for k in ("client_us", "server_us")
                    )
                    print(
                        f"{ours} / {base}: best {best:.2f}x, median {median:.2f}x;"
                        f" by CPU per delivery (client + server) {cpu:.2f}x"
                    )
        statements = {}
        if args.statements:
            enable_statement_stats(server)
            for variant in variants:
                rows = statement_times(server, variant, parts[0])
                statements[variant] = [list(map(str, row)) for row in rows]
                print(f"\n{variant}: calls, plans, planning us, execution us per delivery")
                for row in rows:
                    print("  ", *row)
        if args.json:
            result = {
                "runs": [asdict(run) for run in runs],
                "summary": summary,
                "round_trips": trips,
                "statements": statements,
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
