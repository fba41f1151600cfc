"""``serve --log-level --log-format``: what a real receiver writes to stderr, read back."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from rtms_lifecycle.cli.commands import cli
from tests import _deliveries
from tests._live import signed
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
        assert (
            refusal["message"] == f"refused a webhook request from 127.0.0.1: {refusal['reason']}"
        )
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
