"""``rtms-lifecycle work``'s children's output: read through pipes, written line by line."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.child_output import MAX_LINE
from rtms_lifecycle.cli.line_writer import LineWriter
from rtms_lifecycle.cli.work import Supervisor
from rtms_lifecycle.clock import now_ms
from tests._deliveries import body
from tests.test_work import run_until, wait_for

ROOT = Path(__file__).resolve().parent.parent
LINES = 50_000  # about 1 MB, many times a pipe's buffer
# Writes a line to each fd, one to be escaped, invalid UTF-8, an overlong line, LINES numbered
# lines at once, and a last line without a newline.
CHILD = f"""
import os, sys
out = sys.stdout.buffer
out.write(b"hello " + os.environ["RTMS_STREAM_ID"].encode() + b"\\n")
out.write(b"unbuffered=" + os.environ.get("PYTHONUNBUFFERED", "-").encode() + b"\\n")
sys.stderr.buffer.write(b"warn \\x1b[31mred\\r\\n")
out.write(b"bad \\xff bytes\\n")
out.write(b"x" * {MAX_LINE * 3} + b"\\nafter the long one\\n")
out.write(b"".join(b"n%d\\n" % i for i in range({LINES})))
out.write(b"last without newline")
"""


def _work(db: str, tmp: Path, *args: str) -> tuple[list[str], str]:
    """Run ``work`` until its one child exited and was released; its stdout lines and stderr."""
    with Tracker(db) as tracker:
        tracker.ingest(body("started", "s1", now_ms() - 60_000))
    out, err = tmp / "out", tmp / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rtms_lifecycle", "--db", db, "work", "w1", "--backoff", "1h",
             *args, "--", sys.executable, "-c", CHILD],
            stdout=stdout, stderr=stderr, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
        )  # fmt: skip
        try:
            wait_for(lambda: b"released" in out.read_bytes())
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out.read_text().splitlines(), err.read_bytes().decode("utf-8", "replace")


def test_json_children_lines_are_objects_naming_their_stream_pid_and_fd(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Every line of ``work --json`` is JSON, the children's too; none is lost, none is cut but
    the overlong one, and all come before the child's exit."""
    lines, _ = _work(sqlite_url, tmp_path, "--json")
    events = [json.loads(line) for line in lines]
    kinds = [e["event"] for e in events]
    (started,) = [e for e in events if e["event"] == "started"]
    output = [e for e in events if e["event"] == "child_output"]
    assert kinds.index("exited") > max(i for i, k in enumerate(kinds) if k == "child_output")
    assert {(e["stream_id"], e["pid"], e["token"]) for e in output} == {("s1", started["pid"], 1)}
    stdout = [e["line"] for e in output if e["fd"] == "stdout"]
    stderr = [e["line"] for e in output if e["fd"] == "stderr"]
    assert stderr == ["warn \x1b[31mred"]  # JSON escapes it; the CR of CRLF dropped
    # work asks a Python child to write its lines as they come (a pipe is block-buffered)
    assert stdout[:3] == ["hello s1", "unbuffered=1", "bad \ufffd bytes"]
    (cut,) = [e for e in output if e.get("cut")]
    assert cut["line"] == "x" * MAX_LINE
    assert stdout[4] == "after the long one"
    assert stdout[5:] == [f"n{i}" for i in range(LINES)] + ["last without newline"]


def test_text_children_lines_follow_their_stream_and_are_escaped(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Without --json each line reads ``TIME s1[PID] FD: LINE``, control characters escaped."""
    lines, _ = _work(sqlite_url, tmp_path)
    (started,) = [line for line in lines if " started s1 " in line]
    pid = started.rsplit("pid=", 1)[1]
    assert any(line.endswith(f" s1[{pid}] stdout: hello s1") for line in lines)
    assert any(line.endswith(f" s1[{pid}] stderr: warn \\x1b[31mred") for line in lines)
    assert any(line.endswith(f" [cut at {MAX_LINE} bytes]") for line in lines)
    assert "\x1b" not in "\n".join(lines)


def test_inherit_keeps_json_stdout_for_work_and_the_children_on_stderr(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``--child-output inherit``: the children write to work's stderr (stdout with --json is
    work's events only), as before the lines existed."""
    lines, err = _work(sqlite_url, tmp_path, "--json", "--child-output", "inherit")
    kinds = [json.loads(line)["event"] for line in lines]
    assert "child_output" not in kinds
    assert "hello s1\n" in err
    assert f"n{LINES - 1}\n" in err


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> list[str]:
    """The threads alive, but the watchdog's: each Supervisor has one, for as long as it lives."""
    return sorted(t.name for t in threading.enumerate() if t.name != "rtms-lifecycle-watchdog")


def test_thousands_of_short_children_leak_no_descriptor_nor_thread(sqlite_url: str) -> None:
    """Many children, each writing a line to stdout and one to stderr and exiting: each one's
    two lines are said before its exit, and no pipe or thread outlives the run."""
    child = ["sh", "-c", 'echo "out $RTMS_CLAIM_TOKEN"; echo "err $RTMS_CLAIM_TOKEN" >&2']
    wanted = 300
    with Tracker(sqlite_url) as tracker:
        tracker.ingest_batch([body("started", f"s{i}", now_ms() - 60_000 + i) for i in range(4)])

        def run(exits: int) -> str:
            out = io.StringIO()
            supervisor = Supervisor(tracker, "w1", child, most=4, lease=3, poll=0.05,
                                    backoff=0, as_json=True, out=out)  # fmt: skip
            run_until(supervisor, lambda: wait_for(
                lambda: out.getvalue().count('"exited"') >= exits, timeout=120))  # fmt: skip
            return out.getvalue()

        run(4)  # the database's connections and the watchdog's thread, opened once
        fds, threads = _fds(), _threads()
        printed = run(wanted)
        assert _fds() == fds
        assert _threads() == threads
    events = [json.loads(line) for line in printed.splitlines()]
    said: dict[tuple[str, int], list[str]] = {}
    exits = 0
    for event in events:
        key = (event.get("stream_id"), event.get("token"))
        if event["event"] == "child_output":
            said.setdefault(key, []).append(f"{event['fd']} {event['line']}")
        elif event["event"] == "exited":
            exits += 1
            token = event["token"]
            assert sorted(said.get(key, [])) == [f"stderr err {token}", f"stdout out {token}"]
    assert exits >= wanted


# --- a stdout nobody reads holds back nothing but the output ---------------------------------

# `work` as `python -m rtms_lifecycle` runs it, keeping one of its own lines queued.
_FEW_QUEUED = (
    "import rtms_lifecycle.cli.work as w; w.OWN_BACKLOG = 1; "
    "from rtms_lifecycle.cli import main; main()"
)


def _unread_work(db: str, tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    """``work --json`` whose stdout is a pipe this test does not read (yet), and whose child,
    slow to obey SIGTERM, writes to its stdout without end."""
    return subprocess.Popen(
        [sys.executable, "-c", _FEW_QUEUED, "--db", db, "work", "w1", "--json", "--poll", "0.1",
         *args, "--", *CHILD_CMD],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "WORK_CHILD_LOG": str(tmp / "children.jsonl"),
             "WORK_CHILD_CHATTY": "1", "WORK_CHILD_TERM_DELAY": "60"},
    )  # fmt: skip


CHILD_CMD = [sys.executable, str(ROOT / "tests" / "work_child.py")]


def _child_log(tmp: Path) -> list[dict[str, Any]]:
    log = tmp / "children.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _full(pipe: IO[bytes]) -> bool:
    """Whether ``work``'s stdout pipe holds at least half what it can: its writer waits."""
    size = fcntl.fcntl(pipe.fileno(), _F_GETPIPE_SZ)
    queued = struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    return bool(queued >= size // 2)


_F_GETPIPE_SZ = 1032


def _dead(pid: int) -> bool:
    """Gone, or a zombie not yet reaped: nothing it does any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_an_unread_stdout_holds_back_no_fence_and_the_dropped_lines_are_counted(
    sqlite_url: str, tmp_path: Path
) -> None:
    """With ``work``'s stdout full and its renewals failing (another connection holds SQLite's
    write lock), the child that ignores SIGTERM is SIGKILLed before its lease ends, and another
    worker can claim the stream; once stdout is read, ``output_dropped`` counts what was lost."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "s1", now_ms() - 60_000))
    proc = _unread_work(sqlite_url, tmp_path, "--lease", "4", "--grace", "2")
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(proc.stdout.read()))  # type: ignore[union-attr]
    try:
        (start,) = wait_for(lambda: [c for c in _child_log(tmp_path) if c["event"] == "start"])
        assert proc.stdout is not None
        wait_for(lambda: _full(proc.stdout))  # type: ignore[arg-type]
        locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=10,
                                 isolation_level=None)  # fmt: skip
        try:
            locker.execute("BEGIN IMMEDIATE")
            (expires_at,) = locker.execute(
                "SELECT expires_at FROM stream_claims WHERE stream_id = 's1'"
            ).fetchone()
            wait_for(lambda: _dead(start["pid"]), timeout=30)
            reader.start()  # stdout read from now on
        finally:
            locker.rollback()
            locker.close()
        acted = [c for c in _child_log(tmp_path) if c["event"] in ("signal", "alive")]
        assert acted[0]["signal"] == "SIGTERM"
        assert max(c["t"] for c in acted) * 1000 <= expires_at, (acted[-1], expires_at)
        with Tracker(sqlite_url) as tracker:

            def claimed_again() -> bool:
                tracker.claim("w2", lease=30)
                return any(c.stream_id == "s1" and c.token >= 2 for c in tracker.claims())

            wait_for(claimed_again, timeout=30)
        assert _dead(start["pid"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        reader.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader.is_alive():
            reader.join(30)
    assert proc.stdout is not None
    proc.stdout.close()
    lines = b"".join(read).decode().splitlines()
    # The first line may be cut where the pipe was full as the reading began.
    events = [json.loads(line) for line in lines[1:] if line.startswith('{"event"')]
    own = [e for e in events if e["event"] != "child_output"]
    # One line kept queued: bursts drop lines while it is read too; each drop said once.
    said = [e for e in own if e["event"] == "output_dropped"]
    assert said, [e["event"] for e in own]
    first = said[0]
    assert first["dropped"] >= 1, first
    assert f"{first['dropped']} of work's lines dropped since " in first["message"]
    happened = Counter({"claimed": 1, "started": 1, "database_down": 1, "signalled": 2})
    missing = happened - Counter(e["event"] for e in own)
    assert sum(missing.values()) <= sum(e["dropped"] for e in said), (missing, said)


def test_sigterm_ends_a_work_whose_stdout_nobody_reads(sqlite_url: str, tmp_path: Path) -> None:
    """SIGTERM ends the child (SIGKILL after --grace), releases the claim and exits 0 within
    --grace, the child's exit's wait for its output and the 2 s given to stdout, stdout unread."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "s1", now_ms() - 60_000))
    grace = 1.0
    proc = _unread_work(sqlite_url, tmp_path, "--lease", "10", "--grace", str(grace))
    try:
        (start,) = wait_for(lambda: [c for c in _child_log(tmp_path) if c["event"] == "start"])
        assert proc.stdout is not None
        wait_for(lambda: _full(proc.stdout))  # type: ignore[arg-type]
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert took < grace + 1.0 + 2.0 + 5.0, took  # the slack: a loaded machine
    assert _dead(start["pid"])
    assert [c["signal"] for c in _child_log(tmp_path) if c["event"] == "signal"] == ["SIGTERM"]
    with Tracker(sqlite_url) as tracker:
        assert tracker.claims() == []
        (released,) = [e for e in tracker.claim_history("s1") if e.event == "released"]
        assert released.reason == "worker stopping"


def _pipe_filled() -> tuple[int, int]:
    """A pipe whose buffer is full: a blocking write to it waits until it is read."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"-" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


def _drain(fd: int) -> list[str]:
    chunks = []
    while chunk := os.read(fd, 65_536):
        chunks.append(chunk)
    return b"".join(chunks).decode().lstrip("-").splitlines()


def test_the_writer_keeps_the_newest_own_lines_counts_the_rest_and_never_waits() -> None:
    """Own lines past the limit drop the oldest, counted exactly in one line said where they
    were; own lines go before children's queued, but an exit after its child's lines."""
    r, w = _pipe_filled()
    with os.fdopen(w, "w") as out:
        writer = LineWriter(out, lambda n, since: f"dropped {n}", own_limit=5,
                            child_limit=1000, now_ms=now_ms)  # fmt: skip
        writer.lines(["child a"])  # taken by the writer, which waits on the full pipe
        wait_for(lambda: writer._taken == 1)
        began = time.monotonic()
        writer.lines(["child b", "child c"])
        writer.event("exited", after_children=True)
        for i in range(100):
            writer.event(f"own {i}")
        writer.lines(["child d"])
        assert time.monotonic() - began < 5  # nothing waited on the pipe
        reading = threading.Thread(target=lambda: lines.extend(_drain(r)))
        lines: list[str] = []
        reading.start()
        writer.close_by(time.monotonic() + 20)
        assert writer.close()
    reading.join(20)
    os.close(r)
    assert lines == ["child a", "dropped 96", *[f"own {i}" for i in range(95, 100)],
                     "child b", "child c", "child d"]  # fmt: skip


def test_the_writer_gives_up_by_its_deadline_on_a_pipe_nobody_reads() -> None:
    """A child's lines wait for room no longer than the deadline; closing returns by it."""
    r, w = _pipe_filled()
    with os.fdopen(w, "w") as out:
        writer = LineWriter(out, lambda n, since: f"dropped {n}", own_limit=5,
                            child_limit=2, now_ms=now_ms)  # fmt: skip
        writer.lines(["a"])
        wait_for(lambda: writer._taken == 1)
        writer.lines(["b", "c"])
        writer.close_by(time.monotonic() + 0.5)
        writer.lines(["d"])  # no room: dropped at the deadline
        assert not writer.close()
        lines: list[str] = []
        reading = threading.Thread(target=lambda: lines.extend(_drain(r)))
        reading.start()  # the writer, left behind, ends its writes
        writer._thread.join(20)
    reading.join(20)
    os.close(r)
    assert lines == ["a", "b", "c"]
