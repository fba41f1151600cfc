"""``serve --log-level --log-format``: what a real receiver writes to stderr, read back."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.receiver import webhook as _webhook
from rtms_lifecycle.receiver.logthrottle import (
    INVALID_REQUEST,
    OTHERS,
    REQUEST_SCOPE,
    AccessLines,
    InvalidRequestLines,
    LineGroups,
    mark_authenticated,
    shortened,
)
from rtms_lifecycle.server import create_app
from tests import _deliveries
from tests._live import SECRET, serving, signed
from tests._served import Served, serve_command

T0 = 1_700_000_000_000
PASSWORD = "s3cret-pw"


def deliver(served: Served, body: bytes, **sign_kwargs: Any) -> int:
    """POST ``body`` to the webhook, signed unless told otherwise; the status code."""
    headers = signed(body, **sign_kwargs)
    return httpx.post(f"{served.url}/webhook", content=body, headers=headers).status_code


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Every line parsed: a JSON log has nothing else on stderr."""
    return [json.loads(line) for line in lines if line.strip()]


def test_json_lines_carry_the_delivery_fields(sqlite_url: str, tmp_path: Path) -> None:
    """--log-format json: one JSON object per line; a delivery's carries event, stream_id,
    outcome, reason and duration_ms."""
    with serve_command(sqlite_url, tmp_path, "--log-format", "json") as served:
        assert deliver(served, _deliveries.raw("started", "m-1", T0)) == 200
        assert deliver(served, b'{"event": "meeting.rtms_stopped", "event_ts": 1}') == 200
    logged = json_lines(served.lines())
    recorded = [line for line in logged if line.get("delivery_id") is not None]
    applied, rejected = recorded
    assert applied["event"] == "meeting.rtms_started"
    assert applied["stream_id"] == "m-1"
    assert applied["outcome"] == "applied"
    assert applied["level"] == "info"
    assert applied["logger"] == "rtms_lifecycle.server"
    assert isinstance(applied["duration_ms"], float)
    assert "reason" not in applied
    assert rejected["outcome"] == "rejected"
    assert "payload" in rejected["reason"]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in logged)
    access = [line for line in logged if line["logger"] == "uvicorn.access"]
    assert any("POST /webhook" in line["message"] for line in access)


def test_json_refusal_carries_its_reason(sqlite_url: str, tmp_path: Path) -> None:
    """A refused request's JSON line is a warning with the refusal reason and the client."""
    body = _deliveries.raw("started", "m-1", T0)
    with serve_command(sqlite_url, tmp_path, "--log-format", "json") as served:
        assert deliver(served, body, ts=int(time.time()) - 3600) == 401
    (refusal,) = [line for line in json_lines(served.lines()) if line.get("reason")]
    assert (refusal["level"], refusal["reason"], refusal["client"]) == (
        "warning",
        "timestamp_stale",
        "127.0.0.1",
    )


def _slow_body(served: Served) -> bytes:
    """Headers and half a body, then silence: the first bytes of the receiver's answer."""
    port = int(served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b'POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"ev')
        raw.settimeout(10)
        return raw.recv(1024)


def test_every_refusal_is_one_warning_line_with_client_and_reason(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A body too large (413) or too slow (408) is logged as a refused signature is: one
    WARNING line with the client address and the reason code, as operations.md promises."""
    body = _deliveries.raw("started", "m-1", T0)
    large = b"{" + b" " * 70_000 + b"}"
    options = ("--log-format", "json", "--request-timeout", "1")
    with serve_command(sqlite_url, tmp_path, *options) as served:
        assert deliver(served, body, secret="guessed") == 401
        assert deliver(served, large) == 413
        assert _slow_body(served).startswith(b"HTTP/1.1 408")
        found = httpx.get(f"{served.url}/metrics").text
    refusals = [line for line in json_lines(served.lines()) if line.get("client")]
    assert [(r["level"], r["reason"], r["client"]) for r in refusals] == [
        ("warning", reason, "127.0.0.1")
        for reason in ("signature_invalid", "body_too_large", "body_timeout")
    ]
    for refusal in refusals:
        assert refusal["logger"] == "rtms_lifecycle.server"
        assert refusal["message"].startswith(
            f"refused a webhook request from 127.0.0.1: {refusal['reason']}"
        )
    # The forged signature's line says what usually causes it, and the fix.
    assert "regenerated in the Marketplace but not here" in refusals[0]["message"]
    assert 'ZOOM_WEBHOOK_SECRET_TOKEN="new=NEW,old=OLD"' in refusals[0]["message"]
    assert [r["message"] for r in refusals[1:]] == [
        f"refused a webhook request from 127.0.0.1: {reason}"
        for reason in ("body_too_large", "body_timeout")
    ]
    for reason in ("signature_invalid", "body_too_large", "body_timeout"):
        assert f'rtms_lifecycle_webhook_refusals_total{{reason="{reason}"}} 1.0' in found


@pytest.mark.postgres
def test_startup_line_names_the_database_without_its_password(
    postgres_url: str, tmp_path: Path
) -> None:
    """The start-up line names the database (password masked), the secrets, the read API and
    metrics."""
    with_password = make_url(postgres_url).set(password=PASSWORD).render_as_string(False)
    env = {
        "RTMS_LIFECYCLE_API_TOKEN": "token-for-the-log-test",
        "ZOOM_WEBHOOK_SECRET_TOKEN": "one,two",
    }
    with serve_command(with_password, tmp_path, "--log-format", "json", env=env) as served:
        pass
    text = "\n".join(served.lines())
    assert PASSWORD not in text
    (ready,) = [m for m in json_lines(served.lines()) if "receiver ready" in m["message"]]
    assert make_url(with_password).render_as_string(hide_password=True) in ready["message"]
    assert "2 webhook secret(s)" in ready["message"]
    assert "read API on" in ready["message"]
    assert "metrics on (token required)" in ready["message"]


def test_text_lines_by_default(sqlite_url: str, tmp_path: Path) -> None:
    """Without --log-format, lines are text: UTC time, level, logger, message."""
    with serve_command(sqlite_url, tmp_path) as served:
        assert deliver(served, _deliveries.raw("started", "m-1", T0)) == 200
    pattern = re.compile(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO rtms_lifecycle\.server: recorded delivery 1 "
        r"\(meeting\.rtms_started, stream m-1\): applied$"
    )
    assert any(pattern.match(line) for line in served.lines()), served.lines()
    assert any("receiver ready: database sqlite:///" in line for line in served.lines())
    assert any("read API off" in line and "metrics on" in line for line in served.lines())


def test_log_level_warning_leaves_out_info(sqlite_url: str, tmp_path: Path) -> None:
    """--log-level warning keeps refusals and drops the per-delivery and access lines."""
    body = _deliveries.raw("started", "m-1", T0)
    with serve_command(sqlite_url, tmp_path, "--log-level", "warning") as served:
        assert deliver(served, body) == 200
        assert deliver(served, body, secret="guessed") == 401
    lines = served.lines()
    assert not any("recorded delivery" in line or "receiver ready" in line for line in lines)
    assert any("WARNING" in line and "signature_invalid" in line for line in lines), lines


def test_unknown_log_format_is_a_usage_error(sqlite_url: str) -> None:
    """serve --log-format xml is refused before anything starts, naming the choices."""
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "serve", "--log-format", "xml"])
    assert result.exit_code == 2
    assert "'text', 'json'" in result.stderr or "text, json" in result.stderr


FORGED = "m-1\n2026-03-11T14:30:00Z WARNING rtms_lifecycle.server: refused ... from 6.6.6.6"


def test_text_lines_escape_what_a_delivery_carries(sqlite_url: str, tmp_path: Path) -> None:
    """A signed stream id with a newline cannot forge a line, nor an ESC, BEL or bidi control
    in an event name reach the log raw: each is shown as an escape, on the delivery's line."""
    odd_event = "meeting.rtms_\x1b[2J\x07odd\u202e"
    with serve_command(sqlite_url, tmp_path) as served:
        assert deliver(served, _deliveries.raw("started", FORGED, T0)) == 200
        odd = json.dumps({"event": odd_event, "event_ts": T0, "payload": {}}).encode()
        assert deliver(served, odd) == 200
    lines = served.lines()
    text = "\n".join(lines)
    assert not any(line.startswith("2026-03-11T14:30:00Z") for line in lines), lines
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\u202e" not in text
    recorded = [line for line in lines if "recorded delivery 1 " in line]
    assert len(recorded) == 1, lines
    assert "stream m-1\\x0a2026-03-11T14:30:00Z WARNING" in recorded[0]
    assert any("meeting.rtms_\\x1b[2J\\x07odd\\u202e" in line for line in lines), lines


def test_a_client_path_cannot_forge_an_access_line(sqlite_url: str, tmp_path: Path) -> None:
    """uvicorn's access line carries the request path as sent, percent-encoded."""
    with serve_command(sqlite_url, tmp_path) as served:
        httpx.get(f"{served.url}/x%0a2026-03-11T14:30:00Z%20WARNING%20forged%1b[31m")
    lines = served.lines()
    assert not any(line.startswith("2026-03-11T14:30:00Z") for line in lines), lines
    assert any("GET /x%0a2026-03-11T14:30:00Z%20WARNING" in line for line in lines), lines


def test_json_lines_keep_the_stored_text(sqlite_url: str, tmp_path: Path) -> None:
    """The JSON format escapes through JSON itself: its fields hold the text as stored."""
    with serve_command(sqlite_url, tmp_path, "--log-format", "json") as served:
        assert deliver(served, _deliveries.raw("started", FORGED, T0)) == 200
    recorded = [line for line in json_lines(served.lines()) if line.get("delivery_id")]
    assert recorded[0]["stream_id"] == FORGED


def _refusals(served: Served) -> list[dict[str, Any]]:
    return [line for line in json_lines(served.lines()) if line.get("client")]


def test_a_flood_of_refusals_from_one_address_is_one_line_per_reason(
    sqlite_url: str, tmp_path: Path
) -> None:
    """200 unsigned and 200 forged requests from one address: one WARNING line for each reason
    (the next, a minute on, says how many were left out), no access line for any of them; a
    delivery that gets through still has its access line, and every refusal is counted."""
    body = _deliveries.raw("started", "m-1", T0)
    with (
        serve_command(sqlite_url, tmp_path, "--log-format", "json") as served,
        httpx.Client(base_url=served.url) as client,
    ):
        for _ in range(200):
            assert client.post("/webhook", content=body).status_code == 401
            headers = signed(body, secret="guessed")
            assert client.post("/webhook", content=body, headers=headers).status_code == 401
        assert deliver(served, body) == 200
        found = httpx.get(f"{served.url}/metrics").text
    assert [(r["level"], r["reason"]) for r in _refusals(served)] == [
        ("warning", "signature_missing"),
        ("warning", "signature_invalid"),
    ]
    access = [
        line["message"]
        for line in json_lines(served.lines())
        if line["logger"] == "uvicorn.access" and "POST /webhook" in line["message"]
    ]
    assert [line.rsplit(" ", 1)[1] for line in access] == ["200"]
    for reason in ("signature_missing", "signature_invalid"):
        assert f'rtms_lifecycle_webhook_refusals_total{{reason="{reason}"}} 200.0' in found


def test_refusal_lines_after_the_period_say_how_many_were_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals of one address and reason: the first line at once, the next after the period
    counting those left out between; every refusal is accounted for by exactly one line."""
    period = 2.0
    monkeypatch.setattr(_webhook, "REFUSAL_LINES_EVERY", period)
    caplog.set_level(logging.WARNING, "rtms_lifecycle.server")
    body = _deliveries.raw("started", "m-1", T0)
    with (
        Tracker(f"sqlite:///{tmp_path}/g.db") as tracker,
        serving(create_app(tracker, secrets=[SECRET])) as base,
        httpx.Client(base_url=base) as client,
    ):
        started = time.monotonic()
        for _ in range(10):
            assert client.post("/webhook", content=body).status_code == 401
        quick = time.monotonic() - started
        time.sleep(period)
        assert client.post("/webhook", content=body).status_code == 401
    lines = [r.getMessage() for r in caplog.records if "refused a webhook" in r.getMessage()]
    counted = [
        re.search(r"; (\d+) more like it from this address since the last", line) for line in lines
    ]
    assert sum(1 + (int(m.group(1)) if m else 0) for m in counted) == 11
    assert lines[0] == "refused a webhook request from 127.0.0.1: signature_missing"
    if quick < period:  # the ten came within one period: one line, then one counting nine
        assert [m.group(1) if m else None for m in counted] == [None, "9"]


def test_clock_refusals_point_at_the_clock(sqlite_url: str, tmp_path: Path) -> None:
    """A request signed an hour ahead is refused with its distance and a clock hint; one an
    hour old says to check the clock before widening --replay-window."""
    body = _deliveries.raw("started", "m-1", T0)
    with serve_command(sqlite_url, tmp_path, "--log-format", "json") as served:
        assert deliver(served, body, ts=int(time.time()) + 3600) == 401
        assert deliver(served, body, ts=int(time.time()) - 3600) == 401
    signed_by = "refused a validly signed webhook request from 127\\.0\\.0\\.1 signed 3[56]\\d\\d s"
    expected = [
        (
            "timestamp_future",
            " in the future, beyond the 300 s replay window: this host's clock is likely behind"
            " \\(check NTP\\)",
        ),
        (
            "timestamp_stale",
            " ago, beyond the 300 s replay window: check this host's clock \\(NTP\\) before"
            " widening --replay-window",
        ),
    ]
    for line, (reason, rest) in zip(_refusals(served), expected, strict=True):
        assert line["reason"] == reason
        assert re.fullmatch(signed_by + rest, line["message"]), line["message"]


def test_a_store_failure_line_names_the_event_and_the_stream(
    tmp_path: Path,
) -> None:
    """While the SQLite file is moved away every delivery is answered 503: its ERROR line names
    the event and the stream (JSON fields too), and a body that is not JSON still gets its line,
    with neither."""
    path = tmp_path / "moved.db"
    body = _deliveries.raw("stopped", "m-9", T0 + 1, stop_reason=6)
    with serve_command(f"sqlite:///{path}", tmp_path, "--log-format", "json") as served:
        assert deliver(served, _deliveries.raw("started", "m-9", T0)) == 200
        path.rename(tmp_path / "aside.db")
        try:
            assert deliver(served, body) == 503
            assert deliver(served, b"\xff{not json") == 503
        finally:
            (tmp_path / "aside.db").rename(path)
    failed = [line for line in json_lines(served.lines()) if line.get("outcome") == "store_failed"]
    named, unnamed = failed
    assert (named["level"], named["event"], named["stream_id"]) == (
        "error",
        "meeting.rtms_stopped",
        "m-9",
    )
    assert named["message"].startswith(
        "could not record a webhook delivery (meeting.rtms_stopped, stream m-9); answering 503"
    )
    assert unnamed.keys().isdisjoint({"event", "stream_id"})
    assert unnamed["message"].startswith("could not record a webhook delivery (?, stream -);")


def test_line_groups_are_bounded() -> None:
    """Past ``held`` addresses, new ones share one group: a flood from many addresses cannot
    grow the table, and is still one line a period."""
    groups = LineGroups(period=3600, held=2)
    assert [groups.admit(key) for key in ("a", "b", "a", "c", "d")] == [
        ("a", 0),
        ("b", 0),
        None,
        (OTHERS, 0),
        None,
    ]


def _answer(raw: socket.socket) -> int:
    """Read one answer (with a Content-Length) off ``raw``; its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = raw.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += raw.recv(65536)
    return int(lines[0].split()[1])


API_TOKEN = "an-api-token-of-32-characters-00"


def test_a_flood_of_unauthenticated_requests_is_a_line_a_minute_per_address(
    sqlite_url: str, tmp_path: Path
) -> None:
    """3000 requests for a 65,000-character path (404) on one connection, 300 malformed
    requests and 50 upgrades, 404s, 405s and wrong-token 401s from one address: one access
    line (its path cut at 200 characters, with the length) and one warning per kind, each
    naming the address, not a line a request (792 MB in 10 s before). An authenticated
    request's 404 and every 2xx keep their line each."""
    long_path = b"/" + b"A" * 65_000
    env = {"RTMS_LIFECYCLE_API_TOKEN": API_TOKEN}
    with serve_command(sqlite_url, tmp_path, "--log-format", "json", env=env) as served:
        # Before the wrong tokens: past five a minute, this address is answered 429.
        with httpx.Client(base_url=served.url) as client:
            bearer = {"Authorization": f"Bearer {API_TOKEN}"}
            for _ in range(3):
                assert client.get("/streams/nope", headers=bearer).status_code == 404
                assert client.get("/healthz").status_code == 200
        port = int(served.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.settimeout(10)
            for _ in range(3000):
                raw.sendall(b"GET " + long_path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _answer(raw) == 404
            others = [
                b"GET /webhook HTTP/1.1\r\nHost: x\r\n\r\n",  # 405
                b"GET /streams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n",
                b"GET /streams HTTP/1.1\r\nHost: x\r\n\r\n",  # 401
                b"GET /dashboard HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n",  # 303
                b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            ]
            statuses = set()
            for _ in range(50):
                for request in others:
                    raw.sendall(request)
                    statuses.add(_answer(raw))
        assert statuses == {303, 401, 404, 405, 429}
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", port)) as bad:
                bad.settimeout(10)
                bad.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
                assert bad.recv(1024).startswith(b"HTTP/1.1 400")
    size = served.log.stat().st_size
    logged = json_lines(served.lines())
    assert size < 10_000, size
    access = [line for line in logged if line["logger"] == "uvicorn.access"]
    grouped = [line for line in access if line.get("client")]
    assert len(grouped) == 1, grouped
    assert grouped[0]["client"] == "127.0.0.1"
    assert grouped[0]["message"].endswith(f'"GET /{"A" * 199}...(65001 characters) HTTP/1.1" 404')
    kept = [line["message"].split('"')[1] for line in access if not line.get("client")]
    # The readiness probe's /healthz lines first.
    assert kept[-6:] == ["GET /streams/nope HTTP/1.1", "GET /healthz HTTP/1.1"] * 3
    assert set(kept) == {"GET /streams/nope HTTP/1.1", "GET /healthz HTTP/1.1"}
    warned = [
        line for line in logged if line["logger"] == "uvicorn.error" and line["level"] == "warning"
    ]
    assert [(line["message"], line.get("client")) for line in warned] == [
        ("Unsupported upgrade request from 127.0.0.1", "127.0.0.1"),
        ("Invalid HTTP request received from 127.0.0.1", "127.0.0.1"),
    ]


def test_grouped_access_lines_say_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unauthenticated 3xx/4xx lines of one address: the first, then after the period one
    counting those left out, every one accounted for; an authenticated request's and a 2xx
    are written each."""
    period = 0.5
    lines = AccessLines(period)
    access = logging.getLogger("tests.access")
    access.addFilter(lines)
    caplog.set_level(logging.INFO, "tests.access")

    def answer(path: str, status: int, authenticated: bool = False) -> None:
        scope: dict[str, Any] = {"client": ("10.0.0.7", 5000)}
        if authenticated:
            mark_authenticated(scope)
        token = REQUEST_SCOPE.set(scope)
        try:
            access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:5000", "GET", path, "1.1", status)
        finally:
            REQUEST_SCOPE.reset(token)

    try:
        started = time.monotonic()
        for status in (404, 405, 401, 303, 400):
            answer("/x", status)
        answer("/mine", 404, authenticated=True)
        answer("/ok", 200)
        quick = time.monotonic() - started
        time.sleep(period)
        answer("/x", 404)
    finally:
        access.removeFilter(lines)
    said = [r.getMessage() for r in caplog.records]
    assert [line for line in said if "/x" not in line] == [
        '10.0.0.7:5000 - "GET /mine HTTP/1.1" 404',
        '10.0.0.7:5000 - "GET /ok HTTP/1.1" 200',
    ]
    grouped = [line for line in said if "/x" in line]
    pattern = r"; (\d+) more unauthenticated 3xx/4xx answers from this address since the last"
    counted = [re.search(pattern, line) for line in grouped]
    assert sum(1 + (int(m.group(1)) if m else 0) for m in counted) == 6
    assert grouped[0] == '10.0.0.7:5000 - "GET /x HTTP/1.1" 404'
    if quick < period:  # the five came within one period: one line, then one counting four
        assert [m.group(1) if m else None for m in counted] == [None, "4"]


def test_invalid_requests_of_an_unknown_address_share_one_group(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the server's protocol no address is known: uvicorn's warnings are still one
    line a period, of all addresses together; other warnings pass."""
    lines = InvalidRequestLines(3600)
    error = logging.getLogger("tests.error")
    error.addFilter(lines)
    caplog.set_level(logging.INFO, "tests.error")
    try:
        for _ in range(5):
            error.warning(INVALID_REQUEST)
        error.warning("something else")
    finally:
        error.removeFilter(lines)
    assert [r.getMessage() for r in caplog.records] == [
        "Invalid HTTP request received from an unknown address",
        "something else",
    ]


def test_access_lines_cut_long_paths() -> None:
    """A path over 200 characters is cut, an ellipsis and its length after it."""
    assert shortened("/" + "b" * 199) == "/" + "b" * 199
    assert shortened("/" + "b" * 300) == "/" + "b" * 199 + "...(301 characters)"
