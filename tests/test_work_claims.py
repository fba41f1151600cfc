"""``rtms-lifecycle work``: exactly one child per stream, under load, stalls and failures.

Real ``work`` processes (and one in-process supervisor) on SQLite; each test asserts what
must follow from a cause (a back-off honoured, a child reaped), not how soon.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli import work as work_module
from rtms_lifecycle.cli.work import FAST_FAILURE, Supervisor
from rtms_lifecycle.clock import now_ms
from tests._deliveries import body
from tests.test_work import CHILD, Work, run_until, wait_for


def _ingest(tracker: Tracker, ids: list[str]) -> None:
    at = now_ms() - 60_000
    tracker.ingest_batch([body("started", sid, at + i) for i, sid in enumerate(ids)])


@pytest.fixture
def sqlite_works(sqlite_url: str, tmp_path: Path) -> Iterator[Callable[..., Work]]:
    started: list[Work] = []

    def make(worker: str, *args: str, command: list[str] | None = None, **env: str) -> Work:
        started.append(Work(sqlite_url, tmp_path, worker, *args, env=env, command=command))
        return started[-1]

    yield make
    for one in started:
        one.close()


def _of(work: Work, event: str) -> list[dict[str, Any]]:
    return [line for line in work.lines() if line["event"] == event]


def _one_child_at_a_time(work: Work) -> None:
    """Each stream's children one after the other: a ``started`` only once the one before
    had its ``exited`` line."""
    running: dict[str, int] = {}
    for line in work.lines():
        sid = line.get("stream_id")
        sid = str(sid)
        if line["event"] == "started":
            assert sid not in running, f"two children for {sid}: {running[sid]}, {line['pid']}"
            running[sid] = line["pid"]
        elif line["event"] == "exited":
            assert running.pop(sid) == line["pid"]


def _state(pid: int) -> str | None:
    """A process's state letter (Z: a zombie); None once it is gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat_line.rsplit(")", 1)[1].split()[0]


def _zombie_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and fields[0] == "Z":
            found.append(int(entry.name))
    return found


def test_a_command_that_cannot_start_backs_off_and_held_leases_stay_renewed(
    sqlite_url: str, tmp_path: Path, sqlite_works: Callable[..., Work]
) -> None:
    """The first child runs; then the command cannot start (a missing interpreter): each
    stream is claimed again only after its back-off, and the running child keeps its claim."""
    program = tmp_path / "flip.sh"
    program.write_text("#!/bin/sh\nexec sleep 1000\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    with Tracker(sqlite_url) as tracker:
        _ingest(tracker, ["s0"])
        w = sqlite_works("w1", "--max", "3", "--backoff", "0.5", command=[str(program)])
        wait_for(lambda: _of(w, "started"))
        program.write_text("#!/nonexistent/interp\necho hi\n")
        _ingest(tracker, ["s1", "s2"])
        # Past a lease (3 s) after the first failure: a renewal missed would have fenced s0.
        first = wait_for(lambda: [e for e in _of(w, "error") if e["action"] == "start"])[0]
        wait_for(lambda: [e for e in w.lines() if e["at"] > first["at"] + 4000], timeout=30)
        assert w.stop() == 130
        lines = w.lines()
        assert not [e for e in lines if e["event"] in ("signalled", "lost") and e["at"] <
                    _of(w, "stopping")[0]["at"]]  # fmt: skip
        # Each stream claimed again only once its back-off ended, doubled each time.
        by_stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in lines:
            if e["event"] in ("claimed", "released") and e.get("stream_id") in ("s1", "s2"):
                by_stream[e["stream_id"]].append(e)
        for sid, events in by_stream.items():
            waits = []
            # The back-off counts from the failed start, after the claim's line.
            for claimed, released, again in zip(events, events[1:], events[2:], strict=False):
                kinds = (claimed["event"], released["event"], again["event"])
                if kinds == ("claimed", "released", "claimed"):
                    assert again["at"] - claimed["at"] >= released["backoff"] * 1000, sid
                    waits.append(released["backoff"])
            assert waits[:3] == [0.5, 1.0, 2.0][: len(waits[:3])], sid
            assert len(waits) <= 4, (sid, waits)  # 0.5 + 1 + 2 + 4 s: more than the run
        tokens = [c.token for c in tracker.claim_history("s1") if c.event == "claimed"]
        assert max(tokens) <= 5


def test_a_stalled_work_never_runs_two_children_for_one_stream(
    sqlite_url: str, sqlite_works: Callable[..., Work]
) -> None:
    """SIGSTOP past the lease: the held leases run out. Once it goes on, no stream gets a
    second child while its first runs, no child is left a zombie, each one's exit is said."""
    ids = [f"s{i}" for i in range(3)]
    with Tracker(sqlite_url) as tracker:
        _ingest(tracker, ids)
        w = sqlite_works("w1", "--max", "6", "--lease", "1.5", "--grace", "0.5")
        wait_for(lambda: len(_of(w, "started")) >= 3)
        for _ in range(2):
            w.proc.send_signal(signal.SIGSTOP)
            time.sleep(2.5)  # longer than the lease: it runs out while nothing in work acts
            w.proc.send_signal(signal.SIGCONT)
            seen = len(w.lines())

            def went_on(seen: int = seen) -> bool:
                """Renewals, fences, reaps and claims had their turn, every stream held."""
                return len(w.lines()) > seen and len(_held(tracker)) == 3

            wait_for(went_on, timeout=30)
        wait_for(lambda: not _zombie_children(w.proc.pid), timeout=10)
        _one_child_at_a_time(w)
        assert w.stop() == 130
        _one_child_at_a_time(w)
        started = {e["pid"] for e in _of(w, "started")}
        assert started == {e["pid"] for e in _of(w, "exited")}


def _held(tracker: Tracker) -> set[str]:
    now = now_ms()
    return {c.stream_id for c in tracker.claims() if c.expires_at > now}


def test_a_stream_handed_back_while_its_child_runs_gets_a_new_child_after_the_old_exits(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More held streams than a claim can exclude (none here): the database hands back a
    stream whose lease ran out while its child runs. The old child is ended, and only once it
    exited does a new one start, under the new claim."""
    monkeypatch.setattr(work_module, "MAX_CLAIM_EXCLUDE", 0)
    log = tmp_path / "children.jsonl"
    monkeypatch.setenv("WORK_CHILD_LOG", str(log))
    out = io.StringIO()
    with Tracker(sqlite_url) as tracker:
        _ingest(tracker, ["s0"])
        claim, calls = tracker.claim, []

        def slow_second_claim(*args: Any, **kwargs: Any) -> Any:
            """The loop held past s0's lease (a slow database call), as a loaded host holds it."""
            calls.append(1)
            if len(calls) == 2:
                time.sleep(2.5)
            return claim(*args, **kwargs)

        monkeypatch.setattr(tracker, "claim", slow_second_claim)
        supervisor = Supervisor(tracker, "w1", CHILD, most=2, lease=1.5, grace=0.5, poll=0.1,
                                as_json=True, out=out)  # fmt: skip

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in out.getvalue().splitlines()]

        def restarted() -> None:
            wait_for(lambda: len([e for e in lines() if e["event"] == "started"]) >= 2)
            held = [(c.stream_id, c.token) for c in tracker.claims("w1")]
            assert held == [("s0", 2)], held

        run_until(supervisor, restarted)
    events = [(e["event"], e.get("token"), e.get("pid")) for e in lines()]
    first, second = [e for e in lines() if e["event"] == "started"][:2]
    assert (first["token"], second["token"]) == (1, 2)
    assert ("claimed", 2, None) in events
    assert ("lost", 1, None) in events
    # The old child's exit said before the new one started: never two at once.
    assert events.index(("exited", 2, first["pid"])) < events.index(("started", 2, second["pid"]))
    children = [json.loads(line) for line in log.read_text().splitlines()]
    tokens = [c["env"]["RTMS_CLAIM_TOKEN"] for c in children if c["event"] == "start"]
    assert tokens[:2] == ["1", "2"]


def test_one_long_running_child_neither_hides_nor_flaps_a_crash_loop(
    sqlite_works: Callable[..., Work], sqlite_url: str
) -> None:
    """s0's child runs on; every other child exits 1 at once: children_failing is said once,
    and s0 passing FAST_FAILURE (5 s) does not say children_recovered."""
    script = 'if [ "$RTMS_STREAM_ID" = s0 ]; then exec sleep 100; fi; exit 1'
    with Tracker(sqlite_url) as tracker:
        _ingest(tracker, [f"s{i}" for i in range(8)])
        w = sqlite_works("w1", "--max", "4", "--backoff", "0.2", command=["sh", "-c", script])
        (s0,) = wait_for(lambda: [e for e in _of(w, "started") if e["stream_id"] == "s0"])
        wait_for(lambda: _of(w, "children_failing"))
        # The loop ran well past s0's FAST_FAILURE (twice over: it was counted each tick).
        after = s0["at"] + (2 * FAST_FAILURE + 1) * 1000
        wait_for(lambda: [e for e in w.lines() if e["at"] > after], timeout=60)
        assert w.stop() == 130
    assert len(_of(w, "children_failing")) == 1
    assert not _of(w, "children_recovered")
    assert not [e for e in _of(w, "exited") if e["stream_id"] == "s0" and e["code"] != -15]


def _alive(pid: int) -> bool:
    """``pid`` still a live ``sleep`` (not a zombie, not a process that took the pid since)."""
    if _state(pid) in (None, "Z"):
        return False
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
    except (FileNotFoundError, ProcessLookupError):
        return False


def _dead(pid: int) -> bool:
    return not _alive(pid)


def _left(recorded: Callable[[], dict[int, tuple[str, int]]], child: int) -> int | None:
    """The grandchild ``child`` started, once it wrote it down."""
    row = recorded().get(child)
    return None if row is None else row[1]


def test_what_a_child_leaves_behind_is_ended_when_it_exits_and_when_work_exits(
    sqlite_works: Callable[..., Work], sqlite_url: str, tmp_path: Path
) -> None:
    """Each child starts a ``sleep`` that ignores SIGTERM. s1's child exits at once: its sleep
    is killed by its ``exited`` line. s0's child waits: ended with work, so is its sleep."""
    pids = tmp_path / "pids"
    script = (
        '(trap "" TERM; exec sleep 300) & echo "$RTMS_STREAM_ID $$ $!" >> "$PIDS"; '
        '[ "$RTMS_STREAM_ID" = s0 ] && wait; exit 0'
    )

    def recorded() -> dict[int, tuple[str, int]]:
        """child pid -> (stream, grandchild pid)"""
        if not pids.exists():
            return {}
        rows = [line.split() for line in pids.read_text().splitlines()]
        return {int(child): (sid, int(grand)) for sid, child, grand in rows}

    try:
        with Tracker(sqlite_url) as tracker:
            _ingest(tracker, ["s0", "s1"])
            w = sqlite_works("w1", "--max", "2", "--backoff", "0.3", command=["sh", "-c", script],
                             PIDS=str(pids))  # fmt: skip
            exits = wait_for(lambda: _of(w, "exited")[2:] and _of(w, "exited"))
            for line in exits:
                grand = wait_for(partial(_left, recorded, line["pid"]))
                wait_for(partial(_dead, grand), timeout=10)
            assert w.stop() == 130
            for _, grand in recorded().values():
                wait_for(partial(_dead, grand), timeout=10)
            assert "s0" in {sid for sid, _ in recorded().values()}
    finally:
        for _, grand in recorded().values():
            if _alive(grand):
                os.kill(grand, signal.SIGKILL)
