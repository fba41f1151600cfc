"""What an operator or an attacker reaches at the edges: event times out of range (rejected when
they arrive, rendered when an older version stored them), dashboard sessions and sign-ins, the
bearer-token rule, and database files the CLI cannot open."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from rtms_lifecycle import AsyncTracker, ConfigurationError, Outcome, Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.clock import format_time
from rtms_lifecycle.receiver.dashboard import COOKIE_NAME
from rtms_lifecycle.receiver.dashboard.auth import Sessions
from rtms_lifecycle.receiver.dashboard.pages import WINDOWS
from rtms_lifecycle.server import create_app
from tests._deliveries import body, raw
from tests._live import SECRET, serving, signed

TOKEN = "edges-token-for-tests"
T0 = 1_700_000_000_000
Y10K = 253_402_300_800_000  # 10000-01-01T00:00:00Z
SECONDS = 1_741_651_200  # 2025-03-11T00:00:00Z in seconds, where milliseconds belong
# The production guard deploy/ sets (RTMS_LIFECYCLE_MIN_EVENT_TIME); the default is 0.
Y2K = datetime(2000, 1, 1, tzinfo=UTC)
IN_SECONDS = (
    "event_ts: 1741651200 is before 2000-01-01T00:00:00Z (milliseconds since the epoch expected)"
)
HTML = {"accept": "text/html"}


# --- event times ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_ts", "reason"),
    [
        (Y10K, "ahead of the receiving clock"),
        (SECONDS, "before 2000-01-01T00:00:00Z"),
        (0, "before 2000-01-01T00:00:00Z"),
        (2**63, "between 0 and 2**63-1"),
        (-1, "between 0 and 2**63-1"),
    ],
)
def test_an_event_time_out_of_range_is_rejected_and_kept(
    sqlite_url: str, event_ts: int, reason: str
) -> None:
    """Beyond the parser's range or the day ahead by default; before 2000 under that bound."""
    bound = Y2K if "before" in reason else 0
    with Tracker(sqlite_url, min_event_time=bound) as tracker:
        result = tracker.ingest(raw("started", "odd", event_ts))
        assert result.outcome is Outcome.REJECTED
        assert [e.field for e in result.errors] == ["event_ts"]
        assert reason in result.errors[0].reason
        assert tracker.stream("odd") is None
        (stored,) = tracker.deliveries(stream_id="odd")
        assert stored.outcome is Outcome.REJECTED


def test_the_future_margin_is_a_setting(sqlite_url: str) -> None:
    now = int(time.time() * 1000)
    with Tracker(sqlite_url, max_event_ahead=60) as tracker:
        assert tracker.ingest(raw("started", "a", now + 30_000)).outcome is Outcome.APPLIED
        assert tracker.ingest(raw("started", "b", now + 600_000)).outcome is Outcome.REJECTED
    with Tracker(sqlite_url) as tracker:  # a day by default
        assert tracker.ingest(raw("started", "c", now + 3_600_000)).outcome is Outcome.APPLIED


def test_an_accepted_event_stays_accepted_when_its_stream_is_refolded(sqlite_url: str) -> None:
    """A re-fold re-reads stored bodies: the clock has moved, the verdict must not."""
    now = int(time.time() * 1000)
    with Tracker(sqlite_url, max_event_ahead=3600) as tracker:
        assert tracker.ingest(raw("started", "s", now + 1_800_000)).outcome is Outcome.APPLIED
        assert tracker.ingest(raw("stopped", "s", now + 1_900_000)).outcome is Outcome.APPLIED
    with Tracker(sqlite_url, max_event_ahead=0) as tracker:
        # Late: before the stop, so the stream is folded again from its stored events.
        late = tracker.ingest(raw("interrupted", "s", now + 1_850_000))
        assert late.outcome is Outcome.REJECTED  # arrives now, judged now
        early = tracker.ingest(raw("interrupted", "s", T0))
        assert early.outcome is Outcome.APPLIED
        stream = tracker.stream("s")
        assert stream is not None
        assert stream.stopped_at == now + 1_900_000


def test_an_event_time_in_seconds_is_rejected_on_every_path(db_url: str) -> None:
    """Seconds where milliseconds belong (January 1970) are refused naming ``event_ts``, the
    value and the bound, and kept with their bytes: one delivery, a batch, a bulk load, the
    app's word."""
    with Tracker(db_url, min_event_time=Y2K) as tracker:
        delivery = raw("started", "secs", SECONDS)
        result = tracker.ingest(delivery)
        assert result.outcome is Outcome.REJECTED
        assert [str(e) for e in result.errors] == [IN_SECONDS]
        (batched,) = tracker.ingest_batch([raw("started", "batch", SECONDS)])
        assert [str(e) for e in batched.errors] == [IN_SECONDS]
        bulk = tracker.ingest_many([raw("started", "bulk", SECONDS), raw("started", "z", 0)])
        assert bulk.counts == {Outcome.REJECTED: 2}
        assert tracker.report_resumed("secs", SECONDS).outcome is Outcome.REJECTED
        assert tracker.count_streams() == 0
        (stored, *_) = tracker.deliveries(stream_id="secs", limit=None)[::-1]
        assert (stored.outcome, stored.raw) == (Outcome.REJECTED, delivery)
        assert stored.error == [{"field": "event_ts", "reason": IN_SECONDS[len("event_ts: ") :]}]


def test_toy_event_times_are_applied_by_default(db_url: str) -> None:
    """The delivery contract bounds event_ts by the parser alone: a test's small times apply."""
    with Tracker(db_url) as tracker:
        assert tracker.ingest(raw("started", "toy", 1000)).outcome is Outcome.APPLIED
        assert tracker.ingest(raw("stopped", "toy", 2000)).outcome is Outcome.APPLIED
        stream = tracker.stream("toy")
        assert stream is not None
        assert (stream.started_at, stream.stopped_at) == (1000, 2000)


def test_the_earliest_event_time_is_a_setting(sqlite_url: str) -> None:
    with Tracker(sqlite_url, min_event_time=0) as tracker:  # only the parser's bound: 1970
        assert tracker.ingest(raw("started", "toy", 10)).outcome is Outcome.APPLIED
    with Tracker(sqlite_url, min_event_time=Y2K) as tracker:
        result = tracker.ingest(raw("started", "1999", 915_148_800_000))  # 1999-01-01
        assert [str(e) for e in result.errors] == [
            "event_ts: 915148800000 is before 2000-01-01T00:00:00Z (milliseconds since the epoch "
            "expected)"
        ]
    later = datetime(2025, 1, 1, tzinfo=UTC)
    with Tracker(sqlite_url, min_event_time=later) as tracker:
        result = tracker.ingest(raw("started", "2023", T0))
        assert result.outcome is Outcome.REJECTED
        assert "before 2025-01-01T00:00:00Z" in str(result.errors[0])
        assert tracker.ingest(raw("started", "2025", 1_741_651_200_000)).outcome is Outcome.APPLIED
    with Tracker(sqlite_url, min_event_time=T0 + 1) as tracker:
        reason = tracker.ingest(raw("started", "ms", T0)).errors[0].reason
        assert reason.startswith(f"{T0} is before 2023-11-14T22:13:20.001Z")


@pytest.mark.parametrize("bound", [-1, True, 2**63, 1.5, "2000-01-01"], ids=repr)
def test_an_earliest_event_time_that_is_not_a_time_is_refused(sqlite_url: str, bound: Any) -> None:
    with pytest.raises(ConfigurationError, match="min_event_time"):
        Tracker(sqlite_url, min_event_time=bound)
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_the_async_tracker_takes_the_earliest_event_time(sqlite_url: str) -> None:
    async def scenario() -> None:
        async with AsyncTracker(sqlite_url) as tracker:  # no bound by default
            assert (await tracker.ingest(raw("started", "toy", 10))).outcome is Outcome.APPLIED
        async with AsyncTracker(sqlite_url, min_event_time=Y2K) as tracker:
            result = await tracker.ingest(raw("started", "secs", SECONDS))
            assert [str(e) for e in result.errors] == [IN_SECONDS]
        with Tracker(sqlite_url) as shared, pytest.raises(TypeError, match="own options"):
            AsyncTracker(shared, min_event_time=Y2K)

    asyncio.run(scenario())


def test_reprocess_judges_a_refused_time_against_its_own_bound(sqlite_url: str) -> None:
    """A reprocessed delivery arrives again: refused still under the same bound, let in by a
    looser one."""
    with Tracker(sqlite_url, min_event_time=Y2K) as tracker:
        tracker.ingest(raw("started", "toy", 10))
        assert tracker.reprocess().after == {"rejected": 1}
        assert tracker.stream("toy") is None
    with Tracker(sqlite_url, min_event_time=0) as tracker:
        assert tracker.reprocess().after == {"applied": 1}
        stream = tracker.stream("toy")
        assert stream is not None
        assert stream.started_at == 10


def test_the_ingest_command_rejects_an_event_time_in_seconds(db_url: str) -> None:
    """Under the bound serve reads from RTMS_LIFECYCLE_MIN_EVENT_TIME, which the CLI reads too."""
    lines = f"{raw('started', 'secs', SECONDS).decode()}\n{raw('started', 'ok', T0).decode()}\n"
    result = CliRunner(env={"RTMS_LIFECYCLE_MIN_EVENT_TIME": "2000-01-01T00:00:00Z"}).invoke(
        cli, ["--db", db_url, "ingest", "-", "--json"], input=lines
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rejected"] == 1
    with Tracker(db_url) as tracker:
        (stored,) = tracker.deliveries(Outcome.REJECTED)
        assert (stored.stream_id, stored.error) == (
            "secs",
            [{"field": "event_ts", "reason": IN_SECONDS[len("event_ts: ") :]}],
        )
        assert tracker.stream("ok") is not None


def test_the_cli_reprocesses_under_the_bound_serve_reads(sqlite_url: str) -> None:
    """``deliveries reprocess`` keeps refusing what serve refused under the same environment;
    a value that is not a time is exit 2 naming the variable."""
    with Tracker(sqlite_url, min_event_time=Y2K) as tracker:
        tracker.ingest(raw("started", "secs", SECONDS))
    args = ["--db", sqlite_url, "deliveries", "reprocess", "--json"]
    guarded = CliRunner(env={"RTMS_LIFECYCLE_MIN_EVENT_TIME": "2000-01-01T00:00:00Z"})
    result = guarded.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["after"] == {"rejected": 1}
    bad = CliRunner(env={"RTMS_LIFECYCLE_MIN_EVENT_TIME": "soon"}).invoke(cli, args)
    assert bad.exit_code == 2
    assert "RTMS_LIFECYCLE_MIN_EVENT_TIME: " in bad.output
    assert "Traceback" not in bad.output
    with Tracker(sqlite_url) as tracker:
        assert tracker.stream("secs") is None


def _serve_options(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    """What ``serve`` hands the receiver, which is not started."""
    from rtms_lifecycle.receiver import runner

    seen: dict[str, Any] = {}
    monkeypatch.setattr(runner, "run", lambda **options: seen.update(options))
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 0, result.output
    return seen


def test_serve_reads_the_earliest_event_time_as_other_time_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RTMS_LIFECYCLE_MIN_EVENT_TIME", raising=False)
    assert _serve_options(monkeypatch)["min_event_time"] == 0  # no bound but 1970
    given = _serve_options(monkeypatch, "--min-event-time", "2000-01-01T00:00:00Z")
    assert given["min_event_time"] == 946_684_800_000
    assert _serve_options(monkeypatch, "--min-event-time", "0")["min_event_time"] == 0
    given = _serve_options(monkeypatch, "--min-event-time", "2025-03-11")
    assert given["min_event_time"] == 1_741_651_200_000
    monkeypatch.setenv("RTMS_LIFECYCLE_MIN_EVENT_TIME", str(T0))
    assert _serve_options(monkeypatch)["min_event_time"] == T0
    for bad, said in (
        (str(SECONDS), "looks like epoch seconds"),
        ("0001-01-01", "before 1970"),
        ("soon", "neither epoch milliseconds"),
    ):
        result = CliRunner().invoke(cli, ["serve", "--min-event-time", bad])
        assert result.exit_code == 2
        assert "--min-event-time" in result.output
        assert said in result.output


def test_any_stored_time_is_formatted() -> None:
    assert format_time(Y10K) == "+10000-01-01T00:00:00Z"
    assert format_time(-1) == "1969-12-31T23:59:59Z"
    assert format_time(2**63 - 1) == "+292278994-08-17T07:12:55Z"
    assert format_time(-62_135_596_800_001) == "0000-12-31T23:59:59Z"


def _old_rows(db_url: str) -> None:
    """Streams an older version stored: one in year 10000, one stopped before 1970."""
    with Tracker(db_url, max_event_ahead=1e12) as tracker:
        tracker.ingest(body("started", "y10k", Y10K))
        tracker.ingest(body("started", "old", T0))
        tracker.ingest(body("stopped", "old", T0 + 1000, stop_reason=6))
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE streams SET started_at = -86400000, stopped_at = -1000, "
                "last_event_at = -1000 WHERE stream_id = 'old'"
            )
        )
    engine.dispose()


def test_every_cli_read_command_renders_out_of_range_times(db_url: str) -> None:
    _old_rows(db_url)
    runner = CliRunner()
    for args in (
        ["streams"],
        ["streams", "--json"],
        ["stream", "y10k"],
        ["stream", "y10k", "--json"],
        ["stream", "old"],
        ["stats"],
        ["deliveries"],
        ["alerts"],
        ["expire", "--stale-after", "1h", "--dry-run"],
        ["expire", "--stale-after", "1h"],
        ["prune", "--older-than", "2d", "--dry-run"],
        ["prune", "--older-than", "2d"],
        ["prunes"],
    ):
        result = runner.invoke(cli, ["--db", db_url, *args])
        assert result.exit_code == 0, (args, result.output, result.exception)
        assert "Traceback" not in result.output
    shown = runner.invoke(cli, ["--db", db_url, "stream", "y10k"]).output
    assert "+10000-01-01T00:00:00Z" in shown


def test_the_dashboard_and_read_api_render_out_of_range_times(db_url: str) -> None:
    _old_rows(db_url)
    with (
        Tracker(db_url) as tracker,
        serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url,
        httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}) as client,
    ):
        for path in (
            *(f"/dashboard?window={window}" for window in WINDOWS),
            "/dashboard/streams/y10k",
            "/dashboard/streams/old",
            "/streams",
            "/streams/y10k",
            "/streams/old",
            "/stats/stop-reasons",
        ):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text[:300])
        assert "+10000-01-01" in client.get("/dashboard/streams/y10k").text


@pytest.mark.parametrize(
    ("event_ts", "said"),
    [(Y10K, "event_ts: must not be more than 86,400 s ahead"), (SECONDS, IN_SECONDS)],
    ids=["year-10000", "seconds"],
)
def test_the_receiver_rejects_an_event_time_out_of_range(
    db_url: str, event_ts: int, said: str
) -> None:
    """Answered 200 (Zoom must not retry it) with the outcome and the reason, and kept."""
    delivery = raw("started", "odd", event_ts)
    with (
        Tracker(db_url, min_event_time=Y2K) as tracker,
        serving(create_app(tracker, secrets=[SECRET])) as url,
    ):
        answer = httpx.post(f"{url}/webhook", content=delivery, headers=signed(delivery))
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "rejected"
        assert answer.json()["error"].startswith(said)
        (stored,) = tracker.deliveries()
        assert (stored.id, stored.raw) == (answer.json()["delivery_id"], delivery)
        assert tracker.stream("odd") is None


def test_the_receiver_takes_the_earliest_event_time(db_url: str) -> None:
    app = create_app(db_url, secrets=[SECRET], min_event_time=0)
    with serving(app) as url:
        toy = raw("started", "toy", 10)
        answer = httpx.post(f"{url}/webhook", content=toy, headers=signed(toy))
        assert answer.json()["outcome"] == "applied", answer.text
    app = create_app(db_url, secrets=[SECRET], min_event_time=Y2K)
    with serving(app) as url:
        old = raw("started", "1999", 915_148_800_000)
        answer = httpx.post(f"{url}/webhook", content=old, headers=signed(old))
        assert answer.json()["outcome"] == "rejected", answer.text
        assert answer.json()["error"].startswith("event_ts: 915148800000 is before 2000-01-01")


def test_the_receiver_applies_toy_event_times_by_default(db_url: str) -> None:
    with Tracker(db_url) as tracker, serving(create_app(tracker, secrets=[SECRET])) as url:
        for event, event_ts in (("started", 1000), ("stopped", 2000)):
            delivery = raw(event, "toy", event_ts)
            answer = httpx.post(f"{url}/webhook", content=delivery, headers=signed(delivery))
            assert answer.json()["outcome"] == "applied", answer.text
        stream = tracker.stream("toy")
        assert stream is not None
        assert (stream.state.value, stream.started_at, stream.stopped_at) == ("stopped", 1000, 2000)


# --- dashboard sign-in ------------------------------------------------------------------------


def _site(sqlite_url: str) -> tuple[Tracker, FastAPI]:
    tracker = Tracker(sqlite_url)
    return tracker, create_app(tracker, secrets=[SECRET], api_token=TOKEN)


def _sign_in(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(
        "/dashboard/login",
        data={"token": TOKEN, "next": "/dashboard"},
        headers={"origin": url, **HTML},
    )


def test_signing_out_revokes_the_session(sqlite_url: str) -> None:
    tracker, app = _site(sqlite_url)
    with tracker, serving(app) as url, httpx.Client(base_url=url) as client:
        assert _sign_in(client, url).status_code == 303
        cookie = client.cookies[COOKIE_NAME]
        assert client.get("/dashboard", headers=HTML).status_code == 200
        out = client.post("/dashboard/logout", headers={"origin": url, **HTML})
        assert out.status_code == 303
        # The old cookie, replayed: refused.
        replay = httpx.get(f"{url}/dashboard", cookies={COOKIE_NAME: cookie}, headers=HTML)
        assert replay.status_code == 303
        assert "/dashboard/login" in replay.headers["location"]


def test_a_session_ends_after_its_idle_time() -> None:
    sessions = Sessions(TOKEN, idle_seconds=60)
    cookie = sessions.new_cookie(now=1_000_000)
    assert sessions.cookie_valid(cookie, now=1_000_059)
    assert not sessions.cookie_valid(cookie, now=1_000_060)
    renewed = sessions.new_cookie(now=1_000_050, session=cookie.split(".")[0], issued=1_000_000)
    assert sessions.cookie_valid(renewed, now=1_000_100)
    assert not Sessions("another token").cookie_valid(cookie, now=1_000_001)


def test_failed_sign_ins_are_throttled_and_logged_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker, app = _site(sqlite_url)
    caplog.set_level(logging.WARNING, "rtms_lifecycle.server")
    with tracker, serving(app) as url, httpx.Client(base_url=url) as client:
        statuses = [
            client.post(
                "/dashboard/login", data={"token": "wrong"}, headers={"origin": url}
            ).status_code
            for _ in range(8)
        ]
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 3
        refused = client.post("/dashboard/login", data={"token": TOKEN}, headers={"origin": url})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    warnings = [r for r in caplog.records if "too many wrong API tokens" in r.message]
    assert len(warnings) == 1


@pytest.mark.parametrize("path", ["/dashboard/login", "/dashboard/logout"])
@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site", "origin": "null"},
        {"sec-fetch-site": "same-site"},
        {"origin": "https://evil.example"},
        {"referer": "https://evil.example/form.html"},
    ],
)
def test_a_cross_origin_form_post_is_refused(
    sqlite_url: str, path: str, headers: dict[str, str]
) -> None:
    tracker, app = _site(sqlite_url)
    with tracker, serving(app) as url, httpx.Client(base_url=url) as client:
        answer = client.post(path, data={"token": TOKEN}, headers={**headers, **HTML})
        assert answer.status_code == 403
        assert "another site" in answer.text
        assert COOKIE_NAME not in answer.cookies


def test_one_bearer_rule_for_the_read_api_metrics_and_dashboard(sqlite_url: str) -> None:
    tracker, app = _site(sqlite_url)
    with tracker, serving(app) as url:
        for header in (f"Bearer  {TOKEN}", f"bearer {TOKEN}", f"BEARER \t{TOKEN}"):
            for path in ("/streams", "/metrics", "/dashboard"):
                answer = httpx.get(f"{url}{path}", headers={"authorization": header})
                assert answer.status_code == 200, (header, path, answer.status_code)
        for path in ("/streams", "/metrics", "/dashboard"):
            wrong = httpx.get(f"{url}{path}", headers={"authorization": f"Basic {TOKEN}"})
            assert wrong.status_code == 401, path


# --- database files the CLI cannot open -------------------------------------------------------


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"]])
@pytest.mark.parametrize("kind", ["missing folder", "directory", "not sqlite", "proc mem"])
def test_db_commands_on_an_unusable_file_print_one_line(
    tmp_path: Path, command: list[str], kind: str
) -> None:
    if kind == "missing folder":
        path = tmp_path / "nowhere" / "x.db"
    elif kind == "directory":
        path = tmp_path
    elif kind == "not sqlite":
        path = tmp_path / "x.db"
        path.write_text("hello, not a database\n")
    else:
        path = Path("/proc/self/mem")
    result = CliRunner().invoke(cli, ["--db", f"sqlite:///{path}", *command])
    assert result.exit_code in (2, 3), (result.output, result.exception)
    assert result.output.startswith("Error: ")
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
