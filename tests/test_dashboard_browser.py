"""The dashboard as a person sees it: Debian's headless Chromium, driven by Playwright.

Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``.ci/run`` installs it): without
it these tests skip locally and fail under CI. Screenshots go to ``RTMS_LIFECYCLE_SCREENSHOTS``
(a directory) when set, else to the test's temporary directory; they are never committed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.receiver.dashboard import REFRESH_SECONDS
from rtms_lifecycle.server import API_TOKEN_ENV, create_app
from tests._deliveries import body
from tests._live import SECRET, serving
from tests._served import ENTRY_POINT, serve_command
from tests.conftest import _skip_or_fail

# One xdist worker launches the browser and loads the demo day once for every test here.
pytestmark = pytest.mark.xdist_group("browser")
TOKEN = "browser-token-for-tests"
CHROMIUM = Path(os.environ.get("RTMS_LIFECYCLE_CHROMIUM", "/usr/bin/chromium"))
# Root in a container with a closed network: no sandbox, no GPU, nothing phoning home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def run_cli(db: str, *args: str) -> Any:
    """``rtms-lifecycle --db DB ARGS...``'s JSON output."""
    result = CliRunner().invoke(cli, ["--db", db, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, or a skip (a failure under CI) when it is not installed."""
    if not CHROMIUM.exists():
        _skip_or_fail(f"{CHROMIUM} not found: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright is not installed: pip install -e '.[all]' --group test")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file holding the demo day, loaded by ``rtms-lifecycle demo``."""
    url = f"sqlite:///{tmp_path_factory.mktemp('demo')}/demo.db"
    run_cli(url, "demo")
    return url


@pytest.fixture(scope="module")
def site(demo_db: str) -> Iterator[str]:
    """The receiver with its dashboard over the demo day."""
    with serving(create_app(demo_db, secrets=[SECRET], api_token=TOKEN)) as url:
        yield url


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go."""
    wanted = os.environ.get("RTMS_LIFECYCLE_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Any, site: str) -> Iterator[Any]:
    """A fresh browser page (its own cookies) that records console errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.console_errors = []
    tab.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: tab.console_errors.append(str(e)))
    yield tab
    context.close()


def sign_in(page: Any, site: str, path: str = "/dashboard") -> None:
    """Open ``path``, land on the form, sign in with the token, come back to ``path``."""
    page.goto(site + path)
    assert "/dashboard/login" in page.url
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(site + path) + "$"))


def test_the_dashboard_agrees_with_the_cli(page: Any, site: str, demo_db: str, shots: Path) -> None:
    """Live count equals ``streams --active``; the bars equal ``stats --json``; no errors."""
    sign_in(page, site, "/dashboard?window=all")
    page.wait_for_selector("#stop-reasons svg .bar")
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    active = run_cli(demo_db, "streams", "--active", "--json")
    assert page.get_attribute("#live-count", "data-count") == str(len(active))
    assert page.inner_text("#live-count") == f"{len(active):,}"
    bars = page.eval_on_selector_all(
        "#stop-reasons .bar",
        "bars => bars.map(b => [b.dataset.reason, b.dataset.name, Number(b.dataset.count)])",
    )
    stats = run_cli(demo_db, "stats", "--json")
    expected = [
        [
            "" if s["stop_reason"] is None else str(s["stop_reason"]),
            s["stop_reason_name"],
            s["count"],
        ]
        for s in stats
    ]
    assert sorted(bars) == sorted(expected)
    assert page.console_errors == []


def test_the_stream_page_shows_every_transition(
    page: Any, site: str, demo_db: str, shots: Path
) -> None:
    """The page of the demo's most eventful stream lists each transition of ``stream --json``."""
    with Tracker(demo_db) as tracker:
        stream = max(tracker.streams("stopped"), key=lambda s: (s.interruptions, s.failovers))
    sign_in(page, site, f"/dashboard/streams/{stream.stream_id}")
    page.screenshot(path=str(shots / "stream.png"), full_page=True)
    shown = page.eval_on_selector_all(
        "#history tr.transition", "rows => rows.map(r => Number(r.dataset.transitionId))"
    )
    marks = page.eval_on_selector_all(
        "#timeline .mark", "marks => marks.map(m => Number(m.dataset.transitionId))"
    )
    history = run_cli(demo_db, "stream", stream.stream_id, "--json")["history"]
    assert shown == [t["id"] for t in history]
    assert sorted(marks) == sorted(shown)
    assert page.console_errors == []


def test_the_page_refreshes_itself_without_reloading(page: Any, site: str, demo_db: str) -> None:
    """A stream that starts after the page loaded shows up in place within a refresh."""
    # The page's timers run on a clock the test moves on: a refresh interval passes at once.
    page.clock.install()
    sign_in(page, site)
    before = int(page.get_attribute("#live-count", "data-count"))
    page.evaluate("window.loadedOnce = true")
    with Tracker(demo_db) as tracker:
        tracker.ingest(body("started", "browser-refresh-stream", 1_741_700_000_000))
    page.clock.run_for(REFRESH_SECONDS * 1000)
    # Polled from here: the page's policy forbids the eval a page-side wait would need.
    deadline = time.monotonic() + 25
    while page.get_attribute("#live-count", "data-count") != str(before + 1):
        assert time.monotonic() < deadline, "the page did not refresh within 25 s"
        page.wait_for_timeout(200)
    assert page.evaluate("window.loadedOnce") is True  # the same document: no reload
    assert page.locator('[data-stream-id="browser-refresh-stream"]').count() == 1
    assert page.console_errors == []


def test_without_signing_in_the_browser_sees_only_the_form(
    page: Any, site: str, demo_db: str
) -> None:
    """Every page lands on the sign-in form; a wrong token stays there; nothing of the record."""
    with Tracker(demo_db) as tracker:
        stream, *others = tracker.streams(limit=20)
    # The requested URL comes back in the form (where to go after signing in); nothing stored.
    secrets = [stream.scope_id, stream.account_id or "", *(s.stream_id for s in others)]
    for path in ("/dashboard", "/dashboard?window=30d", f"/dashboard/streams/{stream.stream_id}"):
        page.goto(site + path)
        assert "/dashboard/login" in page.url
        assert not [value for value in secrets if value in page.content()]
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    assert "not the API token" in page.inner_text(".error")
    assert "/dashboard/login" in page.url
    assert not [value for value in secrets if value in page.content()]


@pytest.fixture
def fresh_demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``rtms-lifecycle demo`` into a new database, then ``rtms-lifecycle serve`` on it, both as
    an operator runs them (nothing another test added: its day ends now); (database, URL)."""
    url = f"sqlite:///{tmp_path}/fresh-demo.db"
    loaded = subprocess.run(
        [str(ENTRY_POINT), "--db", url, "demo"], capture_output=True, text=True, timeout=120
    )
    assert loaded.returncode == 0, loaded.stderr
    with serve_command(url, tmp_path, env={API_TOKEN_ENV: TOKEN}) as served:
        yield url, served.url


def stop_counts(db: str, since_ms: int) -> int:
    """How many streams stopped since ``since_ms``, as ``stats --json`` counts them."""
    since = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat()
    return sum(row["count"] for row in run_cli(db, "stats", "--since", since, "--json"))


# A duration the page writes for less than a day: "45s", "3m 07s", "2h 05m".
UNDER_A_DAY = re.compile(r"\d+s|\d+m \d\ds|\d+h \d\dm")


def test_the_default_window_shows_the_demo_day(
    browser: Any, fresh_demo: tuple[str, str], shots: Path
) -> None:
    """The demo's day ends now: /dashboard without a window chosen shows the last 24 hours, with
    the day's stops, its live streams a few minutes or hours old, and every chart and table."""
    db, site = fresh_demo
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        before = int(time.time() * 1000)
        sign_in(page, site)
        page.wait_for_selector("#stop-reasons svg .bar")
        after = int(time.time() * 1000)
        page.screenshot(path=str(shots / "dashboard-24h.png"), full_page=True)
        assert page.url == f"{site}/dashboard"
        # The default window: 24 hours, marked as the current one.
        assert page.inner_text("nav.windows a.current") == "24h"
        assert "statistics over 24 hours" in page.inner_text(".asof")
        body_text = page.inner_text("body")
        assert "No stream stopped in" not in body_text
        assert "No stream began in" not in body_text
        # The day's stops, as `stats --since` counts them over the page's window.
        stopped = int(page.get_attribute("#stopped-count", "data-count"))
        day = 24 * 3_600_000
        assert stop_counts(db, after - day) <= stopped <= stop_counts(db, before - day)
        assert stopped > 0
        bars = page.eval_on_selector_all(
            "#stop-reasons .bar", "bars => bars.map(b => Number(b.dataset.count))"
        )
        assert bars
        assert sum(bars) == stopped
        # The abnormal share, one column per hour with stops, all within the window.
        starts = page.eval_on_selector_all(
            "#stop-reasons .share", "cols => cols.map(c => Number(c.dataset.start))"
        )
        assert starts
        assert all(before - day - 3_600_000 < start <= after for start in starts)
        # Live streams a few minutes or hours old, not from a day long gone.
        live = int(page.get_attribute("#live-count", "data-count"))
        assert live > 0
        ages = page.eval_on_selector_all(
            "#live-streams tr[data-stream-id]", "rows => rows.map(r => r.cells[4].innerText)"
        )
        assert ages
        assert [age for age in ages if not UNDER_A_DAY.fullmatch(age)] == []
        # The tables: interruptions per scope, problem deliveries, concurrency alerts.
        assert page.locator("#interruptions tr[data-scope]").count() > 0
        assert page.locator("#problems tr[data-delivery-id]").count() > 0
        assert page.locator("#alerts tbody tr").count() > 0
        assert errors == []
    finally:
        context.close()


def test_the_api_docs_render_with_the_network_blocked(page: Any, site: str, shots: Path) -> None:
    """/docs loads Swagger UI from the package: with every other host refused, it still shows
    each endpoint of the schema."""
    refused: list[str] = []

    def only_the_site(route: Any) -> None:
        if route.request.url.startswith(site):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_site)
    page.goto(site + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    page.screenshot(path=str(shots / "api-docs.png"), full_page=True)
    paths = page.eval_on_selector_all(
        ".opblock-summary-path", "spans => spans.map(s => s.dataset.path)"
    )
    assert {"/webhook", "/streams", "/streams/{stream_id}", "/stats/stop-reasons"} <= set(paths)
    assert refused == []
    assert page.console_errors == []


def test_live_streams_show_their_worker_and_the_stream_page_its_claims(
    page: Any, site: str, demo_db: str, shots: Path
) -> None:
    """The overview shows each live stream's worker and connection; the stream page the claim
    history, as ``Tracker.claim_history`` has it."""
    with Tracker(demo_db) as tracker:
        live = sorted(
            tracker.streams(["started", "resumed", "interrupted"]),
            key=lambda s: (s.started_at or 0, s.stream_id),
            reverse=True,
        )
        joined, waiting = live[0], live[1]
        claims = []
        for s in (joined, waiting):
            claim = tracker.claim("browser-w1", scope=s.scope, scope_id=s.scope_id, lease=600)
            assert claim is not None
            claims.append(claim)
        assert [c.stream_id for c in claims] == [joined.stream_id, waiting.stream_id]
        tracker.report_connected(claims[0])
        history = tracker.claim_history(joined.stream_id)
    try:
        sign_in(page, site, "/dashboard")
        rows = page.eval_on_selector_all(
            "#live-streams tr[data-stream-id]",
            "rows => rows.map(r => [r.dataset.streamId, r.querySelector('.worker').innerText,"
            " r.querySelector('.connection').dataset.connection])",
        )
        by_id = {sid: (worker, state) for sid, worker, state in rows}
        assert by_id[joined.stream_id] == ("browser-w1", "connected")
        assert by_id[waiting.stream_id] == ("browser-w1", "unconnected")
        assert {state for _, state in by_id.values()} <= {"connected", "unconnected", "unclaimed"}
        page.goto(f"{site}/dashboard/streams/{joined.stream_id}")
        page.screenshot(path=str(shots / "stream-claims.png"), full_page=True)
        shown = page.eval_on_selector_all(
            "#claims tr.claim-event", "rows => rows.map(r => [r.dataset.event, r.dataset.token])"
        )
        assert (
            shown
            == [[e.event, str(e.token)] for e in history]
            == [
                ["claimed", "1"],
                ["connected", "1"],
            ]
        )
        assert page.console_errors == []
    finally:
        with Tracker(demo_db) as tracker:
            for claim in claims:
                tracker.release(claim)


def fresh_context(browser: Any, width: int) -> Any:
    """A browser context ``width`` CSS pixels wide (375: a phone)."""
    return browser.new_context(viewport={"width": width, "height": 800})


@pytest.fixture
def small_site(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A receiver over a database of its own, with a few live streams; (database, URL)."""
    db = f"sqlite:///{tmp_path}/small.db"
    with Tracker(db) as tracker:
        for n in range(6):
            tracker.ingest(body("started", f"small-{n}", 1_700_000_000_000 + n * 1000))
    with serving(create_app(db, secrets=[SECRET], api_token=TOKEN)) as url:
        yield db, url


def refreshed(page: Any, db: str, stream_id: str) -> None:
    """Start ``stream_id``, let a refresh interval pass, wait until the page shows it."""
    before = int(page.get_attribute("#live-count", "data-count"))
    with Tracker(db) as tracker:
        tracker.ingest(body("started", stream_id, 1_700_000_100_000))
    page.clock.run_for(REFRESH_SECONDS * 1000)
    deadline = time.monotonic() + 25
    while page.get_attribute("#live-count", "data-count") != str(before + 1):
        assert time.monotonic() < deadline, "the page did not refresh within 25 s"
        page.wait_for_timeout(100)


def test_a_refresh_keeps_focus_scroll_and_a_selection(
    browser: Any, small_site: tuple[str, str]
) -> None:
    """On a phone, a refresh that changes the live list keeps the focused link focused (by its
    address, in its new row) and the table's sideways scroll; a selected id holds the refresh
    back until it is cleared. On a live stream's page, the timeline's scroll and its opened
    text."""
    db, site = small_site
    context = fresh_context(browser, 375)
    try:
        page = context.new_page()
        page.clock.install()
        sign_in(page, site)
        link = '#live-streams a[href$="/small-2"]'
        page.focus(link)
        page.evaluate(f"document.querySelector('{link}').old = true")
        frame = "#live-streams .scroll"
        page.eval_on_selector(frame, "f => { f.scrollLeft = 120; }")
        assert page.eval_on_selector(frame, "f => f.scrollLeft") == 120
        refreshed(page, db, "small-new-1")
        focused = page.evaluate(
            "[document.activeElement.getAttribute('href'), document.activeElement.old === true]"
        )
        assert focused == ["/dashboard/streams/small-2", False]  # a new node, the same link
        assert page.eval_on_selector(frame, "f => f.scrollLeft") == 120
        # Select an id, as support staff do to copy it: the refresh waits.
        page.eval_on_selector(
            '#live-streams a[href$="/small-3"]',
            "a => { const r = document.createRange(); r.selectNodeContents(a);"
            " getSelection().removeAllRanges(); getSelection().addRange(r); }",
        )
        with Tracker(db) as tracker:
            tracker.ingest(body("started", "small-new-2", 1_700_000_200_000))
        page.clock.run_for(REFRESH_SECONDS * 1000)
        assert "paused while text is selected" in page.inner_text("#refreshed")
        assert page.evaluate("getSelection().toString()") == "small-3"
        assert page.locator('[data-stream-id="small-new-2"]').count() == 0
        # Cleared: the refresh it held back runs at once.
        page.evaluate("getSelection().removeAllRanges()")
        page.wait_for_selector('[data-stream-id="small-new-2"]', timeout=25_000)
        assert "updated" in page.inner_text("#refreshed")
        page.goto(f"{site}/dashboard/streams/small-4")
        timeline = "#timeline .chart-frame"
        page.eval_on_selector(timeline, "f => { f.scrollLeft = 200; }")
        page.click("#timeline details summary")
        page.evaluate("document.querySelector('#timeline svg').old = true")
        page.clock.run_for(REFRESH_SECONDS * 1000)
        deadline = time.monotonic() + 25
        while page.evaluate("document.querySelector('#timeline svg').old === true"):
            assert time.monotonic() < deadline, "the page did not refresh within 25 s"
            page.wait_for_timeout(100)
        assert page.eval_on_selector(timeline, "f => f.scrollLeft") == 200
        assert page.eval_on_selector("#timeline details", "d => d.open") is True
        assert page.is_visible("#timeline details li")
    finally:
        context.close()


# WCAG 2 contrast of every piece of text on the page against the first opaque background
# behind it: the lowest ratios, with what they belong to.
CONTRASTS = """() => {
  const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const behind = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] > 0) { return c.slice(0, 3); }
    }
    return [255, 255, 255];
  };
  const found = [];
  for (const el of document.querySelectorAll("body *:not(svg *)")) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) { continue; }
    const style = getComputedStyle(el);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const [a, b] = [lum(rgb(style.color)), lum(behind(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    found.push([Math.round(ratio * 100) / 100, large ? 3 : 4.5, el.className || el.tagName,
                el.textContent.trim().slice(0, 30)]);
  }
  return found;
}"""


def test_text_contrast_headings_skip_link_and_text_for_the_charts(
    page: Any, site: str, demo_db: str
) -> None:
    """Every text on the overview and a stream page meets WCAG AA contrast (the "as of" line
    and the grey pills included); each page has one h1; the first Tab reaches a skip link
    that leads past the header; what the charts' tooltips say is also there as text."""
    sign_in(page, site, "/dashboard?window=all")
    with Tracker(demo_db) as tracker:
        stream = max(tracker.streams("stopped"), key=lambda s: (s.interruptions, s.failovers))
    for path in ("/dashboard?window=all", f"/dashboard/streams/{stream.stream_id}"):
        page.goto(site + path)
        found = page.evaluate(CONTRASTS)
        classes = {str(name) for _, _, name, _ in found}
        if "window" in path:
            assert {"asof", "pill state-stopped"} <= classes  # "no worker" is a stopped pill
        assert [f for f in found if f[0] < f[1]] == []
        assert page.locator("h1").count() == 1
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        box = page.locator("a.skip").bounding_box()
        assert box is not None
        assert box["y"] >= 0
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")
        assert page.evaluate("document.getElementById('content').contains(document.activeElement)")
    page.goto(site + "/dashboard?window=all")
    assert page.locator('nav.jump a[href="#stop-reasons"]').count() == 1
    columns = page.eval_on_selector_all(
        "#stop-reasons .share", "cs => cs.map(c => [c.dataset.abnormal, c.dataset.total])"
    )
    page.click("#stop-reasons details summary")
    rows = page.eval_on_selector_all(
        "#stop-reasons details tbody tr",
        "rs => rs.map(r => [r.cells[1].innerText, r.cells[2].innerText])",
    )
    assert rows == [[f"{int(a):,}", f"{int(t):,}"] for a, t in columns]
    assert rows
    page.goto(f"{site}/dashboard/streams/{stream.stream_id}")
    tips = page.eval_on_selector_all("#timeline .mark title", "ts => ts.map(t => t.textContent)")
    page.click("#timeline details summary")
    assert sorted(
        page.eval_on_selector_all("#timeline details li", "ls => ls.map(l => l.innerText)")
    ) == sorted(tips)
    assert page.console_errors == []


# Text drawn smaller than this many CSS pixels, and text that runs out of its box.
SMALL_OR_CUT = """() => {
  const found = [];
  for (const el of document.querySelectorAll("#content *")) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) { continue; }
    let size = parseFloat(getComputedStyle(el).fontSize);
    const svg = el.closest("svg");
    if (svg) {
      size *= svg.getScreenCTM().a;
      const box = el.getBBox();
      const view = svg.viewBox.baseVal;
      if (box.x < view.x || box.x + box.width > view.x + view.width) {
        found.push(["cut", el.textContent]);
      }
    }
    if (size < 10) { found.push(["small", size, el.textContent.slice(0, 30)]); }
  }
  for (const card of document.querySelectorAll("#stream, #timeline, #stop-reasons, #live")) {
    if (card.scrollWidth > card.clientWidth) { found.push(["scrolls", card.id]); }
  }
  if (document.documentElement.scrollWidth > innerWidth) { found.push(["page scrolls"]); }
  return found;
}"""


def test_a_phone_reads_the_stop_reasons_and_every_timeline(
    browser: Any, site: str, demo_db: str
) -> None:
    """At 375 px no text of the overview or of a stream page with late marks is under 10 px,
    no chart label runs past its chart, and only a timeline's own frame scrolls sideways."""
    with Tracker(demo_db) as tracker:
        late = [
            s.stream_id
            for s in tracker.streams("stopped")
            if any(t.late for t in tracker.history(s.stream_id))
        ]
    assert late
    context = fresh_context(browser, 375)
    try:
        page = context.new_page()
        sign_in(page, site, "/dashboard?window=all")
        page.wait_for_selector("#stop-reasons .bar")
        assert page.evaluate(SMALL_OR_CUT) == []
        for stream_id in late:
            page.goto(f"{site}/dashboard/streams/{stream_id}")
            assert (stream_id, page.evaluate(SMALL_OR_CUT)) == (stream_id, [])
            frame = page.eval_on_selector(
                "#timeline .chart-frame", "f => [f.scrollWidth > f.clientWidth, f.tabIndex]"
            )
            assert frame == [True, 0]  # it scrolls, and a keyboard can scroll it
    finally:
        context.close()


PADDED = "  padded id  "


def test_long_and_padded_ids_are_shown_whole_and_copy_as_stored(
    browser: Any, tmp_path: Path
) -> None:
    """A 255-character stream id, scope id, account and operator wrap inside their card (at
    375 and 1400 px); an id with leading and trailing spaces shows them and copies them."""
    db = f"sqlite:///{tmp_path}/ids.db"
    long_id = "L" * 255
    values = {"scope_id": "S" * 255, "account_id": "A" * 255, "operator_id": "O" * 255}
    with Tracker(db) as tracker:
        tracker.ingest(body("started", long_id, 1_700_000_000_000, **values))
        tracker.ingest(body("started", PADDED, 1_700_000_001_000, scope_id=PADDED))
    shown = """els => els.map(el => {
      const card = el.closest(".card, .scroll").getBoundingClientRect();
      const box = el.getBoundingClientRect();
      const range = document.createRange();
      range.selectNodeContents(el);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      return [el.innerText, getSelection().toString(),
              box.left >= card.left && box.right <= card.right];
    })"""
    with serving(create_app(db, secrets=[SECRET], api_token=TOKEN)) as site:
        for width in (375, 1400):
            context = fresh_context(browser, width)
            try:
                page = context.new_page()
                sign_in(page, site)
                links = page.eval_on_selector_all("#live-streams a.id", shown)
                assert sorted(links) == sorted([[v, v, True] for v in (long_id, PADDED)])
                page.goto(f"{site}/dashboard/streams/{long_id}")
                ids = page.eval_on_selector_all("#stream .id", shown)
                expected = [
                    long_id,
                    values["scope_id"],
                    values["account_id"],
                    values["operator_id"],
                ]
                assert ids == [[v, v, True] for v in expected]
                assert page.eval_on_selector("#stream", "c => c.scrollWidth <= c.clientWidth")
                page.goto(f"{site}/dashboard/streams/%20%20padded%20id%20%20")
                ids = page.eval_on_selector_all("#stream .id", shown)
                assert ids == [[PADDED, PADDED, True], [PADDED, PADDED, True]]
            finally:
                context.close()


DOT_IDS = [".", "..", "../metrics", "./x", "a/../b", "..%2Fmetrics", "%2E%2E"]


def test_links_to_streams_whose_ids_are_dot_segments_open_them(
    browser: Any, sqlite_url: str
) -> None:
    """Streams whose ids are ``.``, ``..``, ``../metrics`` and the like: each overview link
    opens that stream's page in the browser (``href="/dashboard/streams/.."`` was resolved by
    the browser to /dashboard/, and ``%2E%2E`` is too)."""
    started_at = int(time.time() * 1000) - 60_000
    with Tracker(sqlite_url) as tracker:
        for n, stream_id in enumerate(DOT_IDS):
            tracker.ingest(body("started", stream_id, started_at + n))
        with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url:
            context = browser.new_context()
            try:
                tab = context.new_page()
                sign_in(tab, url)
                hrefs = tab.eval_on_selector_all(
                    "a.id", "links => links.map(a => [a.textContent, a.href])"
                )
                assert sorted(text for text, _ in hrefs) == sorted(DOT_IDS)
                for text, href in hrefs:
                    tab.goto(href)
                    assert tab.inner_text("h1 .id") == text, (text, href, tab.url)
            finally:
                context.close()
