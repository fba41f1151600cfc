"""End to end as a user deploys it: ``rtms-lifecycle serve`` gets Zoom's signed webhooks, the
worker of docs/workers.md (its own process) claims the stream and joins it with Zoom's real SDK
on our RTMS server (tests/rtms_server.py), on loopback, on each database.

Skipped where ``rtms`` is not installed, except under ``CI=true`` where its wheel exists. The
vanish test waits for the SDK to give up (about 11 s); the other ends within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.records import ClaimEvent
from rtms_lifecycle.zoom import RECEIVER_REQUEST_CLOSE
from tests import _deliveries
from tests._live import signed
from tests._postgres import PostgresServer, create_database, stopped
from tests._served import serve_command
from tests.rtms_server import AUDIO, TRANSCRIPT, RTMSServer, sdk_or_skip

# One worker of xdist runs these: each holds a server, a receiver and an SDK worker for seconds.
pytestmark = pytest.mark.xdist_group("zoom-e2e")

ROOT = Path(__file__).resolve().parent.parent
WORKER = "worker-e2e"
CLIENT_ID = "e2e-client-id"
CLIENT_SECRET = "e2e-client-secret"
STREAM = "e2e-stream-1"
MEETING = "e2e-meeting-uuid=="
RENEW_EVERY = 0.3
LEASE = 5.0
T = TypeVar("T")


def wait_for(what: Callable[[], T], timeout: float, about: str) -> T:
    """``what()`` once truthy, polled until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = what()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout} s: {about}"
        time.sleep(0.05)


@dataclass
class Deployment:
    """A receiver, a worker process and an RTMS server, all on loopback, on one database."""

    tracker: Tracker
    receiver: str
    servers: list[RTMSServer]  # the RTMS servers started, the last one up
    worker: subprocess.Popen[bytes]
    out: Path

    @property
    def rtms(self) -> RTMSServer:
        return self.servers[-1]

    def deliver(self, body: bytes) -> None:
        """POST ``body`` to the receiver, signed as Zoom signs."""
        answer = httpx.post(f"{self.receiver}/webhook", content=body, headers=signed(body))
        assert answer.status_code == 200, answer.text

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        """What the worker wrote (its starts, media, ends), of ``event`` if given."""
        if not self.out.exists():
            return []
        found = [json.loads(line) for line in self.out.read_text().splitlines()]
        return [line for line in found if event is None or line["event"] == event]

    def history(self) -> list[tuple[str, str, int, str | None]]:
        """The stream's claim history: (event, source, token, reason)."""
        return [_row(e) for e in self.tracker.claim_history(STREAM)]

    def started(self) -> None:
        """Zoom's ``meeting.rtms_started``, naming our RTMS server."""
        self.deliver(
            _deliveries.raw(
                "started", STREAM, now_ms(), scope_id=MEETING, server_urls=self.rtms.url
            )
        )

    def connected(self, timeout: float = 15) -> None:
        """Wait until the worker joined: the stream held by it, its media reported connected."""

        def joined() -> bool:
            stream = self.tracker.stream(STREAM)
            return stream is not None and stream.connected and stream.worker == WORKER

        log = self.out.with_name("worker.log")
        wait_for(joined, timeout, f"the worker reports the stream connected (see {log})")
        self.rtms.wait_joined(STREAM, {AUDIO, TRANSCRIPT})

    def rtms_back(self) -> None:
        """A new RTMS server on the URL the webhook named (the old one gone)."""
        back = RTMSServer(CLIENT_ID, CLIENT_SECRET, keep_alive_every=0.5)
        back.port = self.rtms.port
        self.rtms.close()
        self.servers.append(back)
        back.start()

    def exit(self) -> int:
        """SIGTERM to the worker; its exit code."""
        self.worker.send_signal(signal.SIGTERM)
        return self.worker.wait(timeout=20)


def _row(event: ClaimEvent) -> tuple[str, str, int, str | None]:
    return (event.event, event.source, event.token, event.reason)


@pytest.fixture
def deployment(db_url: str, tmp_path: Path) -> Iterator[Deployment]:
    sdk_or_skip()
    workdir = tmp_path / "worker"  # the SDK's C library writes ./logs/ here
    workdir.mkdir()
    out = tmp_path / "worker.jsonl"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ZM_RTMS_", "RTMS_"))}
    environ |= {"ZOOM_CLIENT_ID": CLIENT_ID, "ZOOM_CLIENT_SECRET": CLIENT_SECRET}
    with ExitStack() as stack:
        tracker = stack.enter_context(Tracker(db_url))  # the schema, before any other process
        servers = [RTMSServer(CLIENT_ID, CLIENT_SECRET, keep_alive_every=0.5)]
        stack.callback(_close, servers)
        servers[0].start()
        served = stack.enter_context(serve_command(db_url, tmp_path))
        argv = [sys.executable, str(ROOT / "tests" / "zoom_worker.py"), db_url, WORKER, str(out),
                str(RENEW_EVERY), str(LEASE), "0.1"]  # fmt: skip
        log = stack.enter_context((tmp_path / "worker.log").open("wb"))
        worker = subprocess.Popen(argv, cwd=workdir, env=environ, stdout=log, stderr=log)
        stack.callback(_end, worker)
        yield Deployment(tracker, served.url, servers, worker, out)


def _close(servers: list[RTMSServer]) -> None:
    for server in servers:
        server.close()


def _end(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.kill()
        worker.wait(timeout=20)


def test_a_started_stream_is_joined_gets_media_and_is_left_when_it_stops(
    deployment: Deployment,
) -> None:
    d = deployment
    d.started()
    d.connected()
    ((token, stream_id),) = [(s["token"], s["stream_id"]) for s in d.lines("started")]
    assert (token, stream_id) == (1, STREAM)
    assert d.rtms.handshakes[0]["meeting_uuid"] == MEETING

    d.rtms.send_audio(STREAM, b"\x01\x02pcm", 16778240, "Ann")
    d.rtms.send_transcript(STREAM, "hello there", 16778240, "Ann")
    wait_for(lambda: d.lines("audio") and d.lines("transcript"), 10, "media at the callbacks")
    media = [(m["event"], m["stream_id"], m["data"], m["user"]) for m in d.lines()[1:]]
    assert media == [
        ("audio", STREAM, b"\x01\x02pcm".hex(), "Ann"),
        ("transcript", STREAM, "hello there", "Ann"),
    ]

    signalling = d.rtms.joined(STREAM)
    assert signalling is not None
    d.deliver(_deliveries.raw("stopped", STREAM, now_ms(), scope_id=MEETING, stop_reason=6))
    (ended,) = wait_for(lambda: d.lines("ended"), 10, "the worker frees the stream's slot")
    assert ended == {
        "event": "ended", "stream_id": STREAM, "why": "lost", "code": None,
        "claim_lost": "stopped", "release_failed": None,
    }  # fmt: skip
    wait_for(lambda: signalling.signalling.state.name == "CLOSED", 5, "the SDK left")
    stream = d.tracker.stream(STREAM)
    assert stream is not None
    assert stream.stopped
    assert (stream.worker, stream.connected) == (None, False)
    assert d.history() == [
        ("claimed", "worker", 1, None),
        ("connected", "app", 1, None),
        ("stopped", "webhook", 1, "6"),
        ("disconnected", "app", 1, str(RECEIVER_REQUEST_CLOSE)),
    ]
    assert d.tracker.connected_after_stop() == []
    assert d.tracker.claims(WORKER) == []
    assert d.exit() == 0


def test_a_vanished_server_is_reported_and_rejoined_on_the_same_claim(
    deployment: Deployment,
) -> None:
    d = deployment
    d.started()
    d.connected()
    (held,) = d.tracker.claims(WORKER)

    d.rtms.vanish()  # the SDK reconnects at ~1, 3 and 7 s, then leaves with 502 at ~11 s

    def disconnected() -> bool:
        stream = d.tracker.stream(STREAM)
        return stream is not None and not stream.connected

    wait_for(disconnected, 25, "the worker reports the stream disconnected")
    assert d.history()[-1] == ("disconnected", "app", held.token, "502")
    (kept,) = d.tracker.claims(WORKER)
    assert kept.token == held.token
    assert kept.expires_at > now_ms()
    assert d.lines("ended") == []

    d.rtms_back()
    d.connected()
    d.rtms.send_transcript(STREAM, "back again", 1, "Bob")
    wait_for(lambda: d.lines("transcript"), 10, "media after the rejoin")
    assert d.history() == [
        ("claimed", "worker", held.token, None),
        ("connected", "app", held.token, None),
        ("disconnected", "app", held.token, "502"),
        ("connected", "app", held.token, None),
    ]

    assert d.exit() == 0  # leaves, says so, releases
    assert d.history()[-2:] == [
        ("disconnected", "app", held.token, str(RECEIVER_REQUEST_CLOSE)),
        ("released", "worker", held.token, "worker stopped"),
    ]


def test_the_worker_rides_out_a_database_outage_and_claims_again(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    """The worker of docs/workers.md holding two streams, PostgreSQL stopped past the lease:
    it does not die; each stream is left before its lease ends (a stream the worker cannot
    renew may be another's); claims fail and are retried; once the server is back the
    streams are claimed again. A server of its own: this one is stopped."""
    sdk_or_skip()
    workdir = tmp_path / "worker"
    workdir.mkdir()
    out = tmp_path / "worker.jsonl"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ZM_RTMS_", "RTMS_"))}
    environ |= {"ZOOM_CLIENT_ID": CLIENT_ID, "ZOOM_CLIENT_SECRET": CLIENT_SECRET}

    def lines(event: str) -> list[dict[str, Any]]:
        if not out.exists():
            return []
        found = [json.loads(line) for line in out.read_text().splitlines()]
        return [line for line in found if line["event"] == event]

    with ExitStack() as stack:
        url = own_postgres.url(create_database(own_postgres))
        tracker = stack.enter_context(Tracker(url))
        rtms = RTMSServer(CLIENT_ID, CLIENT_SECRET, keep_alive_every=0.5).start()
        stack.callback(rtms.close)
        at = now_ms() - 1_000
        tracker.ingest_batch(
            [
                _deliveries.body("started", sid, at, scope_id=MEETING, server_urls=rtms.url)
                for sid in ("s1", "s2")
            ]
        )
        argv = [sys.executable, str(ROOT / "tests" / "zoom_worker.py"), url, WORKER, str(out),
                str(RENEW_EVERY), "4", "0.1"]  # fmt: skip
        log = stack.enter_context((tmp_path / "worker.log").open("wb"))
        worker = subprocess.Popen(argv, cwd=workdir, env=environ, stdout=log, stderr=log)
        stack.callback(_end, worker)
        wait_for(lambda: len(lines("started")) == 2, 15, "both streams claimed")
        for sid in ("s1", "s2"):
            rtms.wait_joined(sid, {AUDIO, TRANSCRIPT})
        with stopped(own_postgres):
            wait_for(lambda: len(lines("ended")) == 2, 15, "both leases run out, both left")
            ended = lines("ended")
            wait_for(lambda: lines("claim_failed"), 10, "a failed claim, retried")
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert {(e["why"], e["claim_lost"]) for e in ended} == {("lost", "lease ran out unrenewed")}
        wait_for(lambda: len(lines("started")) == 4, 30, "both streams claimed again")
        assert sorted(s["token"] for s in lines("started")[2:]) == [2, 2]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert tracker.claims(WORKER) == []
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
