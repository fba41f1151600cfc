"""Real Zoom traffic through the real receiver (uvicorn on loopback) on SQLite and PostgreSQL:
url validation without event_ts, secret labels and signature times, stale and unhandled
deliveries an operator must hear of."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from rtms_lifecycle import Outcome, Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.server import create_app
from rtms_lifecycle.webhook import SECRET_ENV
from tests import _deliveries
from tests._live import serving, signed

APP1, APP2 = "first-apps-secret", "second-apps-secret"
T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them

STARTED = _deliveries.raw("started", "stream-1", T0 + 1_000)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret from the developer's shell leaks into a test."""
    monkeypatch.delenv(SECRET_ENV, raising=False)


@pytest.fixture
def receiver(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., httpx.Client]]:
    """Factory: a receiver whose secrets come from ZOOM_WEBHOOK_SECRET_TOKEN set to ``env``."""
    with ExitStack() as stack:

        def start(env: str = f"app1={APP1},app2={APP2}", **kwargs: Any) -> httpx.Client:
            monkeypatch.setenv(SECRET_ENV, env)
            url = stack.enter_context(serving(create_app(tracker, **kwargs)))
            return stack.enter_context(httpx.Client(base_url=url, timeout=30))

        yield start


def post(client: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST ``body`` to the webhook with ``headers``."""
    return client.post("/webhook", content=body, headers=headers)


def test_url_validation_without_event_ts_is_answered(
    tracker: Tracker, receiver: Callable[..., httpx.Client]
) -> None:
    """Zoom's challenge without event_ts (as its test scripts send it) is answered and stored."""
    body = b'{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"}}'
    response = post(receiver(), body, signed(body, APP2))
    expected = hmac.new(APP2.encode(), b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert response.status_code == 200
    assert response.json() == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected}
    (stored,) = tracker.deliveries()
    assert (stored.outcome, stored.event_ts) == (Outcome.APPLIED, None)


@pytest.mark.parametrize("ahead", [None, 2 * 86_400_000], ids=["tiny", "two-days-ahead"])
def test_url_validation_is_answered_whatever_its_event_ts(
    tracker: Tracker, ahead: int | None
) -> None:
    """The time bounds do not apply to Zoom's challenge, by default nor set tight: it is
    answered, and recorded as applied with its time as sent, else Zoom's validation of the
    endpoint fails. Every other delivery stays bounded."""
    event_ts = 1_600_000 if ahead is None else int(time.time() * 1000) + ahead
    token = "qgg8vlvZRS6UYooatFL8Aw"
    body = json.dumps(
        {"event": "endpoint.url_validation", "event_ts": event_ts, "payload": {"plainToken": token}}
    ).encode()
    expected = hmac.new(APP1.encode(), token.encode(), hashlib.sha256).hexdigest()
    db_url = tracker.engine.url.render_as_string(hide_password=False)
    with Tracker(db_url, min_event_time=T0, max_event_ahead=60) as tight:
        for recorder, early in ((tracker, "applied"), (tight, "rejected")):
            with (
                serving(create_app(recorder, secrets=[APP1])) as url,
                httpx.Client(base_url=url, timeout=30) as client,
            ):
                response = post(client, body, signed(body, APP1))
                assert response.status_code == 200, response.text
                assert response.json() == {"plainToken": token, "encryptedToken": expected}
                toy = _deliveries.raw("started", f"toy-{early}", 1_600_000)
                assert post(client, toy, signed(toy, APP1)).json()["outcome"] == early
    challenges = [d for d in tracker.deliveries() if d.event == "endpoint.url_validation"]
    assert [(d.outcome, d.event_ts, d.error) for d in challenges] == [
        (Outcome.APPLIED, event_ts, None)
    ] * 2


def test_unsigned_url_validation_without_event_ts_is_refused(
    tracker: Tracker, receiver: Callable[..., httpx.Client]
) -> None:
    """The challenge without event_ts still needs a valid signature."""
    body = b'{"event":"endpoint.url_validation","payload":{"plainToken":"t"}}'
    assert post(receiver(), body, signed(body, "guessed")).status_code == 401
    assert tracker.deliveries() == []


@pytest.mark.parametrize(
    ("env", "signer", "label"),
    [
        (f"app1={APP1},app2={APP2}", APP2, "app2"),
        (f"app1={APP1}, {APP2}", APP2, "#2"),
        (f"{APP1}", APP1, "#1"),
    ],
    ids=["labelled", "mixed", "unlabelled"],
)
def test_delivery_records_the_label_and_time_of_its_signature(
    tracker: Tracker, receiver: Callable[..., httpx.Client], env: str, signer: str, label: str
) -> None:
    """Each delivery records which configured secret verified it (by label) and when it was
    signed; deliveries --json shows both, never the secret."""
    stamp = int(time.time()) - 7
    assert post(receiver(env), STARTED, signed(STARTED, signer, ts=stamp)).status_code == 200
    (stored,) = tracker.deliveries()
    assert (stored.secret_label, stored.signed_at) == (label, stamp * 1000)
    db_url = tracker.engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(cli, ["--db", db_url, "deliveries", "--json"])
    (shown,) = json.loads(result.stdout)
    assert (shown["secret_label"], shown["signed_at"]) == (label, stamp * 1000)
    assert APP1 not in result.stdout
    assert APP2 not in result.stdout


def test_stale_genuine_request_is_logged_with_its_age(
    tracker: Tracker, receiver: Callable[..., httpx.Client], caplog: pytest.LogCaptureFixture
) -> None:
    """A validly signed request beyond the replay window: 401, nothing stored, a WARNING with
    its age (a retry Zoom did not sign again would look like this)."""
    caplog.set_level(logging.WARNING, "rtms_lifecycle.server")
    client = receiver(replay_window=60)
    response = post(client, STARTED, signed(STARTED, APP1, ts=int(time.time()) - 1500))
    assert (response.status_code, response.json()["error"]) == (401, "timestamp_stale")
    (record,) = [r for r in caplog.records if "validly signed" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "signed 1500 s ago" in record.getMessage() or "signed 1501 s ago" in record.getMessage()
    assert APP1 not in caplog.text
    assert tracker.deliveries() == []


def test_longer_replay_window_accepts_an_old_retry_as_a_duplicate(
    tracker: Tracker, receiver: Callable[..., httpx.Client]
) -> None:
    """With a window longer than Zoom's retries, a retry signed 85 minutes ago is a duplicate."""
    client = receiver(replay_window=6000)
    now = int(time.time())
    assert post(client, STARTED, signed(STARTED, APP1, ts=now)).json()["outcome"] == "applied"
    again = post(client, STARTED, signed(STARTED, APP1, ts=now - 85 * 60))
    assert again.json()["outcome"] == "duplicate"


def test_first_unhandled_event_name_is_logged_once(
    tracker: Tracker, receiver: Callable[..., httpx.Client], caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver warns the first time it sees each unhandled event name, once per name."""
    caplog.set_level(logging.WARNING, "rtms_lifecycle.server")
    client = receiver()
    names = ["phone.call_rtms_started", "phone.call_rtms_started", "meeting.participant_joined"]
    for i, name in enumerate(names):
        delivery = json.dumps({"event": name, "event_ts": T0 + i, "payload": {}}).encode()
        assert post(client, delivery, signed(delivery, APP1)).json()["outcome"] == "unhandled"
    warned = [r.getMessage() for r in caplog.records if "does not handle" in r.getMessage()]
    assert len(warned) == 2
    assert "'phone.call_rtms_started' (it looks like an RTMS event)" in warned[0]
    assert "'meeting.participant_joined'; stored" in warned[1]
    stats = tracker.unhandled_stats()
    assert [(s.event, s.count) for s in stats] == [
        ("phone.call_rtms_started", 2),
        ("meeting.participant_joined", 1),
    ]


def test_nul_body_is_stored_as_rejected_and_answered_200(
    tracker: Tracker, receiver: Callable[..., httpx.Client]
) -> None:
    """A signed body with NUL in its event name is kept as rejected: no 503, Zoom stops retrying."""
    body = b'{"event":"meeting.rtms\\u0000_stopped","event_ts":1,"payload":{"rtms_stream_id":"s"}}'
    response = post(receiver(), body, signed(body, APP1))
    assert response.status_code == 200
    assert response.json()["outcome"] == "rejected"
    (stored,) = tracker.deliveries()
    assert stored.raw == body
    assert stored.error is not None
    (error,) = stored.error
    assert error["field"] == "event"


def test_read_api_shows_a_stream_without_scope_id(
    tracker: Tracker, receiver: Callable[..., httpx.Client]
) -> None:
    """A stream no delivery gave a scope id yet is served with scope_id null."""
    started = _deliveries.body("started", "no-scope", T0 + 1_000)
    del started["payload"]["meeting_uuid"]
    tracker.ingest(started)
    client = receiver(api_token="read-token-for-tests")
    response = client.get(
        "/streams/no-scope", headers={"Authorization": "Bearer read-token-for-tests"}
    )
    assert response.status_code == 200
    assert response.json()["stream"]["scope_id"] is None
    db_url = tracker.engine.url.render_as_string(hide_password=False)
    shown = CliRunner().invoke(cli, ["--db", db_url, "stream", "no-scope"])
    assert shown.exit_code == 0
    assert "meeting —" in shown.stdout
