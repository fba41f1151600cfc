"""Migration 0019 on PostgreSQL (``stop_reason`` to BIGINT): how long the upgrade takes over
100,000 streams, and what a receiver that takes deliveries meanwhile answers.

A durable server; ``streams`` filled at 0018 by SQL (nine in ten stopped, so the rollup triggers
fill ``stop_reason_rollup`` too), then ``VACUUM ANALYZE``. Timed: the upgrade 0018 -> 0019 alone
(``--runs`` times, downgrading between runs). Then once more with a receiver process running
(started at head, the database downgraded under it) and a sender posting a signed stop every
50 ms for the whole upgrade: each answer's status and seconds, and, after the upgrade, every
delivery answered 503 sent again (as Zoom retries) and its stream found stopped.

``--old-src DIR``: the receiver runs the code of another checkout's ``src`` (a version before
0019, started on the database at 0018), as during a real upgrade, before the roll-over.

Usage::

    python -m tests.benchmarks.bench_stop_code_upgrade [--streams 100000] [--runs 3]
    python -m tests.benchmarks.bench_stop_code_upgrade --old-src ../main/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from rtms_lifecycle import State, Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store.engine import create_store_engine
from tests._deliveries import raw
from tests._live import receiver_process, signed
from tests._postgres import create_database, running_server

_FILL = """INSERT INTO streams (stream_id, scope, scope_id, account_id, state, first_event_at,
    started_at, stopped_at, stop_reason, stop_source, last_event_at, interruptions, resumes,
    failovers, fold_ts, fold_rank, created_at, updated_at)
SELECT 'bench-' || i, 'meeting', 'm-' || (i % 5000), 'acct-' || (i % 50),
    CASE WHEN i % 10 = 0 THEN 'active' ELSE 'stopped' END,
    :t0 + i * 1000, :t0 + i * 1000,
    CASE WHEN i % 10 = 0 THEN NULL ELSE :t0 + i * 1000 + (i % 7200) * 1000 END,
    CASE WHEN i % 10 = 0 THEN NULL ELSE i % 27 END,
    CASE WHEN i % 10 = 0 THEN NULL ELSE 'webhook' END,
    :t0 + i * 1000, 0, 0, 0, :t0 + i * 1000, 3, :t0, :t0
FROM generate_series(1, :n) AS i"""


def fill(engine: Engine, streams: int) -> None:
    """``streams`` rows in ``streams`` at 0018, vacuumed and analysed."""
    t0 = now_ms() - streams * 1000 - 86_400_000
    with engine.begin() as conn:
        conn.execute(text(_FILL), {"t0": t0, "n": streams})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def timed_upgrade(engine: Engine) -> float:
    """Seconds of ``upgrade`` 0018 -> head."""
    began = time.perf_counter()
    _migrate.upgrade(engine)
    return time.perf_counter() - began


def send_during(url: str, upgrade: threading.Thread, prefix: str) -> list[dict[str, Any]]:
    """Post a started then a stopped delivery (a code beyond 32 bits) every 50 ms until the
    upgrade thread ends (and a second more); each answer's status and seconds."""
    answers: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        i = 0
        ended_at: float | None = None
        while ended_at is None or time.perf_counter() - ended_at < 1.0:
            if ended_at is None and not upgrade.is_alive():
                ended_at = time.perf_counter()
            sid = f"{prefix}{i}"
            at = now_ms() - 60_000
            for body in (
                raw("started", sid, at - 1000),
                raw("stopped", sid, at, stop_reason=2**40),
            ):
                began = time.perf_counter()
                answer = client.post("/webhook", content=body, headers=signed(body))
                answers.append(
                    {
                        "stream": sid,
                        "body": body,
                        "status": answer.status_code,
                        "error": answer.json().get("error") if answer.status_code != 200 else None,
                        "seconds": time.perf_counter() - began,
                        "during": upgrade.is_alive(),
                    }
                )
            i += 1
            time.sleep(0.05)
    after = [a for a in answers if not a["during"]]
    print("after the upgrade:", [(a["stream"], a["status"], a["error"]) for a in after][:12])
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--old-src", type=Path)
    args = parser.parse_args()
    if args.old_src is not None:
        os.environ["PYTHONPATH"] = str(args.old_src.resolve())
    with running_server(durable=True) as server:
        url = server.url(create_database(server, "rtms_bench_"))
        engine = create_store_engine(url)
        try:
            _migrate.upgrade(engine, "0018")
            fill(engine, args.streams)
            seconds = []
            for run in range(args.runs):
                if run:
                    _migrate.downgrade_url(url, _migrate.head_revision(), "0018")
                seconds.append(timed_upgrade(engine))
            with tempfile.TemporaryDirectory() as tmp:
                # This version refuses to start on 0018: it starts at head, then the database
                # is downgraded under it.
                old = args.old_src is not None
                if old:
                    _migrate.downgrade_url(url, _migrate.head_revision(), "0018")
                with receiver_process(url, Path(tmp)) as (base, _):
                    if not old:
                        _migrate.downgrade_url(url, _migrate.head_revision(), "0018")
                    upgrade = threading.Thread(target=timed_upgrade, args=(engine,))
                    began = time.perf_counter()
                    upgrade.start()
                    answers = send_during(base, upgrade, "live-")
                    upgrade.join()
                    with_receiver = time.perf_counter() - began
                    refused = [a for a in answers if a["status"] != 200]
                    with httpx.Client(base_url=base, timeout=10) as client:
                        retried = [
                            client.post("/webhook", content=a["body"], headers=signed(a["body"]))
                            for a in refused
                        ]
                        health = client.get("/healthz").status_code
                log = (Path(tmp) / "server.log").read_text(errors="replace")
            with Tracker(engine) as tracker:
                lost = [
                    a["stream"]
                    for a in answers
                    if (s := tracker.stream(a["stream"])) is None or s.state is not State.STOPPED
                ]
        finally:
            engine.dispose()
    during = [a for a in answers if a["during"]]
    report = {
        "streams": args.streams,
        "upgrade_seconds": [round(s, 2) for s in seconds],
        "upgrade_best": round(min(seconds), 2),
        "upgrade_median": round(statistics.median(seconds), 2),
        "upgrade_with_receiver_seconds": round(with_receiver, 2),
        "answers_during": len(during),
        "statuses_during": sorted({a["status"] for a in during}),
        "errors": sorted({str(a["error"]) for a in refused}),
        "slowest_answer_seconds": round(max(a["seconds"] for a in answers), 2),
        "answered_503": len(refused),
        "retried_then": sorted({r.status_code for r in retried}),
        "healthz_after": health,
        "streams_not_stopped_after": len(lost),
        "store_busy_log_lines": log.count("store busy"),
        "other_log_lines": sorted(
            {line[:300] for line in log.splitlines() if "rror" in line and "busy" not in line}
        )[:10],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
