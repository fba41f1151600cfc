"""Operators' file operations on a live SQLite database (mv, rm, a backup put in place) under a
real ``serve`` process, ended by kill -9: nothing acknowledged is lost (docs/operations.md)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from rtms_lifecycle.exceptions import DatabaseUnavailable, StoreError
from rtms_lifecycle.receiver.settings import API_TOKEN_ENV
from rtms_lifecycle.store.errors import HEALTH_REASONS
from rtms_lifecycle.tracker import Tracker
from rtms_lifecycle.webhook import SECRET_ENV
from tests import _deliveries
from tests._live import free_port, receiver_process, signed

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("RTMS_LIFECYCLE_DB", raising=False)


class Sender:
    """Posts ``started`` deliveries of new streams; remembers which were answered 200."""

    def __init__(self, client: httpx.Client, prefix: str = "s", log: Path | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.log = log
        self.sent = 0
        self.acknowledged: list[str] = []

    def post(self, n: int) -> list[int]:
        statuses = []
        for _ in range(n):
            self.sent += 1
            stream = f"{self.prefix}-{self.sent}"
            body = _deliveries.raw("started", stream, T0 + 1_000)
            status = self.client.post("/webhook", content=body, headers=signed(body)).status_code
            if status == 200:
                self.acknowledged.append(stream)
            statuses.append(status)
        return statuses

    def health(self) -> httpx.Response:
        answer = self.client.get("/healthz")
        if answer.status_code == 503:
            assert answer.json()["reason"] in HEALTH_REASONS, answer.text
        return answer

    def health_detail(self) -> str:
        """What the receiver's log (``log``) last said of its health: the database's own words,
        which /healthz does not answer."""
        assert self.log is not None
        said = [
            line
            for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines()
            if "health check: the store cannot record deliveries" in line
        ]
        assert said, self.log.read_text()
        return said[-1]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, Sender, subprocess.Popen[bytes]]]:
    path = tmp_path / "y.db"
    with (
        receiver_process(f"sqlite:///{path}", tmp_path) as (url, process),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield path, Sender(client, log=tmp_path / "server.log"), process


def killed(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def stored(path: Path) -> list[str]:
    with sqlite3.connect(path) as lite:
        assert lite.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = [row[0] for row in lite.execute("SELECT stream_id FROM streams ORDER BY rowid")]
    lite.close()
    return rows


def lost(acknowledged: list[str], path: Path) -> list[str]:
    kept = set(stored(path))
    return [stream for stream in acknowledged if stream not in kept]


def test_moving_the_file_away_and_back_loses_nothing(
    live: tuple[Path, Sender, subprocess.Popen[bytes]],
) -> None:
    """20 acknowledged; mv away: 503s and /healthz 503, -wal and -shm left alone; mv back: 200s
    again; after kill -9 all 25 acknowledged are stored (it used to keep 5, ids reused)."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    moved = path.with_name("y.db.moved")
    path.rename(moved)
    assert sender.post(3) == [503] * 3
    health = sender.health()
    assert health.status_code == 503
    assert "moved away" in sender.health_detail()
    assert Path(f"{path}-wal").exists()
    assert Path(f"{path}-shm").exists()
    assert not path.exists()
    moved.rename(path)
    assert sender.post(5) == [200] * 5
    assert sender.health().status_code == 200
    killed(process)
    assert len(sender.acknowledged) == 25
    assert lost(sender.acknowledged, path) == []
    assert len(stored(path)) == 25


def test_reads_while_the_file_is_moved_away_open_no_other_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Prometheus scrape, the API and the dashboard while the file is moved away: no empty
    file is made at the path and the live -wal stays (a scrape used to do both, and a restart
    then found none of the 20 acknowledged); moved back, all 25 acknowledged are stored."""
    monkeypatch.setenv(API_TOKEN_ENV, "scrape-token-for-tests")
    path = tmp_path / "y.db"
    with (
        receiver_process(f"sqlite:///{path}", tmp_path) as (url, process),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        sender = Sender(client)
        assert sender.post(20) == [200] * 20
        moved = path.with_name("y.db.moved")
        path.rename(moved)
        bearer = {"Authorization": "Bearer scrape-token"}
        for page in ("/metrics", "/streams", "/dashboard", "/metrics"):
            status = client.get(page, headers=bearer).status_code
            assert status < 500 or status == 503, page
        assert not path.exists()
        assert Path(f"{path}-wal").exists()
        moved.rename(path)
        assert sender.post(5) == [200] * 5
        killed(process)
    assert lost(sender.acknowledged, path) == []
    assert len(stored(path)) == 25


def test_deleting_the_wal_alone_loses_nothing_acknowledged(
    live: tuple[Path, Sender, subprocess.Popen[bytes]],
) -> None:
    """20 acknowledged; rm y.db-wal; 50 more: each answered 200 is stored after kill -9 (it used
    to lose all 70): the open connection copies the deleted log into the file, then reopens."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    Path(f"{path}-wal").unlink()
    answers = sender.post(50)
    assert answers == [200] * 50
    assert sender.health().status_code == 200
    killed(process)
    assert len(sender.acknowledged) == 70
    assert lost(sender.acknowledged, path) == []


def test_a_backup_put_in_place_of_the_live_file_is_refused_until_the_original_is_back(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A 10-row backup moved over the live file (the original set aside): 503s and /healthz 503
    naming it, and the backup untouched (it used to get the live -wal laid over it: 50 rows);
    the original back: 200s; after kill -9 all 50 acknowledged are stored."""
    path, sender, process = live
    assert sender.post(10) == [200] * 10
    backup = tmp_path / "backup.db"
    with sqlite3.connect(path) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    source.close()
    copy.close()
    assert sender.post(30) == [200] * 30
    original = tmp_path / "y.db.original"
    os.link(path, original)
    kept = tmp_path / "backup.kept"
    os.link(backup, kept)
    before = backup.read_bytes()
    backup.rename(path)
    assert sender.post(10) == [503] * 10
    health = sender.health()
    assert health.status_code == 503
    assert "replaced" in sender.health_detail()
    original.rename(path)
    assert sender.post(10) == [200] * 10
    killed(process)
    assert kept.read_bytes() == before  # nothing written into the backup
    assert len(stored(kept)) == 10
    assert len(sender.acknowledged) == 50
    assert lost(sender.acknowledged, path) == []


def test_db_backup_copies_a_live_database_consistently(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """`rtms-lifecycle db backup` while the receiver writes: the copy holds every delivery
    acknowledged before it, and is a sound SQLite file; an existing target, or one in a missing
    folder, is bad input (exit 2, nothing written); PostgreSQL is told to use pg_dump (exit 2)."""
    path, sender, _ = live
    assert sender.post(15) == [200] * 15
    target = tmp_path / "copy.db"
    cli = [
        sys.executable,
        "-c",
        "from rtms_lifecycle.cli import main; main()",
        "--db",
        f"sqlite:///{path}",
    ]
    done = subprocess.run([*cli, "db", "backup", str(target)], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert lost(sender.acknowledged, target) == []
    before = target.read_bytes()
    again = subprocess.run([*cli, "db", "backup", str(target)], capture_output=True, check=False)
    assert again.returncode == 2
    assert b"exists" in again.stderr
    assert target.read_bytes() == before
    nowhere = tmp_path / "missing" / "copy.db"
    lost_folder = subprocess.run(
        [*cli, "db", "backup", str(nowhere)], capture_output=True, check=False
    )
    assert lost_folder.returncode == 2
    assert b"is not a folder" in lost_folder.stderr
    assert not nowhere.parent.exists()
    pg = [
        sys.executable,
        "-c",
        "from rtms_lifecycle.cli import main; main()",
        "--db",
        "postgresql://x@127.0.0.1:1/x",
    ]
    advice = subprocess.run([*pg, "db", "backup", "x.db"], capture_output=True, check=False)
    assert advice.returncode == 2
    assert b"pg_dump" in advice.stderr


def test_db_backup_writes_a_new_owner_only_file_never_through_a_link(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The backup is created mode 0600 under a permissive umask; a symbolic link at the path,
    even a dangling one, is refused by name (exit 2) and its target left untouched."""
    cli = [sys.executable, "-c", "from rtms_lifecycle.cli import main; main()", "--db", sqlite_url]
    assert subprocess.run([*cli, "db", "upgrade"], capture_output=True, check=False).returncode == 0
    target = tmp_path / "copy.db"
    done = subprocess.run(
        [*cli, "db", "backup", str(target)],
        capture_output=True,
        check=False,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    victim = tmp_path / "victim.db"
    link = tmp_path / "bk.db"
    link.symlink_to(victim)
    dangling = subprocess.run([*cli, "db", "backup", str(link)], capture_output=True, check=False)
    assert dangling.returncode == 2
    assert f"{link} is a symbolic link".encode() in dangling.stderr
    assert not victim.exists()
    victim.write_bytes(b"kept")
    existing = subprocess.run([*cli, "db", "backup", str(link)], capture_output=True, check=False)
    assert existing.returncode == 2
    assert b"is a symbolic link" in existing.stderr
    assert victim.read_bytes() == b"kept"


def recovered(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.recovered-*"))


def started_again_on(path: Path, sender: Sender, workdir: Path) -> None:
    """A receiver started on the file at ``path`` finds it (no new database said) and answers
    5 deliveries 200; then kill -9."""
    with (
        receiver_process(f"sqlite:///{path}", workdir) as (url, again),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        sender.client = client
        assert sender.post(5) == [200] * 5
        killed(again)
    assert "created a new, empty database" not in (workdir / "server.log").read_text()


def test_deleting_the_file_under_load_restores_it_and_loses_nothing(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """rm y.db while 4 senders post: the receiver saves the deleted file from its open
    connection and puts it back at the path; every delivery answered 200, before and after, is
    stored there after kill -9 (it used to be kept only by the deleted file, lost at restart)."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    senders = [Sender(sender.client, f"load{n}") for n in range(4)]
    started = threading.Barrier(len(senders) + 1)

    def load(one: Sender) -> list[int]:
        started.wait()
        return one.post(40)

    with ThreadPoolExecutor(len(senders)) as pool:
        answers = [pool.submit(load, one) for one in senders]
        started.wait()
        while sum(len(one.acknowledged) for one in senders) < 20:
            if all(answer.done() for answer in answers):
                break
            time.sleep(0.005)
        path.unlink()
        statuses = [status for answer in answers for status in answer.result()]
    assert set(statuses) <= {200, 503}, statuses
    assert sender.post(10) == [200] * 10
    assert sender.health().status_code == 200
    said = (tmp_path / "server.log").read_text()
    assert f"the database file {path} was deleted while open: restored at its path" in said
    assert recovered(path) == []
    killed(process)
    acknowledged = sender.acknowledged + [s for one in senders for s in one.acknowledged]
    assert len(acknowledged) >= 30 + 20
    assert lost(acknowledged, path) == []


def test_deleting_the_file_and_making_another_keeps_a_recovered_copy(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """rm y.db and an empty file made at the path: 503s and /healthz 503 naming the copy kept
    as y.db.recovered-<time>, which holds every acknowledged delivery; the empty file is left
    alone. Stopped, the copy put at the path, started: 200s, and nothing acknowledged lost."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    path.unlink()
    path.touch()
    assert sender.post(3) == [503] * 3
    (copy,) = recovered(path)
    health = sender.health()
    assert health.status_code == 503
    assert str(copy) not in health.text
    reason = sender.health_detail()
    assert str(copy) in reason
    assert "Stop the receivers" in reason
    assert path.stat().st_size == 0
    assert lost(sender.acknowledged, copy) == []
    process.terminate()
    process.wait(timeout=30)
    assert path.stat().st_size == 0
    assert recovered(path) == [copy]
    copy.rename(path)
    started_again_on(path, sender, tmp_path)
    assert len(sender.acknowledged) == 25
    assert lost(sender.acknowledged, path) == []


@pytest.mark.parametrize("then", ["SIGTERM", "/healthz"])
def test_a_deleted_file_is_saved_at_shutdown_or_health_check(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path, then: str
) -> None:
    """rm y.db, then no delivery: a SIGTERM restart (or a /healthz, 200) saves it at the path
    before the last handle goes; the restarted receiver finds every delivery (it used to start
    on a new, empty database)."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    path.unlink()
    if then == "SIGTERM":
        process.terminate()
        process.wait(timeout=30)
    else:
        assert sender.health().status_code == 200
        killed(process)
    assert "restored at its path" in (tmp_path / "server.log").read_text()
    assert lost(sender.acknowledged, path) == []
    started_again_on(path, sender, tmp_path)
    assert len(stored(path)) == 25


def test_a_new_database_file_is_said_with_the_copies_beside_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Creating a new SQLite file logs one WARNING naming it, and the recovered copies of a
    deleted database beside it; opening an existing file says nothing."""
    path = tmp_path / "y.db"
    copy = tmp_path / "y.db.recovered-20261207T101500Z"
    copy.write_bytes(b"")
    caplog.set_level(logging.WARNING, "rtms_lifecycle.store")
    Tracker(str(path)).close()
    (said,) = [r for r in caplog.records if "created a new" in r.message]
    assert said.levelno == logging.WARNING
    assert said.message.startswith(
        f"created a new, empty database at {path}; copies of a deleted database are beside "
        f"{path}: {copy}; each holds what was recorded up to its time"
    )
    assert f"Compare each with {path}" in said.message
    caplog.clear()
    Tracker(f"sqlite:///{path}").close()
    assert not [r for r in caplog.records if "created a new" in r.message]


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``rtms-lifecycle`` run in its own process from ``workdir``."""
    code = "from rtms_lifecycle.cli import main; main()"
    env = {**os.environ, SECRET_ENV: "secret-for-tests"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_no_database_is_created_beside_the_live_log_of_a_moved_one(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """mv y.db away under a receiver, then db upgrade, ingest and a second serve at y.db: each
    refused, exit 3, naming the orphaned -wal and -shm; nothing is created at y.db and the live
    -wal is untouched (SQLite used to make a 4096-byte y.db and a new -wal: all 20 lost). Moved
    back: 200s again, and after kill -9 all 25 acknowledged are stored."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    logs = (wal.stat().st_ino, shm.stat().st_ino, wal.read_bytes())
    moved = path.with_name("moved.db")
    path.rename(moved)
    deliveries = tmp_path / "in.jsonl"
    deliveries.write_bytes(_deliveries.raw("started", "ingested", T0 + 1_000) + b"\n")
    for args in (
        ("db", "upgrade"),
        ("ingest", str(deliveries)),
        ("serve", "--port", str(free_port())),
    ):
        done = cli(tmp_path, "--db", "y.db", *args)
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        said = done.stderr
        assert "a write-ahead log without its database" in said, said
        assert f"{wal}" in said or "y.db-wal" in said, said
        assert "moved or deleted while in use" in said
        assert not path.exists(), args
        assert (wal.stat().st_ino, shm.stat().st_ino) == logs[:2], args
    assert wal.read_bytes()[: len(logs[2])] == logs[2]
    moved.rename(path)
    assert sender.post(5) == [200] * 5
    killed(process)
    assert len(sender.acknowledged) == 25
    assert lost(sender.acknowledged, path) == []


def test_the_library_creates_no_database_beside_an_orphaned_log(tmp_path: Path) -> None:
    """A Tracker (plain path or URL) at a path whose file is absent but whose -wal is there is
    refused with DatabaseUnavailable naming it, and creates nothing."""
    path = tmp_path / "y.db"
    wal = Path(f"{path}-wal")
    wal.write_bytes(b"live log")
    for db in (str(path), f"sqlite:///{path}"):
        with pytest.raises(DatabaseUnavailable, match="a write-ahead log without its database"):
            Tracker(db)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["y.db-wal"]
    assert wal.read_bytes() == b"live log"


def unprivileged() -> list[str]:
    """What runs a process that a folder's permissions bind: as root, without the
    capabilities that pass them by."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder binds nothing")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_deleted_file_that_cannot_be_saved_says_do_not_restart_and_is_kept_at_shutdown(
    tmp_path: Path,
) -> None:
    """rm y.db, then its folder made read-only: the copy cannot be written, and the 503s and
    /healthz say so, and say not to restart or stop the receiver (they used to say "or the
    receiver is restarted": a restart then lost all 20). SIGTERM anyway: the copy is kept in the
    receiver's current folder, named at ERROR; put back, nothing acknowledged is lost."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / "y.db"
    with (
        receiver_process(f"sqlite:///{path}", tmp_path, prefix=unprivileged()) as (url, process),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        sender = Sender(client, log=tmp_path / "server.log")
        assert sender.post(20) == [200] * 20
        path.unlink()
        data.chmod(0o555)
        try:
            assert sender.post(3) == [503] * 3
            health = sender.health()
            assert health.status_code == 503
            assert health.json()["reason"] == "database refuses writes"
            reason = sender.health_detail()
            assert "could not be written" in reason, reason
            assert "Permission denied" in reason, reason
            assert "do NOT restart or stop this receiver" in reason, reason
            assert "restarted" not in reason
            process.terminate()
            process.wait(timeout=30)
        finally:
            data.chmod(0o755)
    said = (tmp_path / "server.log").read_text()
    (copy,) = recovered(tmp_path / "y.db")
    assert f"every delivery recorded was saved to {copy} instead" in said, said
    assert not path.exists()
    assert lost(sender.acknowledged, copy) == []
    for log in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        log.unlink(missing_ok=True)
    copy.rename(path)
    started_again_on(path, sender, tmp_path)
    assert len(sender.acknowledged) == 25
    assert lost(sender.acknowledged, path) == []


def test_a_start_beside_recovered_copies_names_them(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """rm y.db and another file made at the path: the copy is kept as y.db.recovered-<time>.
    A receiver started again on the file at the path says, at WARNING, which copies lie beside
    it and to compare them before replacing anything (that start used to be silent)."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    path.unlink()
    path.touch()
    assert sender.post(1) == [503]
    (copy,) = recovered(path)
    process.terminate()
    process.wait(timeout=30)
    (tmp_path / "server.log").unlink()
    with receiver_process(f"sqlite:///{path}", tmp_path) as (_, again):
        killed(again)
    said = (tmp_path / "server.log").read_text()
    warned = [line for line in said.splitlines() if "copies of a deleted database" in line]
    assert len(warned) == 1, said
    assert " WARNING " in warned[0]
    assert f"beside {path}: {copy};" in warned[0]
    assert "Compare each with" in warned[0]
    assert lost(sender.acknowledged, copy) == []


def test_opening_a_database_names_the_recovered_copies_beside_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The library, opening an existing database with copies beside it, warns once naming them."""
    path = tmp_path / "y.db"
    Tracker(str(path)).close()
    copy = tmp_path / "y.db.recovered-20261207T101500Z"
    copy.write_bytes(b"")
    caplog.set_level(logging.WARNING, "rtms_lifecycle.store")
    Tracker(f"sqlite:///{path}").close()
    (said,) = [r for r in caplog.records if "copies of a deleted database" in r.message]
    assert said.levelno == logging.WARNING
    assert f"beside {path}: {copy};" in said.message


def test_a_file_deleted_while_idle_is_restored_without_traffic(
    live: tuple[Path, Sender, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """rm y.db, then no delivery, no /healthz, no scrape: the receiver's periodic check saves it
    and puts it back at the path on its own, so a kill -9 afterwards loses nothing (it used to
    be noticed only at the next commit or health check: after kill -9, all 20 were lost)."""
    path, sender, process = live
    assert sender.post(20) == [200] * 20
    path.unlink()
    log = tmp_path / "server.log"
    deadline = time.monotonic() + 60
    while "restored at its path" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        assert process.poll() is None
        time.sleep(0.05)
    killed(process)
    assert recovered(path) == []
    assert lost(sender.acknowledged, path) == []


def test_the_losing_writer_of_a_deleted_file_says_to_compare_before_replacing(
    live: tuple[Path, Sender, subprocess.Popen[bytes]],
) -> None:
    """rm y.db under a receiver and a Tracker of this process, both writing: the first to
    notice puts its copy back at the path, the other keeps an older copy as
    y.db.recovered-<time>, and its advice says to compare the two before replacing anything
    (it said to put the older copy at the path: later deliveries lost)."""
    path, sender, _process = live
    assert sender.post(20) == [200] * 20
    with Tracker(str(path)) as tracker:
        tracker.ingest(_deliveries.raw("started", "t-1", T0 + 1_000))
        path.unlink()
        reasons = []
        try:
            tracker.ingest(_deliveries.raw("started", "t-2", T0 + 1_000))
        except StoreError as exc:
            reasons.append(str(exc))
        statuses = sender.post(1)
        health = sender.health()
        if health.status_code == 503:
            reasons.append(sender.health_detail())
        (copy,) = recovered(path)
        (reason,) = reasons
        assert statuses == [503 if health.status_code == 503 else 200]
    assert str(copy) in reason
    assert f"compare it with {copy}" in reason, reason
    assert "before replacing anything" in reason
    assert "Only if it is not that database: Stop the receivers" in reason
    assert lost(sender.acknowledged[:20], copy) == []
