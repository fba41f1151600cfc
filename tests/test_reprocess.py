"""Tracker.reprocess: deliveries an earlier version refused, parsed again and folded in, on each
database; the refused rows kept as they were, a second run changing nothing."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from rtms_lifecycle import AsyncTracker, FieldError, Outcome, Source, State, Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.store.batch import Incoming
from rtms_lifecycle.store.core import Store
from tests import _deliveries

T0 = 1_741_651_200_000
MINUTE = 60_000


def refused_by_an_older_version(url: str, raw: bytes, stream_id: str) -> None:
    """Store ``raw`` as ``rejected``, the way a version without tolerant parsing did."""
    store = Store(url)
    try:
        error = FieldError("stop_reason", "is required")
        store.record([Incoming(raw, None, Source.WEBHOOK, (error,), stream_id=stream_id)])
    finally:
        store.close()


def scenario(tracker: Tracker, url: str) -> None:
    """s1 started; its stop and (older) interruption refused; a body still invalid; an event
    name still unhandled."""
    assert tracker.ingest(_deliveries.raw("started", "s1", T0)).outcome is Outcome.APPLIED
    refused_by_an_older_version(url, _deliveries.raw("stopped", "s1", T0 + 2 * MINUTE), "s1")
    refused_by_an_older_version(url, _deliveries.raw("interrupted", "s1", T0 + MINUTE), "s1")
    tracker.ingest(b"not json")
    tracker.ingest(json.dumps({"event": "meeting.rtms_paused", "event_ts": T0}).encode())


def test_reprocess_folds_what_now_parses_once(tracker: Tracker, db_url: str) -> None:
    """Now-valid refused deliveries are folded whatever their order, recorded as source
    ``reprocess`` linked to the refused rows (kept as they were); a second run changes nothing."""
    scenario(tracker, db_url)
    refused = {d.id: d for d in tracker.deliveries("rejected", limit=None)}

    dry = tracker.reprocess(dry_run=True)
    assert (dry.before, dry.after) == (
        {"rejected": 3, "unhandled": 1},
        {"valid": 2, "rejected": 1, "unhandled": 1},
    )
    stream = tracker.stream("s1")
    assert stream is not None
    assert stream.state is State.STARTED

    done = tracker.reprocess()
    assert done.before == {"rejected": 3, "unhandled": 1}
    assert done.after == {"applied": 2, "rejected": 1, "unhandled": 1}
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.interruptions, stream.stop_reason) == (State.STOPPED, 1, 1)
    # A reprocessed stop is Zoom's stop, not an expiry.
    assert stream.stop_reason_name != "EXPIRED"
    (stat,) = tracker.stop_reason_stats()
    assert stat.stop_reason == 1
    assert stat.stop_reason_category != "expired"
    history = tracker.history("s1")
    assert [(t.name.value, t.source) for t in history] == [
        ("start", Source.WEBHOOK),
        ("interrupt", Source.REPROCESS),
        ("stop", Source.REPROCESS),
    ]
    # The refused rows are as they were; the new rows link to them.
    assert {d.id: d for d in tracker.deliveries("rejected", limit=None)} == refused
    new = [d for d in tracker.deliveries(limit=None) if d.source is Source.REPROCESS]
    assert {d.reprocess_of for d in new} == {i for i, d in refused.items() if d.raw[:1] == b"{"}
    assert all(d.outcome is Outcome.APPLIED for d in new)

    total = len(tracker.deliveries(limit=None))
    again = tracker.reprocess()
    assert again.before == {"rejected": 1, "unhandled": 1}
    assert again.after == {"rejected": 1, "unhandled": 1}
    assert len(tracker.deliveries(limit=None)) == total
    assert tracker.history("s1") == history


def test_reprocess_by_outcome_and_time(tracker: Tracker, db_url: str) -> None:
    """outcome= narrows what is read; since= keeps deliveries received from then on; other
    outcomes are refused."""
    scenario(tracker, db_url)
    assert tracker.reprocess("unhandled").before == {"unhandled": 1}
    assert tracker.reprocess(since=4_000_000_000_000).before == {}
    with pytest.raises(ValueError, match="rejected and unhandled"):
        tracker.reprocess("applied")


def test_async_tracker_reprocess(tracker: Tracker, db_url: str) -> None:
    """AsyncTracker.reprocess is the same, awaited."""
    scenario(tracker, db_url)

    async def run() -> dict[str, int]:
        async with AsyncTracker(tracker) as twin:
            return (await twin.reprocess()).after

    assert asyncio.run(run()) == {"applied": 2, "rejected": 1, "unhandled": 1}


def test_cli_deliveries_reprocess(tracker: Tracker, db_url: str) -> None:
    """deliveries reprocess --json prints the counts; --dry-run writes nothing; plain
    ``deliveries`` still lists."""
    scenario(tracker, db_url)

    def run(*args: str) -> dict[str, object]:
        result = CliRunner().invoke(cli, ["--db", db_url, "deliveries", *args])
        assert result.exit_code == 0, result.output
        answer: dict[str, object] = json.loads(result.stdout)
        return answer

    assert run("reprocess", "--dry-run", "--json")["after"] == {
        "valid": 2,
        "rejected": 1,
        "unhandled": 1,
    }
    assert run("reprocess", "--outcome", "rejected", "--json")["after"] == {
        "applied": 2,
        "rejected": 1,
    }
    listed = CliRunner().invoke(cli, ["--db", db_url, "deliveries", "--json"])
    assert listed.exit_code == 0
    assert any(d["source"] == "reprocess" for d in json.loads(listed.stdout))
