"""Retention: prune, its records, the guard that lets only a prune delete, duplicate references."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from rtms_lifecycle import Outcome, State, Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store import retention as store_retention
from rtms_lifecycle.store.engine import create_store_engine
from rtms_lifecycle.store.tables import concurrency_alerts, deliveries, streams, transitions

from ._deliveries import raw

OLD = 1_700_000_000_000  # November 2023: long before any cutoff
HOUR = 3_600_000
DAY = timedelta(days=1)
ALERT = {
    "event": "rtms.concurrency_near_limit",
    "event_ts": OLD,
    "payload": {"concurrency_limit": 2000, "concurrency_number": 1601, "percentage": 80},
}

# No event_ts: rejected, but it names its stream.
REJECTED_LIVE = json.dumps({"event": "meeting.rtms_started", "payload": {"rtms_stream_id": "live"}})


def old_stopped(tracker: Tracker, stream_id: str, at: int = OLD) -> None:
    """A stream that started, was interrupted, resumed and stopped around ``at``."""
    for kind, ts in (("started", at), ("interrupted", at + 10), ("started", at + 20)):
        tracker.ingest(raw(kind, stream_id, ts))
    tracker.ingest(raw("stopped", stream_id, at + 30))


def newest(tracker: Tracker) -> None:
    """A stream that just started: it holds the newest rows, which a prune always keeps."""
    tracker.ingest(raw("started", "newest", now_ms()))


def rows(engine: Engine, table: Any, stream_id: str | None = None) -> int:
    """How many rows ``table`` holds (of one stream)."""
    query = select(func.count()).select_from(table)
    if stream_id is not None:
        query = query.where(table.c.stream_id == stream_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def age_deliveries(engine: Engine, where: str) -> None:
    """Make deliveries (and alerts) look received long ago: the clock cannot be turned back."""
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE deliveries SET received_at = {OLD} WHERE {where}"))
        conn.execute(text(f"UPDATE concurrency_alerts SET received_at = {OLD}"))


def test_old_stopped_streams_go_with_their_deliveries_and_transitions(tracker: Tracker) -> None:
    """A stream that stopped before the cutoff goes whole: its row, deliveries and history."""
    old_stopped(tracker, "old")
    tracker.ingest(raw("stopped", "old", OLD + 30))  # a retry: a duplicate of the stored stop
    newest(tracker)
    result = tracker.prune(DAY)
    assert result.as_dict() == {"streams": 1, "deliveries": 5, "transitions": 4, "alerts": 0}
    assert tracker.stream("old") is None
    assert tracker.deliveries(stream_id="old") == []
    assert tracker.history("old") == []


def test_a_live_stream_is_kept_however_old(tracker: Tracker) -> None:
    """A stream that never stopped keeps everything, whatever its age."""
    tracker.ingest(raw("started", "live", OLD))
    tracker.ingest(raw("interrupted", "live", OLD + 10))
    tracker.ingest(REJECTED_LIVE)
    age_deliveries(tracker.engine, "1 = 1")
    old_stopped(tracker, "old")
    newest(tracker)
    assert tracker.prune(DAY).streams == 1
    stream = tracker.stream("live")
    assert stream is not None
    assert stream.state is State.INTERRUPTED
    assert len(tracker.history("live")) == 2
    assert len(tracker.deliveries(stream_id="live")) == 3


def test_a_recently_stopped_stream_is_kept(tracker: Tracker) -> None:
    """A stream that stopped after the cutoff stays."""
    recent = now_ms() - HOUR
    old_stopped(tracker, "recent", at=recent)
    old_stopped(tracker, "old")
    newest(tracker)
    assert tracker.prune(DAY).streams == 1
    assert tracker.stream("recent") is not None
    assert len(tracker.history("recent")) == 4


def test_old_deliveries_of_no_stream_and_old_alerts_go(tracker: Tracker) -> None:
    """Rejected, unhandled and alert deliveries received before the cutoff go; newer ones stay."""
    tracker.ingest(b"not json")
    tracker.ingest({"event": "meeting.started", "event_ts": OLD, "payload": {}})
    tracker.ingest(ALERT)
    age_deliveries(tracker.engine, "1 = 1")
    tracker.ingest(b"recent garbage")
    result = tracker.prune(DAY)
    assert (result.deliveries, result.alerts) == (3, 1)
    assert [d.raw for d in tracker.deliveries()] == [b"recent garbage"]
    assert tracker.concurrency_alerts() == []


def test_a_rejected_delivery_naming_a_live_stream_is_kept(tracker: Tracker) -> None:
    """A bad delivery that names a stored stream belongs to it, and stays as long as it does."""
    tracker.ingest(raw("started", "live", OLD))
    assert tracker.ingest(REJECTED_LIVE).outcome is Outcome.REJECTED
    newest(tracker)
    age_deliveries(tracker.engine, "1 = 1")
    assert tracker.prune(DAY).deliveries == 0
    assert len(tracker.deliveries(stream_id="live")) == 2


def test_a_dry_run_counts_exactly_what_the_prune_then_removes(tracker: Tracker) -> None:
    """--dry-run changes nothing and predicts the prune's counts."""
    for n in range(3):
        old_stopped(tracker, f"old-{n}")
    tracker.ingest(raw("started", "live", OLD))
    tracker.ingest(b"garbage")
    tracker.ingest(ALERT)
    age_deliveries(tracker.engine, "stream_id IS NULL")
    newest(tracker)
    predicted = tracker.prune(DAY, dry_run=True)
    assert predicted.reclaimed_bytes is None
    assert rows(tracker.engine, streams) == 5
    assert tracker.prunes() == []
    done = tracker.prune(DAY)
    assert done.as_dict() == predicted.as_dict()
    assert done.as_dict() == {"streams": 3, "deliveries": 14, "transitions": 12, "alerts": 1}


def test_every_prune_is_recorded(tracker: Tracker) -> None:
    """Each prune appends a record: when, its cutoff and what it removed, even if nothing."""
    old_stopped(tracker, "old")
    newest(tracker)
    before = now_ms()
    first = tracker.prune(DAY)
    second = tracker.prune(timedelta(days=2))
    records = tracker.prunes()
    assert [r.cutoff for r in records] == [second.cutoff, first.cutoff]
    latest, earliest = records
    assert (earliest.streams, earliest.deliveries, earliest.transitions) == (1, 4, 4)
    assert (latest.streams, latest.deliveries, latest.transitions) == (0, 0, 0)
    assert before <= earliest.started_at <= earliest.finished_at <= latest.started_at
    assert tracker.prunes(limit=1) == [latest]


@pytest.mark.parametrize("statement", ["UPDATE prunes SET streams = 0", "DELETE FROM prunes"])
def test_the_prune_records_are_append_only(tracker: Tracker, statement: str) -> None:
    """Nobody rewrites the record of what was pruned."""
    tracker.prune(DAY)
    with pytest.raises(DBAPIError, match="append-only"), tracker.engine.begin() as conn:
        conn.execute(text(statement))
    assert len(tracker.prunes()) == 1


def test_removing_a_stream_row_does_not_open_the_guard(tracker: Tracker) -> None:
    """Outside a prune, even the history of a stream whose row is gone cannot be deleted."""
    old_stopped(tracker, "old")
    with tracker.engine.begin() as conn:
        conn.execute(text("DELETE FROM streams"))
    with pytest.raises(DBAPIError, match="append-only"), tracker.engine.begin() as conn:
        conn.execute(text("DELETE FROM transitions"))
    assert rows(tracker.engine, transitions) == 4


def test_the_prune_setting_alone_does_not_delete_a_stored_streams_history(
    postgres_url: str,
) -> None:
    """PostgreSQL: inside a prune's setting, transitions of a stream still stored are refused."""
    with Tracker(postgres_url) as tracker:
        old_stopped(tracker, "old")
        with tracker.engine.begin() as conn:
            conn.execute(text("SET LOCAL rtms_lifecycle.pruning = 'on'"))
            with pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text("DELETE FROM transitions"))
        with pytest.raises(DBAPIError, match="append-only"), tracker.engine.begin() as conn:
            conn.execute(text("TRUNCATE transitions"))
        assert rows(tracker.engine, transitions) == 4


def test_another_programs_sqlite_connection_cannot_delete_the_history(sqlite_url: str) -> None:
    """SQLite: a connection that is not the store's (e.g. the sqlite3 shell) cannot delete."""
    import sqlite3

    with Tracker(sqlite_url) as tracker:
        old_stopped(tracker, "old")
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    with pytest.raises(sqlite3.OperationalError, match="rtms_lifecycle_pruning"):
        conn.execute("DELETE FROM transitions")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE transitions SET late = late")
    conn.close()


def test_a_retention_under_a_day_is_refused(tracker: Tracker) -> None:
    """Zoom retries for about two hours: a prune keeps at least a day."""
    with pytest.raises(ValueError, match="at least 1 day"):
        tracker.prune(timedelta(hours=6))


def test_ids_are_never_handed_out_again(tracker: Tracker) -> None:
    """The newest delivery and transition survive a prune: new rows get larger ids."""
    old_stopped(tracker, "old")
    last = tracker.history("old")[-1].id
    last_delivery = tracker.deliveries(limit=1)[0].id
    assert tracker.prune(DAY).streams == 0  # "old" holds the newest rows
    tracker.ingest(raw("started", "next", now_ms()))
    assert tracker.prune(DAY).streams == 1
    added = tracker.ingest(raw("stopped", "next", now_ms()))
    assert added.transition is not None
    assert added.transition.id > last
    assert added.delivery_id is not None
    assert added.delivery_id > last_delivery


# --- duplicates reference the body they repeat ------------------------------------------------


def stored_raw(engine: Engine, delivery_id: int) -> tuple[bytes, int | None]:
    """The raw column and the reference of one delivery, as stored."""
    with engine.connect() as conn:
        row = conn.execute(
            select(deliveries.c.raw, deliveries.c.same_as).where(deliveries.c.id == delivery_id)
        ).one()
    return bytes(row.raw), row.same_as


def test_a_retry_references_the_stored_body_instead_of_a_copy(tracker: Tracker) -> None:
    """A byte-identical retry stores no bytes, yet reads back with them."""
    body = raw("started", "s1", OLD)
    first = tracker.ingest(body)
    again = tracker.ingest(body)
    assert again.outcome is Outcome.DUPLICATE
    assert again.delivery_id is not None
    assert stored_raw(tracker.engine, again.delivery_id) == (b"", first.delivery_id)
    assert [d.raw for d in tracker.deliveries(stream_id="s1")] == [body, body]


def test_retries_within_one_batch_reference_the_first(tracker: Tracker) -> None:
    """In one batch too, every copy references the delivery that brought the event."""
    body = raw("stopped", "s1", OLD)
    assert tracker.ingest_many([body, body, body])[Outcome.DUPLICATE] == 2
    stored = tracker.deliveries(stream_id="s1")
    first = stored[-1].id
    assert [stored_raw(tracker.engine, d.id)[1] for d in stored] == [first, first, None]
    assert {d.raw for d in stored} == {body}


def test_a_duplicate_with_other_bytes_keeps_its_own(tracker: Tracker) -> None:
    """Equal as JSON but spelt differently: the duplicate's own bytes are kept, as received."""
    tracker.ingest(raw("started", "s1", OLD))
    respelt = json.dumps(json.loads(raw("started", "s1", OLD)), indent=2).encode()
    again = tracker.ingest(respelt)
    assert again.outcome is Outcome.DUPLICATE
    assert again.delivery_id is not None
    assert stored_raw(tracker.engine, again.delivery_id) == (respelt, None)


def test_downgrading_copies_the_bytes_back(db_url: str) -> None:
    """Before 0006 every delivery held its bytes: a downgrade puts them back."""
    engine = create_store_engine(db_url)
    body = raw("started", "s1", OLD)
    with Tracker(engine) as tracker:
        tracker.ingest(body)
        again = tracker.ingest(body).delivery_id
    config = _migrate.alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with engine.connect() as conn:
        stored = conn.execute(text(f"SELECT raw FROM deliveries WHERE id = {again}")).scalar_one()
    assert bytes(stored) == body
    engine.dispose()


# --- a prune racing receivers ---------------------------------------------------------------


def test_a_prune_racing_ingest_keeps_every_reference_and_every_live_stream(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers retrying old streams' events while a prune runs: nothing dangles, nothing live
    goes, and a stream the prune took is not half-removed."""
    monkeypatch.setattr(store_retention, "_STREAMS_PER_STEP", 5)  # many steps: many interleavings
    with Tracker(db_url) as setup:
        setup.ingest_many(
            raw(kind, f"old-{n}", OLD + n * 100 + k)
            for n in range(300)
            for k, kind in enumerate(("started", "stopped"))
        )
        setup.ingest_many(raw("started", f"live-{n}", OLD + n) for n in range(50))
    stop = threading.Event()
    failures: list[BaseException] = []

    def retry_old_events(worker: int) -> None:
        with Tracker(db_url) as writer:
            n = worker
            while not stop.is_set():
                try:
                    writer.ingest(raw("stopped", f"old-{n % 300}", OLD + (n % 300) * 100 + 1))
                    writer.ingest(raw("started", f"live-{n % 50}", OLD + n % 50))
                    writer.ingest(raw("started", f"fresh-{worker}-{n}", now_ms()))
                except BaseException as exc:  # pragma: no cover - reported below
                    failures.append(exc)
                    return
                n += 2

    threads = [threading.Thread(target=retry_old_events, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    try:
        with Tracker(db_url) as pruner:
            removed = pruner.prune(DAY).streams + pruner.prune(DAY).streams
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    engine = create_store_engine(db_url)
    with engine.connect() as conn:
        dangling = conn.execute(
            text(
                "SELECT count(*) FROM deliveries AS d WHERE d.same_as IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM deliveries AS f WHERE f.id = d.same_as)"
            )
        ).scalar_one()
        orphaned_history = conn.execute(
            text(
                "SELECT count(*) FROM transitions AS t"
                " WHERE NOT EXISTS (SELECT 1 FROM streams AS s WHERE s.stream_id = t.stream_id)"
            )
        ).scalar_one()
        live = conn.execute(
            text("SELECT count(*) FROM streams WHERE stream_id LIKE 'live-%'")
        ).scalar_one()
    engine.dispose()
    assert (dangling, orphaned_history, live) == (0, 0, 50)
    assert removed >= 299  # all old streams but, perhaps, the one holding the newest rows


# --- space and the command line ---------------------------------------------------------------


def test_sqlite_prune_frees_pages_and_vacuum_gives_them_back(sqlite_url: str) -> None:
    """SQLite: a prune leaves free pages that new rows reuse; --vacuum shrinks the file."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest_many(
            raw(kind, f"old-{n}", OLD + n * 100 + k, padding="x" * 2000)
            for n in range(500)
            for k, kind in enumerate(("started", "stopped"))
        )
        newest(tracker)
        path = Path(sqlite_url.removeprefix("sqlite:///"))
        before = path.stat().st_size
        pruned = tracker.prune(DAY)
        assert pruned.free_bytes is not None
        assert pruned.free_bytes > 1_000_000
        assert path.stat().st_size == before
        vacuumed = tracker.prune(DAY, vacuum=True)
        assert vacuumed.reclaimed_bytes is not None
        assert vacuumed.reclaimed_bytes > 1_000_000
        assert path.stat().st_size < before - 1_000_000
        assert vacuumed.free_bytes == 0


def test_postgres_vacuum_runs(postgres_url: str) -> None:
    """PostgreSQL: --vacuum runs VACUUM ANALYZE after the prune."""
    with Tracker(postgres_url) as tracker:
        old_stopped(tracker, "old")
        newest(tracker)
        result = tracker.prune(DAY, vacuum=True)
        assert result.streams == 1
        assert result.reclaimed_bytes is not None
        with tracker.engine.connect() as c:
            vacuumed = c.execute(
                text("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'deliveries'")
            ).scalar_one()
        assert vacuumed is not None


def test_cli_prune_json_dry_run_then_prune_then_prunes(db_url: str) -> None:
    """prune --json prints the four counts; prunes --json lists what was recorded."""
    with Tracker(db_url) as tracker:
        old_stopped(tracker, "old")
        newest(tracker)

    def run(*args: str) -> Any:
        result = CliRunner().invoke(cli, ["--db", db_url, *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    expected = {"streams": 1, "deliveries": 4, "transitions": 4, "alerts": 0}
    assert run("prune", "--older-than", "30d", "--dry-run") == expected
    assert run("prune", "--older-than", "30d") == expected
    (record,) = run("prunes")
    assert {k: record[k] for k in expected} == expected
    assert set(record) == {"run", "started_at", "finished_at", "cutoff", "complete", *expected}
    assert record["complete"] is True


def test_cli_prune_human_output_and_too_short_retention(sqlite_url: str) -> None:
    """The table names the cutoff; a retention under a day is a usage error (exit 2)."""
    Tracker(sqlite_url).close()  # prune never creates a database
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "prune", "--older-than", "2d"])
    assert result.exit_code == 0, result.output
    assert "Removed what is older than" in result.stdout
    refused = CliRunner().invoke(cli, ["--db", sqlite_url, "prune", "--older-than", "12h"])
    assert refused.exit_code == 2
    assert "at least 1 day" in refused.output


def test_alert_rows_are_counted_once_per_table(tracker: Tracker) -> None:
    """An old alert is one alert row and one delivery."""
    tracker.ingest(ALERT)
    age_deliveries(tracker.engine, "1 = 1")
    tracker.ingest(b"newest")
    result = tracker.prune(DAY)
    assert (result.alerts, result.deliveries) == (1, 1)
    assert rows(tracker.engine, concurrency_alerts) == 0


# --- the property ----------------------------------------------------------------------------

stream_plans = st.lists(
    st.tuples(
        st.sampled_from(["live", "old", "recent"]),  # not stopped, stopped long ago, lately
        st.integers(min_value=0, max_value=2),  # retries of its first event
        st.booleans(),  # a rejected body naming it
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=25,
    deadline=None,
    # One database for every example (fresh stream ids each time): a prune is global, which the
    # property has to survive anyway.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plans=stream_plans)
def test_prune_removes_exactly_the_old_stopped_streams(
    db_url: str, plans: list[tuple[str, int, bool]]
) -> None:
    """Whatever the mix: old stopped streams go whole, the rest stays whole, as the dry run said."""
    recent = now_ms() - HOUR
    names = [f"{age}-{uuid.uuid4().hex[:8]}" for age, _, _ in plans]
    with Tracker(db_url) as tracker:
        kept: dict[str, int] = {}
        for name, (age, retries, rejected) in zip(names, plans, strict=True):
            at = recent if age == "recent" else OLD
            first = raw("started", name, at)
            bodies = [first] * (1 + retries)
            if age != "live":
                bodies.append(raw("stopped", name, at + 10))
            if rejected:
                bodies.append(
                    json.dumps(
                        {"event": "meeting.rtms_started", "payload": {"rtms_stream_id": name}}
                    ).encode()
                )
            tracker.ingest_many(bodies, batch_size=2)
            if age != "old":
                kept[name] = len(bodies)
        newest(tracker)
        predicted = tracker.prune(DAY, dry_run=True)
        assert tracker.prune(DAY).as_dict() == predicted.as_dict()
        for name, (age, _, _) in zip(names, plans, strict=True):
            stored = tracker.deliveries(stream_id=name, limit=None)
            if age == "old":
                assert (tracker.stream(name), stored, tracker.history(name)) == (None, [], [])
            else:
                assert tracker.stream(name) is not None
                assert len(stored) == kept[name]
                assert all(d.raw for d in stored)  # every duplicate still reads its bytes
