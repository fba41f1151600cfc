"""What the dashboard's pages say under live traffic, over real servers on loopback: live streams
paged by position, window statistics of a bounded age, the query parameters it takes, the
alerts' account and operator, and one traceback a minute through an outage."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.receiver import dashboard
from rtms_lifecycle.receiver.dashboard import pages
from rtms_lifecycle.receiver.dashboard.pages import PAGE_SIZE, WINDOWS, StatsCache
from rtms_lifecycle.server import create_app
from tests._deliveries import body
from tests._live import SECRET, clean_environment, serving
from tests._served import serve_command

TOKEN = "dashboard-data-token-for-tests"
BEARER = {"authorization": f"Bearer {TOKEN}", "accept": "text/html"}
T0 = int(time.time() * 1000) - 3_600_000


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)


@pytest.fixture
def served(db_url: str) -> Iterator[tuple[Tracker, httpx.Client]]:
    """A tracker on each database, its receiver on loopback and a client with the token."""
    with (
        Tracker(db_url) as tracker,
        serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url,
        httpx.Client(base_url=url, headers=BEARER, timeout=30) as client,
    ):
        yield tracker, client


def live_rows(html: str) -> list[str]:
    """The stream ids of the live-streams table, in order."""
    table = html.split('id="live-streams"')[1].split("</section>")[0]
    return re.findall(r'<tr data-stream-id="([^"]+)"', table)


def older_link(html: str) -> str | None:
    """The "older →" link of the live streams (relative to the overview), if any."""
    found = re.search(r'<a href="([^"]+)" rel="next">', html)
    return "/dashboard" + unescape(found.group(1)) if found else None


def test_paging_live_streams_under_traffic_never_repeats_nor_skips(
    served: tuple[Tracker, httpx.Client],
) -> None:
    """Streams start and stop between page loads: following "older →" to the end reads every
    stream that was live throughout exactly once, and none twice."""
    tracker, client = served
    first = [f"live-{n:04d}" for n in range(3 * PAGE_SIZE + 7)]
    for n, stream_id in enumerate(first):
        tracker.ingest(body("started", stream_id, T0 + n * 1000))
    stopped: set[str] = set()
    read: list[str] = []
    url: str | None = "/dashboard?window=24h"
    loads = 0
    while url is not None:
        answer = client.get(url)
        assert answer.status_code == 200
        rows = live_rows(answer.text)
        read += rows
        url = older_link(answer.text)
        loads += 1
        # Live traffic between two loads: newer streams start, some read and unread ones stop.
        for extra in range(5):
            tracker.ingest(
                body("started", f"new-{loads}-{extra}", T0 + 900_000 + loads * 10 + extra)
            )
        for stream_id in (first[loads * 31], first[-loads * 17]):
            tracker.ingest(body("stopped", stream_id, T0 + 1_000_000 + loads, stop_reason=1))
            stopped.add(stream_id)
    assert loads >= 4
    assert len(read) == len(set(read)), "a stream was read twice"
    assert set(first) - stopped <= set(read), "a stream live throughout was skipped"


def test_an_old_page_number_answers_the_newest_page_saying_so(
    served: tuple[Tracker, httpx.Client],
) -> None:
    """``?page=3`` from before keyset paging: the newest page, with a notice; ``page=1`` is the
    newest page as it always was."""
    tracker, client = served
    for n in range(PAGE_SIZE + 3):
        tracker.ingest(body("started", f"s-{n:03d}", T0 + n))
    newest = live_rows(client.get("/dashboard").text)
    old = client.get("/dashboard?page=3")
    assert old.status_code == 200
    assert 'id="renumbered"' in old.text
    assert live_rows(old.text) == newest
    one = client.get("/dashboard?page=1")
    assert 'id="renumbered"' not in one.text
    assert live_rows(one.text) == newest


@pytest.mark.parametrize(
    ("path", "named", "reason"),
    [
        ("/dashboard?windw=7d", "windw", "this page takes no such parameter"),
        ("/dashboard?window=24h&window=7d", "window", "given more than once"),
        ("/dashboard?window=7d&cursor=abc&cursor=abc", "cursor", "given more than once"),
        ("/dashboard?cursor=bm90LWEtY3Vyc29y", "cursor", "cannot be"),
        ("/dashboard?cursor=x&page=2", "cursor", "cannot be"),
        ("/dashboard/streams/s-1?window=7d", "window", "this page takes no such parameter"),
    ],
)
def test_an_unknown_or_repeated_parameter_is_a_422_page_naming_it(
    sqlite_url: str, path: str, named: str, reason: str
) -> None:
    """As the read API: a typo or a repeat is refused, never another page shown as asked."""
    with (
        Tracker(sqlite_url) as tracker,
        serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url,
    ):
        tracker.ingest(body("started", "s-1", T0))
        answer = httpx.get(url + path, headers=BEARER)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("text/html")
    assert f"<code>{named}</code>" in answer.text
    assert reason in answer.text


def test_concurrency_alerts_show_their_account_and_operator(
    served: tuple[Tracker, httpx.Client],
) -> None:
    """The alerts table names the account (as ``GET /alerts``) and the operator (as the CLI)."""
    tracker, client = served
    alert: dict[str, Any] = {
        "event": "rtms.concurrency_limited",
        "event_ts": T0,
        "payload": {
            "account_id": "acct-alert-7",
            "operator_id": "op-alert-9",
            "concurrency_number": 12,
            "id_field": {"meeting_uuid": "m-alert-1"},
        },
    }
    tracker.ingest(alert)
    assert tracker.concurrency_alerts(), "the alert was not stored"
    table = client.get("/dashboard").text.split('id="alerts"')[1].split("</section>")[0]
    assert "<th>Account</th><th>Operator</th>" in table
    assert '<td class="id account">acct-alert-7</td>' in table
    assert '<td class="id operator">op-alert-9</td>' in table


def test_long_windows_are_recomputed_past_their_bound_and_not_before(sqlite_url: str) -> None:
    """24 hours past the refresh interval, longer windows past their own bound: a stop
    recorded after a computation shows once the bound is past, and not before."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "w-1", T0))
        cache = StatsCache(tracker, fresh_s=0.2, wait_s=5, long_s=3600)
        day, week = WINDOWS["24h"], WINDOWS["7d"]
        assert cache.get(day).stats is not None
        first_week = cache.get(week).stats
        assert first_week is not None
        assert first_week.stopped == 0
        tracker.ingest(body("stopped", "w-1", T0 + 1000, stop_reason=1))
        deadline = time.monotonic() + 20
        while (found := cache.get(day).stats) is None or found.stopped == 0:
            assert time.monotonic() < deadline, "the 24 h window was never recomputed"
            time.sleep(0.05)
        # The 7 days' bound (an hour here) is not past: the same figures.
        assert cache.get(week).stats is first_week


def test_the_page_says_how_old_figures_older_than_the_refresh_are(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figures older than the refresh interval (a computation still running) come with their
    age in words; once the new ones are in, the notice goes."""
    monkeypatch.setattr(dashboard.router, "REFRESH_SECONDS", 1)
    release = threading.Event()
    held = threading.Event()
    computed = pages.window_stats

    def slow_when_held(tracker: Tracker, window: pages.Window) -> pages.WindowStats:
        if held.is_set():
            release.wait(20)
        return computed(tracker, window)

    monkeypatch.setattr(pages, "window_stats", slow_when_held)
    with (
        Tracker(sqlite_url) as tracker,
        serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url,
        httpx.Client(base_url=url, headers=BEARER, timeout=30) as client,
    ):
        tracker.ingest(body("started", "a-1", T0))
        deadline = time.monotonic() + 20
        while "Being computed" in (page := client.get("/dashboard").text):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert 'id="stats-age"' not in page
        held.set()
        try:
            while 'id="stats-age"' not in (page := client.get("/dashboard").text):
                assert time.monotonic() < deadline, "no age shown for stale figures"
                time.sleep(0.1)
            notice = page.split('id="stats-age"')[1].split("</p>")[0]
            assert "These statistics are" in notice
            assert "newer ones are being computed" in notice
        finally:
            held.clear()
            release.set()
        while 'id="stats-age"' in client.get("/dashboard").text:
            assert time.monotonic() < deadline, "the notice stayed after new figures"
            time.sleep(0.05)


def test_an_outage_logs_one_traceback_not_one_per_refused_request(tmp_path: Path) -> None:
    """The database file moved away with a signed-in tab refreshing: every request answered
    503 with a line each, a traceback only for the first of its kind."""
    path = tmp_path / "outage.db"
    env = {"RTMS_LIFECYCLE_API_TOKEN": TOKEN}
    with (
        serve_command(f"sqlite:///{path}", tmp_path, env=env) as running,
        httpx.Client(base_url=running.url, headers={"accept": "text/html"}) as tab,
    ):
        assert tab.post("/dashboard/login", data={"token": TOKEN}).status_code == 303
        assert tab.get("/dashboard").status_code == 200
        path.rename(tmp_path / "aside.db")
        try:
            answers = [tab.get("/dashboard").status_code for _ in range(9)]
        finally:
            (tmp_path / "aside.db").rename(path)
        assert answers == [503] * 9
        assert tab.get("/dashboard").status_code == 200
    lines = running.lines()
    refused = [line for line in lines if "could not check a session's sign-out" in line]
    assert len(refused) == 9, lines
    # A traceback follows its record's line (a chained one holds several "Traceback" lines).
    traced = [
        line
        for line, after in itertools.pairwise(lines)
        if line.strip() and after.startswith("Traceback")
    ]
    assert len(traced) == 1, lines
    assert "could not check a session's sign-out" in traced[0]
