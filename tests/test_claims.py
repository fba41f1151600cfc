"""Claims: each live stream held by one worker at a time, across processes and kill -9."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from rtms_lifecycle import AsyncTracker, ClaimLost, State, Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.store.claims import holders
from tests._deliveries import body

ROOT = Path(__file__).resolve().parent.parent


def start(tracker: Tracker, n: int, at: int | None = None, prefix: str = "s") -> list[str]:
    at = now_ms() - 60_000 if at is None else at
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    tracker.ingest_batch([body("started", sid, at + i) for i, sid in enumerate(ids)])
    return ids


def test_claims_take_each_live_stream_once_oldest_first(tracker: Tracker) -> None:
    ids = start(tracker, 3)
    first = tracker.claim("a")
    second = tracker.claim("b", lease=5)
    third = tracker.claim("a")
    assert first
    assert second
    assert third
    assert [first.stream_id, second.stream_id, third.stream_id] == ids
    assert tracker.claim("c") is None
    assert (first.worker, first.token, first.stream.stream_id) == ("a", 1, ids[0])
    assert second.expires_at - second.claimed_at == 5000
    assert [c.stream_id for c in tracker.claims("a")] == [ids[0], ids[2]]
    assert tracker.stream(ids[1]) is not None
    assert tracker.stream(ids[1]).worker == "b"  # type: ignore[union-attr]
    assert tracker.unclaimed_streams() == []


def test_the_holders_of_any_number_of_streams_take_one_compiled_statement(
    tracker: Tracker,
) -> None:
    # A statement per count of streams was a new entry of SQLAlchemy's compiled cache for every
    # count of live streams a dashboard page listed: 2,400 objects more per view in a receiver.
    ids = start(tracker, 40)
    held = tracker.claim("a")
    assert held is not None
    cache: dict[object, object] = {}
    with tracker.engine.connect() as raw:
        conn = raw.execution_options(compiled_cache=cache)
        for n in range(1, len(ids) + 1):
            found = holders(conn, ids[-n:], now_ms())
            assert found == ({held.stream_id: ("a", False)} if held.stream_id in ids[-n:] else {})
    assert len(cache) == 1


def test_claims_excluding_any_number_of_streams_take_one_compiled_statement(
    tracker: Tracker,
) -> None:
    # A worker excludes the streams it holds: a mark per excluded stream compiled and cached a
    # statement for every length of that list.
    ids = start(tracker, 30)
    cache: dict[object, object] = {}
    tracker.engine.update_execution_options(compiled_cache=cache)
    sizes = []
    for n in range(1, 21):
        claim = tracker.claim("a", exclude=ids[:n])
        assert claim is not None
        assert claim.stream_id not in ids[:n]
        assert tracker.release(claim)
        sizes.append(len(cache))
    assert sizes[-1] == sizes[2], sizes


def test_tokens_grow_with_every_new_claim(tracker: Tracker) -> None:
    (sid,) = start(tracker, 1)
    tokens = []
    for worker in ("a", "b", "a"):
        claim = tracker.claim(worker)
        assert claim is not None
        tokens.append(claim.token)
        assert tracker.release(claim, reason="done")
        assert not tracker.release(claim)  # already released: nothing written
    assert tokens == [1, 2, 3]
    events = [(e.event, e.token) for e in tracker.claim_history(sid)]
    assert events == [("claimed", 1), ("released", 1), ("claimed", 2), ("released", 2),
                      ("claimed", 3), ("released", 3)]  # fmt: skip


def test_renew_extends_and_a_lost_claim_says_why(tracker: Tracker) -> None:
    (sid,) = start(tracker, 1)
    claim = tracker.claim("a", lease=0.2)
    assert claim is not None
    renewed = tracker.renew(claim)
    assert renewed.expires_at >= claim.expires_at
    assert renewed.token == claim.token
    time.sleep(0.25)
    late = tracker.renew(renewed)  # expired, nobody took it: extended, and on record
    assert late.token == claim.token
    assert "renewed_late" in [e.event for e in tracker.claim_history(sid)]
    time.sleep(0.25)
    taker = tracker.claim("b", lease=10)
    assert taker is not None
    assert taker.token == 2
    with pytest.raises(ClaimLost) as lost:
        tracker.renew(late)
    assert lost.value.reason == "taken"
    with pytest.raises(ClaimLost) as lost:
        tracker.report_connected(late)  # an old token is refused
    assert lost.value.reason == "taken"
    tracker.release(taker)
    with pytest.raises(ClaimLost) as lost:
        tracker.renew(taker)
    assert lost.value.reason == "released"
    with pytest.raises(ClaimLost) as lost:
        tracker.renew(late)
    assert lost.value.reason == "expired"
    history = tracker.claim_history(sid)
    expired = [e for e in history if e.event == "expired"]
    assert [(e.token, e.worker, e.source) for e in expired] == [(1, "a", "system")]


def test_a_stop_ends_the_claim_in_its_transaction(tracker: Tracker) -> None:
    (sid,) = start(tracker, 1)
    claim = tracker.claim("a")
    assert claim is not None
    tracker.report_connected(claim)
    tracker.ingest(body("stopped", sid, now_ms(), stop_reason=6))
    with pytest.raises(ClaimLost) as lost:
        tracker.renew(claim)
    assert (lost.value.reason, lost.value.stop_reason) == ("stopped", 6)
    with pytest.raises(ClaimLost):
        tracker.report_connected(claim)
    assert [c.stream_id for c in tracker.connected_after_stop()] == [sid]
    tracker.report_disconnected(claim, reason=6)  # the worker left the stream Zoom ended
    assert tracker.connected_after_stop() == []
    assert tracker.claims() == []
    assert tracker.claim("b") is None
    events = [(e.event, e.source, e.reason) for e in tracker.claim_history(sid)]
    assert events == [("claimed", "worker", None), ("connected", "app", None),
                      ("stopped", "webhook", "6"), ("disconnected", "app", "6")]  # fmt: skip


def test_an_expiry_stop_ends_the_claim_too(tracker: Tracker) -> None:
    (sid,) = start(tracker, 1)
    claim = tracker.claim("a")
    assert claim is not None
    tracker.expire(1)
    with pytest.raises(ClaimLost) as lost:
        tracker.renew(claim)
    assert lost.value.reason == "stopped"
    assert tracker.claim_history(sid)[-1].source == "system"


def test_an_interruption_keeps_the_claim_and_a_late_start_changes_no_holder(
    tracker: Tracker,
) -> None:
    at = now_ms() - 10_000
    (sid,) = start(tracker, 1, at)
    claim = tracker.claim("a")
    assert claim is not None
    tracker.ingest(body("interrupted", sid, at + 100))
    assert tracker.stream(sid).state is State.INTERRUPTED  # type: ignore[union-attr]
    renewed = tracker.renew(claim)
    assert renewed.token == 1
    assert renewed.stream.state is State.INTERRUPTED
    tracker.ingest(body("started", sid, at - 50))  # a late start, older than what is stored
    tracker.ingest(body("started", sid, at))  # a retry of the first
    assert tracker.claim("b") is None
    assert tracker.renew(renewed).worker == "a"


def test_reports_record_what_the_worker_saw(tracker: Tracker) -> None:
    at = now_ms() - 120_000
    ids = start(tracker, 2, at)
    claim = tracker.claim("a")
    assert claim is not None
    assert [s.stream_id for s in tracker.unconnected_streams(older_than=60)] == ids
    tracker.report_connected(claim, at_ms=at + 1500)
    stream = tracker.stream(ids[0])
    assert stream is not None
    assert (stream.worker, stream.connected) == ("a", True)
    # active_streams() reads the holders in its own query: the same answer.
    held = [(s.stream_id, s.worker, s.connected) for s in tracker.active_streams()]
    assert held == [(ids[0], "a", True), (ids[1], None, False)]
    # Unfiltered, it reads the driver's rows; filtered, SQLAlchemy's: the same streams.
    assert tracker.active_streams(scope="meeting") == tracker.active_streams()
    assert [s.worker for s in tracker.active_streams(account_id="nobody")] == []
    assert [s.stream_id for s in tracker.unconnected_streams(older_than=60)] == [ids[1]]
    assert [s.stream_id for s in tracker.unclaimed_streams(older_than=60)] == [ids[1]]
    tracker.report_disconnected(claim, reason=14)
    assert tracker.stream(ids[0]).connected is False  # type: ignore[union-attr]
    first = tracker.active_streams()[0]
    assert (first.worker, first.connected) == ("a", False)
    with pytest.raises(ValueError, match="at_ms"):
        tracker.report_connected(claim, at_ms=-1)
    with pytest.raises(ValueError, match="worker"):
        tracker.claim("")
    with pytest.raises(ValueError, match="lease"):
        tracker.claim("a", lease=0)


def test_scope_and_account_filters(tracker: Tracker) -> None:
    at = now_ms() - 10_000
    tracker.ingest(body("started", "m1", at, scope="meeting"))
    tracker.ingest(body("started", "w1", at + 1, scope="webinar"))
    claim = tracker.claim("a", scope="webinar")
    assert claim is not None
    assert claim.stream_id == "w1"
    assert tracker.claim("a", scope=["webinar", "phone"]) is None
    assert tracker.claim("a", account_id="nobody") is None
    # A blank account would match no stream: refused as a blank worker is.
    for blank in ("", " "):
        with pytest.raises(ValueError, match=r"^account_id: "):
            tracker.claim("a", account_id=blank)


def test_claim_history_is_append_only(tracker: Tracker) -> None:
    start(tracker, 1)
    assert tracker.claim("a") is not None
    for statement in ("UPDATE claim_history SET worker = 'b'", "DELETE FROM claim_history"):
        with pytest.raises(Exception, match="append-only"), tracker.engine.begin() as conn:
            conn.execute(text(statement))


def test_a_prune_removes_the_claims_of_the_streams_it_removes(tracker: Tracker) -> None:
    old = now_ms() - 5 * 86_400_000
    (sid,) = start(tracker, 1, old)
    claim = tracker.claim("a")
    assert claim is not None
    tracker.ingest(body("stopped", sid, old + 1000))
    start(tracker, 1, prefix="newer")  # a prune keeps the stream of the newest delivery
    tracker.prune(86_400)
    assert tracker.claim_history(sid) == []


def test_async_tracker_claims(db_url: str) -> None:
    async def run() -> None:
        async with AsyncTracker(db_url) as tracker:
            await tracker.ingest(body("started", "a1", now_ms() - 1000))
            claim = await tracker.claim("w")
            assert claim is not None
            await tracker.report_connected(claim)
            claim = await tracker.renew(claim)
            assert [c.stream_id for c in await tracker.claims()] == ["a1"]
            assert await tracker.release(claim)
            assert [s.stream_id for s in await tracker.unclaimed_streams()] == ["a1"]
            assert len(await tracker.claim_history("a1")) == 3
            with pytest.raises(ValueError, match=r"^account_id: "):
                await tracker.claim("w", account_id="")

    asyncio.run(run())


def _workers(db_url: str, tmp_path: Path, n: int, lease: float) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.claim_worker",
                db_url,
                f"w{i}",
                str(lease),
                str(tmp_path / f"w{i}.log"),
                "25",
            ],
            cwd=ROOT,
            env=env,
        )
        for i in range(n)
    ]


def _held(tracker: Tracker) -> dict[str, str]:
    now = now_ms()
    return {c.stream_id: c.worker for c in tracker.claims() if c.expires_at > now}


def test_three_processes_one_killed(db_url: str, tmp_path: Path) -> None:
    lease = 2.0
    with Tracker(db_url) as tracker:
        ids = start(tracker, 50)
        workers = _workers(db_url, tmp_path, 3, lease)
        try:
            deadline = time.monotonic() + 60
            while len(_held(tracker)) < 50 and time.monotonic() < deadline:
                time.sleep(0.2)
            held = _held(tracker)
            assert len(held) == 50
            counts = {w: list(held.values()).count(w) for w in ("w0", "w1", "w2")}
            victim = max(counts, key=lambda w: counts[w])
            theirs = [sid for sid, w in held.items() if w == victim]
            workers[int(victim[1:])].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            taken_over = None
            while time.monotonic() < killed_at + lease + 1:
                now_held = _held(tracker)
                if all(now_held.get(sid) not in (None, victim) for sid in theirs):
                    taken_over = time.monotonic() - killed_at
                    break
                time.sleep(0.05)
            assert taken_over is not None, (theirs, _held(tracker))
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
        history = defaultdict(list)
        for sid in ids:
            history[sid] = tracker.claim_history(sid)
    # From the workers' own logs: the intervals in which two tokens of a stream were held
    # (granted by the database) never overlap, and tokens only grow.
    intervals: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for log in tmp_path.glob("w*.log"):
        for line in log.read_text().splitlines():
            sid, token, begin, until = json.loads(line)
            span = intervals[sid].setdefault(token, [begin, until])
            span[0], span[1] = min(span[0], begin), max(span[1], until)
    for sid, spans in intervals.items():
        ordered = sorted(spans.items())
        for (_, (_, until)), (_, (begin, _)) in itertools.pairwise(ordered):
            assert until <= begin, (sid, ordered)
    for sid, events in history.items():
        claimed = [e.token for e in events if e.event == "claimed"]
        assert claimed == sorted(set(claimed)), (sid, claimed)
        for e in events:
            if e.event == "expired":  # seen only once the lease had run out
                assert e.at <= e.recorded_at


def test_cli_claims_and_stream_show_holders_and_history(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rtms_lifecycle.cli.commands import cli

    url = f"sqlite:///{tmp_path}/rtms.db"
    with Tracker(url) as tracker:
        (sid,) = start(tracker, 1)
        claim = tracker.claim("worker-1")
        assert claim is not None
        tracker.report_connected(claim)
    runner = CliRunner()
    shown = runner.invoke(cli, ["--db", url, "claims", "--json"])
    assert shown.exit_code == 0, shown.output
    (listed,) = json.loads(shown.output)
    assert (listed["worker"], listed["stream_id"], listed["token"], listed["connected"]) == (
        "worker-1",
        sid,
        1,
        True,
    )
    table = runner.invoke(cli, ["--db", url, "claims"])
    assert table.exit_code == 0
    assert "worker-1" in table.output
    detail = runner.invoke(cli, ["--db", url, "stream", sid, "--json"])
    assert [e["event"] for e in json.loads(detail.output)["claims"]] == ["claimed", "connected"]
    text_detail = runner.invoke(cli, ["--db", url, "stream", sid])
    assert "Claims" in text_detail.output
    assert "worker-1" in text_detail.output


def test_a_claim_passes_over_the_streams_it_excludes(tracker: Tracker) -> None:
    ids = start(tracker, 3)
    claim = tracker.claim("a", exclude=[ids[0], ids[1]])
    assert claim is not None
    assert claim.stream_id == ids[2]
    assert tracker.claim("a", exclude=ids) is None
    with pytest.raises(ValueError, match="exclude"):
        tracker.claim("a", exclude=[f"x{i}" for i in range(501)])


def test_cli_claims_flags_expired_leases_and_names_the_worker_asked_for(
    tracker: Tracker, db_url: str
) -> None:
    from click.testing import CliRunner

    from rtms_lifecycle.cli.commands import cli

    ids = start(tracker, 2)
    short = tracker.claim("brief", lease=timedelta(milliseconds=50))
    held = tracker.claim("steady", lease=timedelta(minutes=5))
    assert short is not None
    assert held is not None
    assert held.expires_at - held.renewed_at == 300_000
    deadline = time.monotonic() + 10
    while now_ms() <= short.expires_at and time.monotonic() < deadline:
        time.sleep(0.05)
    runner = CliRunner()
    shown = runner.invoke(cli, ["--db", db_url, "claims", "--json"])
    assert shown.exit_code == 0, shown.output
    flags = {c["worker"]: (c["stream_id"], c["expired"]) for c in json.loads(shown.output)}
    assert flags == {"brief": (ids[0], True), "steady": (ids[1], False)}
    table = runner.invoke(cli, ["--db", db_url, "claims"])
    assert table.exit_code == 0
    (brief_row,) = [line for line in table.output.splitlines() if "brief" in line]
    assert "EXPIRED" in brief_row
    assert "ago" in brief_row
    (steady_row,) = [line for line in table.output.splitlines() if "steady" in line]
    assert "EXPIRED" not in steady_row
    nobody = runner.invoke(cli, ["--db", db_url, "claims", "--worker", "nobody"])
    assert nobody.exit_code == 0
    assert "No claims held by worker 'nobody'." in nobody.output
    assert "no worker holds" not in nobody.output
    for blank in ("", " "):
        refused = runner.invoke(cli, ["--db", db_url, "claims", "--worker", blank])
        assert refused.exit_code == 2
        assert "'--worker'" in refused.output


def test_ages_and_leases_take_seconds_or_a_timedelta_and_a_bad_scope_is_named(
    tracker: Tracker, db_url: str
) -> None:
    ids = start(tracker, 2, at=now_ms() - 60_000)
    start(tracker, 1, at=now_ms(), prefix="new")
    for older_than in (30, 30.0, timedelta(seconds=30)):
        assert [s.stream_id for s in tracker.unclaimed_streams(older_than=older_than)] == ids
        assert [s.stream_id for s in tracker.unconnected_streams(older_than=older_than)] == ids
        assert tracker.claim_stats(older_than=older_than).unclaimed == 2
    with pytest.raises(ValueError, match="older_than: must be from 0 to 86400 seconds"):
        tracker.unclaimed_streams(older_than=timedelta(days=2))
    for scope in ("zoomphone", ["meeting", "zoomphone"]):
        with pytest.raises(ValueError, match=r"^scope: 'zoomphone' is not a valid Scope") as bad:
            tracker.claim("w", scope=scope)
        assert "meeting, webinar, session, contact_center, phone" in str(bad.value)
    with pytest.raises(ValueError, match=r"^scope: "):
        tracker.streams(scope="zoomphone")
    claim = tracker.claim("w", lease=timedelta(seconds=20))
    assert claim is not None
    assert claim.expires_at - claim.claimed_at == 20_000
    renewed = tracker.renew(claim, lease=timedelta(minutes=1))
    assert renewed.expires_at - renewed.renewed_at == 60_000

    async def run() -> None:
        async with AsyncTracker(db_url) as asynchronous:
            unclaimed = await asynchronous.unclaimed_streams(older_than=timedelta(seconds=30))
            assert [s.stream_id for s in unclaimed] == ids[1:]
            unconnected = await asynchronous.unconnected_streams(timedelta(seconds=30))
            assert [s.stream_id for s in unconnected] == ids
            with pytest.raises(ValueError, match=r"^scope: "):
                await asynchronous.claim("w", scope="zoomphone")
            taken = await asynchronous.claim("w2", lease=timedelta(seconds=15))
            assert taken is not None
            assert taken.expires_at - taken.claimed_at == 15_000

    asyncio.run(run())
