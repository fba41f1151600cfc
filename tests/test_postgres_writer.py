"""The PostgreSQL writer's kept connections and prepared statements, on a real server: nothing that
drops a statement or a connection under a writer fails a write, and a tracker closed or dropped
leaves no connection open (a leak is a ResourceWarning, an error in this suite)."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import psycopg
import pytest

from rtms_lifecycle import State, StoreTimeout, Tracker
from rtms_lifecycle.store.engine import create_store_engine

from ._deliveries import raw
from ._postgres import PostgresServer, restart_server

pytestmark = pytest.mark.postgres

_WRITERS = 8  # as many connections as a writer keeps
T0 = 1_700_000_000_000  # Nov 2023: event times after the 2000 lower bound


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _backends(server: PostgresServer, url: str) -> int:
    """Connections open to the test's database (the admin's own is on another)."""
    with psycopg.connect(server.conninfo()) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (_database(url),)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _backends_gone(server: PostgresServer, url: str) -> int:
    """:func:`_backends` once it reaches 0, or after 5 s: a server process ends a moment after
    its client closed (once seen still listed at load 8-20)."""
    deadline = time.monotonic() + 5
    while (left := _backends(server, url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _concurrent_writes(tracker: Tracker, server: PostgresServer, url: str, first_ts: int) -> None:
    """``_WRITERS`` deliveries changing one stream written at once (each blocked on the stream's
    row until all are waiting): the tracker ends up keeping that many connections."""
    with (
        psycopg.connect(server.conninfo(_database(url))) as holder,
        # Not in the holder's transaction: pg_stat_activity holds still within one.
        psycopg.connect(server.conninfo(), autocommit=True) as watcher,
    ):
        holder.execute("SELECT 1 FROM streams WHERE stream_id = 's1' FOR UPDATE")
        errors: list[BaseException] = []

        def write(ts: int) -> None:
            try:
                tracker.ingest(raw("interrupted", "s1", ts))
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(first_ts + i,)) for i in range(_WRITERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (_database(url),),
        ).fetchone() != (_WRITERS,):
            assert time.monotonic() < deadline, "the writers never all waited on the row"
            time.sleep(0.01)
        holder.commit()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors


def _delivered(tracker: Tracker) -> int:
    return len(tracker.deliveries(stream_id="s1"))


def test_a_rollback_that_drops_every_prepared_statement_fails_no_write(postgres_url: str) -> None:
    """psycopg sends DEALLOCATE ALL when it rolls back a connection it prepared statements on
    (its own, after five runs of one): the writer's go too, and it prepares them again."""
    with Tracker(postgres_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))  # prepares the one-delivery read and write
        for i in range(6):  # psycopg prepares the batch read, its fifth run on this connection
            tracker.ingest_batch(
                [raw("interrupted", "s1", T0 + 100 + 2 * i), raw("resumed", "s1", T0 + 101 + 2 * i)]
            )
        tracker.check_writable(10.0)  # the probe rolls back
        tracker.ingest(raw("stopped", "s1", T0 + 1_000, stop_reason=6))
        assert tracker.stream("s1").state is State.STOPPED  # type: ignore[union-attr]


def test_backends_terminated_between_writes_fail_no_write(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """Every kept connection ended by the server (pg_terminate_backend): the next write opens a
    new one, whatever number of dead ones the writer kept."""
    with Tracker(postgres_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))
        _concurrent_writes(tracker, postgres_server, postgres_url, T0 + 100)
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (_database(postgres_url),),
            )
        tracker.ingest(raw("stopped", "s1", T0 + 1_000, stop_reason=6))
        assert tracker.stream("s1").state is State.STOPPED  # type: ignore[union-attr]
        assert _delivered(tracker) == 2 + _WRITERS


def test_a_restarted_server_fails_no_write_once_it_is_back(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """The server stopped and started again under a tracker with kept connections (and their
    prepared statements, gone with the backends): the next write succeeds."""
    with Tracker(postgres_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))
        _concurrent_writes(tracker, postgres_server, postgres_url, T0 + 100)
        restart_server(postgres_server)
        tracker.ingest(raw("stopped", "s1", T0 + 1_000, stop_reason=6))
        assert tracker.stream("s1").state is State.STOPPED  # type: ignore[union-attr]


def test_a_write_cancelled_at_its_deadline_leaves_its_connection_usable(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """A write cancelled by the time budget (waiting on a row another transaction holds), then
    writes on the same kept connection: they succeed, and the cancelled one left nothing."""
    with Tracker(postgres_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))
        with psycopg.connect(postgres_server.conninfo(_database(postgres_url))) as holder:
            holder.execute("SELECT 1 FROM streams WHERE stream_id = 's1' FOR UPDATE")
            with pytest.raises(StoreTimeout):
                tracker.ingest(raw("interrupted", "s1", T0 + 20), timeout=0.5)
        for ts in range(T0 + 30, T0 + 40):
            tracker.ingest(raw("interrupted" if ts % 2 == 0 else "started", "s1", ts))
        tracker.ingest(raw("stopped", "s1", T0 + 1_000, stop_reason=6))
        assert tracker.stream("s1").state is State.STOPPED  # type: ignore[union-attr]
        assert _delivered(tracker) == 12


def test_closed_and_dropped_trackers_leave_no_connection_open(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """A tracker closed, one on a caller's engine, and one dropped unclosed: no connection of
    theirs stays open, none is left to the garbage collector."""
    with Tracker(postgres_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))
        _concurrent_writes(tracker, postgres_server, postgres_url, T0 + 100)
    assert _backends_gone(postgres_server, postgres_url) == 0
    engine = create_store_engine(postgres_url)
    with Tracker(engine) as given:
        given.ingest(raw("interrupted", "s1", T0 + 200))
        engine.dispose()  # by its owner, while the tracker keeps a connection
        given.ingest(raw("resumed", "s1", T0 + 201))
    assert _backends_gone(postgres_server, postgres_url) == 0
    dropped: Any = Tracker(postgres_url)
    dropped.ingest(raw("stopped", "s1", T0 + 1_000, stop_reason=6))
    del dropped
    gc.collect()
    assert _backends_gone(postgres_server, postgres_url) == 0
