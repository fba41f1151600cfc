"""Dashboard sign-out shared by every receiver process on one database, and failing closed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from rtms_lifecycle import Tracker
from rtms_lifecycle.receiver.dashboard import COOKIE_NAME
from rtms_lifecycle.server import API_TOKEN_ENV, create_app
from tests._live import SECRET, clean_environment, serving
from tests._served import serve_command

TOKEN = "dashboard-token-for-tests"
HTML = {"accept": "text/html"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a receiver reads from the developer's shell leaks into a test."""
    clean_environment(monkeypatch)


def sign_in(url: str) -> str:
    """Sign in through the form; the session cookie's value."""
    answer = httpx.post(f"{url}/dashboard/login", data={"token": TOKEN}, headers=HTML)
    assert answer.status_code == 303, answer.text
    return answer.cookies[COOKIE_NAME]


def overview(url: str, cookie: str, accept: str = "text/html") -> httpx.Response:
    """The overview with ``cookie`` as the browser's session cookie."""
    with httpx.Client(base_url=url, cookies={COOKIE_NAME: cookie}) as client:
        return client.get("/dashboard", headers={"accept": accept})


def sign_out(url: str, cookie: str) -> httpx.Response:
    """Press *Sign out* with ``cookie``."""
    with httpx.Client(base_url=url, cookies={COOKIE_NAME: cookie}) as client:
        return client.post("/dashboard/logout", headers=HTML)


def test_a_sign_out_in_one_receiver_process_holds_in_another(db_url: str, tmp_path: Path) -> None:
    """Two `serve` processes on one database: signed out on A, the old cookie is refused on B."""
    env = {API_TOKEN_ENV: TOKEN}
    with (
        serve_command(db_url, tmp_path, env=env) as a,
        serve_command(db_url, tmp_path, env=env) as b,
    ):
        cookie = sign_in(a.url)
        assert overview(b.url, cookie).status_code == 200
        other = sign_in(b.url)
        answer = sign_out(a.url, cookie)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/dashboard/login"
        for url in (a.url, b.url):
            refused = overview(url, cookie)
            assert refused.status_code == 303
            assert refused.headers["location"].startswith("/dashboard/login")
            assert overview(url, cookie, accept="application/json").status_code == 401
            # Only that session ended: another browser's stays signed in.
            assert overview(url, other).status_code == 200
        # Signing out again (another tab), on B this time, is harmless.
        assert sign_out(b.url, cookie).status_code == 303


def test_a_sign_out_is_kept_until_the_session_would_have_expired(tracker: Tracker) -> None:
    """A revocation holds until its expiry; expired ones are dropped by the next sign-out."""
    now = int(time.time() * 1000)
    tracker.revoke_dashboard_session("a" * 32, now + 60_000)
    assert tracker.dashboard_session_revoked("a" * 32)
    assert not tracker.dashboard_session_revoked("b" * 32)
    expired(tracker, "c" * 32, now)
    assert not tracker.dashboard_session_revoked("c" * 32)
    tracker.revoke_dashboard_session("d" * 32, now + 60_000)
    assert _revocations(tracker) == ["a" * 32, "d" * 32]


def test_a_prune_drops_expired_sign_outs(tracker: Tracker) -> None:
    """`prune` drops the revocations whose session has expired anyway, and keeps the others."""
    now = int(time.time() * 1000)
    tracker.revoke_dashboard_session("a" * 32, now + 3_600_000)
    expired(tracker, "c" * 32, now)
    tracker.prune(timedelta(days=1))
    assert _revocations(tracker) == ["a" * 32]


def expired(tracker: Tracker, session_id: str, now: int) -> None:
    """A revocation whose session expired a moment before ``now``."""
    with tracker.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dashboard_revocations (session_id, revoked_at, expires_at)"
                " VALUES (:sid, :at, :at)"
            ),
            {"sid": session_id, "at": now - 1},
        )


def _revocations(tracker: Tracker) -> list[str]:
    with tracker.engine.connect() as conn:
        rows = conn.execute(text("SELECT session_id FROM dashboard_revocations ORDER BY 1"))
        return [row[0] for row in rows]


@pytest.fixture
def failing(sqlite_url: str) -> Iterator[tuple[Tracker, str, str]]:
    """Two receivers on one SQLite file, served in threads; yields the tracker and their URLs.
    A test breaks the revocations table with :func:`moved`."""
    with Tracker(sqlite_url) as tracker, Tracker(sqlite_url) as second:
        app_a = create_app(tracker, secrets=[SECRET], api_token=TOKEN)
        app_b = create_app(second, secrets=[SECRET], api_token=TOKEN)
        with serving(app_a) as a, serving(app_b) as b:
            yield tracker, a, b


def moved(tracker: Tracker, away: bool) -> None:
    """Rename the revocations table away (the store then fails to read it), or back."""
    names = ("dashboard_revocations", "revocations_moved")
    old, new = names if away else names[::-1]
    with tracker.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")


def test_a_session_that_cannot_be_checked_is_refused_with_503(
    failing: tuple[Tracker, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The store failing to say whether a session was signed out: 503, never a page, no 500;
    the bearer token (no sign-out to check) still opens the pages."""
    tracker, a, _ = failing
    cookie = sign_in(a)
    moved(tracker, away=True)
    with caplog.at_level(logging.ERROR):
        page = overview(a, cookie)
        assert page.status_code == 503
        assert "The database does not answer" in page.text
        assert page.headers["retry-after"] == "10"
        script = overview(a, cookie, accept="application/json")
        assert script.status_code == 503
        assert script.json() == {"detail": "the store is unavailable; retry later"}
        assert "could not check a session's sign-out" in caplog.text
        # The sign-in form, not a loop of redirects nor an error.
        with httpx.Client(base_url=a, cookies={COOKIE_NAME: cookie}) as client:
            assert client.get("/dashboard/login", headers=HTML).status_code == 200
        bearer = httpx.get(f"{a}/dashboard", headers={"authorization": f"Bearer {TOKEN}", **HTML})
        assert bearer.status_code == 200
    moved(tracker, away=False)
    assert overview(a, cookie).status_code == 200


def test_a_sign_out_the_store_cannot_record_says_so(
    failing: tuple[Tracker, str, str],
) -> None:
    """The store failing at sign-out: the cookie is removed all the same and this process
    refuses the session; the 503 page says that other processes may still accept a copy."""
    tracker, a, b = failing
    cookie = sign_in(a)
    moved(tracker, away=True)
    answer = sign_out(a, cookie)
    assert answer.status_code == 503
    assert "Signed out in this browser only" in answer.text
    assert "30m" in answer.text
    assert f'{COOKIE_NAME}=""' in answer.headers["set-cookie"]
    moved(tracker, away=False)
    assert overview(a, cookie).status_code == 303
    # Not recorded: the other process still accepts a copy until its idle time runs out.
    assert overview(b, cookie).status_code == 200
