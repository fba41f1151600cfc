"""/healthz never says ok while deliveries fail: faults caused for real (a full disk, a damaged
page, a locked table, a revoked privilege), on the real app served on loopback."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psycopg
import pytest
from psycopg import sql

from rtms_lifecycle import Tracker
from rtms_lifecycle.server import API_TOKEN_ENV
from rtms_lifecycle.webhook import SECRET_ENV
from tests import _deliveries
from tests._live import app_clients, signed


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (SECRET_ENV, API_TOKEN_ENV, "RTMS_LIFECYCLE_DB"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def serve() -> Iterator[Callable[..., httpx.Client]]:
    with app_clients(timeout=60) as start:
        yield start


def post(client: httpx.Client, stream: str, size: int = 0) -> int:
    body = _deliveries.raw("started", stream, 1_000)
    if size:
        body = body[:-1] + b', "padding": "' + b"x" * size + b'"}'
    return client.post("/webhook", content=body, headers=signed(body)).status_code


def health(client: httpx.Client) -> tuple[int, str]:
    answer = client.get("/healthz")
    return answer.status_code, answer.json().get("reason", "")


# --- SQLite ---------------------------------------------------------------------------------------


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
    tmpfs: Path, serve: Callable[..., httpx.Client]
) -> None:
    """A full file system fails only commits, which a probe rolled back never meets (10 of 10
    checks said ok): after 3 failed deliveries /healthz answers 503 saying why and since when;
    the next delivery written resets it."""
    with Tracker(f"sqlite:///{tmpfs / 'rtms.db'}") as tracker:
        client = serve(tracker)
        assert post(client, "s-0") == 200
        filler = fill(tmpfs)
        answers = [post(client, f"s-{i}", size=20_000) for i in range(1, 11)]
        assert answers.count(503) >= 3
        checks = [health(client) for _ in range(10)]
        assert all(status == 503 for status, _ in checks), checks
        assert "delivery writes failed (since " in checks[0][1]
        assert "full" in checks[0][1]
        filler.unlink()
        assert post(client, "s-11") == 200
        assert health(client) == (200, "")


def test_a_damaged_transitions_page_makes_healthz_say_so(
    sqlite_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """A damaged page of the transitions table: deliveries 503, and /healthz 503 (5 of 5 said
    ok: the probe wrote only a deliveries row)."""
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(_deliveries.raw("started", "s-1", 1_000))
    with sqlite3.connect(path) as lite:
        (root,) = lite.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'transitions'"
        ).fetchone()
        (page_size,) = lite.execute("PRAGMA page_size").fetchone()
    lite.close()
    with path.open("r+b") as damaged:
        damaged.seek((root - 1) * page_size)
        damaged.write(b"\xff" * page_size)
    with Tracker(sqlite_url) as tracker:
        client = serve(tracker)
        checks = [health(client) for _ in range(5)]
        assert post(client, "s-2") == 503
    assert all(status == 503 and "malformed" in reason for status, reason in checks), checks


# --- PostgreSQL -----------------------------------------------------------------------------------


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.mark.parametrize("table", ["streams", "transitions", "subscriptions", "deliveries"])
def test_a_locked_postgres_table_makes_healthz_say_so(
    postgres_url: str, serve: Callable[..., httpx.Client], table: str
) -> None:
    """Another connection holds LOCK TABLE on a table a delivery writes (subscriptions: read by
    the feed trigger): deliveries 503 store_busy and /healthz 503 (13 of 13 said ok); released,
    both recover."""
    with Tracker(postgres_url) as tracker:
        client = serve(tracker, store_timeout=1)
        assert post(client, "s-0") == 200
        with psycopg.connect(_conninfo(postgres_url)) as locker:
            locker.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
            )
            status = post(client, "s-1")
            checks = [health(client) for _ in range(3)]
            locker.rollback()
        assert status == 503
        assert all(code == 503 and "busy" in reason for code, reason in checks), checks
        assert post(client, "s-2") == 200
        assert health(client) == (200, "")


def test_a_revoked_insert_on_transitions_makes_healthz_say_so(
    postgres_url: str, postgres_server: Any, serve: Callable[..., httpx.Client]
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
        assert post(client, "s-0") == 200
        assert health(client) == (200, "")
        with psycopg.connect(_conninfo(postgres_url), autocommit=True) as owner:
            owner.execute(
                sql.SQL("REVOKE INSERT ON transitions FROM {}").format(sql.Identifier(role))
            )
        assert post(client, "s-1") == 503
        checks = [health(client) for _ in range(5)]
    assert all(code == 503 and "permission denied" in reason for code, reason in checks), checks
