"""The delivery queries read SQLite's partial indexes, which they must name in the same words.

SQLite uses a partial index only for a query whose WHERE clause repeats the index's condition;
a reworded query would silently scan every delivery. These tests read SQLite's plans.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rtms_lifecycle import Tracker
from tests._deliveries import raw
from tests._plans import query_plan

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[Tracker]:
    """A tracker on a new SQLite file, with a stream's event, duplicate and conflict stored."""
    with Tracker(f"sqlite:///{tmp_path}/rtms.db") as tracker:
        tracker.ingest(raw("started", "s1", T0 + 1_000))
        tracker.ingest(raw("started", "s1", T0 + 1_000))
        tracker.ingest(raw("started", "s1", T0 + 1_000, operator_id="someone else"))
        yield tracker


def test_a_streams_deliveries_are_read_from_both_indexes(stored: Tracker) -> None:
    """Listing a stream's deliveries seeks its events and its other deliveries, scanning none."""
    assert len(stored.deliveries(stream_id="s1")) == 3
    (plan,) = query_plan(stored, lambda: stored.deliveries(stream_id="s1"))
    assert "uq_deliveries_event (stream_id=?)" in plan
    assert "ix_deliveries_stream_other (stream_id=?)" in plan
    assert "SCAN deliveries" not in plan


def test_problem_deliveries_are_read_from_the_outcome_index(stored: Tracker) -> None:
    """Listing rejected or conflicting deliveries seeks them in the outcome index."""
    (plan,) = query_plan(stored, lambda: stored.deliveries(["rejected", "conflict"], limit=10))
    assert "ix_deliveries_unapplied (outcome=?)" in plan
    assert "SCAN deliveries" not in plan


def test_newest_applied_deliveries_are_the_newest_rows(stored: Tracker) -> None:
    """The newest applied deliveries are read newest row first, without sorting them."""
    (plan,) = query_plan(stored, lambda: stored.deliveries("applied", limit=10))
    assert "TEMP B-TREE" not in plan


def test_stop_reason_stats_read_the_rollup_and_the_stop_indexes(tmp_path: Path) -> None:
    """Whole days from the rollup's key, the edges from the stop index, each median from the
    duration index: no query scans streams."""
    day, d = 86_400_000, 19_000  # d: days since the epoch (2022-01-08)
    with Tracker(f"sqlite:///{tmp_path}/rtms.db") as tracker:
        for n in range(4):
            tracker.ingest(raw("started", f"s{n}", (d + 10) * day + n * 1000))
            tracker.ingest(raw("stopped", f"s{n}", (d + 11) * day + n * 7_000_000, stop_reason=6))
        window = ((d + 10) * day + 5, (d + 13) * day - 5)
        plans = query_plan(tracker, lambda: tracker.stop_reason_stats(*window))
        assert "stop_reason_rollup USING PRIMARY KEY (day>? AND day<?)" in plans[0]
        assert all("ix_streams_stopped_at (stopped_at>? AND stopped_at<?)" in p for p in plans[1:3])
        assert "ix_streams_stop_duration (stop_reason=?" in plans[3]
        assert not any("SCAN streams" in plan for plan in plans)
        (live,) = query_plan(tracker, tracker.active_streams)
        assert "COVERING INDEX ix_streams_live" in live
        assert "stream_claims USING INDEX sqlite_autoindex_stream_claims_1 (stream_id=?)" in live


def test_a_claim_reads_the_free_streams_not_the_held_ones(tmp_path: Path) -> None:
    """A claim walks the claim queue in start order and seeks expired leases by expiry: it
    neither scans the streams nor sorts them, however many are held."""
    with Tracker(f"sqlite:///{tmp_path}/rtms.db") as tracker:
        for i in range(5):
            tracker.ingest(raw("started", f"s{i}", T0 + i))
        assert tracker.claim("w1") is not None
        plans = query_plan(tracker, lambda: tracker.claim("w2"))
    queue, expired = plans[:2]
    assert "ix_claim_queue_started_at_stream_id" in queue
    assert "TEMP B-TREE" not in queue
    assert "ix_stream_claims_expires_at (expires_at<?)" in expired
    for plan in (queue, expired):
        assert "SCAN s" not in plan
        assert "SCAN streams" not in plan
