"""The FastAPI receiver, served for real by uvicorn on a loopback port, over real databases."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, get_args

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import AsyncTracker, ConfigurationError, Outcome, State, Tracker
from rtms_lifecycle.receiver.http import OneSendPerAnswer
from rtms_lifecycle.server import API_TOKEN_ENV, StoredState, create_app, create_router, run
from rtms_lifecycle.webhook import SECRET_ENV, WebhookVerifier
from tests import _deliveries
from tests._deliveries import SPEC_STREAM_KEYS
from tests._live import SECRET, app_clients, clean_environment, serving, serving_process, signed

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them

OTHER = "second-app-secret"
TOKEN = "read-api-token-for-tests"


def url_validation(token: str) -> bytes:
    """Zoom's endpoint challenge carrying ``token``."""
    return json.dumps(
        {"event": "endpoint.url_validation", "event_ts": T0, "payload": {"plainToken": token}}
    ).encode()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a receiver reads from the developer's shell leaks into a test."""
    clean_environment(monkeypatch)


@pytest.fixture
def tracker(sqlite_url: str) -> Iterator[Tracker]:
    """A tracker on a fresh SQLite file."""
    with Tracker(sqlite_url) as t:
        yield t


@pytest.fixture
def serve() -> Iterator[Callable[..., httpx.Client]]:
    """Factory: serve ``create_app(db, **kwargs)`` (secret SECRET by default); return a client."""
    with app_clients(timeout=30) as start:
        yield start


@pytest.fixture
def client(tracker: Tracker, serve: Callable[..., httpx.Client]) -> httpx.Client:
    """A client of a receiver with two secrets and the read API enabled."""
    return serve(tracker, secrets=[SECRET, OTHER], api_token=TOKEN)


def post(
    client: httpx.Client, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST ``body`` to the webhook, signed with SECRET unless ``headers`` are given."""
    return client.post(
        "/webhook", content=body, headers=signed(body) if headers is None else headers
    )


# --- refusals -------------------------------------------------------------------------------------

STARTED = _deliveries.raw("started", "stream-1", T0 + 1_000)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        pytest.param(lambda b: ({}, b), "signature_missing", id="unsigned"),
        pytest.param(lambda b: (signed(b, "guessed"), b), "signature_invalid", id="forged"),
        pytest.param(
            lambda b: (signed(b), b.replace(b"1000", b"1001")),
            "signature_invalid",
            id="tampered-body",
        ),
        pytest.param(
            lambda b: (signed(b, ts=int(time.time()) - 330), b), "timestamp_stale", id="stale"
        ),
        pytest.param(
            lambda b: (signed(b, ts=int(time.time()) + 330), b), "timestamp_future", id="future"
        ),
        pytest.param(
            lambda b: (signed(b, ts="yesterday"), b),
            "timestamp_invalid",
            id="non-numeric-timestamp",
        ),
        pytest.param(
            lambda b: ({"x-zm-signature": signed(b)["x-zm-signature"]}, b),
            "timestamp_missing",
            id="no-timestamp",
        ),
    ],
)
def test_refused_request_answers_401_and_stores_nothing(
    client: httpx.Client,
    tracker: Tracker,
    tamper: Callable[[bytes], tuple[dict[str, str], bytes]],
    reason: str,
) -> None:
    """Each verification failure answers 401 naming the reason, never the signature; no write."""
    headers, body = tamper(STARTED)
    response = post(client, body, headers)
    assert response.status_code == 401
    assert response.json()["error"] == reason
    if "x-zm-signature" in headers:
        assert headers["x-zm-signature"][3:] not in response.text
    assert tracker.deliveries() == []
    assert tracker.streams() == []


# --- accepted deliveries --------------------------------------------------------------------------


def test_deliveries_are_recorded_with_their_outcome(
    db_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """A signed delivery is applied, its retry is a duplicate; each answer names its stored row."""
    with Tracker(db_url) as tracker:
        client = serve(tracker)
        first, again = post(client, STARTED), post(client, STARTED)
        assert (first.status_code, again.status_code) == (200, 200)
        assert first.json()["outcome"] == "applied"
        assert again.json()["outcome"] == "duplicate"
        stored = {d.id: d.outcome for d in tracker.deliveries()}
        assert stored == {
            first.json()["delivery_id"]: Outcome.APPLIED,
            again.json()["delivery_id"]: Outcome.DUPLICATE,
        }
        stream = tracker.stream("stream-1")
        assert stream is not None
        assert stream.state is State.STARTED


@pytest.mark.parametrize("signer", [SECRET, OTHER])
def test_either_configured_secret_is_accepted(
    client: httpx.Client, tracker: Tracker, signer: str
) -> None:
    """With two secrets (rotation, or two apps) a delivery signed with either is recorded."""
    response = post(client, STARTED, signed(STARTED, signer))
    assert response.status_code == 200
    assert response.json()["outcome"] == "applied"
    assert len(tracker.deliveries()) == 1


def test_secrets_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tracker: Tracker, serve: Callable[..., httpx.Client]
) -> None:
    """Without ``secrets``, the app reads ZOOM_WEBHOOK_SECRET_TOKEN (comma-separated)."""
    monkeypatch.setenv(SECRET_ENV, f" {OTHER} , {SECRET} ")
    client = serve(tracker, secrets=None)
    assert post(client, STARTED, signed(STARTED, OTHER)).status_code == 200
    assert post(client, STARTED, signed(STARTED, "nope")).status_code == 401


@pytest.mark.parametrize("signer", [SECRET, OTHER])
def test_url_validation_is_answered_with_the_secret_that_signed_it(
    client: httpx.Client, tracker: Tracker, signer: str
) -> None:
    """The challenge is answered with the HMAC of its token under the signing secret, and stored."""
    body = url_validation("qgg8vlvZRS6UYooatFL8Aw")
    response = post(client, body, signed(body, signer))
    expected = hmac.new(signer.encode(), b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert response.status_code == 200
    assert response.json() == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected}
    (stored,) = tracker.deliveries()
    assert (stored.event, stored.outcome) == ("endpoint.url_validation", Outcome.APPLIED)


def test_unsigned_url_validation_is_refused(client: httpx.Client, tracker: Tracker) -> None:
    """A challenge must be signed like any delivery: unsigned, it gets 401 and no answer."""
    response = post(client, url_validation("abc"), {})
    assert response.status_code == 401
    assert "encryptedToken" not in response.json()
    assert tracker.deliveries() == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"event": "meeting.rtms_started", "event_ts": 1}',
        b'{"event": "meeting.rtms_stopped", "event_ts": 1, "payload": {"meeting_uuid": "m"}}',
        b'{"event": "meeting.rtms\\u0000_stopped", "event_ts": 1, "payload": {}}',
        b"\xff\xfe\x00 invalid utf-8",
        b"",
        url_validation("").replace(b'"plainToken": ""', b'"plainToken": 5'),
    ],
    ids=["text", "array", "no-payload", "no-ids", "nul", "bad-utf8", "empty", "bad-challenge"],
)
def test_signed_malformed_body_is_stored_as_rejected_and_answered_200(
    client: httpx.Client, tracker: Tracker, body: bytes
) -> None:
    """A genuine but unusable body is kept as rejected with its raw bytes; retrying cannot help."""
    response = post(client, body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["outcome"] == "rejected"
    assert answer["error"]
    (stored,) = tracker.deliveries()
    assert (stored.id, stored.outcome, stored.raw) == (
        answer["delivery_id"],
        Outcome.REJECTED,
        body,
    )


def test_concurrent_signed_deliveries_are_all_recorded_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    """16 senders x 300 deliveries, streams split over senders: all 200, none lost or doubled."""
    senders, per_sender, kinds = 16, 300, ("started", "interrupted", "stopped")
    n_streams = senders * per_sender // len(kinds)
    bodies = [
        _deliveries.raw(kind, f"s{k}", T0 + 1_000 * (j + 1), stop_reason=k % 27)
        for k in range(n_streams)
        for j, kind in enumerate(kinds)
    ]

    def send(url: str, mine: list[bytes]) -> list[tuple[int, Any]]:
        with httpx.Client(base_url=url, timeout=30) as own:
            return [((r := post(own, body)).status_code, r.json()) for body in mine]

    with serving_process(db_url, tmp_path) as url, ThreadPoolExecutor(senders) as pool:
        batches = pool.map(send, [url] * senders, [bodies[i::senders] for i in range(senders)])
        answers = [answer for batch in batches for answer in batch]

    assert {status for status, _ in answers} == {200}
    ids = [answer["delivery_id"] for _, answer in answers]
    assert len(ids) == len(set(ids)) == len(bodies)
    assert {answer["outcome"] for _, answer in answers} <= {"applied", "ignored"}
    with Tracker(db_url) as tracker:
        assert len(tracker.deliveries(limit=None)) == len(bodies)
        streams = tracker.streams()
    assert len(streams) == n_streams
    assert all(
        (s.state, s.interruptions, s.stop_reason) == (State.STOPPED, 1, int(s.stream_id[1:]) % 27)
        for s in streams
    )


# --- store failures and health --------------------------------------------------------------------


def test_healthz_answers_200_while_the_database_answers(
    db_url: str, serve: Callable[..., httpx.Client]
) -> None:
    """GET /healthz is 200 with status ok when the database answers."""
    with Tracker(db_url) as tracker:
        response = serve(tracker).get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_dropped_postgres_database_answers_503_on_webhook_and_healthz(
    postgres_url: str,
    postgres_server: Any,
    serve: Callable[..., httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With its PostgreSQL database dropped, the webhook answers 503 (Zoom retries), healthz 503
    "database unreachable"; the log names the database."""
    import psycopg
    from psycopg import sql

    with Tracker(postgres_url) as tracker:
        client = serve(tracker)
        assert post(client, STARTED).status_code == 200
        name = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        response = post(client, _deliveries.raw("stopped", "stream-1", T0 + 2_000))
        assert response.status_code == 503
        assert response.json()["error"] == "store_unavailable"
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "reason": "database unreachable"}
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("health")]
    assert "does not exist" in line
    assert name in line


def test_sqlite_store_failure_answers_503(
    sqlite_url: str, tracker: Tracker, serve: Callable[..., httpx.Client]
) -> None:
    """When SQLite can no longer record (its deliveries table is gone), the webhook answers 503."""
    import sqlite3

    client = serve(tracker)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TABLE deliveries")
    response = post(client, STARTED)
    assert response.status_code == 503
    assert response.json() == {
        "error": "store_unavailable",
        "detail": "the delivery could not be recorded; retry later",
    }


# --- body size limit ------------------------------------------------------------------------------


def _chunks(body: bytes) -> Iterator[bytes]:
    """``body`` in pieces, so that httpx sends it chunked, without a Content-Length."""
    yield from (body[i : i + 100] for i in range(0, len(body), 100))


@pytest.mark.parametrize(
    ("size", "chunked", "status"),
    [
        (1024, False, 200),
        (1025, False, 413),
        (1024, True, 200),
        (1025, True, 413),
        (10**6, False, 413),
    ],
)
def test_body_size_limit(
    tracker: Tracker, serve: Callable[..., httpx.Client], size: int, chunked: bool, status: int
) -> None:
    """A body over the limit answers 413 and is not stored, with or without a Content-Length."""
    client = serve(tracker, max_body_bytes=1024)
    body = b"x" * size
    content: bytes | Iterator[bytes] = _chunks(body) if chunked else body
    response = client.post("/webhook", content=content, headers=signed(body))
    assert response.status_code == status
    assert len(tracker.deliveries()) == (status == 200)


def test_sender_disconnecting_mid_body_leaves_nothing_and_no_error(
    client: httpx.Client, tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender that hangs up halfway through its body: nothing stored, no error, server fine."""
    caplog.set_level(logging.INFO, "rtms_lifecycle.server")
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    with socket.create_connection((host, port)) as raw:
        raw.sendall(b'POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"ev')
    deadline = time.monotonic() + 5
    while "disconnected before its body" not in caplog.text:
        assert time.monotonic() < deadline, "the receiver never noticed the hang-up"
        time.sleep(0.01)
    assert post(client, STARTED).status_code == 200  # the server still answers
    assert len(tracker.deliveries()) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- the read API ---------------------------------------------------------------------------------

READ_PATHS = [
    "/streams",
    "/streams/stream-1",
    "/deliveries",
    "/alerts",
    "/stats/stop-reasons",
    "/stats/interruptions",
    "/stats/unhandled",
    "/subscriptions",
]


@pytest.mark.parametrize("path", READ_PATHS)
def test_read_api_is_absent_without_a_token(
    tracker: Tracker, serve: Callable[..., httpx.Client], path: str
) -> None:
    """Without an API token the read endpoints do not exist, nor the schema that would list
    them."""
    client = serve(tracker)
    assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    assert client.get("/openapi.json").status_code == 404


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"Bearer {TOKEN[:-1]}"],
)
def test_read_api_refuses_a_missing_or_wrong_token(
    client: httpx.Client, path: str, authorization: str | None
) -> None:
    """Every read endpoint answers 401 (with WWW-Authenticate) unless the exact token is given."""
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_read_api_token_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tracker: Tracker, serve: Callable[..., httpx.Client]
) -> None:
    """RTMS_LIFECYCLE_API_TOKEN mounts the read API behind that token."""
    monkeypatch.setenv(API_TOKEN_ENV, "from-env-token-for-tests")
    client = serve(tracker)
    assert (
        client.get(
            "/streams", headers={"Authorization": "Bearer from-env-token-for-tests"}
        ).status_code
        == 200
    )
    assert client.get("/streams", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401


@pytest.fixture
def populated(client: httpx.Client) -> httpx.Client:
    """Three streams via the webhook: s-stopped (meeting), s-live (session), s-down (meeting)."""
    for body in (
        _deliveries.raw("started", "s-stopped", T0 + 1_000),
        _deliveries.raw("stopped", "s-stopped", T0 + 61_000, stop_reason=6),
        _deliveries.raw("started", "s-live", T0 + 2_000, scope="session", scope_id="sess"),
        _deliveries.raw("started", "s-down", T0 + 3_000),
        _deliveries.raw("interrupted", "s-down", T0 + 4_000),
    ):
        assert post(client, body).json()["outcome"] == "applied"
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"s-stopped", "s-live", "s-down"}),
        ("?state=stopped", {"s-stopped"}),
        ("?state=started&state=interrupted", {"s-live", "s-down"}),
        ("?scope=session", {"s-live"}),
        ("?active=true", {"s-live"}),
        ("?active=true&state=interrupted", set()),
        ("?scope=meeting&state=interrupted", {"s-down"}),
    ],
)
def test_streams_filters_like_the_cli(
    populated: httpx.Client, query: str, expected: set[str]
) -> None:
    """GET /streams filters on state (repeatable), scope and active, with the documented keys."""
    response = populated.get("/streams" + query)
    assert response.status_code == 200
    assert response.json()["next"] is None
    assert {s["stream_id"] for s in response.json()["items"]} == expected
    assert all(set(s) == SPEC_STREAM_KEYS for s in response.json()["items"])


@pytest.mark.parametrize("query", ["?limit=0", "?state=bogus", "?scope=bogus", "?active=maybe"])
def test_streams_refuses_bad_filters_with_422(populated: httpx.Client, query: str) -> None:
    """A filter outside its domain is a 422 validation error, not a 5xx."""
    assert populated.get("/streams" + query).status_code == 422


def test_streams_refuses_the_state_no_stored_stream_is_in(populated: httpx.Client) -> None:
    """?state=new is a 422 whose message lists only the states a stored stream can be in."""
    answer = populated.get("/streams?state=new")
    assert answer.status_code == 422
    message = answer.json()["detail"][0]["msg"]
    assert message == "Input should be 'started', 'interrupted', 'resumed' or 'stopped'"
    assert list(get_args(StoredState)) == [s.value for s in State if s is not State.NEW]


def test_streams_limit_keeps_the_newest(populated: httpx.Client) -> None:
    """``limit`` caps a page to the streams that began last; ``next`` reads on."""
    page = populated.get("/streams?limit=1").json()
    assert [s["stream_id"] for s in page["items"]] == ["s-down"]
    assert page["next"].startswith("/streams?limit=1&cursor=")


def test_stream_detail_has_the_stream_and_its_history(populated: httpx.Client) -> None:
    """GET /streams/{id} gives the stream and its transitions in event-time order, else 404."""
    detail = populated.get("/streams/s-stopped").json()
    assert detail["stream"]["state"] == "stopped"
    assert detail["stream"]["stop_reason_name"] == "MEETING_ENDED"
    assert [(t["name"], t["event_ts"]) for t in detail["history"]] == [
        ("start", T0 + 1_000),
        ("stop", T0 + 61_000),
    ]
    assert populated.get("/streams/unknown").status_code == 404


@pytest.mark.parametrize("stream_id", ["a/b", "a%2Fb", "a//b", "%2Fa", "a%2F"])
def test_a_stream_id_with_a_slash_is_found(
    populated: httpx.Client, tracker: Tracker, stream_id: str
) -> None:
    """A stored stream id holding '/', sent as it is or percent-encoded, answers its detail."""
    stored = stream_id.replace("%2F", "/")
    assert tracker.ingest(_deliveries.raw("started", stored, T0 + 5_000)).outcome is Outcome.APPLIED
    answer = populated.get(f"/streams/{stream_id}")
    assert answer.status_code == 200
    assert answer.json()["stream"]["stream_id"] == stored


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [(None, 6, 1)]),
        ("?by_scope=true", [("meeting", 6, 1)]),
        ("?since=2023-11-14T22:14:22", []),  # T0 + 62 s
        (f"?until={T0 + 61_001}", [(None, 6, 1)]),
        (f"?until={T0 + 61_000}", []),
    ],
)
def test_stop_reason_stats(
    populated: httpx.Client, query: str, expected: list[tuple[str | None, int, int]]
) -> None:
    """GET /stats/stop-reasons counts stopped streams per reason in the window (ms or ISO 8601)."""
    stats = populated.get("/stats/stop-reasons" + query).json()
    assert [(s["scope"], s["stop_reason"], s["count"]) for s in stats] == expected


def test_openapi_schema_describes_every_answer(client: httpx.Client) -> None:
    """The OpenAPI schema gives every route a typed 200 answer, and streams the documented keys."""
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/webhook",
        "/healthz",
        *(p for p in READ_PATHS if p != "/streams/stream-1"),
        "/streams/{stream_id}",
        "/metrics",
    }
    assert "text/plain" in str(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"])
    for path, operations in schema["paths"].items():
        if path == "/metrics":
            continue  # Prometheus' text format, not JSON
        for operation in operations.values():
            ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert ok.get("$ref") or ok.get("anyOf") or ok.get("items"), path
    assert set(schema["components"]["schemas"]["StreamModel"]["properties"]) == SPEC_STREAM_KEYS
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


READ_API_SNAPSHOT = Path(__file__).parent / "snapshots" / "read_api.openapi.json"


def test_read_api_schema_is_unchanged(client: httpx.Client) -> None:
    """The read API's routes and models in the OpenAPI schema are the ones clients were given."""
    schema = client.get("/openapi.json").json()
    snapshot = json.loads(READ_API_SNAPSHOT.read_text())
    assert {p: schema["paths"][p] for p in snapshot["paths"]} == snapshot["paths"]
    models = {name: schema["components"]["schemas"][name] for name in snapshot["components"]}
    assert json.dumps(models) == json.dumps(snapshot["components"])  # the key order too


def test_read_api_answers_are_the_records(populated: httpx.Client, tracker: Tracker) -> None:
    """Each read route answers its records' documented keys, in the schema's order."""
    schema = populated.get("/openapi.json").json()["components"]["schemas"]

    def keys(model: str) -> list[str]:
        return list(schema[model]["properties"])

    streams = populated.get("/streams").json()["items"]
    assert streams == [s.as_dict() for s in tracker.stream_page().items]
    assert {tuple(s) for s in streams} == {tuple(keys("StreamModel"))}
    detail = populated.get("/streams/s-down").json()
    down = tracker.stream("s-down")
    assert down is not None
    assert detail == {
        "stream": down.as_dict(),
        "history": [t.as_dict() for t in tracker.history("s-down")],
    }
    assert [list(t) for t in detail["history"]] == [keys("TransitionModel")] * 2
    for query, by_scope in (("", False), ("?by_scope=true", True)):
        stats = populated.get("/stats/stop-reasons" + query).json()
        expected = tracker.stop_reason_stats(by_scope=by_scope)
        assert stats == [{"scope": None, **s.as_dict()} for s in expected]
        assert [list(s) for s in stats] == [keys("StopReasonStatModel")] * len(expected)


# --- configuration, embedding, running ------------------------------------------------------------


def test_create_app_refuses_to_start_without_a_secret(sqlite_url: str) -> None:
    """No secret anywhere: a ConfigurationError naming the variable, and no database created."""
    with pytest.raises(ConfigurationError, match=SECRET_ENV):
        create_app(sqlite_url)
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize("seconds", [float("inf"), 1e308, float("nan"), 0])
def test_create_app_refuses_a_store_timeout_no_wait_can_take(
    sqlite_url: str, seconds: float
) -> None:
    """A store timeout past a day (a lock cannot wait forever) or not positive is refused."""
    with pytest.raises(ConfigurationError, match="store_timeout"):
        create_app(sqlite_url, secrets=[SECRET], store_timeout=seconds)


def test_run_refuses_a_host_name_that_cannot_be_encoded(sqlite_url: str) -> None:
    """A host label over 63 characters is a ConfigurationError, not a UnicodeError."""
    with pytest.raises(ConfigurationError, match="cannot listen"):
        run(host="a" * 64, db=sqlite_url)


def test_router_embeds_in_an_existing_app(tracker: Tracker) -> None:
    """create_router mounts the webhook at any path of the backend's own app, next to its routes."""
    app = FastAPI()

    @app.get("/mine")
    def mine() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(create_router(tracker, WebhookVerifier([SECRET]), path="/zoom/events"))
    with serving(app) as url, httpx.Client(base_url=url) as client:
        response = client.post("/zoom/events", content=STARTED, headers=signed(STARTED))
        assert response.json()["outcome"] == "applied"
        assert client.get("/mine").json() == {"ok": "yes"}


def test_run_serves_the_app_the_cli_starts(sqlite_url: str, tmp_path: Path) -> None:
    """server.run(host, port, path, db) serves a working receiver, secrets from the environment."""
    headers = signed(STARTED)
    with serving_process(sqlite_url, tmp_path, path="/hooks") as url:
        response = httpx.post(f"{url}/hooks", content=STARTED, headers=headers)
        refused = httpx.post(f"{url}/hooks", content=STARTED, headers=signed(STARTED, OTHER))
    assert (response.status_code, response.json()["outcome"]) == (200, "applied")
    assert refused.status_code == 401
    log = (tmp_path / "server.log").read_text()
    assert "POST /hooks" in log  # the access log is on, and shows no header
    assert SECRET not in log
    assert headers["x-zm-signature"][3:] not in log


def test_server_module_names_its_extra_when_fastapi_is_missing() -> None:
    """Importing rtms_lifecycle.server without FastAPI fails with a message naming the extra."""
    code = "import sys; sys.modules['fastapi'] = None; import rtms_lifecycle.server"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "rtms-lifecycle[server]" in result.stderr
    assert "fastapi is missing" in result.stderr


def test_no_secret_or_signature_is_logged(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused, accepted and challenge requests log neither a secret nor a signature."""
    caplog.set_level(logging.DEBUG)
    sent = [signed(STARTED, "guessed"), signed(STARTED), signed(b"junk")]
    post(client, STARTED, sent[0])
    post(client, STARTED, sent[1])
    post(client, b"junk", sent[2])
    post(client, url_validation("tok"), signed(url_validation("tok"), OTHER))
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "refused a webhook request" in logged  # the capture does see the receiver's logs
    for secret in (SECRET, OTHER):
        assert secret not in logged
    for headers in sent:
        assert headers["x-zm-signature"][3:] not in logged


def _doc_example(marker: str) -> dict[str, Any]:
    """Run the docs/receiver.md Python block containing ``marker``; return its namespace."""
    text = (Path(__file__).parents[1] / "docs" / "receiver.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    namespace: dict[str, Any] = {"__name__": "example"}
    exec(compile(code, "receiver.md", "exec"), namespace)
    return namespace


@pytest.fixture
def doc_environment(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the receiver docs' examples read: a secret and a database."""
    monkeypatch.setenv(SECRET_ENV, f"{OTHER},{SECRET}")
    monkeypatch.setenv("RTMS_LIFECYCLE_DB", sqlite_url)


@pytest.mark.usefixtures("doc_environment")
def test_receiver_doc_router_example_runs() -> None:
    """The docs' embedding example records a signed delivery next to the app's own route."""
    example = _doc_example("include_router")
    try:
        with serving(example["app"]) as url, httpx.Client(base_url=url) as client:
            response = client.post("/zoom/webhook", content=STARTED, headers=signed(STARTED))
            assert response.json()["outcome"] == "applied"
            assert client.get("/ready").json() == {"database": True}
    finally:
        example["tracker"].close()


@pytest.mark.usefixtures("doc_environment")
def test_receiver_doc_framework_free_example_runs() -> None:
    """The docs' framework-free handler refuses, records and answers url validation."""
    example = _doc_example("def handle(")
    handle = example["handle"]
    try:
        assert handle({}, STARTED) == (401, {"error": "signature_missing"})
        status, answer = handle(signed(STARTED), STARTED)
        assert (status, answer["outcome"]) == (200, "applied")
        challenge = url_validation("tok")
        status, answer = handle(signed(challenge, OTHER), challenge)
        expected = hmac.new(OTHER.encode(), b"tok", hashlib.sha256).hexdigest()
        assert (status, answer) == (200, {"plainToken": "tok", "encryptedToken": expected})
    finally:
        example["tracker"].close()


# --- fuzzing --------------------------------------------------------------------------------------

_printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80)
_bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda event, ts, payload: json.dumps(
            {"event": event, "event_ts": ts, "payload": payload}
        ).encode(),
        st.sampled_from(
            [
                "meeting.rtms_started",
                "meeting.rtms_stopped",
                "session.rtms_interrupted",
                "rtms.concurrency_limited",
                "endpoint.url_validation",
                "other.event",
            ]
        ),
        st.one_of(st.integers(), st.text(max_size=5), st.none()),
        st.dictionaries(
            st.sampled_from(
                [
                    "rtms_stream_id",
                    "meeting_uuid",
                    "stop_reason",
                    "plainToken",
                    "session_id",
                    "object",
                ]
            ),
            st.one_of(st.text(max_size=8), st.integers(), st.none()),
            max_size=5,
        ),
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=_bodies,
    mode=st.sampled_from(["signed", "forged", "garbage", "none"]),
    signature=_printable,
    stamp=_printable,
)
def test_fuzzed_requests_never_get_a_5xx(
    client: httpx.Client, body: bytes, mode: str, signature: str, stamp: str
) -> None:
    """Random bodies and headers never cause a 5xx: genuine ones get 200, all others 401."""
    headers = {
        "signed": signed(body),
        "forged": signed(body, "guessed"),
        "garbage": {"x-zm-signature": signature, "x-zm-request-timestamp": stamp},
        "none": {},
    }[mode]
    response = post(client, body, headers)
    assert response.status_code == (200 if mode == "signed" else 401)


def test_an_answer_leaves_in_one_send() -> None:
    """serve's protocol gathers what an answer writes in one pass of the loop into one send;
    closing sends what is left first."""
    sent: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            sent.append(data)

        def close(self) -> None:
            sent.append(b"<closed>")

        def is_closing(self) -> bool:
            return False

    async def answer() -> None:
        gathered = OneSendPerAnswer(Transport(), asyncio.get_running_loop())  # type: ignore[arg-type]
        gathered.write(b"head ")
        gathered.write(b"")
        gathered.write(b"body")
        assert sent == []
        await asyncio.sleep(0)
        assert sent == [b"head body"]
        gathered.write(b"last")
        gathered.close()
        await asyncio.sleep(0)
        assert sent == [b"head body", b"last", b"<closed>"]

    asyncio.run(answer())


def test_an_unexpected_error_on_the_webhook_is_a_plain_500(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook's handler sits inside Starlette's error middleware: a bug answers 500, as on
    every other route."""

    async def broken(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("a bug")

    app = create_app(tracker, secrets=[SECRET])
    monkeypatch.setattr(AsyncTracker, "ingest", broken)
    with serving(app) as url:
        answer = httpx.post(f"{url}/webhook", content=STARTED, headers=signed(STARTED))
    assert (answer.status_code, answer.text) == (500, "Internal Server Error")


def test_middleware_added_after_create_app_sees_every_delivery(tracker: Tracker) -> None:
    """A user's ``app.add_middleware`` wraps the webhook's front door too: tracing or request ids
    added by an embedding app still see deliveries."""
    seen: list[str] = []

    class Seen:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append(f"{scope['method']} {scope['path']}")
            await self.app(scope, receive, send)

    app = create_app(tracker, secrets=[SECRET])
    app.add_middleware(Seen)
    with serving(app) as url:
        answer = httpx.post(f"{url}/webhook", content=STARTED, headers=signed(STARTED))
        assert answer.status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert seen == ["POST /webhook", "GET /healthz"]
