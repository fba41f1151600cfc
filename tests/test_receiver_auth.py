"""The receiver's guard against guessing and spoofing, against a real server on loopback: API
token requirements, wrong tokens throttled per client address (never for every address), the
proxies trusted with X-Forwarded-For/-Proto, the API docs only with the read API, and no
redirect built from the Host header."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rtms_lifecycle.exceptions import ConfigurationError
from rtms_lifecycle.server import API_TOKEN_ENV, create_app
from rtms_lifecycle.tracker import Tracker
from rtms_lifecycle.webhook import SECRET_ENV
from tests import _deliveries
from tests._live import SECRET, clean_environment, serving, signed
from tests._served import ENTRY_POINT, serve_command

pytest.importorskip("fastapi")

TOKEN = "auth-token-for-the-tests"
# Another loopback address: a second client the server tells apart from 127.0.0.1 (Linux
# routes all of 127.0.0.0/8 to loopback).
OTHER_CLIENT = "127.0.0.2"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)


@pytest.fixture
def tracker(sqlite_url: str) -> Iterator[Tracker]:
    with Tracker(sqlite_url) as opened:
        yield opened


@pytest.fixture
def url(tracker: Tracker) -> Iterator[str]:
    with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as base:
        yield base


def client_from(base: str, address: str = "127.0.0.1") -> httpx.Client:
    """A client whose connections come from ``address``."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=base, transport=transport, timeout=30)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def sign_in(client: httpx.Client, token: str, headers: dict[str, str] | None = None) -> int:
    answer = client.post(
        "/dashboard/login",
        data={"token": token},
        headers={"origin": str(client.base_url)} | (headers or {}),
    )
    return answer.status_code


# --- the token ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["x" * 15, "short", "sixteen chars ok", "ünicode-token-long"])
def test_a_weak_token_is_refused_at_startup(tracker: Tracker, token: str) -> None:
    """Under 16 characters, or not printable ASCII: refused, naming the setting, not the token."""
    with pytest.raises(ConfigurationError, match=API_TOKEN_ENV) as refused:
        create_app(tracker, secrets=[SECRET], api_token=token)
    assert token not in str(refused.value)
    assert "secrets.token_urlsafe(32)" in str(refused.value)


def serve_refused(workdir: Path, *options: str, token: str | None = None) -> str:
    """``serve --port 1 OPTIONS`` that must exit 2 before listening: its stderr."""
    env = {**os.environ, SECRET_ENV: SECRET}
    if token is not None:
        env[API_TOKEN_ENV] = token
    result = subprocess.run(
        [str(ENTRY_POINT), "serve", "--port", "1", *options],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_serve_with_a_short_token_exits_2_naming_it(tmp_path: Path) -> None:
    stderr = serve_refused(tmp_path, token="letmein")
    assert API_TOKEN_ENV in stderr
    assert "at least 16 characters, got 7" in stderr
    assert "letmein" not in stderr
    assert not (tmp_path / "rtms_lifecycle.db").exists()


# --- wrong tokens, throttled per address --------------------------------------------------------


@pytest.mark.parametrize("path", ["/streams", "/metrics", "/dashboard"])
def test_wrong_bearer_tokens_are_throttled_per_address(url: str, path: str) -> None:
    """Five wrong tokens a minute from one address: then 429 with Retry-After, the right token
    included, for that address alone."""
    with client_from(url) as guesser, client_from(url, OTHER_CLIENT) as other:
        assert [guesser.get(path, headers=bearer(f"guess-{n}")).status_code for n in range(5)] == [
            401
        ] * 5
        refused = guesser.get(path, headers=bearer(TOKEN))
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert other.get(path, headers=bearer(TOKEN)).status_code == 200
        # A request without any token is no guess: still the usual 401.
        assert guesser.get("/streams").status_code == 401


def test_sign_ins_and_bearer_tokens_share_one_count(url: str) -> None:
    with client_from(url) as guesser:
        for n in range(3):
            assert guesser.get("/streams", headers=bearer(f"guess-{n}")).status_code == 401
        assert sign_in(guesser, "wrong-1") == 401
        assert sign_in(guesser, "wrong-2") == 401
        assert sign_in(guesser, TOKEN) == 429
        assert guesser.get("/metrics", headers=bearer(TOKEN)).status_code == 429


def test_failures_from_many_addresses_lock_nobody_else_out(url: str) -> None:
    """Over 50 failures a minute from many addresses (behind the trusted 127.0.0.1, as a proxy
    would say): the next address still signs in and reads the API."""
    with client_from(url) as proxy:
        for n in range(60):
            forwarded = {"x-forwarded-for": f"198.51.100.{n // 5}"}
            assert sign_in(proxy, f"wrong-{n}", forwarded) == 401
        fresh = {"x-forwarded-for": "198.51.100.200"}
        assert sign_in(proxy, TOKEN, fresh) == 303
        assert proxy.get("/streams", headers=bearer(TOKEN) | fresh).status_code == 200


# --- the proxies trusted with X-Forwarded-For/-Proto ---------------------------------------------


def _session_cookie(client: httpx.Client, headers: dict[str, str]) -> str:
    answer = client.post(
        "/dashboard/login",
        data={"token": TOKEN},
        headers={"origin": str(client.base_url)} | headers,
    )
    assert answer.status_code == 303, answer.text
    return answer.headers["set-cookie"]


def test_serve_believes_forwarded_headers_from_the_named_proxy(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``serve --forwarded-allow-ips`` naming the client: X-Forwarded-For tells its clients
    apart for the throttle, X-Forwarded-Proto https makes the session cookie Secure."""
    options = ("--forwarded-allow-ips", f"10.0.0.0/8, {OTHER_CLIENT}")
    env = {API_TOKEN_ENV: TOKEN}
    with (
        serve_command(sqlite_url, tmp_path, *options, env=env) as served,
        client_from(served.url, OTHER_CLIENT) as proxy,
    ):
        https = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
        assert "; secure" in _session_cookie(proxy, https).lower()
        for n in range(6):
            assert sign_in(proxy, f"wrong-{n}", {"x-forwarded-for": "203.0.113.1"}) in (401, 429)
        assert sign_in(proxy, TOKEN, {"x-forwarded-for": "203.0.113.1"}) == 429
        assert sign_in(proxy, TOKEN, {"x-forwarded-for": "203.0.113.2"}) == 303
        assert any(f"believed from: 10.0.0.0/8, {OTHER_CLIENT}" in line for line in served.lines())


def test_serve_ignores_forwarded_headers_from_other_addresses(
    sqlite_url: str, tmp_path: Path
) -> None:
    """By default only this machine's 127.0.0.1 and ::1 are believed: from 127.0.0.2 the
    headers change nothing (the cookie is not Secure; every failure counts for 127.0.0.2)."""
    with (
        serve_command(sqlite_url, tmp_path, env={API_TOKEN_ENV: TOKEN}) as served,
        client_from(served.url, OTHER_CLIENT) as client,
    ):
        https = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
        assert "secure" not in _session_cookie(client, https).lower()
        for n in range(5):
            assert sign_in(client, f"wrong-{n}", {"x-forwarded-for": f"203.0.113.{n}"}) == 401
        assert sign_in(client, TOKEN, {"x-forwarded-for": "203.0.113.99"}) == 429


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.1/8", "10.0.0.1,*", ""])
def test_serve_refuses_a_forwarded_allow_ips_that_names_no_address(
    tmp_path: Path, value: str
) -> None:
    assert "--forwarded-allow-ips" in serve_refused(tmp_path, "--forwarded-allow-ips", value)


# --- the API docs -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_api_docs_exist_only_with_the_read_api(tracker: Tracker, path: str) -> None:
    with serving(create_app(tracker, secrets=[SECRET])) as base:
        assert httpx.get(base + path).status_code == 404
        # /metrics, without a token, is public: as the docs say.
        assert httpx.get(base + "/metrics").status_code == 200
    with serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as base:
        assert httpx.get(base + path).status_code == 200


# --- no redirect built from the Host header ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/webhook/"), ("GET", "/dashboard/"), ("POST", "/dashboard/"), ("GET", "/streams/")],
)
def test_a_trailing_slash_is_a_404_not_a_redirect(url: str, method: str, path: str) -> None:
    body = b"{}"
    headers = {"host": "evil.example", **signed(body), **bearer(TOKEN)}
    answer = httpx.request(method, url + path, content=body, headers=headers)
    assert answer.status_code == 404
    assert "location" not in answer.headers


@pytest.mark.parametrize(
    "path",
    [
        "/streams",
        "/streams/s-1",
        "/deliveries",
        "/alerts",
        "/subscriptions",
        "/stats/stop-reasons",
        "/stats/interruptions",
        "/stats/unhandled",
        "/metrics",
        "/streams?cursor=garbage",
        "/streams/no-such-stream",
    ],
)
def test_what_a_token_reads_is_never_cached(tracker: Tracker, url: str, path: str) -> None:
    """Every authenticated answer (raw delivery bodies among them), its errors too, is
    ``Cache-Control: no-store``: no proxy or browser cache keeps it for the next reader."""
    tracker.ingest(_deliveries.raw("started", "s-1", 1_700_000_000_000))
    with client_from(url) as client:
        answer = client.get(path, headers=bearer(TOKEN))
        refused = client.get(path)
    assert answer.status_code in (200, 404, 422), answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_the_api_docs_are_never_framed(url: str, path: str) -> None:
    """/docs and /redoc refuse to be shown in another site's frame (clickjacking), and keep
    working offline: their scripts load from this server."""
    with client_from(url) as client:
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', answer.text):
            assert client.get(asset).status_code == 200, asset


def test_the_dashboard_keeps_its_own_headers(url: str) -> None:
    """The dashboard's stricter policy and its static files' caching are not overwritten."""
    with client_from(url) as client:
        page = client.get("/dashboard/login")
        style = client.get("/dashboard/static/dashboard.css")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert style.headers["cache-control"] == "public, max-age=3600"
