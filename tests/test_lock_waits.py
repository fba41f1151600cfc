"""Commands against a database another process holds, or that fails mid-run, for real: a held
``BEGIN IMMEDIATE`` in another process, SIGINT sent to the `rtms-lifecycle` process, a
PostgreSQL server stopped while `ingest` writes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.store.sqlite import LOCK_WAIT_ENV

from ._deliveries import body
from ._postgres import PostgresServer, create_database, stopped
from .test_cli import ENTRY_POINT, T0, jsonl

INTERRUPTED = 130
UNAVAILABLE = 3
# A Ctrl-C is seen between two slices of the wait (0.1 s); the rest is the process's exit.
CTRL_C_SECONDS = 2.0

_HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
conn.close()
"""


@contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Another process holds the SQLite file's write lock (``BEGIN IMMEDIATE``) in the block."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        try:
            yield
        finally:
            holder.stdin.close()
            assert holder.wait(timeout=30) == 0


def _env(lock_wait: float | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RTMS_LIFECYCLE_DB", LOCK_WAIT_ENV)}
    if lock_wait is not None:
        env[LOCK_WAIT_ENV] = str(lock_wait)
    return env


def _command(db: str, *args: str, lock_wait: float | None = None, **kwargs: Any) -> Any:
    return subprocess.Popen(
        [str(ENTRY_POINT), "--db", db, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(lock_wait),
        **kwargs,
    )


def _sqlite_count(path: Path, table: str = "deliveries") -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    conn.close()
    return int(count)


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _opened(process: subprocess.Popen[str], path: Path) -> int:
    """How many descriptors of ``process`` name ``path`` (its SQLite connections to it)."""
    folder = Path(f"/proc/{process.pid}/fd")
    found = 0
    for fd in os.listdir(folder):
        try:
            found += os.readlink(folder / fd) == str(path)
        except OSError:  # closed meanwhile
            continue
    return found


def _interrupt(process: subprocess.Popen[str]) -> tuple[str, str, float]:
    """SIGINT to ``process``: its output, and the seconds it took to exit after the signal."""
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return out, err, time.monotonic() - sent


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    path = tmp_path / "held.db"
    Tracker(f"sqlite:///{path}").close()  # the schema, made before another process holds it
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_text(jsonl(body("started", f"s-{i}", T0 + i) for i in range(100)))
    return path


# --- ingest -----------------------------------------------------------------------------------


def test_ingest_on_a_held_file_gives_up_once_after_the_lock_wait(db_file: Path, tiny: Path) -> None:
    """One bounded wait for the lock in all, not one per attempt: exit 3, the message says the
    database is locked by another process and how long it waited, and that nothing is recorded."""
    with held_lock(db_file):
        begun = time.monotonic()
        with _command(
            str(db_file), "ingest", str(tiny), "--batch-size", "1", lock_wait=1
        ) as process:
            out, err = process.communicate(timeout=60)
        took = time.monotonic() - begun
    assert process.returncode == UNAVAILABLE, err
    assert took < 8, took  # 1 s of waiting, once; the rest is the process starting
    assert err.startswith(
        f"Error: could not record 1 delivery: the database {db_file} is locked by another "
        "process: it held the lock for all of the 1."
    ), err
    assert f"set {LOCK_WAIT_ENV} to wait longer" in err
    assert "no delivery of the input is recorded" in err
    assert "Traceback" not in err
    assert out.startswith("Recorded 0 deliveries in ")
    assert _sqlite_count(db_file) == 0


@contextmanager
def ingest_two_then_hold(db_file: Path, lock_wait: float | None) -> Iterator[subprocess.Popen[str]]:
    """`ingest -` that committed two deliveries, then finds the file held for its third."""
    with _command(
        str(db_file), "ingest", "-", "--batch-size", "1", lock_wait=lock_wait, stdin=subprocess.PIPE
    ) as process:
        assert process.stdin is not None
        process.stdin.write(jsonl(body("started", f"p-{i}", T0 + i) for i in range(2)))
        process.stdin.flush()
        _wait_for(lambda: _sqlite_count(db_file) == 2, "two committed deliveries")
        with held_lock(db_file):
            process.stdin.write(jsonl([body("started", "p-2", T0 + 2)]))
            process.stdin.flush()
            yield process


def test_ctrl_c_while_ingest_waits_for_the_lock_stops_at_once(db_file: Path) -> None:
    """SIGINT during the (30 s) wait ends it within a second: exit 130, and the message says
    which deliveries are committed."""
    with ingest_two_then_hold(db_file, None) as process:
        time.sleep(0.5)  # into the wait
        out, err, took = _interrupt(process)
    assert process.returncode == INTERRUPTED, err
    assert took < CTRL_C_SECONDS, took
    assert err == (
        "Interrupted after line 3, while waiting for another process's lock on the database: "
        "the first 2 deliveries of the input are recorded and committed, the rest is not.\n"
    )
    assert out.startswith("Recorded 2 deliveries in ")
    assert _sqlite_count(db_file) == 2


def test_ingest_that_gives_up_on_the_lock_says_what_it_committed(db_file: Path) -> None:
    """A write that waited all of the lock wait stops the run: exit 3, the deliveries committed
    before are counted, on stdout and in the message."""
    with ingest_two_then_hold(db_file, 0.5) as process:
        out, err = process.communicate(timeout=60)  # the input ends, the write waits
    assert process.returncode == UNAVAILABLE, err
    assert "is locked by another process" in err
    assert "the first 2 deliveries of the input are recorded and committed, the rest is not" in err
    assert out.startswith("Recorded 2 deliveries in ")
    assert _sqlite_count(db_file) == 2


def test_a_bad_lock_wait_is_refused_before_anything_is_done(db_file: Path, tiny: Path) -> None:
    for command in (["ingest", str(tiny)], ["prune", "--older-than", "30d"]):
        result = CliRunner().invoke(
            cli, ["--db", str(db_file), *command], env={LOCK_WAIT_ENV: "soon"}
        )
        assert result.exit_code == 2, result.output
        assert f"{LOCK_WAIT_ENV}: 'soon' is not a number of seconds > 0" in result.stderr
    assert _sqlite_count(db_file) == 0


# --- prune ------------------------------------------------------------------------------------


def test_ctrl_c_while_prune_waits_for_the_lock_stops_at_once(db_file: Path) -> None:
    with (
        held_lock(db_file),
        _command(str(db_file), "prune", "--older-than", "30d", "--json") as process,
    ):
        # The store's writer and the prune's own connection: the prune is about to wait.
        _wait_for(lambda: _opened(process, db_file) >= 2, "the prune's connections")
        time.sleep(0.3)
        out, err, took = _interrupt(process)
    assert process.returncode == INTERRUPTED, err
    assert took < CTRL_C_SECONDS, took
    assert json.loads(out) == {"streams": 0, "deliveries": 0, "transitions": 0, "alerts": 0}
    assert err.startswith("Interrupted: the prune stopped before its end.")
    assert _sqlite_count(db_file, "prunes") == 0


def test_prune_on_a_held_file_gives_up_after_the_lock_wait(db_file: Path) -> None:
    with (
        held_lock(db_file),
        _command(str(db_file), "prune", "--older-than", "30d", lock_wait=0.5) as process,
    ):
        _, err = process.communicate(timeout=60)
    assert process.returncode == UNAVAILABLE, err
    assert f"the database {db_file} is locked by another process" in err


def test_an_interrupted_prune_says_what_it_removed_and_prunes_shows_it_partial(
    tmp_path: Path,
) -> None:
    """Ctrl-C between two of a prune's steps: it prints what the committed steps removed (what
    `prunes` recorded), `prunes` lists the run as partial, and a second prune completes."""
    path = tmp_path / "many.db"
    streams = 20_000
    with Tracker(f"sqlite:///{path}") as tracker:
        bodies = (
            body(kind, f"old-{i}", T0 + i * 10 + offset)
            for i in range(streams)
            for kind, offset in (("started", 0), ("stopped", 5))
        )
        tracker.ingest_many(bodies)
    with _command(str(path), "prune", "--older-than", "30d", "--json") as process:
        _wait_for(lambda: _sqlite_count(path, "prunes") > 0, "the prune's first step")
        out, err, took = _interrupt(process)
    assert process.returncode == INTERRUPTED, err
    assert took < CTRL_C_SECONDS, took
    removed = json.loads(out)
    assert 0 < removed["streams"] < streams - 1, removed
    assert err.startswith("Interrupted: the prune stopped before its end.")

    def prunes() -> list[dict[str, Any]]:
        result = CliRunner().invoke(cli, ["--db", str(path), "prunes", "--json"])
        assert result.exit_code == 0, result.output
        found: list[dict[str, Any]] = json.loads(result.stdout)
        return found

    (partial,) = prunes()
    assert partial["complete"] is False
    assert {k: partial[k] for k in removed} == removed
    shown = CliRunner().invoke(cli, ["--db", str(path), "prunes"])
    assert "partial" in shown.stdout
    assert "Run `prune` again to remove the rest." in shown.stdout

    again = CliRunner().invoke(cli, ["--db", str(path), "prune", "--older-than", "30d", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["streams"] + removed["streams"] == streams - 1
    latest, first = prunes()
    assert (latest["complete"], first["complete"]) == (True, False)
    assert "Run `prune` again" not in CliRunner().invoke(cli, ["--db", str(path), "prunes"]).stdout


# --- a PostgreSQL server stopped mid-ingest ---------------------------------------------------


def _pg_count(url: str) -> int:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT count(*) FROM deliveries").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
def test_ingest_says_what_it_committed_when_postgresql_stops(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.url(create_database(own_postgres))
    Tracker(url).close()
    path = tmp_path / "big.jsonl"
    path.write_text(jsonl(body("started", f"s-{i}", T0 + i) for i in range(200_000)))
    with _command(url, "ingest", str(path), "--batch-size", "1000", "--json") as process:
        _wait_for(lambda: _pg_count(url) >= 2000, "two committed batches")
        with stopped(own_postgres):
            out, err = process.communicate(timeout=120)
    assert process.returncode == UNAVAILABLE, err
    recorded = _pg_count(url)
    assert 2000 <= recorded < 200_000
    assert json.loads(out)["applied"] == recorded
    assert err.startswith("Error: could not record"), err
    assert (
        f"; the first {recorded:,} deliveries of the input are recorded and committed, the rest "
        "is not: running the same input again is safe"
    ) in err
    assert "Traceback" not in err
