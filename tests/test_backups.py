"""Backups as docs/operations.md describes them: taken while the store is open, and restored."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from rtms_lifecycle import Tracker

from ._deliveries import raw
from ._postgres import PostgresServer

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them


def record_some(tracker: Tracker) -> None:
    """A stopped stream with a retry, a live one and a rejected body."""
    for body in (
        raw("started", "s1", T0 + 1_000),
        raw("stopped", "s1", T0 + 2_000),
        raw("stopped", "s1", T0 + 2_000),
        raw("started", "s2", T0 + 3_000),
        b"not json",
    ):
        tracker.ingest(body)


def same_record(a: Tracker, b: Tracker) -> None:
    """Both hold the same streams, histories and deliveries (with their bytes)."""
    assert a.streams() == b.streams()
    assert a.history("s1") == b.history("s1")
    assert a.deliveries(limit=None) == b.deliveries(limit=None)


@pytest.mark.parametrize("how", ["backup", "vacuum into"])
def test_an_online_sqlite_backup_restores_the_record(tmp_path: Path, how: str) -> None:
    """SQLite's online backup and VACUUM INTO, taken while the store is open, restore whole."""
    live = tmp_path / "live.db"
    copy = tmp_path / "copy.db"
    with Tracker(f"sqlite:///{live}") as tracker:
        record_some(tracker)
        source = sqlite3.connect(live)
        if how == "backup":
            target = sqlite3.connect(copy)
            source.backup(target)
            target.close()
        else:
            source.execute(f"VACUUM INTO '{copy}'")
        source.close()
        with Tracker(f"sqlite:///{copy}") as restored:
            same_record(tracker, restored)
            with pytest.raises(DBAPIError, match="append-only"), restored.engine.begin() as c:
                c.execute(text("DELETE FROM transitions"))


def test_pg_dump_and_pg_restore_restore_the_record_and_its_guard(
    postgres_url: str,
    make_postgres_url: Callable[[], str],
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """pg_dump -Fc of a database in use, pg_restore into a new one: same record, same guard."""
    target_url = make_postgres_url()
    dump = tmp_path / "rtms.dump"
    with Tracker(postgres_url) as tracker:
        record_some(tracker)
        plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        subprocess.run(
            [str(postgres_server.bindir / "pg_dump"), "-Fc", "-d", plain, "-f", str(dump)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                str(postgres_server.bindir / "pg_restore"),
                "--no-owner",
                "-d",
                target_url.replace("postgresql+psycopg://", "postgresql://"),
                str(dump),
            ],
            check=True,
            capture_output=True,
        )
        with Tracker(target_url) as restored:
            same_record(tracker, restored)
            with pytest.raises(DBAPIError, match="append-only"), restored.engine.begin() as c:
                c.execute(text("DELETE FROM transitions"))
            # Sequences came along: new rows do not collide with restored ones.
            assert restored.ingest(raw("stopped", "s2", T0 + 4_000)).transition is not None
