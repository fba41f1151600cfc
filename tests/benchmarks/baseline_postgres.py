"""Raw PostgreSQL baseline: N processes, one ``psycopg`` transaction per delivery.

The same three statements as the SQLite baseline (insert the delivery, upsert the stream row,
insert the transition row), no validation, no ORM. Deliveries are split among the processes by
stream (a hash of ``rtms_stream_id``), as a sharded consumer would; ``Tracker`` runs get the same
split (see bench_ingest.py). ``--schema library`` writes into the library's own tables (created
by ``Tracker``), ``lean`` into three tables with primary keys only. ``read_stream``: each
transaction first reads the stream's row, as a writer that decides from the stored state must.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import zlib
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final

from .baseline_sqlite import NAME_OF, SCOPE_ID_FIELDS, STATE_OF, UNHASHED, Result

LEAN_SCHEMA: Final = (
    """CREATE TABLE deliveries (id BIGSERIAL PRIMARY KEY, received_at BIGINT NOT NULL,
        event TEXT, event_ts BIGINT, stream_id TEXT, outcome TEXT NOT NULL, raw BYTEA NOT NULL)""",
    """CREATE TABLE streams (stream_id TEXT PRIMARY KEY, scope TEXT, scope_id TEXT,
        state TEXT NOT NULL, started_at BIGINT, stopped_at BIGINT, stop_reason INTEGER,
        last_event_at BIGINT, updated_at BIGINT NOT NULL)""",
    """CREATE TABLE transitions (id BIGSERIAL PRIMARY KEY, stream_id TEXT NOT NULL,
        to_state TEXT NOT NULL, kind TEXT NOT NULL, event_ts BIGINT NOT NULL,
        recorded_at BIGINT NOT NULL, delivery_id BIGINT)""",
)
LEAN: Final = (
    "INSERT INTO deliveries (received_at, event, event_ts, stream_id, outcome, raw)"
    " VALUES (%s, %s, %s, %s, 'applied', %s) RETURNING id",
    """INSERT INTO streams (stream_id, scope, scope_id, state, started_at, stopped_at,
        stop_reason, last_event_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (stream_id) DO UPDATE SET state = excluded.state,
        started_at = coalesce(streams.started_at, excluded.started_at),
        stopped_at = excluded.stopped_at, stop_reason = excluded.stop_reason,
        last_event_at = excluded.last_event_at, updated_at = excluded.updated_at""",
    "INSERT INTO transitions (stream_id, to_state, kind, event_ts, recorded_at, delivery_id)"
    " VALUES (%s, %s, %s, %s, %s, %s)",
)
LIBRARY: Final = (
    "INSERT INTO deliveries (received_at, source, event, event_ts, stream_id, kind, outcome, raw)"
    " VALUES (%s, 'webhook', %s, %s, %s, %s, 'applied', %s) RETURNING id",
    """INSERT INTO streams (stream_id, scope, scope_id, state, started_at, stopped_at,
        stop_reason, last_event_at, interruptions, resumes, failovers, fold_ts, fold_rank,
        created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, 0, 0, %s, 0, %s, %s)
    ON CONFLICT (stream_id) DO UPDATE SET state = excluded.state,
        started_at = coalesce(streams.started_at, excluded.started_at),
        stopped_at = excluded.stopped_at, stop_reason = excluded.stop_reason,
        last_event_at = excluded.last_event_at, fold_ts = excluded.fold_ts,
        updated_at = excluded.updated_at""",
    "INSERT INTO transitions (stream_id, from_state, to_state, name, kind, event_ts, source,"
    " late, recorded_at, tx_id, delivery_id, chain_hash)"
    f" VALUES (%s, '', %s, %s, %s, %s, 'webhook', false, %s, 0, %s, '{UNHASHED}')",
)
READ_STREAM: Final = "SELECT * FROM streams WHERE stream_id = %s"


def partition(jsonl: Path, processes: int) -> list[list[bytes]]:
    """The file's bodies split by stream: every event of a stream goes to one process."""
    parts: list[list[bytes]] = [[] for _ in range(processes)]
    with jsonl.open("rb") as lines:
        for line in lines:
            raw = line.strip()
            if raw:
                stream_id = json.loads(raw)["payload"]["rtms_stream_id"]
                parts[zlib.crc32(stream_id.encode()) % processes].append(raw)
    return parts


def raw_worker(
    conninfo: str,
    bodies: Sequence[bytes],
    schema: str,
    barrier: Barrier,
    read_stream: bool = False,
) -> None:
    """One process of the baseline: one transaction per delivery."""
    import psycopg

    insert_delivery, upsert_stream, insert_transition = LEAN if schema == "lean" else LIBRARY
    with psycopg.connect(conninfo) as conn:
        barrier.wait()
        for raw in bodies:
            body = json.loads(raw)
            event, ts, payload = body["event"], int(body["event_ts"]), body["payload"]
            scope, _, kind = event.partition(".")
            kind = kind.rpartition("_")[2]
            stream_id = payload["rtms_stream_id"]
            scope_id = next((payload[f] for f in SCOPE_ID_FIELDS if f in payload), None)
            now = time.time_ns() // 1_000_000
            state = STATE_OF[kind]
            started_at = ts if kind == "started" else None
            stopped_at = ts if kind == "stopped" else None
            reason = payload.get("stop_reason")
            with conn.cursor() as cur:
                if read_stream:
                    cur.execute(READ_STREAM, (stream_id,))
                    cur.fetchone()
                if schema == "lean":
                    cur.execute(insert_delivery, (now, event, ts, stream_id, raw))
                    row = cur.fetchone()
                    assert row is not None
                    cur.execute(
                        upsert_stream,
                        (
                            stream_id,
                            scope,
                            scope_id,
                            state,
                            started_at,
                            stopped_at,
                            reason,
                            ts,
                            now,
                        ),
                    )
                    cur.execute(insert_transition, (stream_id, state, kind, ts, now, row[0]))
                else:
                    cur.execute(insert_delivery, (now, event, ts, stream_id, kind, raw))
                    row = cur.fetchone()
                    assert row is not None
                    stream = (stream_id, scope, scope_id, state, started_at, stopped_at, reason)
                    cur.execute(upsert_stream, (*stream, ts, ts, now, now))
                    cur.execute(
                        insert_transition,
                        (stream_id, state, NAME_OF[kind], kind, ts, now, row[0]),
                    )
            conn.commit()
        barrier.wait()


def run_processes(
    name: str,
    target: Callable[..., None],
    parts: Sequence[Sequence[bytes]],
    args: Callable[[Sequence[bytes], Barrier], tuple[Any, ...]],
) -> Result:
    """Start one process per part, time from the moment all are connected to the last one done."""
    context = mp.get_context("fork")
    barrier = context.Barrier(len(parts) + 1)
    processes = [context.Process(target=target, args=args(part, barrier)) for part in parts]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.perf_counter()
    barrier.wait()
    seconds = time.perf_counter() - started
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"{name}: a worker failed with exit code {process.exitcode}")
    return Result(name, sum(len(p) for p in parts), seconds)


def run(
    conninfo: str,
    parts: Sequence[Sequence[bytes]],
    schema: str = "library",
    read_stream: bool = False,
) -> Result:
    """The baseline into the database at ``conninfo`` (already holding the chosen schema)."""
    import psycopg

    if schema == "lean":
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for statement in LEAN_SCHEMA:
                conn.execute(statement)
    return run_processes(
        f"raw psycopg ({schema} schema{', stream read' if read_stream else ''}),"
        f" {len(parts)} processes, 1 transaction/delivery",
        raw_worker,
        parts,
        lambda part, barrier: (conninfo, part, schema, barrier, read_stream),
    )
