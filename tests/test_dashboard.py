"""The /dashboard pages over HTTP: signing in, what each page shows, and what it never shows."""

from __future__ import annotations

import itertools
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from html import escape, unescape
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import Scope, Tracker
from rtms_lifecycle.receiver.dashboard import COOKIE_NAME
from rtms_lifecycle.receiver.dashboard.auth import SESSION_SECONDS, Sessions
from rtms_lifecycle.receiver.dashboard.pages import WINDOWS, StatsCache
from rtms_lifecycle.server import create_app
from tests._deliveries import body
from tests._live import SECRET, clean_environment, serving

TOKEN = "dashboard-token-for-tests"
HTML = {"accept": "text/html"}
HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a receiver reads from the developer's shell leaks into a test."""
    clean_environment(monkeypatch)


def now_ms() -> int:
    """Now, in epoch milliseconds."""
    return int(time.time() * 1000)


def record_day(tracker: Tracker) -> dict[str, str]:
    """A few streams of the last hours: live, interrupted, stopped normally and abnormally, one
    with a late event; returns their ids by role."""
    t = now_ms() - 5 * HOUR_MS
    ids = {
        "live": "live-stream-0001",
        "interrupted": "interrupted-stream-0002",
        "normal": "stopped-normal-0003",
        "abnormal": "stopped-abnormal-0004",
    }
    tracker.ingest(body("started", ids["live"], t, scope=Scope.WEBINAR))
    tracker.ingest(body("started", ids["interrupted"], t + 1000))
    tracker.ingest(body("interrupted", ids["interrupted"], t + 60_000))
    tracker.ingest(body("started", ids["normal"], t + 2000))
    tracker.ingest(body("stopped", ids["normal"], t + HOUR_MS, stop_reason=6))
    tracker.ingest(body("started", ids["abnormal"], t + 3000))
    tracker.ingest(body("stopped", ids["abnormal"], t + 2 * HOUR_MS, stop_reason=11))
    # Arrives after the stop, but happened before it: a late event.
    tracker.ingest(body("interrupted", ids["abnormal"], t + HOUR_MS))
    tracker.ingest(b'{"event": "meeting.rtms_started", "payload": {}}')
    return ids


@pytest.fixture
def recorded(db_url: str) -> Iterator[tuple[Tracker, dict[str, str]]]:
    """A tracker holding :func:`record_day`, on each database."""
    with Tracker(db_url) as tracker:
        yield tracker, record_day(tracker)


@pytest.fixture
def site(recorded: tuple[Tracker, dict[str, str]]) -> Iterator[str]:
    """The receiver with the dashboard, served on loopback; yields its base URL."""
    tracker, _ = recorded
    with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
        yield url


@pytest.fixture
def signed_in() -> Iterator[Callable[[str], httpx.Client]]:
    """Factory: a client that signed in through the form (closed after the test)."""
    with ExitStack() as clients:

        def sign_in(url: str) -> httpx.Client:
            client = clients.enter_context(httpx.Client(base_url=url, headers=HTML))
            answer = client.post("/dashboard/login", data={"token": TOKEN})
            assert answer.status_code == 303
            return client

        yield sign_in


def overview(client: httpx.Client, window: str = "24h") -> str:
    """The overview page once its statistics are computed (in the background)."""
    deadline = time.monotonic() + 20
    while "Being computed" in (page := client.get("/dashboard", params={"window": window}).text):
        assert time.monotonic() < deadline, "statistics not computed within 20 s"
        time.sleep(0.05)
    return page


def test_every_page_redirects_to_sign_in_without_a_session(
    site: str, recorded: tuple[Tracker, dict[str, str]]
) -> None:
    """Without signing in, each page redirects to the form and shows nothing of the record."""
    _, ids = recorded
    for path in ("/dashboard", "/dashboard?window=7d&page=2", f"/dashboard/streams/{ids['live']}"):
        answer = httpx.get(site + path, headers=HTML)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/dashboard/login?next=/dashboard")
        assert not any(stream_id in answer.text for stream_id in ids.values())


def test_every_page_answers_401_to_a_script_without_credentials(
    site: str, recorded: tuple[Tracker, dict[str, str]]
) -> None:
    """A client that does not ask for HTML gets 401 and no record."""
    _, ids = recorded
    for path in ("/dashboard", f"/dashboard/streams/{ids['live']}", "/dashboard/streams/nope"):
        for headers in ({}, {"authorization": "Bearer wrong"}):
            answer = httpx.get(site + path, headers=headers)
            assert answer.status_code == 401
            assert not any(stream_id in answer.text for stream_id in ids.values())


def test_a_wrong_token_is_refused_without_a_cookie(site: str) -> None:
    """Signing in with a wrong token answers 401 with the form again and sets no cookie."""
    answer = httpx.post(site + "/dashboard/login", data={"token": "guess"}, headers=HTML)
    assert answer.status_code == 401
    assert "not the API token" in answer.text
    assert "set-cookie" not in answer.headers
    assert "guess" not in answer.text


def test_an_oversized_sign_in_form_is_refused_unread(site: str) -> None:
    """A sign-in body over 8 KiB answers 413 without a cookie."""
    answer = httpx.post(site + "/dashboard/login", data={"token": "x" * 10_000})
    assert answer.status_code == 413
    assert "set-cookie" not in answer.headers


@pytest.fixture
def sqlite_site(sqlite_url: str) -> Iterator[str]:
    """The dashboard over SQLite alone (for what no database takes part in), with a request
    timeout of half a second; yields its base URL."""
    with (
        Tracker(sqlite_url) as tracker,
        serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN, request_timeout=0.5)) as url,
    ):
        yield url


def port(url: str) -> int:
    """The port of a base URL."""
    return int(url.rsplit(":", 1)[1])


SIGN_IN_HEAD = b"POST /dashboard/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"


def test_a_sign_in_form_that_never_arrives_is_answered_408(sqlite_site: str) -> None:
    """A sign-in whose body does not come within the request timeout is a 408, not a wait for
    ever."""
    with socket.create_connection(("127.0.0.1", port(sqlite_site))) as raw:
        raw.sendall(SIGN_IN_HEAD + b"token=")
        raw.settimeout(10)
        answer = raw.recv(1024)
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_browser_leaving_mid_sign_in_logs_no_error(
    sqlite_site: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A sign-in form cut off by the browser leaving is logged as information, not an error."""
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", port(sqlite_site))) as raw:
        raw.sendall(SIGN_IN_HEAD + b"token=")
    deadline = time.monotonic() + 5
    while "disconnected before its sign-in form" not in caplog.text:
        assert time.monotonic() < deadline, "the server never noticed the browser leave"
        time.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_signing_in_sets_a_strict_httponly_cookie_that_is_not_the_token(site: str) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, scoped to /dashboard, and no token."""
    answer = httpx.post(site + "/dashboard/login", data={"token": TOKEN}, headers=HTML)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert TOKEN not in cookie


def test_the_cookie_is_secure_behind_https(site: str) -> None:
    """Served over HTTPS (a trusted proxy says so), the session cookie is marked Secure."""
    answer = httpx.post(
        site + "/dashboard/login",
        data={"token": TOKEN},
        headers={**HTML, "x-forwarded-proto": "https"},
    )
    assert "Secure" in answer.headers["set-cookie"]


def test_the_sign_in_form_posts_the_token_and_never_puts_it_in_a_url(site: str) -> None:
    """The form is a POST with a password field; no redirect carries the token."""
    form = httpx.get(site + "/dashboard/login")
    assert re.search(r'<form method="post" action="/dashboard/login">', form.text)
    assert 'name="token" type="password"' in form.text
    answer = httpx.post(
        site + "/dashboard/login", data={"token": TOKEN, "next": "/dashboard?window=7d"}
    )
    assert answer.headers["location"] == "/dashboard?window=7d"
    assert TOKEN not in answer.headers["location"]


def test_sign_in_never_redirects_off_the_dashboard(site: str) -> None:
    """A ``next`` pointing elsewhere is replaced by the dashboard (no open redirect)."""
    for target in ("https://evil.example/", "//evil.example/dashboard", "/docs"):
        answer = httpx.post(site + "/dashboard/login", data={"token": TOKEN, "next": target})
        assert answer.headers["location"] == "/dashboard"


def test_signing_out_ends_the_session(site: str, signed_in: Callable[[str], httpx.Client]) -> None:
    """After signing out, the browser's cookie is gone and pages redirect to the form again."""
    client = signed_in(site)
    assert client.get("/dashboard").status_code == 200
    answer = client.post("/dashboard/logout")
    assert answer.status_code == 303
    assert client.get("/dashboard").status_code == 303


def test_a_cookie_of_another_token_is_refused() -> None:
    """Changing the API token signs every browser out; an old or forged cookie is refused."""
    old, new = Sessions("old-token"), Sessions("new-token")
    cookie = old.new_cookie()
    assert old.cookie_valid(cookie)
    assert not new.cookie_valid(cookie)
    assert not new.cookie_valid("123.abc")
    assert not new.cookie_valid(None)


@pytest.mark.parametrize(
    "cookie",
    [b"1.\xe9", b"1.\xc3\xa9", b"\xb2.abc", b"\xb2.\xb2", b"9" * 5000 + b".abc"],
    ids=["latin-1", "utf-8", "superscript-issued", "superscript-both", "long-issued"],
)
@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/login", "/dashboard/streams/x"])
def test_a_cookie_that_is_not_ascii_is_refused_not_a_500(
    sqlite_site: str, cookie: bytes, path: str
) -> None:
    """A session cookie holding bytes that are not ASCII is no session: a 401 (or the form),
    never a 500."""
    answer = httpx.get(sqlite_site + path, headers={b"cookie": b"rtms_dashboard=" + cookie})
    assert answer.status_code == (200 if path.endswith("login") else 401)


def test_a_session_expires_after_a_week() -> None:
    """A cookie issued more than a session ago is refused."""
    sessions = Sessions(TOKEN)
    now = time.time()
    # A session in use (renewed now), begun a week ago: refused; a second later, not yet.
    issued = int(now - SESSION_SECONDS - 1)
    assert not sessions.cookie_valid(sessions.new_cookie(now, session="s1", issued=issued))
    assert sessions.cookie_valid(sessions.new_cookie(now, session="s1", issued=issued + 3))


def test_no_dashboard_without_an_api_token(tracker_url: str) -> None:
    """Without RTMS_LIFECYCLE_API_TOKEN there is no dashboard: 404."""
    with serving(create_app(tracker_url, secrets=[SECRET])) as url:
        assert httpx.get(url + "/dashboard", headers=HTML).status_code == 404
        assert httpx.get(url + "/dashboard/login").status_code == 404


@pytest.fixture
def tracker_url(sqlite_url: str) -> str:
    """A database URL for a receiver without token."""
    return sqlite_url


def test_the_bearer_token_also_opens_the_pages(site: str) -> None:
    """Scripts may use the read API's bearer header instead of a cookie."""
    answer = httpx.get(site + "/dashboard", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("window=week", "window"),
        ("window=", "window"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=1000001", "page"),
        ("page=2.5", "page"),
        ("page=%C2%B2", "page"),
    ],
)
def test_a_bad_overview_address_is_a_page_naming_the_parameter(
    sqlite_site: str, signed_in: Callable[[str], httpx.Client], query: str, named: str
) -> None:
    """A window or page the overview does not have: a 422 page, naming it and what it takes."""
    answer = signed_in(sqlite_site).get(f"/dashboard?{query}")
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("text/html")
    assert f"<code>{named}</code> cannot be" in answer.text
    assert "Back to the dashboard" in answer.text


@pytest.mark.parametrize("order", [1, -1], ids=["right-first", "wrong-first"])
def test_two_authorization_headers_open_no_page(sqlite_site: str, order: int) -> None:
    """Two Authorization headers, the right token in either: 401, as the read API refuses them."""
    headers = [("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")][::order]
    answer = httpx.get(sqlite_site + "/dashboard", headers=headers)
    assert answer.status_code == 401


def test_the_overview_shows_live_streams_reasons_problems_and_interruptions(
    site: str, recorded: tuple[Tracker, dict[str, str]], signed_in: Callable[[str], httpx.Client]
) -> None:
    """One live (and one interrupted) stream, both stop reasons, the rejected delivery."""
    tracker, ids = recorded
    page = overview(signed_in(site))
    assert re.search(r'id="live-count" data-count="1"', page)
    assert re.search(r'id="interrupted-count" data-count="1"', page)
    assert f'data-stream-id="{ids["live"]}"' in page
    assert f'data-stream-id="{ids["interrupted"]}"' in page
    assert ids["normal"] not in page.split('id="stop-reasons"')[0]  # stopped: not in the live table
    assert re.search(r'data-reason="6" data-name="MEETING_ENDED" data-count="1"', page)
    assert re.search(r'data-reason="11" data-name="CONNECTION_TIMEOUT" data-count="1"', page)
    assert re.search(r'data-abnormal="1" data-total="1"', page)  # the abnormal stop's hour
    assert 'data-scope="meeting"' in page  # interruptions of the meeting streams
    rejected = tracker.deliveries("rejected")[0]
    assert f'data-delivery-id="{rejected.id}"' in page


def test_a_problem_delivery_links_its_stream_only_when_the_stream_is_stored(
    sqlite_url: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """Rejected deliveries carry stream ids: the one of a stored stream is a link that opens
    its page, the one that created no stream is plain text (its link was a 404)."""
    t = now_ms() - HOUR_MS
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "stored-stream", t))
        for stream_id in ("stored-stream", "never-stored"):  # a stop reason that is no number
            stop = body("stopped", stream_id, t, stop_reason="six")
            assert tracker.ingest(stop).outcome.value == "rejected"
        with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
            client = signed_in(url)
            problems = overview(client).split('id="problems"')[1].split("</section>")[0]
            links = re.findall(r'href="([^"]+)"', problems)
            assert links == ["/dashboard/streams/stored-stream"]
            assert client.get(links[0]).status_code == 200
            assert client.get("/dashboard/streams/never-stored").status_code == 404
    assert "never-stored" in problems


def test_the_window_chooses_the_statistics(
    site: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """Each window answers; an unknown one is refused naming the parameter."""
    client = signed_in(site)
    for key in WINDOWS:
        assert client.get("/dashboard", params={"window": key}).status_code == 200
    answer = client.get("/dashboard", params={"window": "1y"})
    assert answer.status_code == 422
    assert "window" in answer.text


def test_the_stream_page_lists_every_transition_and_marks_the_late_one(
    site: str, recorded: tuple[Tracker, dict[str, str]], signed_in: Callable[[str], httpx.Client]
) -> None:
    """Every transition is in the history table and on the timeline; the late one is marked."""
    tracker, ids = recorded
    page = signed_in(site).get(f"/dashboard/streams/{ids['abnormal']}").text
    history = tracker.history(ids["abnormal"])
    table = set(re.findall(r'<tr class="transition[^"]*" data-transition-id="(\d+)"', page))
    marks = set(re.findall(r'<g class="mark [^"]*" data-transition-id="(\d+)"', page))
    assert table == marks == {str(t.id) for t in history}
    late = [t for t in history if t.late]
    assert late
    assert re.search(rf'data-transition-id="{late[0].id}" data-name="\w+" data-late="true"', page)


def test_the_stream_page_counts_in_the_singular_for_one(
    site: str, recorded: tuple[Tracker, dict[str, str]], signed_in: Callable[[str], httpx.Client]
) -> None:
    """One interruption is "1 interruption", not "1 interruptions"."""
    _, ids = recorded
    page = signed_in(site).get(f"/dashboard/streams/{ids['abnormal']}").text
    assert "<dd>1 interruption, 0 resumes, 0 failovers</dd>" in page


def test_a_live_stream_s_timeline_runs_to_now_however_old(sqlite_url: str) -> None:
    """A live stream whose last event is days old fills the timeline to now, not a grey sliver."""
    from rtms_lifecycle.receiver.dashboard.charts import timeline

    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "old-live", now_ms() - 72 * HOUR_MS))
        stream, history = tracker.stream("old-live"), tracker.history("old-live")
    assert stream is not None
    svg = str(timeline(stream, history, now_ms()))
    track = float(re.findall(r'<rect class="track" x="[\d.]+" y="\d+" width="([\d.]+)"', svg)[0])
    (live,) = re.findall(r'<rect class="state-live" x="[\d.]+" y="\d+" width="([\d.]+)"', svg)
    assert float(live) == pytest.approx(track, abs=1)


def test_a_late_interruption_makes_the_restart_a_resume_on_the_stream_page(
    db_url: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """started(t0), started(t2) with new server URLs, then interrupted(t1) delivered late: the
    page's marks agree with its counts (a resume, no failover)."""
    t0 = now_ms() - HOUR_MS
    with Tracker(db_url) as tracker:
        tracker.ingest(body("started", "late", t0))
        tracker.ingest(body("started", "late", t0 + 120_000, server_urls="wss://rtms.zoom.us/2"))
        tracker.ingest(body("interrupted", "late", t0 + 60_000))
        history = tracker.history("late")
        with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
            page = signed_in(url).get("/dashboard/streams/late").text
    assert [t.name.value for t in history] == ["start", "interrupt", "failover"]
    assert "<dd>1 interruption, 1 resume, 0 failovers</dd>" in page
    marks = re.findall(r'<g class="mark [^"]*" data-transition-id="\d+" data-name="(\w+)"', page)
    assert sorted(marks) == ["interrupt", "resume", "start"]
    assert "recorded as failover at its arrival" in page


def test_pages_write_a_missing_value_as_the_command_line_does(
    site: str, recorded: tuple[Tracker, dict[str, str]], signed_in: Callable[[str], httpx.Client]
) -> None:
    """A missing value is an em dash everywhere, as in the CLI's tables; never an en dash."""
    _, ids = recorded
    client = signed_in(site)
    for page in (overview(client), client.get(f"/dashboard/streams/{ids['live']}").text):
        assert "—" in page
        assert "\u2013" not in page  # en dash


def test_an_unknown_stream_is_a_404_page(
    site: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """A stream id that is not stored answers 404 with a page saying so."""
    answer = signed_in(site).get("/dashboard/streams/no-such-stream")
    assert answer.status_code == 404
    assert "No such stream" in answer.text


@pytest.mark.parametrize("stream_id", ["%00", "a%00b"])
def test_a_stream_id_with_nul_is_a_404_page(
    site: str, signed_in: Callable[[str], httpx.Client], stream_id: str
) -> None:
    """A stream id holding NUL, which no stored stream has, is a 404 page on every database."""
    answer = signed_in(site).get(f"/dashboard/streams/{stream_id}")
    assert answer.status_code == 404
    assert "No such stream" in answer.text


def test_a_stream_id_with_a_slash_has_its_page(
    sqlite_url: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """A stream whose id holds '/' is reached from the overview's link to it."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "a/b", now_ms()))
        with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
            client = signed_in(url)
            link = re.search(r'href="(/dashboard/streams/[^"]+)"', overview(client))
            assert link is not None
            answer = client.get(link.group(1))
    assert answer.status_code == 200
    assert "a/b" in answer.text


@pytest.mark.parametrize(
    ("stream_id", "href"),
    [
        (".", "/dashboard/stream?id=."),
        ("..", "/dashboard/stream?id=.."),
        ("../metrics", "/dashboard/streams/..%2Fmetrics"),
        ("a/../b", "/dashboard/streams/a%2F..%2Fb"),
        ("%2E%2E", "/dashboard/streams/%252E%252E"),
    ],
)
def test_a_stream_id_with_dot_segments_is_linked_as_one_segment(
    sqlite_url: str, signed_in: Callable[[str], httpx.Client], stream_id: str, href: str
) -> None:
    """An id a browser would resolve as a path (``..``, ``../metrics``) is linked as one
    encoded segment, or by query when it is a dot segment itself; the link opens its page,
    signed in or through the sign-in form."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", stream_id, now_ms()))
        with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
            client = signed_in(url)
            links = re.findall(r'<a class="id" href="([^"]+)"', overview(client))
            assert links == [href.replace("&", "&amp;")]
            answer = client.get(httpx.URL(url + href))
            with httpx.Client(base_url=url, headers=HTML) as anonymous:
                form = anonymous.get(httpx.URL(url + href), follow_redirects=True)
                found = re.search(r'name="next" value="([^"]*)"', form.text)
                assert found is not None, form.text
                back = anonymous.post(
                    "/dashboard/login", data={"token": TOKEN, "next": unescape(found.group(1))}
                )
    assert answer.status_code == 200
    assert f'<span class="id">{escape(stream_id)}</span>' in answer.text
    assert back.status_code == 303
    assert back.headers["location"] == href


def test_pages_forbid_inline_scripts_and_framing(
    site: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """Pages carry a strict Content-Security-Policy and are never cached."""
    answer = signed_in(site).get("/dashboard")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert answer.headers["cache-control"] == "no-store"
    assert "<script>" not in answer.text
    assert "http://" not in answer.text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_static_files_ship_in_the_package(site: str) -> None:
    """The stylesheet and the refresh script are served from the package; nothing else is."""
    assert "text/css" in httpx.get(site + "/dashboard/static/dashboard.css").headers["content-type"]
    script = httpx.get(site + "/dashboard/static/dashboard.js")
    assert "setInterval" in script.text
    assert httpx.get(site + "/dashboard/static/../server.py").status_code == 404
    assert httpx.get(site + "/dashboard/static/_auth.py").status_code == 404


def test_stop_reason_counts_add_up_to_the_stop_reason_stats(
    recorded: tuple[Tracker, dict[str, str]],
) -> None:
    """Per-bucket counts, summed per reason, equal the stop-reason statistics' counts."""
    tracker, _ = recorded
    counts = tracker.stop_reason_counts(bucket=timedelta(hours=1))
    summed: dict[int | None, int] = {}
    for row in counts:
        assert row.bucket_start % HOUR_MS == 0
        summed[row.stop_reason] = summed.get(row.stop_reason, 0) + row.count
    assert summed == {s.stop_reason: s.count for s in tracker.stop_reason_stats()}


def test_stop_reason_counts_keep_to_the_window(
    recorded: tuple[Tracker, dict[str, str]],
) -> None:
    """Only stops in ``[since, until)`` are counted."""
    tracker, _ = recorded
    assert tracker.stop_reason_counts(since=now_ms()) == []
    assert sum(r.count for r in tracker.stop_reason_counts(since=now_ms() - 6 * HOUR_MS)) == 2


def test_statistics_too_slow_for_a_page_appear_on_a_later_refresh(sqlite_url: str) -> None:
    """A page does not wait for a slow computation: it gets None, then the statistics."""
    with Tracker(sqlite_url) as tracker:
        record_day(tracker)
        cache = StatsCache(tracker, wait_s=0)
        first = cache.get(WINDOWS["24h"]).stats
        deadline = time.monotonic() + 10
        later = first
        while later is None and time.monotonic() < deadline:
            time.sleep(0.01)
            later = cache.get(WINDOWS["24h"]).stats
        assert first is None
        assert later is not None
        assert later.stopped == 2


def test_interruptions_by_scope_equal_one_scope_at_a_time(
    recorded: tuple[Tracker, dict[str, str]],
) -> None:
    """The one-pass statistics per scope equal the statistics asked for each scope."""
    tracker, _ = recorded
    by_scope = tracker.interruption_stats_by_scope()
    assert set(by_scope) == {Scope.MEETING, Scope.WEBINAR}
    for scope, stats in by_scope.items():
        assert stats == tracker.interruption_stats(scope=scope)


# Each example writes its stops into a year of its own, so one database serves every example.
_YEARS = itertools.count(1)
_YEAR_MS = 365 * 24 * HOUR_MS


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    stops=st.lists(
        st.tuples(st.integers(0, 30 * 24 * HOUR_MS), st.sampled_from([0, 1, 6, 11, 13, 99])),
        max_size=12,
    ),
    bucket_hours=st.sampled_from([1, 6, 24]),
)
def test_stop_reason_counts_agree_with_the_stop_reason_stats(
    db_url: str, stops: list[tuple[int, int]], bucket_hours: int
) -> None:
    """For any stops, the bucketed counts add up per reason to the statistics' counts, and each
    stop falls in its bucket."""
    base = 1_600_000_000_000 + next(_YEARS) * _YEAR_MS
    bucket = bucket_hours * HOUR_MS
    # Each example in a year of its own, some far ahead of the clock: no margin.
    with Tracker(db_url, max_event_ahead=1e12) as tracker:
        for n, (at, reason) in enumerate(stops):
            stream_id = f"prop-{base}-{n}"
            tracker.ingest(body("started", stream_id, base))
            tracker.ingest(body("stopped", stream_id, base + at, stop_reason=reason))
        until = base + 31 * 24 * HOUR_MS
        counts = tracker.stop_reason_counts(base, until, bucket=timedelta(hours=bucket_hours))
        stats = tracker.stop_reason_stats(base, until)
    summed: dict[int | None, int] = {}
    for row in counts:
        assert row.bucket_start % bucket == 0
        summed[row.stop_reason] = summed.get(row.stop_reason, 0) + row.count
    assert summed == {s.stop_reason: s.count for s in stats}
    expected: dict[tuple[int, int | None], int] = {}
    for at, reason in stops:
        key = ((base + at) // bucket * bucket, reason)
        expected[key] = expected.get(key, 0) + 1
    assert {(r.bucket_start, r.stop_reason): r.count for r in counts} == expected


def test_a_store_that_fails_gives_a_503_page_not_a_500(
    sqlite_url: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """With the streams table gone, pages answer 503 with a sentence, and retry later."""
    with Tracker(sqlite_url) as tracker:
        ids = record_day(tracker)
        with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
            client = signed_in(url)
            with tracker.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE streams RENAME TO streams_moved")
            for path in ("/dashboard", f"/dashboard/streams/{ids['live']}"):
                answer = client.get(path)
                assert answer.status_code == 503
                assert "The database does not answer" in answer.text
                assert answer.headers["retry-after"] == "10"


def test_bidi_and_control_characters_are_shown_escaped(
    sqlite_url: str, signed_in: Callable[[str], httpx.Client]
) -> None:
    """Autoescaping stops HTML, not a U+202E that shows an id reversed: every page shows such
    characters as escapes, and the stream page's link still opens the stream."""
    spoof = "live-\u202e1000-\u2066x\u2069\u200e\u061c\x1b[31m\nx"
    shown = "live-\\u202e1000-\\u2066x\\u2069\\u200e\\u061c\\x1b[31m\\x0ax"
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", spoof, now_ms() - HOUR_MS, operator_id="op-\u202fx\u202e"))
        with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
            client = signed_in(url)
            pages = [overview(client)]
            stream = client.get(f"/dashboard/streams/{quote(spoof, safe='')}")
            assert stream.status_code == 200
            pages.append(stream.text)
    for page in pages:
        bad = [page[max(0, i - 120) : i + 40] for i, c in enumerate(page) if c in "\u202e\x1b"]
        assert not set(page) & {"\u202e", "\u2066", "\u2069", "\u200e", "\u061c", "\x1b"}, bad
        assert shown in page
