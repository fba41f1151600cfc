"""The receiver under faults caused for real: a store held by another connection, a damaged,
read-only, full or deleted database, a locked table, a revoked privilege, a dropped database,
idle and slow connections, a log flood. /healthz never says ok while deliveries fail."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psycopg
import pytest
from psycopg import sql

from rtms_lifecycle import DatabaseUnavailable, StoreError, StoreTimeout, Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.defaults import API_TOKEN_ENV
from rtms_lifecycle.store import retention as store_retention
from rtms_lifecycle.store.core import Store
from rtms_lifecycle.store.engine import closed_by_server
from rtms_lifecycle.store.errors import HEALTH_REASONS
from tests import _deliveries
from tests._live import app_clients, clean_environment, serving_process, signed
from tests._postgres import PostgresServer, create_database, restart_server, stopped

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them

TOKEN = "read-api-token-for-tests"
# How long a test holds the store: far beyond Zoom's 3 s, so that an answer that came before
# the release did not wait for it.
HELD = 12.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a receiver reads from the developer's shell leaks into a test."""
    clean_environment(monkeypatch)


@pytest.fixture
def serve() -> Iterator[Callable[..., httpx.Client]]:
    """Factory: serve ``create_app(db, **kwargs)`` in a thread; return a client of it."""
    with app_clients(timeout=60) as start:
        yield start


def post(client: httpx.Client, body: bytes) -> httpx.Response:
    """POST ``body`` to the webhook, signed."""
    return client.post("/webhook", content=body, headers=signed(body))


def started(stream: str) -> bytes:
    """A meeting's ``started`` delivery for ``stream``."""
    return _deliveries.raw("started", stream, T0 + 1_000)


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


@contextmanager
def holding_the_store(db_url: str, table: str = "deliveries") -> Iterator[None]:
    """Another connection holds the store's write lock (SQLite) or locks ``table`` (PostgreSQL)."""
    if db_url.startswith("sqlite"):
        lite = sqlite3.connect(_sqlite_path(db_url), isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    with psycopg.connect(_conninfo(db_url)) as pg:
        pg.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
        try:
            yield
        finally:
            pg.rollback()


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    begun = time.monotonic()
    response = call()
    return response, time.monotonic() - begun


# --- the time budget ------------------------------------------------------------------------------


def test_a_held_store_answers_503_long_before_it_is_released(
    db_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """With the store held by another connection, a delivery gets 503 store_busy at the budget,
    not when the lock is released; nothing is kept, and the retry after the release is recorded."""
    with Tracker(db_url) as tracker:
        client = serve(tracker)
        with holding_the_store(db_url):
            held_since = time.monotonic()
            response, took = _timed(lambda: post(client, started("s-1")))
            held_for = time.monotonic() - held_since
            time.sleep(max(0.0, HELD - held_for))
        assert response.status_code == 503
        assert response.json()["error"] == "store_busy"
        assert took < HELD / 3
        assert tracker.deliveries() == []
        assert post(client, started("s-1")).json()["outcome"] == "applied"


def test_senders_queued_behind_a_held_store_are_all_answered_within_the_budget(
    db_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """40 concurrent senders while the store is held: each is answered 503 within its own budget,
    not after the ones queued before it (more senders than the receiver's writer threads)."""
    with Tracker(db_url) as tracker:
        client = serve(tracker)
        with holding_the_store(db_url), ThreadPoolExecutor(40) as pool:
            answers = list(
                pool.map(lambda i: _timed(lambda: post(client, started(f"s-{i}"))), range(40))
            )
        assert {r.status_code for r, _ in answers} == {503}
        assert max(took for _, took in answers) < HELD / 3
        assert tracker.deliveries() == []


def test_ingest_with_a_timeout_raises_store_timeout_and_keeps_nothing(db_url: str) -> None:
    """Tracker.ingest(timeout=...) on a held store raises StoreTimeout at the timeout, no later."""
    with Tracker(db_url) as tracker, holding_the_store(db_url):
        begun = time.monotonic()
        with pytest.raises(StoreTimeout):
            tracker.ingest(started("s-1"), timeout=0.5)
        assert time.monotonic() - begun < HELD / 3
    with Tracker(db_url) as tracker:
        assert tracker.deliveries() == []


def test_healthz_answers_while_the_store_is_held_and_every_worker_waits(
    db_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """While senders wait on a held store, /healthz still answers, 503 naming a busy store."""
    with Tracker(db_url) as tracker:
        client = serve(tracker)
        with holding_the_store(db_url), ThreadPoolExecutor(30) as pool:
            waiting = [pool.submit(post, client, started(f"s-{i}")) for i in range(29)]
            health, took = _timed(lambda: client.get("/healthz"))
            for sender in waiting:
                sender.result()
        assert (health.status_code, health.json()["status"]) == (503, "unavailable")
        assert health.json()["reason"].startswith("store busy")
        assert took < HELD / 3
        assert client.get("/healthz").json() == {"status": "ok"}


# --- honest health --------------------------------------------------------------------------------


def test_healthz_answers_head(db_url: str, serve: Callable[..., httpx.Client]) -> None:
    """HEAD /healthz answers like GET, without a body."""
    with Tracker(db_url) as tracker:
        response = serve(tracker).head("/healthz")
    assert (response.status_code, response.content) == (200, b"")


@pytest.mark.parametrize("table", ["deliveries", "transitions"])
def test_damaged_sqlite_pages_make_healthz_say_so(
    sqlite_url: str,
    serve: Callable[..., httpx.Client],
    table: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SQLite file whose deliveries (or transitions) pages are damaged: deliveries 503, and
    /healthz 503 with SQLite's reason (it used to answer ok: the database still answered
    SELECT 1; then, for transitions, 5 of 5: the probe wrote only a deliveries row)."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(started("s-1"))
    path = _sqlite_path(sqlite_url)
    with sqlite3.connect(path) as lite:
        (root,) = lite.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (page_size,) = lite.execute("PRAGMA page_size").fetchone()
    lite.close()
    with path.open("r+b") as damaged:
        damaged.seek((root - 1) * page_size)
        damaged.write(b"\xff" * page_size)
    with Tracker(sqlite_url) as tracker:
        client = serve(tracker)
        health = client.get("/healthz")
        assert post(client, started("s-2")).status_code == 503
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "reason": "database damaged"}
    (line,) = health_lines(caplog)
    assert "malformed" in line


def test_read_only_postgres_database_makes_healthz_say_so(
    postgres_url: str,
    postgres_server: Any,
    serve: Callable[..., httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PostgreSQL database switched to read-only: deliveries 503, /healthz 503 with the reason."""
    name = postgres_url.rsplit("/", 1)[1]
    with Tracker(postgres_url) as tracker:
        client = serve(tracker)
        assert client.get("/healthz").status_code == 200
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                    sql.Identifier(name)
                )
            )
            # The receiver's connections reconnect, and find the database read-only.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        assert post(client, started("s-1")).status_code == 503
        health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "reason": "database refuses writes"}
    (line,) = health_lines(caplog)
    assert "read-only" in line


# --- a deleted SQLite file ------------------------------------------------------------------------


def test_a_deleted_sqlite_file_is_put_back_from_the_open_connection(
    sqlite_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """Its file deleted, the receiver saves it through its open connection, puts it back at the
    path and goes on answering 200 (webhook and health): nothing acknowledged vanishes with the
    process."""
    path = _sqlite_path(sqlite_url)
    with Tracker(sqlite_url) as tracker:
        client = serve(tracker)
        assert post(client, started("s-1")).status_code == 200
        path.unlink()
        answers = [post(client, started(f"s-{i}")).status_code for i in range(2, 12)]
        assert answers == [200] * 10
        assert client.get("/healthz").json() == {"status": "ok"}
    with Tracker(sqlite_url) as reopened:
        assert len(reopened.streams()) == 11
    assert not list(path.parent.glob("*.recovered-*"))


def test_deleted_sqlite_file_with_a_backup_in_its_place_answers_503_until_a_restart(
    sqlite_url: str,
    tmp_path: Path,
    serve: Callable[..., httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A file deleted and a backup put in its place: the deleted file is kept beside it as
    <path>.recovered-<time> (every delivery in it), and the receiver answers 503 (webhook and
    health) naming that copy; the backup is another file, which only a restart adopts (it may
    lack what was acknowledged since the backup)."""
    path = _sqlite_path(sqlite_url)
    with Tracker(sqlite_url) as tracker:
        client = serve(tracker)
        assert post(client, started("s-1")).status_code == 200
        backup = tmp_path / "backup.db"
        with sqlite3.connect(path) as source, sqlite3.connect(backup) as copy:
            source.backup(copy)
        source.close()
        copy.close()
        assert post(client, started("s-2")).status_code == 200
        path.unlink()
        shutil.move(backup, path)
        answers = [post(client, started(f"s-{i}")).status_code for i in range(3, 13)]
        health = client.get("/healthz")
        assert answers == [503] * 10
        assert health.status_code == 503
        (kept,) = path.parent.glob(f"{path.name}.recovered-*")
        assert str(kept) not in health.text
        assert health.json()["reason"] in HEALTH_REASONS
        (line,) = health_lines(caplog)
        assert str(kept) in line
        assert "replaced" not in line
    with Tracker(sqlite_url) as restarted:
        client = serve(restarted)
        assert post(client, started("s-13")).json()["outcome"] == "applied"
        assert client.get("/healthz").json() == {"status": "ok"}
    with Tracker(sqlite_url) as reopened:
        assert sorted(s.stream_id for s in reopened.streams()) == ["s-1", "s-13"]
    with Tracker(f"sqlite:///{kept}") as recovered:
        assert sorted(s.stream_id for s in recovered.streams()) == ["s-1", "s-2"]


def test_a_deleted_file_opened_by_sqlite_uri_is_noticed_too(tmp_path: Path) -> None:
    """A database opened by SQLite URI (uri=true) whose file is deleted is put back at its path
    by the next write, and reopened by its URI."""
    path = tmp_path / "rtms.db"
    with Tracker(f"sqlite:///file:{path}?uri=true") as tracker:
        tracker.ingest(started("s-1"))
        path.unlink()
        assert tracker.ingest(started("s-2")).outcome.value == "applied"
        assert path.exists()
    with Tracker(f"sqlite:///{path}") as reopened:
        assert sorted(s.stream_id for s in reopened.streams()) == ["s-1", "s-2"]


@pytest.mark.parametrize("uri", [False, True], ids=["path", "sqlite-uri"])
def test_no_new_connection_opens_the_path_while_the_file_is_moved_away(
    tmp_path: Path, uri: bool
) -> None:
    """The engine a user may use (``Tracker.engine``) and every read refuse a new connection
    while the file is away (one would make an empty file there, and take the live -wal for its
    own); once it is back, connections open and every acknowledged write is there."""
    path = tmp_path / "rtms.db"
    with Tracker(f"sqlite:///file:{path}?uri=true" if uri else f"sqlite:///{path}") as tracker:
        tracker.ingest(started("s-1"))
        tracker.engine.dispose()  # no pooled connection to the file: the next one opens the path
        moved = path.with_name("rtms.db.moved")
        path.rename(moved)
        with pytest.raises(DatabaseUnavailable, match="moved away"):
            tracker.engine.connect()
        with pytest.raises(DatabaseUnavailable, match="moved away"):
            tracker.schema_revision()
        assert not path.exists()
        assert Path(f"{path}-wal").exists()
        moved.rename(path)
        with tracker.engine.connect():
            pass
        assert tracker.ingest(started("s-2")).outcome.value == "applied"
    with Tracker(f"sqlite:///{path}") as reopened:
        assert sorted(s.stream_id for s in reopened.streams()) == ["s-1", "s-2"]


@pytest.mark.parametrize("deleted_at", [5, 20], ids=["midway", "after-the-last-commit"])
def test_a_bulk_load_into_a_deleted_file_puts_it_back(tmp_path: Path, deleted_at: int) -> None:
    """A file deleted during ingest_many, even after its last commit: the load ends with every
    delivery in the file put back at the path (saved from the open connection)."""
    path = tmp_path / "rtms.db"

    def bodies() -> Iterator[bytes]:
        for n in range(21):
            if n == deleted_at:
                path.unlink()
            if n < 20:
                yield started(f"s-{n}")

    with Tracker(f"sqlite:///{path}") as tracker:
        tracker.ingest(started("s-first"))
        tracker.ingest_many(bodies(), batch_size=1)
        assert path.exists()
    with Tracker(f"sqlite:///{path}") as reopened:
        assert len(reopened.streams()) == 21


# --- durability -----------------------------------------------------------------------------------


def _synchronous(tracker: Tracker) -> int:
    # The pragma of the writer's own connection.
    writer: Any = tracker._store._writer
    (level,) = writer._held[0].execute("PRAGMA synchronous").fetchone()
    return int(level)


def test_sqlite_commits_that_answer_a_sender_are_synced_and_bulk_loads_are_not(
    sqlite_url: str,
) -> None:
    """ingest commits with synchronous=FULL (2): power-loss safe; ingest_many with NORMAL (1)."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(started("s-1"))
        assert _synchronous(tracker) == 2
        tracker.ingest_many([started("s-2")])
        assert _synchronous(tracker) == 1
        tracker.ingest(started("s-3"))
        assert _synchronous(tracker) == 2


# --- the read API ---------------------------------------------------------------------------------


def test_read_api_answers_503_when_the_store_fails(
    db_url: str, request: pytest.FixtureRequest, serve: Callable[..., httpx.Client]
) -> None:
    """With the store gone (SQLite: the tables it reads dropped; PostgreSQL: the database
    dropped), the read API answers 503 like the webhook, not 500."""
    with Tracker(db_url) as tracker:
        client = serve(tracker, api_token=TOKEN)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/streams", headers=auth).status_code == 200
        if db_url.startswith("sqlite"):
            with sqlite3.connect(_sqlite_path(db_url)) as lite:
                lite.execute("DROP TABLE streams")
                lite.execute("DROP TABLE stop_reason_rollup")
            lite.close()
        else:
            name = db_url.rsplit("/", 1)[1]
            server = request.getfixturevalue("postgres_server")
            with psycopg.connect(server.conninfo(), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        for path in ("/streams", "/streams/s-1", "/stats/stop-reasons"):
            response = client.get(path, headers=auth)
            assert (response.status_code, response.json()) == (
                503,
                {"detail": "the store is unavailable; retry later"},
            )


# --- connections ----------------------------------------------------------------------------------


def _closed_by_server(conn: socket.socket, within: float) -> bool:
    conn.settimeout(within)
    try:
        return conn.recv(1024) == b""
    except TimeoutError:
        return False


def test_idle_and_slow_connections_are_closed(sqlite_url: str, tmp_path: Path) -> None:
    """A connection that sends nothing, and one sending headers a byte at a time, are closed
    after the request timeout; a kept-alive connection after the keep-alive timeout."""
    options = "request_timeout=1, keep_alive_timeout=1"
    with serving_process(sqlite_url, tmp_path, options=options) as url:
        port = int(url.rsplit(":", 1)[1])
        with (
            socket.create_connection(("127.0.0.1", port)) as idle,
            socket.create_connection(("127.0.0.1", port)) as slow,
        ):
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert _closed_by_server(idle, HELD)
            assert _closed_by_server(slow, HELD)
        with httpx.Client(base_url=url) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(3)
            assert client.get("/healthz").status_code == 200  # on a new connection


def test_thousands_of_idle_connections_do_not_lock_senders_out_or_flood_the_log(
    sqlite_url: str, tmp_path: Path
) -> None:
    """With a file descriptor limit of 256 and 600 idle connections opened, genuine deliveries
    are still answered 200, and the log stays small: no accept() traceback per connection."""
    with serving_process(sqlite_url, tmp_path, options="request_timeout=2", nofile=256) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = []
        for _ in range(600):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break  # the kernel's queue is full: the flood is refused at the door
        answers = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(10):
                body = started(f"s-{i}")
                deadline = time.monotonic() + 20
                while True:
                    try:
                        response = client.post("/webhook", content=body, headers=signed(body))
                    except httpx.TransportError:
                        response = None  # closed at once: over the connection limit
                    if response is not None and response.status_code == 200:
                        break
                    assert time.monotonic() < deadline, "a genuine delivery never got through"
                    time.sleep(0.2)
                answers.append(response.json()["outcome"])
        for conn in idle:
            conn.close()
    log = (tmp_path / "server.log").read_text()
    assert answers == ["applied"] * 10
    assert log.count("Traceback") <= 1
    assert len(log) < 100_000


# --- the log --------------------------------------------------------------------------------------


def test_a_failing_store_logs_one_line_per_delivery_and_a_traceback_once(
    sqlite_url: str, serve: Callable[..., httpx.Client], caplog: pytest.LogCaptureFixture
) -> None:
    """20 deliveries failing alike: 20 ERROR lines naming the failure, at most one traceback."""
    caplog.set_level(logging.INFO, "rtms_lifecycle.server")
    with Tracker(sqlite_url) as tracker:
        client = serve(tracker)
        with sqlite3.connect(_sqlite_path(sqlite_url)) as lite:
            lite.execute("DROP TABLE deliveries")
        lite.close()
        assert {post(client, started(f"s-{i}")).status_code for i in range(20)} == {503}
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 20
    assert sum(1 for r in failures if r.exc_info) <= 1
    assert all("no such table" in r.getMessage() for r in failures if not r.exc_info)


def test_ingest_batch_gives_each_delivery_its_own_result(db_url: str) -> None:
    """ingest_batch records several deliveries in one commit, each with its own outcome."""
    bodies = [started("s-1"), started("s-1"), b"not json", started("s-2")]
    with Tracker(db_url) as tracker:
        results = tracker.ingest_batch(bodies, timeout=5)
        assert [r.outcome.value for r in results] == ["applied", "duplicate", "rejected", "applied"]
        assert len(tracker.deliveries()) == 4


def test_a_body_that_arrives_too_slowly_is_answered_408(
    sqlite_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """A sender that stops halfway through its body gets 408 after the request timeout."""
    with Tracker(sqlite_url) as tracker:
        client = serve(tracker, request_timeout=1)
        port = client.base_url.port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b'POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"ev')
            raw.settimeout(HELD)
            answer = raw.recv(1024)
        assert answer.startswith(b"HTTP/1.1 408")
        assert tracker.deliveries() == []


def trickle_body(raw: socket.socket, begun: float, every: float) -> tuple[bytes, float]:
    """Send a body byte every ``every`` seconds until an answer comes: it, and the seconds
    since ``begun``."""
    raw.settimeout(every)
    answer = b""
    while not answer and time.monotonic() - begun < HELD:
        raw.sendall(b"x")
        with contextlib.suppress(TimeoutError):
            answer = raw.recv(1024)
    return answer, time.monotonic() - begun


def test_a_slow_request_is_answered_408_within_the_request_timeout_of_its_first_byte(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Headers over 2 s, then a body a byte every half second: 408 within the request timeout
    (3 s) of the first byte (the body's wait used to start after the headers: 10 s in all)."""
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
    with serving_process(sqlite_url, tmp_path, options="request_timeout=3") as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            begun = time.monotonic()
            for byte in head:
                raw.sendall(bytes([byte]))
                time.sleep(2 / len(head))
            answer, took = trickle_body(raw, begun, 0.5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert took < 3.6


def test_a_wait_before_the_first_byte_counts_in_the_request_timeout(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A connection silent for 2 s, then headers and a body a byte at a time: 408 within the
    request timeout (3 s) of the opening (it counted from the first byte: up to twice that)."""
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
    with serving_process(sqlite_url, tmp_path, options="request_timeout=3") as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            begun = time.monotonic()
            time.sleep(2)
            raw.sendall(head)
            answer, took = trickle_body(raw, begun, 0.25)
    assert answer.startswith(b"HTTP/1.1 408")
    assert took < 3.9  # from the first byte it would be 5 s


@pytest.mark.parametrize("path", ["/webhook", "/dashboard/login"])
def test_a_trickling_sender_is_cut_off_with_its_408(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The 408 closes the connection, the webhook's as the sign-in form's: kept open, the
    server went on reading the trickle until its request timeout ran again (408 at 5 s, closed
    at 10 s)."""
    monkeypatch.setenv(API_TOKEN_ENV, "t" * 32)  # the dashboard exists only with a token
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n".encode()
    with serving_process(sqlite_url, tmp_path, options="request_timeout=2") as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(head)
            answer, _ = trickle_body(raw, time.monotonic(), 0.25)
            answered = time.monotonic()
            closed = False
            while not closed and time.monotonic() - answered < HELD:
                try:
                    raw.sendall(b"x")
                    closed = raw.recv(1024) == b""
                except TimeoutError:
                    continue
                except OSError:  # reset: closed too
                    closed = True
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in answer.lower()
    assert closed
    assert time.monotonic() - answered < 1.5


def test_an_oversized_request_head_is_answered_431_and_closed(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A 1 MB header is not read whole (httptools has no limit of its own): 431 and the
    connection closed once the head passes MAX_HEADER_BYTES; a 32 KiB one is read (401)."""
    with serving_process(sqlite_url, tmp_path) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.settimeout(10)
            raw.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = 0
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while sent < 1024 * 1024:
                    raw.sendall(b"a" * 16384)
                    sent += 16384
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := raw.recv(4096):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 431"), answer
        big = {"x-big": "a" * 32 * 1024}
        response = httpx.post(f"{url}/webhook", content=b"{}", headers=big, timeout=10)
        assert response.status_code == 401


def test_connections_over_the_limit_get_a_fast_503(sqlite_url: str, tmp_path: Path) -> None:
    """With the connection limit full of idle connections, a real delivery is answered 503 at
    once (it used to be reset, for about 4 s of retries), and 200 once the limit has room."""
    with serving_process(sqlite_url, tmp_path, options="limit_concurrency=4") as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        body = started("s-1")
        with httpx.Client(base_url=url, timeout=10) as client:
            response, took = _timed(
                lambda: client.post("/webhook", content=body, headers=signed(body))
            )
            assert response.status_code == 503
            assert took < 1
            for conn in idle:
                conn.close()
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10) as client:
            answer = client.post("/webhook", content=body, headers=signed(body))
        assert answer.json()["outcome"] == "applied"


def post_padded(client: httpx.Client, stream: str, size: int = 0) -> int:
    body = _deliveries.raw("started", stream, T0 + 1_000)
    if size:
        body = body[:-1] + b', "padding": "' + b"x" * size + b'"}'
    return client.post("/webhook", content=body, headers=signed(body)).status_code


def health_of(client: httpx.Client) -> tuple[int, str]:
    answer = client.get("/healthz")
    reason: str = answer.json().get("reason", "")
    assert reason in ("", *HEALTH_REASONS), reason
    return answer.status_code, reason


def health_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the health check logged: the database's own words, which /healthz does not say."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("health check: the store cannot record deliveries")
    ]


# --- /healthz never says ok while deliveries fail: SQLite ---------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path, skip_or_fail: Callable[[str], NoReturn]) -> Iterator[Path]:
    """A 3 MB tmpfs (root only: CI runs the tests as root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """A file taking every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_makes_healthz_say_so_after_failed_deliveries(
    tmpfs: Path, serve: Callable[..., httpx.Client], caplog: pytest.LogCaptureFixture
) -> None:
    """A full file system fails only commits, which a probe rolled back never meets (10 of 10
    checks said ok): after 3 failed deliveries /healthz answers 503 saying why and since when;
    the next delivery written resets it, and one line says writes work again."""
    caplog.set_level(logging.WARNING, "rtms_lifecycle.store")
    with Tracker(f"sqlite:///{tmpfs / 'rtms.db'}") as tracker:
        client = serve(tracker)
        assert post_padded(client, "s-0") == 200
        filler = fill(tmpfs)
        answers = [post_padded(client, f"s-{i}", size=20_000) for i in range(1, 11)]
        assert answers.count(503) >= 3
        checks = [health_of(client) for _ in range(10)]
        assert checks == [(503, "disk full")] * 10, checks
        (line,) = health_lines(caplog)  # once, not at each check
        assert "delivery writes failed (since " in line
        assert "full" in line
        filler.unlink()
        assert post_padded(client, "s-11") == 200
        assert health_of(client) == (200, "")
        assert post_padded(client, "s-12") == 200
    again = [r.getMessage() for r in caplog.records if "records deliveries again" in r.getMessage()]
    assert len(again) == 1, again
    assert f"after {answers.count(503)} failed writes in a row" in again[0]


def test_a_full_temporary_folder_does_not_fail_a_bulk_load(tmpfs: Path, tmp_path: Path) -> None:
    """A batch's statements journal their pages, and SQLite moved that journal to a file in the
    temporary folder: with that folder full (the database's disk not), ``ingest`` of 2,000
    deliveries failed with "database or disk is full". The writer keeps it in memory."""
    fill(tmpfs)
    load = tmp_path / "load.jsonl"
    load.write_bytes(b"\n".join(_deliveries.raw("started", f"s-{i}", T0 + i) for i in range(2_000)))
    db = f"sqlite:///{tmp_path / 'rtms.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "rtms_lifecycle", "--db", db, "ingest", str(load), "--json"],
        capture_output=True,
        env={**os.environ, "SQLITE_TMPDIR": str(tmpfs)},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    with Tracker(db) as tracker:
        assert len(tracker.active_streams()) == 2_000


# --- /healthz never says ok while deliveries fail: PostgreSQL -----------------------------------


@pytest.mark.parametrize("table", ["streams", "transitions", "subscriptions", "deliveries"])
def test_a_locked_postgres_table_makes_healthz_say_so(
    postgres_url: str, serve: Callable[..., httpx.Client], table: str
) -> None:
    """Another connection holds LOCK TABLE on a table a delivery writes (subscriptions: read by
    the feed trigger): deliveries 503 store_busy and /healthz 503 (13 of 13 said ok); released,
    both recover."""
    with Tracker(postgres_url) as tracker:
        client = serve(tracker, store_timeout=1)
        assert post_padded(client, "s-0") == 200
        with psycopg.connect(_conninfo(postgres_url)) as locker:
            locker.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
            )
            status = post_padded(client, "s-1")
            checks = [health_of(client) for _ in range(3)]
            locker.rollback()
        assert status == 503
        assert all(code == 503 and "busy" in reason for code, reason in checks), checks
        assert post_padded(client, "s-2") == 200
        assert health_of(client) == (200, "")


def test_a_revoked_insert_on_transitions_makes_healthz_say_so(
    postgres_url: str,
    postgres_server: Any,
    serve: Callable[..., httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app's role loses INSERT on transitions: deliveries 503 and /healthz 503 naming the
    refusal (5 of 5 said ok)."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    database = postgres_url.rsplit("/", 1)[1]
    with Tracker(postgres_url):
        pass  # the schema, made by the owner
    with psycopg.connect(_conninfo(postgres_url), autocommit=True) as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for grant in (
            "GRANT ALL ON ALL TABLES IN SCHEMA public TO {}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}",
        ):
            owner.execute(sql.SQL(grant).format(sql.Identifier(role)))
    app_url = (
        f"postgresql+psycopg://{role}@{postgres_server.host}:{postgres_server.port}/{database}"
    )
    with Tracker(app_url) as tracker:
        client = serve(tracker)
        assert post_padded(client, "s-0") == 200
        assert health_of(client) == (200, "")
        with psycopg.connect(_conninfo(postgres_url), autocommit=True) as owner:
            owner.execute(
                sql.SQL("REVOKE INSERT ON transitions FROM {}").format(sql.Identifier(role))
            )
        assert post_padded(client, "s-1") == 503
        checks = [health_of(client) for _ in range(5)]
    assert checks == [(503, "database refuses writes")] * 5, checks
    (line,) = health_lines(caplog)  # once, not at each check
    assert "permission denied" in line


def test_a_stopped_postgres_server_is_unreachable_and_only_the_log_says_where(
    own_postgres: PostgresServer,
    serve: Callable[..., httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stopped: /healthz (public) answers 503 "database unreachable" and nothing of
    the server's address (it said "connection to server at 127.0.0.1, port N failed"); the log
    says it once, however often the load balancer asks."""
    url = own_postgres.url(create_database(own_postgres))
    with Tracker(url) as tracker:
        client = serve(tracker, store_timeout=2)
        assert health_of(client) == (200, "")
        with stopped(own_postgres):
            answers = [client.get("/healthz") for _ in range(4)]
        assert health_of(client) == (200, "")
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "reason": "database unreachable"}
    (line,) = health_lines(caplog)
    assert str(own_postgres.port) in line


@pytest.mark.parametrize("first", ["healthz", "read", "delivery"])
@pytest.mark.parametrize("how", ["restart", "terminate"])
def test_connections_the_server_closed_are_replaced_at_the_first_request(
    postgres_url: str,
    postgres_server: PostgresServer,
    serve: Callable[..., httpx.Client],
    caplog: pytest.LogCaptureFixture,
    how: str,
    first: str,
) -> None:
    """PostgreSQL restarted under a running receiver, or its connections ended by an
    administrator: the first /healthz, delivery and read after it answer 200 (the first
    /healthz answered 503 "terminating connection due to administrator command")."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with Tracker(postgres_url) as tracker:
        client = serve(tracker, api_token=TOKEN)
        # Several pooled connections: every kind of request, some at once.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: post(client, started(f"s-{i}")), range(8)))
            list(pool.map(lambda _: client.get("/streams", headers=auth), range(8)))
        assert health_of(client) == (200, "")
        if how == "restart":
            restart_server(postgres_server)
        else:
            with psycopg.connect(postgres_server.conninfo(), autocommit=True) as admin:
                # With a timeout it returns once each backend has ended, not when signalled.
                ended = admin.execute(
                    "SELECT bool_and(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
                    " WHERE datname = %s",
                    (postgres_url.rsplit("/", 1)[1],),
                ).fetchone()
            assert ended == (True,)
        requests = {
            "healthz": lambda: client.get("/healthz"),
            "read": lambda: client.get("/streams", headers=auth),
            "delivery": lambda: post(client, started("s-after")),
        }
        order = [first, *(name for name in requests if name != first)]
        answers = {name: requests[name]().status_code for name in order}
        assert answers == dict.fromkeys(order, 200), answers
        assert client.get("/streams/s-after", headers=auth).status_code == 200
    assert health_lines(caplog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_prune_whose_file_is_deleted_and_restored_midway_fails(tmp_path: Path) -> None:
    """rm of the file during a prune's first step: the store restores it at its path, and the
    prune's next step fails naming why instead of writing to the deleted file and reporting
    every removal (it used to report 119,998 removed deliveries the file still held)."""
    path = tmp_path / "rtms.db"
    with Tracker(str(path)) as tracker:
        tracker.ingest_many(
            [started(f"s-{n}") for n in range(450)]
            + [_deliveries.raw("stopped", f"s-{n}", T0 + 2_000) for n in range(450)]
        )
    store = Store(str(path))
    calls = 0

    def now() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            path.unlink()
        return now_ms()

    try:
        with pytest.raises(StoreError, match="deleted and restored at its path while this"):
            store_retention.prune(store, now_ms(), now, dry_run=False, vacuum=False)
        assert store.restores == 1
    finally:
        store.close()
    with sqlite3.connect(path) as lite:
        # The first step (200 streams) was committed before the restore, and is in the file.
        assert lite.execute("SELECT count(*) FROM streams").fetchone() == (250,)
        assert lite.execute("SELECT count(*) FROM prunes").fetchone() == (1,)
    lite.close()


def test_a_connection_on_a_descriptor_past_1024_is_not_taken_for_closed(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """A busy receiver holds more than 1,024 descriptors: the look at a pooled connection's
    socket must work there too (select() refuses them, and every checkout would reconnect)."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as conn:
            assert conn.pgconn.socket > 1024
            assert not closed_by_server(conn)
            with psycopg.connect(postgres_server.conninfo(), autocommit=True) as admin:
                pid = conn.info.backend_pid
                admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
            assert closed_by_server(conn)
    finally:
        for fd in held:
            os.close(fd)
