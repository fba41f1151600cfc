"""Raw SQLite baseline: the least SQL one event needs, with the standard library's ``sqlite3``.

Per delivery: ``json.loads`` (to know the stream), insert the delivery, upsert the stream row,
insert the transition row. No validation, no duplicate detection, no fold, no ORM.

``--pragmas store`` uses exactly what ``rtms_lifecycle.store.sqlite`` sets on every connection
(``journal_mode=WAL``, ``synchronous=NORMAL``, ``busy_timeout=30000``, ``BEGIN IMMEDIATE``),
spelt out here so that the script imports nothing but the standard library (a test checks they
are the store's);
``--pragmas writer`` adds what the store's writer sets for a bulk load: a 32 MB page cache,
statement journals in memory, a checkpoint every 10,000 log pages;
``--pragmas default`` keeps SQLite's defaults (rollback journal, ``synchronous=FULL``).
``--schema lean`` makes three minimal tables (primary keys only); ``--schema user`` adds what a
user's own script would need to be correct (a unique event identity on deliveries, an index on
the stream state, for "which streams are live"); ``--schema library`` writes
the same three statements into the library's own tables, with all of its indexes and triggers
(the database is created by ``Tracker``, or given with ``--db FILE --prepared``): the least SQL
the library's record needs.

    python -m tests.benchmarks.baseline_sqlite /tmp/load.jsonl --batch-size 1000
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

LEAN_SCHEMA: Final = (
    """CREATE TABLE deliveries (id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL,
        event TEXT, event_ts INTEGER, stream_id TEXT, outcome TEXT NOT NULL, raw BLOB NOT NULL)""",
    """CREATE TABLE streams (stream_id TEXT PRIMARY KEY, scope TEXT, scope_id TEXT,
        state TEXT NOT NULL, started_at INTEGER, stopped_at INTEGER, stop_reason INTEGER,
        last_event_at INTEGER, updated_at INTEGER NOT NULL)""",
    """CREATE TABLE transitions (id INTEGER PRIMARY KEY, stream_id TEXT NOT NULL,
        to_state TEXT NOT NULL, kind TEXT NOT NULL, event_ts INTEGER NOT NULL,
        recorded_at INTEGER NOT NULL, delivery_id INTEGER)""",
)
# The lean tables plus what makes a user's script correct and useful: retries stay unique, and
# "which streams are live" is answered from an index.
USER_SCHEMA: Final = (
    """CREATE TABLE deliveries (id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL,
        event TEXT, event_ts INTEGER, stream_id TEXT, kind TEXT, outcome TEXT NOT NULL,
        raw BLOB NOT NULL)""",
    "CREATE UNIQUE INDEX deliveries_identity ON deliveries (stream_id, kind, event_ts)",
    LEAN_SCHEMA[1],
    "CREATE INDEX streams_state ON streams (state)",
    LEAN_SCHEMA[2],
)
USER_INSERT_DELIVERY: Final = (
    "INSERT INTO deliveries (received_at, event, event_ts, stream_id, kind, outcome, raw)"
    " VALUES (?, ?, ?, ?, ?, 'applied', ?)"
)
INSERT_DELIVERY: Final = (
    "INSERT INTO deliveries (received_at, source, event, event_ts, stream_id, kind, outcome, raw)"
    " VALUES (?, 'webhook', ?, ?, ?, ?, 'applied', ?)"
)
LEAN_INSERT_DELIVERY: Final = (
    "INSERT INTO deliveries (received_at, event, event_ts, stream_id, outcome, raw)"
    " VALUES (?, ?, ?, ?, 'applied', ?)"
)
UPSERT_STREAM: Final = """
    INSERT INTO streams (stream_id, scope, scope_id, state, started_at, stopped_at, stop_reason,
        last_event_at, interruptions, resumes, failovers, fold_ts, fold_rank, created_at,
        updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, ?, 0, ?, ?)
    ON CONFLICT (stream_id) DO UPDATE SET state = excluded.state,
        started_at = coalesce(streams.started_at, excluded.started_at),
        stopped_at = excluded.stopped_at, stop_reason = excluded.stop_reason,
        last_event_at = excluded.last_event_at, fold_ts = excluded.fold_ts,
        updated_at = excluded.updated_at"""
LEAN_UPSERT_STREAM: Final = """
    INSERT INTO streams (stream_id, scope, scope_id, state, started_at, stopped_at, stop_reason,
        last_event_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (stream_id) DO UPDATE SET state = excluded.state,
        started_at = coalesce(streams.started_at, excluded.started_at),
        stopped_at = excluded.stopped_at, stop_reason = excluded.stop_reason,
        last_event_at = excluded.last_event_at, updated_at = excluded.updated_at"""
# The library refuses a transition without its chain hash: a hash's worth of text, not computed.
UNHASHED: Final = "0" * 64
INSERT_TRANSITION: Final = (
    "INSERT INTO transitions (stream_id, from_state, to_state, name, kind, event_ts, source, late,"
    f" recorded_at, tx_id, delivery_id, chain_hash) VALUES (?, '', ?, ?, ?, ?, 'webhook', 0, ?, 0,"
    f" ?, '{UNHASHED}')"
)
LEAN_INSERT_TRANSITION: Final = (
    "INSERT INTO transitions (stream_id, to_state, kind, event_ts, recorded_at, delivery_id)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# rtms_lifecycle.store.sqlite.SQLITE_PRAGMAS (tests/test_fixtures.py checks): importing the library
# for them would add its imports, SQLAlchemy's among them, to the script's start-up.
STORE_PRAGMAS: Final = ("busy_timeout=30000", "journal_mode=WAL", "synchronous=NORMAL")
# The store's SQLITE_WRITER_PRAGMAS and SQLITE_BULK_CHECKPOINT_PAGES, the same way.
WRITER_PRAGMAS: Final = ("cache_size=-32768", "temp_store=MEMORY")
BULK_CHECKPOINT_PAGES: Final = 10_000
SCOPE_ID_FIELDS: Final = ("meeting_uuid", "webinar_uuid", "session_id", "engagement_id", "call_id")
STATE_OF: Final = {"started": "started", "interrupted": "interrupted", "stopped": "stopped"}
NAME_OF: Final = {"started": "start", "interrupted": "interrupt", "stopped": "stop"}


@dataclass(frozen=True, slots=True)
class Result:
    """One timed run."""

    name: str
    deliveries: int
    seconds: float

    @property
    def rate(self) -> float:
        """Deliveries per second."""
        return self.deliveries / self.seconds

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, rate included."""
        return {**asdict(self), "rate": round(self.rate, 1)}


def connect(path: Path, pragmas: str) -> sqlite3.Connection:
    """A connection in autocommit mode (we BEGIN ourselves), with the chosen pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    if pragmas in ("store", "writer"):
        for pragma in STORE_PRAGMAS:
            conn.execute(f"PRAGMA {pragma}")
        if pragmas == "writer":
            for pragma in WRITER_PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            conn.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
    elif pragmas != "default":
        raise ValueError(f"unknown pragmas {pragmas!r}")
    return conn


def prepare(path: Path, schema: str) -> None:
    """Create the database: lean tables, or the library's schema (``library-0002``: as it was
    before migration 0003 put the event-identity index on ``deliveries``)."""
    if schema in ("lean", "user"):
        with sqlite3.connect(path) as conn:
            for statement in LEAN_SCHEMA if schema == "lean" else USER_SCHEMA:
                conn.execute(statement)
        return
    library_schema(f"sqlite:///{path}", schema)


def library_schema(url: str, schema: str) -> None:
    """The library's schema at head (``library``) or at migration 0002 (``library-0002``)."""
    from rtms_lifecycle import Tracker
    from rtms_lifecycle.store.engine import create_store_engine
    from rtms_lifecycle.store.migrate import upgrade

    if schema == "library":
        Tracker(url).close()
        return
    assert schema == "library-0002", schema
    engine = create_store_engine(url)
    upgrade(engine, "0002")
    engine.dispose()


def ingest(lines: Any, conn: sqlite3.Connection, batch_size: int, schema: str) -> int:
    """Record each delivery with three statements, ``batch_size`` per transaction."""
    lean = schema in ("lean", "user")
    insert_delivery = LEAN_INSERT_DELIVERY if lean else INSERT_DELIVERY
    user = schema == "user"
    upsert_stream = LEAN_UPSERT_STREAM if lean else UPSERT_STREAM
    insert_transition = LEAN_INSERT_TRANSITION if lean else INSERT_TRANSITION
    execute = conn.execute
    count = pending = 0
    execute("BEGIN IMMEDIATE")
    for line in lines:
        raw = line.strip()
        if not raw:
            continue
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
        if lean:
            delivery_id = execute(
                *(
                    (USER_INSERT_DELIVERY, (now, event, ts, stream_id, kind, raw))
                    if user
                    else (insert_delivery, (now, event, ts, stream_id, raw))
                )
            ).lastrowid
            execute(
                upsert_stream,
                (stream_id, scope, scope_id, state, started_at, stopped_at, reason, ts, now),
            )
            execute(insert_transition, (stream_id, state, kind, ts, now, delivery_id))
        else:
            delivery_id = execute(insert_delivery, (now, event, ts, stream_id, kind, raw)).lastrowid
            execute(
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
                    ts,
                    now,
                    now,
                ),
            )
            execute(
                insert_transition, (stream_id, state, NAME_OF[kind], kind, ts, now, delivery_id)
            )
        count += 1
        pending += 1
        if pending >= batch_size:
            execute("COMMIT")
            execute("BEGIN IMMEDIATE")
            pending = 0
    execute("COMMIT")
    return count


def run(jsonl: Path, *, batch_size: int, pragmas: str = "store", schema: str = "lean") -> Result:
    """Ingest ``jsonl`` into a fresh database in a temporary directory; time it."""
    with tempfile.TemporaryDirectory(prefix="rtms-bench-") as tmp:
        path = Path(tmp) / "raw.db"
        prepare(path, schema)
        conn = connect(path, pragmas)
        started = time.perf_counter()
        with jsonl.open("rb") as lines:
            count = ingest(lines, conn, batch_size, schema)
        seconds = time.perf_counter() - started
        conn.close()
    name = f"raw sqlite3 ({schema} schema, {pragmas} pragmas), batch {batch_size}"
    return Result(name, count, seconds)


def main(argv: list[str] | None = None) -> int:
    """Run the baseline once and print its rate as JSON."""
    parser = argparse.ArgumentParser(description="raw sqlite3 ingest baseline")
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--pragmas", choices=("store", "writer", "default"), default="store")
    parser.add_argument("--schema", choices=("lean", "user", "library"), default="lean")
    parser.add_argument(
        "--db", type=Path, help="write this new file (kept) instead of a temporary one"
    )
    parser.add_argument(
        "--prepared", action="store_true", help="--db already has the schema: write into it"
    )
    args = parser.parse_args(argv)
    if args.db is not None:
        if not args.prepared:
            prepare(args.db, args.schema)
        conn = connect(args.db, args.pragmas)
        with args.jsonl.open("rb") as lines:
            count = ingest(lines, conn, args.batch_size, args.schema)
        conn.close()
        print(json.dumps({"deliveries": count}))
        return 0
    result = run(args.jsonl, batch_size=args.batch_size, pragmas=args.pragmas, schema=args.schema)
    print(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
