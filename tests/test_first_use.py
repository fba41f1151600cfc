"""Several processes opening a new database at once: one creates the schema, none fails."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine

from rtms_lifecycle.store.migrate import current_revision, head_revision
from rtms_lifecycle.store.sqlite import prepare
from rtms_lifecycle.webhook import SECRET_ENV
from tests._live import SECRET, free_port

# Imports first, then every process waits for the same moment, so that they really race.
_OPEN = """
import sys, time
from rtms_lifecycle import Tracker
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
with Tracker(sys.argv[1]) as tracker:
    tracker.ingest({"event": "meeting.rtms_started", "event_ts": 1, "payload": {}})
"""


def _open_at_once(url: str, processes: int) -> list[subprocess.CompletedProcess[str]]:
    start = str(time.time() + 3)
    running = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN, url, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for process in running:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def test_processes_opening_a_new_database_at_once_all_succeed(db_url: str) -> None:
    """8 processes opening one new database at the same moment all succeed; the schema is whole."""
    results = _open_at_once(db_url, 8)
    assert [(r.returncode, r.stderr) for r in results if r.returncode] == []
    engine = create_engine(db_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM deliveries").scalar() == 8
    finally:
        engine.dispose()


def test_uvicorn_workers_on_a_new_sqlite_file_all_start(tmp_path: Path) -> None:
    """``uvicorn --factory ...create_app --workers 4`` on a new SQLite file: every worker starts."""
    port = free_port()
    env = {
        **os.environ,
        SECRET_ENV: SECRET,
        "RTMS_LIFECYCLE_DB": f"sqlite:///{tmp_path}/new.db",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "rtms_lifecycle.server:create_app",
        "--port",
        str(port),
        "--workers",
        "4",
    ]
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 120
            while log_path.read_text().count("Application startup complete") < 4:
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=60)
    assert "Traceback" not in log_path.read_text()


def test_switching_to_wal_waits_for_another_connections_write(tmp_path: Path) -> None:
    """A file still in rollback mode, written by another connection: the switch to WAL waits.

    SQLite answers that switch with "database is locked" at once, without its busy timeout;
    processes opening one new file together hit it under load.
    """
    path = tmp_path / "rollback.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, writer.execute, ("COMMIT",)).start()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        prepare(connection)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()
        writer.close()
