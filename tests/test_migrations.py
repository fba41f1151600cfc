"""Migrations: pytest-alembic's standard checks on SQLite and PostgreSQL, schema refusal, and
the packaged schema a new SQLite database starts with."""

from __future__ import annotations

import importlib
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from rtms_lifecycle import Outcome, SchemaOutdatedError, State, Tracker
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store.engine import create_store_engine

from ._deliveries import raw

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them


@pytest.fixture
def alembic_config() -> dict[str, str]:
    """pytest-alembic runs the migrations the library ships, from where the library finds them."""
    return {"script_location": _migrate.script_location()}


@pytest.fixture
def alembic_engine(db_url: str) -> Iterator[Engine]:
    """Each standard check runs on a real SQLite file and a real PostgreSQL database."""
    engine = create_store_engine(db_url)
    yield engine
    engine.dispose()


def test_new_database_is_created_at_head(db_url: str) -> None:
    """A new, empty database gets the schema at the latest migration on first use."""
    with Tracker(db_url) as tracker:
        assert _migrate.current_revision(tracker.engine) == _migrate.head_revision()


def test_an_upgrade_logs_one_line_of_its_own_and_none_of_alembics(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An application logging at INFO sees which revisions, not Alembic's line per migration."""
    caplog.set_level(logging.INFO)
    engine = create_store_engine(db_url)
    try:
        _migrate.upgrade(engine, "0001")
        _migrate.upgrade(engine)
    finally:
        engine.dispose()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
    assert [r.getMessage() for r in caplog.records if r.name == "rtms_lifecycle.store"] == [
        "database schema upgraded from nothing to 0001",
        f"database schema upgraded from 0001 to {_migrate.head_revision()}",
    ]
    assert logging.getLogger("alembic").level == logging.NOTSET


def test_older_database_is_refused(db_url: str) -> None:
    """A database at an older migration is refused, naming the upgrade command; upgrade fixes it."""
    engine = create_store_engine(db_url)
    _migrate.upgrade(engine, "0001")
    with pytest.raises(SchemaOutdatedError, match="rtms-lifecycle db upgrade"):
        Tracker(engine)
    _migrate.upgrade(engine)
    with Tracker(engine) as tracker:
        assert _migrate.current_revision(tracker.engine) == _migrate.head_revision()


REFUSED = "rtms-refused-tracker"
# How long a closed connection's backend may take to exit; far beyond it even under load.
CLOSE_DEADLINE_S = 10.0


def _backends(conn: Connection, application_name: str) -> int:
    """Backends connected to this database under ``application_name``."""
    found = conn.execute(
        text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = :name"
        ),
        {"name": application_name},
    ).scalar_one()
    conn.rollback()  # the next look sees a new snapshot of pg_stat_activity
    return int(found)


def test_a_refused_schema_leaves_no_connection_open(postgres_url: str) -> None:
    """A Tracker refused for its schema closes what it opened, before the error reaches us."""
    engine = create_store_engine(postgres_url)
    _migrate.upgrade(engine, "0001")
    with pytest.raises(SchemaOutdatedError) as refused:
        Tracker(f"{postgres_url}?application_name={REFUSED}")
    assert refused.value.__traceback__ is not None  # the refused Tracker is still referenced
    # A closed connection's backend leaves pg_stat_activity when it has exited, a moment later
    # on a loaded machine; one the Tracker kept open stays there, and fails this at the deadline.
    deadline = time.monotonic() + CLOSE_DEADLINE_S
    with engine.connect() as conn:
        while (left := _backends(conn, REFUSED)) and time.monotonic() < deadline:
            time.sleep(0.05)
    engine.dispose()
    assert left == 0


@pytest.mark.parametrize(
    "statement", ["UPDATE transitions SET late = late", "DELETE FROM transitions"]
)
def test_database_refuses_to_rewrite_the_audit_history(db_url: str, statement: str) -> None:
    """Even raw SQL cannot update or delete audit rows: the database refuses."""
    with Tracker(db_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))
        with pytest.raises(DBAPIError, match="append-only"), tracker.engine.begin() as conn:
            conn.execute(text(statement))
        assert len(tracker.audit("s1")) == 1


# A transition as versions before the audit chain (0011) wrote it: every column but the hash.
_UNCHAINED_INSERT = (
    "INSERT INTO transitions (stream_id, from_state, to_state, name, kind, event_ts, source,"
    " late, recorded_at, tx_id, delivery_id) VALUES ('s1', 'started', 'stopped', 'stop',"
    f" 'stopped', {T0 + 20}, 'webhook', false, {T0 + 20}, 0, NULL)"
)


def test_a_transition_without_its_chain_hash_is_refused(db_url: str) -> None:
    """A receiver of a version before the audit chain, still running during a rolling upgrade,
    wrote rows without a hash and answered 200: the chains broke for good. The database now
    refuses such a row, so that old receiver fails instead (and Zoom retries later)."""
    with Tracker(db_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))
        with (
            pytest.raises(DBAPIError, match="without its chain hash"),
            tracker.engine.begin() as conn,
        ):
            conn.execute(text(_UNCHAINED_INSERT))
        assert len(tracker.audit("s1")) == 1
        assert tracker.verify_audit().ok


def test_rows_stored_without_a_hash_do_not_stop_the_upgrade(db_url: str) -> None:
    """A database that already holds rows an old receiver wrote without a hash upgrades past
    0018: only new rows are checked (``audit verify`` still names the old ones)."""
    engine = create_store_engine(db_url)
    try:
        _migrate.upgrade(engine, "0017")
        with engine.begin() as conn:
            conn.execute(text(_UNCHAINED_INSERT))
        _migrate.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM transitions")).scalar() == 1
    finally:
        engine.dispose()


def test_foreign_tables_are_refused(sqlite_url: str) -> None:
    """A database with our table names but no migration history is not taken over."""
    engine = create_store_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE streams (x INTEGER)"))
    with pytest.raises(SchemaOutdatedError, match="not created by rtms-lifecycle"):
        Tracker(engine)
    engine.dispose()


def _old_started(conn: Any, stream_id: str, ts: int, body: bytes) -> None:
    """What an 0002 store wrote for an applied ``started``: delivery, event row, stream row."""
    conn.execute(
        text(
            "INSERT INTO deliveries (id, received_at, source, event, event_ts, stream_id, kind,"
            " outcome, raw) VALUES (1, 0, 'webhook', 'meeting.rtms_started', :ts, :sid,"
            " 'started', 'applied', :raw)"
        ),
        {"ts": ts, "sid": stream_id, "raw": body},
    )
    conn.execute(
        text(
            "INSERT INTO stream_events (stream_id, kind, event_ts, source, event, scope, scope_id,"
            " payload, received_at) VALUES (:sid, 'started', :ts, 'webhook',"
            " 'meeting.rtms_started', 'meeting', 'mtg-1', '{}', 0)"
        ),
        {"ts": ts, "sid": stream_id},
    )
    conn.execute(
        text(
            "INSERT INTO streams (stream_id, scope, scope_id, state, first_event_at, started_at,"
            " last_event_at, interruptions, resumes, failovers, fold_ts, fold_rank, created_at,"
            " updated_at) VALUES (:sid, 'meeting', 'mtg-1', 'started', :ts, :ts, :ts, 0, 0, 0,"
            " :ts, 1, 0, 0)"
        ),
        {"ts": ts, "sid": stream_id},
    )


def test_events_stored_before_0003_are_read_from_their_deliveries(db_url: str) -> None:
    """After 0003 an event stored by an older version is still known: duplicates, re-folds."""
    engine = create_store_engine(db_url)
    _migrate.upgrade(engine, "0002")
    first = raw("started", "s1", T0 + 100, scope_id="mtg-1", server_urls="wss://a")
    with engine.begin() as conn:
        _old_started(conn, "s1", T0 + 100, first)
    _migrate.upgrade(engine)
    with Tracker(engine) as tracker:
        assert tracker.ingest(first).outcome is Outcome.DUPLICATE
        other = raw("started", "s1", T0 + 100, scope_id="mtg-1", server_urls="wss://b")
        assert tracker.ingest(other).outcome is Outcome.CONFLICT
        # An interruption before the stored start: the stream is re-folded from the raw bytes.
        late = tracker.ingest(raw("interrupted", "s1", T0 + 50, scope_id="mtg-1"))
        assert late.outcome is Outcome.APPLIED
        stream = tracker.stream("s1")
        assert stream is not None
        assert (stream.state, stream.resumes, stream.server_urls) == (
            State.RESUMED,
            1,
            "wss://a",
        )
    engine.dispose()


def test_stops_before_0005_keep_their_names(db_url: str) -> None:
    """Upgrading to 0005: a stream stopped without a code was expired, one with a code was not."""
    engine = create_store_engine(db_url)
    _migrate.upgrade(engine, "0004")
    with engine.begin() as conn:
        for sid, reason in (("expired", None), ("ended", 6)):
            conn.execute(
                text(
                    "INSERT INTO streams (stream_id, scope, scope_id, state, stopped_at,"
                    " stop_reason, interruptions, resumes, failovers, fold_ts, fold_rank,"
                    " created_at, updated_at) VALUES (:sid, 'meeting', 'm', 'stopped', 5, :reason,"
                    " 0, 0, 0, 5, 3, 1, 1)"
                ),
                {"sid": sid, "reason": reason},
            )
    _migrate.upgrade(engine)
    with Tracker(engine) as tracker:
        names = {s.stream_id: s.stop_reason_name for s in tracker.streams()}
        assert names == {"expired": "EXPIRED", "ended": "MEETING_ENDED"}
        assert {s.stop_reason_name for s in tracker.stop_reason_stats()} == set(names.values())
    engine.dispose()


# --- a new SQLite database, created without Alembic ---------------------------------------------

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def schema_script() -> Iterator[ModuleType]:
    """scripts/gen_sqlite_schema.py, imported as a module."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("gen_sqlite_schema")
    finally:
        sys.path.remove(str(SCRIPTS))


def _schema_of(path: Path) -> tuple[set[tuple[str, str, str, str | None]], list[str]]:
    """Every object SQLite lists for a database file (with its SQL), and its revision."""
    conn = sqlite3.connect(path)
    try:
        objects = set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        revisions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    finally:
        conn.close()
    return objects, revisions


def test_a_new_sqlite_database_is_the_one_the_migrations_create(
    schema_script: ModuleType, tmp_path: Path
) -> None:
    """A new SQLite file created from the packaged schema equals one Alembic migrated to head."""
    Tracker(f"sqlite:///{tmp_path / 'new.db'}").close()
    schema_script.migrate_file(tmp_path / "migrated.db")
    created, migrated = _schema_of(tmp_path / "new.db"), _schema_of(tmp_path / "migrated.db")
    assert created == migrated
    assert created[1] == [_migrate.head_revision()]


def test_the_packaged_sqlite_schema_is_generated_from_the_migrations(
    schema_script: ModuleType,
) -> None:
    """The packaged SQLite schema is what scripts/gen_sqlite_schema.py writes now (--check)."""
    assert schema_script.main(["gen_sqlite_schema.py", "--check"]) == 0


def test_a_packaged_schema_behind_the_migrations_is_upgraded(
    schema_script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the packaged schema a revision behind, Alembic would migrate the new file the rest."""
    stale = tmp_path / "stale.sql"
    stale.write_text(schema_script.migrated_schema("0007"), encoding="utf-8")
    monkeypatch.setattr(_migrate, "SQLITE_SCHEMA_FILE", stale)
    Tracker(f"sqlite:///{tmp_path / 'new.db'}").close()
    schema_script.migrate_file(tmp_path / "migrated.db")
    assert _schema_of(tmp_path / "new.db") == _schema_of(tmp_path / "migrated.db")


def test_0015_queues_the_live_streams_nobody_holds(db_url: str) -> None:
    """Upgrading to 0015 queues each live stream no claim holds: claimed, released, stopped and
    expired streams are where a claim finds them, as the triggers and claims keep them after."""
    from alembic import command

    from tests._deliveries import body

    engine = create_store_engine(db_url)
    with Tracker(engine) as tracker:
        now = int(time.time() * 1000)
        tracker.ingest_batch([body("started", f"s{i}", now - 60_000 + i) for i in range(5)])
        first, *_ = [tracker.claim("w1") for _ in range(3)]
        assert first is not None
        assert tracker.release(first)
        tracker.ingest(raw("stopped", "s1", now - 1_000))
        with engine.connect() as conn:
            queued = conn.execute(text("SELECT stream_id FROM claim_queue")).scalars().all()
        assert sorted(queued) == ["s0", "s3", "s4"]
    config = _migrate.alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0014")
        command.upgrade(config, "head")
    with engine.connect() as conn:
        again = conn.execute(text("SELECT stream_id FROM claim_queue")).scalars().all()
    assert sorted(again) == sorted(queued)
    with Tracker(engine) as tracker:
        taken = [tracker.claim("w2") for _ in range(4)]
        assert [c.stream_id if c else None for c in taken] == ["s0", "s3", "s4", None]
        # The renewal and release functions (0017, PostgreSQL) are back too.
        assert taken[0] is not None
        assert tracker.release(tracker.renew(taken[0]))
    engine.dispose()
