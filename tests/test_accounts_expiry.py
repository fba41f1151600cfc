"""Account filters and expiry's stop time and dry run, on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import Outcome, Scope, State, Stream, Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.server import create_app
from tests._deliveries import body
from tests._live import SECRET, serving

HOUR = 3_600_000
MINUTE = 60_000
TOKEN = "read-token-for-tests"


def invoke_json(db: str, *args: str) -> Any:
    """Run a command with --json in-process; it must succeed."""
    result = CliRunner().invoke(cli, ["--db", db, *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def accounts(tracker: Tracker) -> int:
    """Streams of two accounts (and one without): live, stopped and interrupted; returns now."""
    now = now_ms()
    a, b = {"account_id": "acct-a"}, {"account_id": "acct-b"}
    tracker.ingest_many(
        [
            body("started", "a-live", now - HOUR, **a),
            body("started", "a-done", now - 3 * HOUR, **a),
            body("interrupted", "a-done", now - 3 * HOUR + MINUTE, **a),
            body("started", "a-done", now - 3 * HOUR + 2 * MINUTE, **a),
            body("stopped", "a-done", now - 2 * HOUR, stop_reason=6, **a),
            body("started", "b-live", now - HOUR, scope=Scope.WEBINAR, **b),
            body("started", "b-done", now - 3 * HOUR, **b),
            body("stopped", "b-done", now - 2 * HOUR, stop_reason=10, **b),
            body("started", "no-account", now - HOUR),
        ]
    )
    return now


def ids(streams: Any) -> set[str]:
    """Stream ids of Streams or of their JSON."""
    return {s["stream_id"] if isinstance(s, dict) else s.stream_id for s in streams}


# --- account filters ------------------------------------------------------------------------------


def test_streams_of_one_account(tracker: Tracker, accounts: int) -> None:
    """streams(account_id=) and active_streams(account_id=) keep that account's streams only."""
    assert ids(tracker.streams(account_id="acct-a")) == {"a-live", "a-done"}
    assert ids(tracker.streams(State.STOPPED, account_id="acct-b")) == {"b-done"}
    assert ids(tracker.active_streams(account_id="acct-b")) == {"b-live"}
    assert ids(tracker.active_streams(Scope.MEETING, account_id="acct-b")) == set()
    assert tracker.streams(account_id="acct-z") == []


def test_stop_reason_stats_of_one_account(tracker: Tracker, accounts: int) -> None:
    """stop_reason_stats(account_id=) counts that account's stops only, shares within it."""
    (only,) = tracker.stop_reason_stats(account_id="acct-b")
    assert (only.stop_reason, only.count, only.share) == (10, 1, 1.0)
    assert sum(s.count for s in tracker.stop_reason_stats()) == 2


def test_interruption_stats_of_one_account(tracker: Tracker, accounts: int) -> None:
    """interruption_stats(account_id=) counts that account's streams and interruptions only."""
    a = tracker.interruption_stats(account_id="acct-a")
    b = tracker.interruption_stats(account_id="acct-b")
    assert (a.streams, a.interrupted_streams, a.recovered) == (2, 1, 1)
    assert (b.streams, b.interrupted_streams) == (2, 0)


def test_cli_account_filters(db_url: str, accounts: int) -> None:
    """streams --account and stats --account (stop reasons, interruptions) filter by account."""
    assert ids(invoke_json(db_url, "streams", "--account", "acct-a")) == {"a-live", "a-done"}
    assert ids(invoke_json(db_url, "streams", "--active", "--account", "acct-b")) == {"b-live"}
    stats = invoke_json(db_url, "stats", "--account", "acct-a")
    assert [(s["stop_reason"], s["count"]) for s in stats] == [(6, 1)]
    interruptions = invoke_json(db_url, "stats", "--interruptions", "--account", "acct-b")
    assert interruptions["streams"] == 2
    assert interruptions["interruptions"] == 0


def test_read_api_account_filters(tracker: Tracker, accounts: int) -> None:
    """The read API's account_id parameter filters /streams and /stats/stop-reasons."""
    app = create_app(tracker, secrets=[SECRET], api_token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with serving(app) as url, httpx.Client(base_url=url, headers=auth) as client:
        streams = client.get("/streams", params={"account_id": "acct-b", "active": "true"})
        stats = client.get("/stats/stop-reasons", params={"account_id": "acct-a"})
    assert ids(streams.json()["items"]) == {"b-live"}
    assert [(s["stop_reason"], s["count"]) for s in stats.json()] == [(6, 1)]


# --- expiry ---------------------------------------------------------------------------------------


def test_dry_run_shows_the_expiry_and_writes_nothing(tracker: Tracker, accounts: int) -> None:
    """expire(dry_run=True) returns the streams as the expiry would leave them; nothing changes."""
    before = (tracker.streams(), tracker.deliveries(limit=None))
    planned = tracker.expire(timedelta(minutes=30), dry_run=True)
    assert (tracker.streams(), tracker.deliveries(limit=None)) == before
    done = tracker.expire(timedelta(minutes=30))
    # Each run dates its stops when it runs: the two differ only there.
    assert [_undated(s) for s in planned] == [_undated(s) for s in done]
    for plan, stop in zip(planned, done, strict=True):
        assert plan.stopped_at is not None
        assert stop.stopped_at is not None
        assert plan.stopped_at <= stop.stopped_at
    assert ids(done) == {"a-live", "b-live", "no-account"}


def test_cli_expire_dry_run(db_url: str, accounts: int) -> None:
    """expire --dry-run prints what expire would print, and a second look finds them still live."""
    planned = invoke_json(db_url, "expire", "--stale-after", "30m", "--dry-run")
    assert len(invoke_json(db_url, "streams", "--active")) == 3
    done = invoke_json(db_url, "expire", "--stale-after", "30m")
    dated = ("stopped_at", "last_event_at", "duration_ms")
    assert [{k: v for k, v in s.items() if k not in dated} for s in planned] == [
        {k: v for k, v in s.items() if k not in dated} for s in done
    ]
    assert invoke_json(db_url, "streams", "--active") == []
    result = CliRunner().invoke(cli, ["--db", db_url, "expire", "--stale-after", "1m", "--dry-run"])
    assert "Would expire 0 streams" in result.stdout


def test_expiry_is_dated_when_it_runs(tracker: Tracker) -> None:
    """An expired stream stops when the expiry ran: as far as anyone knew, it was live till then."""
    now = now_ms()
    tracker.ingest(body("started", "old", now - 30 * HOUR))
    (expired,) = tracker.expire(timedelta(hours=6))
    assert expired.stopped_at is not None
    assert now <= expired.stopped_at <= now_ms()
    (stat,) = tracker.stop_reason_stats()
    assert stat.median_duration_ms == expired.stopped_at - (now - 30 * HOUR)


def _undated(stream: Stream) -> Stream:
    return replace(stream, stopped_at=None, last_event_at=None)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(after_start=st.integers(min_value=1, max_value=10 * HOUR - 1), stop_first=st.booleans())
def test_a_real_stop_before_the_expiry_time_wins_in_any_order(
    db_url: str, after_start: int, stop_first: bool
) -> None:
    """A real stop older than the expiry's time (any time between the start and the expiry run,
    also after the stream went stale) gives the same stream whether it came before or after the
    expiry."""
    now = now_ms()
    start = now - 10 * HOUR
    sid = f"s-{after_start}-{stop_first}"
    stop_at = start + after_start
    stop = body("stopped", sid, stop_at, stop_reason=6)
    with Tracker(db_url) as tracker:
        tracker.ingest(body("started", sid, start))
        if stop_first:
            assert tracker.ingest(stop).outcome is Outcome.APPLIED
        tracker.expire(timedelta(hours=6))
        if not stop_first:
            assert tracker.ingest(stop).outcome is Outcome.APPLIED
        stream = tracker.stream(sid)
        assert tracker.verify_audit(sid).breaks == ()
    assert stream is not None
    assert (stream.state, stream.stop_reason, stream.stopped_at, stream.last_event_at) == (
        State.STOPPED,
        6,
        stop_at,
        stop_at,
    )
