"""The durable transition feed: transitions_since never skips and never repeats."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from rtms_lifecycle import Outcome, Tracker, Transition

from ._deliveries import body
from ._plans import query_plan

T0 = 1_700_000_000_000
# Every arrival order of these four events applies all four (docs/concepts.md): start, interrupt,
# resume or failover or start, stop. So each stream contributes exactly four transitions.
KINDS = ("started", "interrupted", "started", "stopped")
PER_STREAM = len(KINDS)
DEADLINE_S = 60.0


def stream_bodies(sid: str, seed: int = 0) -> list[dict[str, Any]]:
    """One stream's four events, in an arrival order chosen by ``seed``."""
    bodies = [body(kind, sid, T0 + n * 100, scope_id=sid) for n, kind in enumerate(KINDS)]
    random.Random(seed).shuffle(bodies)
    return bodies


def stored_ids(tracker: Tracker) -> list[int]:
    """Every transition id in the database, ascending."""
    with tracker.engine.connect() as conn:
        return sorted(conn.execute(text("SELECT id FROM transitions")).scalars())


def drain(tracker: Tracker, cursor: str | None, limit: int) -> tuple[list[Transition], str]:
    """Poll the feed until a page comes back empty; every transition read, and the last cursor."""
    seen: list[Transition] = []
    while True:
        page, cursor = tracker.transitions_since(cursor, limit)
        assert len(page) <= limit
        if not page:
            return seen, cursor
        seen.extend(page)


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_feed_pages_through_everything_once_in_order(tracker: Tracker, limit: int) -> None:
    """From cursor None, pages of any size yield every transition once, in recording order."""
    for n in range(12):
        tracker.ingest_many(stream_bodies(f"s{n}", seed=n), batch_size=1 + n % 3)

    seen, cursor = drain(tracker, None, limit)

    assert len(seen) == 12 * PER_STREAM
    # one writer: recording order is commit order
    assert [t.id for t in seen] == stored_ids(tracker)
    assert seen == sorted(
        (t for n in range(12) for t in tracker.audit(f"s{n}")), key=lambda t: t.id
    )
    # a drained feed stays drained, and the same cursor picks up only what came after it
    assert tracker.transitions_since(cursor, limit) == ([], cursor)
    tracker.ingest_many(stream_bodies("late"))
    more, _ = drain(tracker, cursor, limit)
    assert [t.id for t in more] == [t.id for t in tracker.audit("late")]


def test_feed_of_an_empty_database_is_empty(tracker: Tracker) -> None:
    """An empty database yields no transitions, and its cursor later yields the first one."""
    page, cursor = tracker.transitions_since(None, 10)
    assert page == []

    result = tracker.ingest(body("started", "s1", T0))

    assert result.transition is not None
    assert tracker.transitions_since(cursor, 10)[0] == [result.transition]


def test_feed_refuses_a_malformed_cursor(tracker: Tracker) -> None:
    """A cursor that the feed did not hand out is refused with ValueError."""
    with pytest.raises(ValueError, match="cursor"):
        tracker.transitions_since("not-a-cursor", 10)


@pytest.mark.parametrize(
    ("cursor", "expected"), [("-1:5", 4), ("0:-1", 4), ("0:2", 2), ("1000000000000000:0", 0)]
)
def test_feed_compares_a_hand_made_cursor_as_a_position(
    tracker: Tracker, cursor: str, expected: int
) -> None:
    """A cursor compares with each transition's (transaction, id) position, on every database."""
    tracker.ingest_many(stream_bodies("s1"))
    if tracker.engine.dialect.name == "postgresql" and cursor.startswith("0:"):
        # PostgreSQL positions begin with the writer's transaction id, never 0.
        expected = PER_STREAM

    page, _ = tracker.transitions_since(cursor, 10)

    assert len(page) == expected


def test_sqlite_reads_the_feed_in_rowid_order(tmp_path: Path) -> None:
    """On SQLite a feed page and a consumer's lag seek the rowid; the feed's end reads the last
    row; none sorts."""
    with Tracker(f"sqlite:///{tmp_path}/rtms.db") as tracker:
        tracker.ingest_many(stream_bodies("s1"))
        tracker.subscribe("first", lambda _t, _s: None)
        page, _ = query_plan(tracker, lambda: tracker.transitions_since("0:1", 10))
        lag = query_plan(tracker, tracker.subscriptions)[-1]
        end = query_plan(tracker, lambda: tracker.subscribe("second", lambda _t, _s: None))[-1]
    assert page == lag == "SEARCH transitions USING INTEGER PRIMARY KEY (rowid>?)"
    assert end == "SCAN transitions"


# --- several writer processes on one PostgreSQL -------------------------------------------------


def _write(url: str, writer: int, streams: int, start: Any) -> None:
    """A writer process: its own Tracker, its own streams, single ingests and small batches."""
    start.wait(30)
    rng = random.Random(writer)
    with Tracker(url) as tracker:
        for n in range(streams):
            bodies = stream_bodies(f"w{writer}-s{n}", seed=writer * 1000 + n)
            if n % 2:
                tracker.ingest_many(bodies, batch_size=rng.randint(1, 4))
            else:
                for b in bodies:
                    tracker.ingest(b)


def test_feed_with_concurrent_writer_processes(postgres_url: str) -> None:
    """While several processes write, a polling consumer sees every transition exactly once."""
    writers, streams = 4, 15
    context = multiprocessing.get_context("spawn")
    with Tracker(postgres_url) as consumer:  # creates the schema before the writers start
        start = context.Event()
        processes = [
            context.Process(target=_write, args=(postgres_url, w, streams, start))
            for w in range(writers)
        ]
        for p in processes:
            p.start()
        start.set()
        seen: list[int] = []
        cursor: str | None = None
        deadline = time.monotonic() + DEADLINE_S
        try:
            while True:
                assert time.monotonic() < deadline, "writers or the feed did not finish in time"
                writing = any(p.is_alive() for p in processes)
                page, cursor = consumer.transitions_since(cursor, 13)
                seen.extend(t.id for t in page)
                if not page and not writing:
                    break  # the writers had finished before this poll, which found nothing
                if not page:
                    time.sleep(0.005)
        finally:
            for p in processes:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        assert [p.exitcode for p in processes] == [0] * writers
        stored = stored_ids(consumer)

    assert len(stored) == writers * streams * PER_STREAM
    duplicates = sorted(i for i in set(seen) if seen.count(i) > 1)
    assert duplicates == []
    assert sorted(seen) == stored


# --- the reason the cursor exists ---------------------------------------------------------------

_HOLD_LOCK = 4242
_HOLD_TRIGGER = f"""
CREATE FUNCTION hold_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({_HOLD_LOCK});
    RETURN NULL;
END $$;
CREATE TRIGGER hold_transition AFTER INSERT ON transitions
    FOR EACH ROW WHEN (NEW.stream_id = 'held') EXECUTE FUNCTION hold_transition();
"""


def _waiting_on_hold(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted",
        (_HOLD_LOCK,),
    ).fetchone()
    return row is not None and row[0] > 0


def test_feed_does_not_skip_a_transaction_that_commits_late(postgres_url: str) -> None:
    """A transition whose transaction commits after a later one's is still delivered, once."""
    held: list[Transition | None] = []
    with Tracker(postgres_url) as consumer, Tracker(postgres_url) as writer:
        before, cursor = drain(consumer, None, 100)  # empty; the schema exists now
        assert before == []
        libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(_HOLD_TRIGGER)
            # Hold: the writer of stream "held" inserts its transition (getting the smaller id),
            # then waits inside its transaction until the lock is released.
            admin.execute("SELECT pg_advisory_lock(%s)", (_HOLD_LOCK,))
            thread = threading.Thread(
                target=lambda: held.append(writer.ingest(body("started", "held", T0)).transition)
            )
            thread.start()
            try:
                deadline = time.monotonic() + 10
                while not _waiting_on_hold(admin):
                    assert time.monotonic() < deadline, "the held writer never reached the trigger"
                    time.sleep(0.01)
                later = consumer.ingest(body("started", "later", T0))
                assert later.outcome is Outcome.APPLIED
                assert later.transition is not None
                meanwhile, cursor = drain(consumer, cursor, 100)
            finally:
                admin.execute("SELECT pg_advisory_unlock(%s)", (_HOLD_LOCK,))
                thread.join(timeout=30)
        (held_transition,) = held
        assert held_transition is not None
        after, cursor = drain(consumer, cursor, 100)
        stored = stored_ids(consumer)

    assert held_transition.id < later.transition.id  # ids are not commit-ordered
    seen = [t.id for t in meanwhile + after]
    assert held_transition.id not in [t.id for t in meanwhile]  # not committed then
    assert sorted(seen) == stored == sorted([held_transition.id, later.transition.id])
