"""``rtms-lifecycle work``'s children's output: read through pipes, written line by line."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.child_output import MAX_LINE
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
