"""rtms_lifecycle.zoom with Zoom's real RTMS SDK (``rtms``), joining tests/rtms_server.py.

Skipped where ``rtms`` is not installed, except under ``CI=true`` on Linux x86_64 with Python
3.11+, where its wheel exists and a missing SDK is a failure. The SDK gives up on a vanished
server after about 11 s: that test waits for it; every other test ends within a few seconds.
The database outages are a PostgreSQL server of the test's own, stopped.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rtms_lifecycle import Claim as StoreClaim
from rtms_lifecycle import Tracker as StoreTracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.exceptions import ClaimLost
from rtms_lifecycle.zoom import (
    DATA_CONNECTION_INTERRUPTED,
    LEASE_RAN_OUT,
    RECEIVER_REQUEST_CLOSE,
    ZoomEnded,
    ZoomStream,
    load_sdk,
    signature,
    stream_ended,
)
from tests._deliveries import body
from tests._postgres import PostgresServer, create_database, stopped
from tests.rtms_server import AUDIO, TRANSCRIPT, RTMSServer, sdk_or_skip

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret"


@pytest.fixture(scope="module")
def sdk() -> ModuleType:
    """The ``rtms`` module; skipped where it is missing (failed under CI where its wheel exists)."""
    return sdk_or_skip()


# -- a tracker of our own: records calls, can be told the claim was lost ----------------------


@dataclass(frozen=True)
class Stream:
    stream_id: str
    scope_id: str | None
    server_urls: str | None

    @property
    def server_url_list(self) -> list[str]:
        return [url for url in (self.server_urls or "").split(",") if url]


@dataclass(frozen=True)
class Claim:
    stream_id: str
    worker: str
    token: int
    expires_at: int  # epoch ms
    stream: Stream


@dataclass
class Tracker:
    """Implements rtms_lifecycle.zoom.ClaimTracker in memory."""

    lost: str | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    renewals: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def _record(self, name: str, detail: Any = None) -> None:
        with self._changed:
            self.calls.append((name, detail))
            self._changed.notify_all()

    def renew(self, claim: Claim) -> Claim:
        if self.lost is not None:
            raise ClaimLost(self.lost)
        self.renewals += 1
        return replace(claim, expires_at=now_ms() + 30_000)

    def release(self, claim: Claim, reason: str | None = None) -> None:
        self._record("release", reason)

    def report_connected(self, claim: Claim, at_ms: int | None = None) -> None:
        assert at_ms is not None
        self._record("connected")

    def report_disconnected(
        self, claim: Claim, at_ms: int | None = None, reason: int | None = None
    ) -> None:
        self._record("disconnected", reason)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def wait_for(self, what: Callable[[list[str]], bool], timeout: float) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: what(self.names()), timeout), self.calls


def _claim_of(url: str, stream_id: str = "stream-1") -> Claim:
    stream = Stream(stream_id, "meeting-uuid==", url)
    return Claim(stream_id, "worker-1", 1, now_ms() + 30_000, stream)


def _claim(server: RTMSServer) -> Claim:
    return _claim_of(server.url)


@dataclass
class Media:
    """What the user's callbacks received."""

    audio: list[tuple[bytes, str]] = field(default_factory=list)
    transcript: list[tuple[bytes, str]] = field(default_factory=list)

    def on_audio(self, data: bytes, size: int, timestamp: int, metadata: Any) -> None:
        self.audio.append((data, metadata.userName))

    def on_transcript(self, data: bytes, size: int, timestamp: int, metadata: Any) -> None:
        self.transcript.append((data, metadata.userName))


@pytest.fixture
def server(
    sdk: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RTMSServer]:
    monkeypatch.chdir(tmp_path)  # the SDK's C library writes ./logs/
    for variable in ("ZM_RTMS_CLIENT", "ZM_RTMS_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    server = RTMSServer(CLIENT_ID, CLIENT_SECRET, keep_alive_every=0.5).start()
    yield server
    server.close()


@pytest.fixture
def streams() -> Iterator[list[ZoomStream[Claim]]]:
    """Adapters to stop at the end, so that no SDK client outlives its test."""
    started: list[ZoomStream[Claim]] = []
    yield started
    for stream in started:
        stream.stop()
        assert stream.join(15), "the adapter did not end"


def _start(
    streams: list[ZoomStream[Claim]],
    tracker: Tracker,
    claim: Claim,
    media: Media,
    secret: str = CLIENT_SECRET,
    **options: Any,
) -> ZoomStream[Claim]:
    stream = ZoomStream(
        tracker,
        claim,
        client_id=CLIENT_ID,
        client_secret=secret,
        on_audio_data=media.on_audio,
        on_transcript_data=media.on_transcript,
        **options,
    )
    streams.append(stream)
    return stream.start()


def _connected(
    streams: list[ZoomStream[Claim]],
    server: RTMSServer,
    tracker: Tracker,
    media: Media,
    **options: Any,
) -> ZoomStream[Claim]:
    """An adapter joined to ``stream-1``: reported connected, its media sockets open."""
    stream = _start(streams, tracker, _claim(server), media, **options)
    tracker.wait_for(lambda names: "connected" in names, 5)
    server.wait_joined("stream-1", {AUDIO, TRANSCRIPT})
    return stream


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- the SDK as the adapter uses it -----------------------------------------------------------


def _parameters(function: Callable[..., Any]) -> set[str]:
    """Parameter names, from the signature or, for a native method, its pybind11 docstring."""
    try:
        return set(inspect.signature(function).parameters)
    except ValueError:
        first = (function.__doc__ or "").split("\n", 1)[0]  # name(self: T, arg0: U) -> V
        inside = first[first.index("(") + 1 : first.rindex(")")]
        return {part.split(":")[0].strip() for part in inside.split(",") if part.strip()}


def test_the_sdk_has_what_the_adapter_uses(sdk: Any) -> None:
    """Every SDK name and parameter rtms_lifecycle.zoom relies on: a change fails here."""
    client = sdk.Client
    assert {"meeting_uuid", "rtms_stream_id", "server_urls", "signature"} <= _parameters(
        client.join
    )
    for callback in (
        "on_join_confirm",
        "on_leave",
        "on_media_connection_interrupted",
        "on_audio_data",
        "on_transcript_data",
        "on_video_data",
        "on_deskshare_data",
    ):
        assert callable(getattr(client, callback)), callback
        assert len(_parameters(getattr(client, callback))) == 2, callback  # self, callback
    assert _parameters(client.leave) == {"self"}
    assert "poll_interval" in _parameters(sdk.EventLoop)
    for method in ("add", "stop"):
        assert callable(getattr(sdk.EventLoop, method)), method
    assert inspect.iscoroutinefunction(sdk.EventLoop.run_async)
    assert sdk.StopReason.DATA_CONNECTION_INTERRUPTED == DATA_CONNECTION_INTERRUPTED
    assert sdk.StopReason.RECEIVER_REQUEST_CLOSE == RECEIVER_REQUEST_CLOSE
    assert sdk.generate_signature("id", "secret", "uuid==", "stream") == signature(
        "id", "secret", "uuid==", "stream"
    )


# -- end to end on loopback -------------------------------------------------------------------


def test_join_media_and_a_stop(server: RTMSServer, streams: list[ZoomStream[Claim]]) -> None:
    """Joined once, frames reach the user's callbacks; a stop -> disconnected, released."""
    tracker, media = Tracker(), Media()
    stream = _connected(streams, server, tracker, media, renew_every=0.2)
    assert stream.connected
    server.send_audio("stream-1", b"\x01\x02pcm", 16778240, "Ann")
    server.send_transcript("stream-1", "hello there", 16778240, "Ann")
    _wait(lambda: bool(media.audio and media.transcript), 5)
    assert media.audio == [(b"\x01\x02pcm", "Ann")]
    assert media.transcript == [(b"hello there", "Ann")]
    assert server.refused == []
    _wait(lambda: tracker.renewals >= 2, 5)

    server.stop_stream("stream-1", reason=6)  # MEETING_ENDED
    assert stream.join(5)
    assert stream.ended == ZoomEnded("stopped", 6)
    assert tracker.calls == [
        ("connected", None),
        ("disconnected", 6),
        ("release", "stream stopped: MEETING_ENDED"),
    ]


def test_a_vanished_server_keeps_the_claim_and_is_rejoined(
    server: RTMSServer, streams: list[ZoomStream[Claim]]
) -> None:
    """The SDK gives up after ~11 s (reason 502): disconnected, claim kept, rejoined on return."""
    tracker, media = Tracker(), Media()
    stream = _connected(streams, server, tracker, media, renew_every=0.5)

    server.vanish()
    tracker.wait_for(lambda names: "disconnected" in names, 20)
    assert tracker.calls == [("connected", None), ("disconnected", 502)]
    assert not stream.connected
    renewed = tracker.renewals
    _wait(lambda: tracker.renewals > renewed, 5)  # still holding the claim while away

    server.start()  # back on the same port: the adapter's next join succeeds
    tracker.wait_for(lambda names: names.count("connected") == 2, 15)
    server.wait_joined("stream-1", {AUDIO, TRANSCRIPT})
    server.send_audio("stream-1", b"again", 1, "Bob")
    _wait(lambda: (b"again", "Bob") in media.audio, 5)
    assert "release" not in tracker.names()

    stream.stop()
    assert stream.join(5)
    assert stream.ended == ZoomEnded("requested", RECEIVER_REQUEST_CLOSE)
    assert tracker.calls[-2:] == [
        ("disconnected", RECEIVER_REQUEST_CLOSE),
        ("release", "worker stopped"),
    ]


def test_an_interruption_disconnects_until_media_flows_again(
    server: RTMSServer, streams: list[ZoomStream[Claim]]
) -> None:
    """Interrupted -> disconnected (14), claim kept; the next frame -> connected again."""
    tracker, media = Tracker(), Media()
    stream = _connected(streams, server, tracker, media, renew_every=0.2)

    server.interrupt("stream-1")
    tracker.wait_for(lambda names: "disconnected" in names, 5)
    assert not stream.connected
    server.send_audio("stream-1", b"back", 1, "Ann")
    tracker.wait_for(lambda names: names.count("connected") == 2, 5)
    assert stream.connected
    assert media.audio == [(b"back", "Ann")]
    server.send_audio("stream-1", b"more", 1, "Ann")
    _wait(lambda: len(media.audio) == 2, 5)
    assert tracker.calls == [
        ("connected", None),
        ("disconnected", DATA_CONNECTION_INTERRUPTED),
        ("connected", None),
    ]


def test_no_session_update_is_registered(
    sdk: Any,
    server: RTMSServer,
    streams: list[ZoomStream[Claim]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rtms 1.1 converts a session with a pointer it never set: registering for session
    updates crashed about 1 join in 100 (a core dump showed it), so the adapter does not."""
    registered: list[Any] = []
    monkeypatch.setattr(sdk.Client, "on_session_update", lambda self, cb: registered.append(cb))
    _connected(streams, server, Tracker(), Media())
    assert registered == []


@pytest.mark.parametrize(
    ("lost", "reported"),
    [
        ("taken", []),  # the claim is another worker's: no report
        # A stop ended the claim: the store takes the word, else connected-after-stop for good.
        ("stopped", [("disconnected", RECEIVER_REQUEST_CLOSE)]),
    ],
)
def test_a_lost_claim_leaves_without_releasing(
    server: RTMSServer,
    streams: list[ZoomStream[Claim]],
    lost: str,
    reported: list[tuple[str, Any]],
) -> None:
    tracker, media = Tracker(), Media()
    stream = _connected(streams, server, tracker, media, renew_every=0.2)
    joined = server.wait_joined("stream-1", set())

    tracker.lost = lost
    assert stream.join(5)
    assert stream.ended == ZoomEnded("lost", claim_lost=lost)
    assert tracker.calls == [("connected", None), *reported]
    _wait(lambda: joined.signalling.state.name == "CLOSED", 5)  # the SDK left


def test_a_wrong_secret_is_refused_and_never_connects(
    server: RTMSServer, streams: list[ZoomStream[Claim]]
) -> None:
    tracker, media = Tracker(), Media()
    stream = _start(streams, tracker, _claim(server), media, secret="wrong", rejoin_every=0.2)
    _wait(lambda: len(server.refused) >= 2, 5)  # refused, then tried again
    assert server.refused[0] == "stream-1"
    stream.stop()
    assert stream.join(5)
    assert stream.ended == ZoomEnded("requested", None)
    assert tracker.calls == [("release", "worker stopped")]


def test_refused_joins_back_off_and_a_good_join_resets_the_wait(
    server: RTMSServer, streams: list[ZoomStream[Claim]]
) -> None:
    """Each refused join waits twice as long as the last before the next (up to rejoin_max);
    once a join succeeds, the next rejoin waits rejoin_every again."""
    attempts: list[float] = []  # when each new client was about to join
    tracker, media = Tracker(), Media()
    server.client_secret = "not-the-apps"  # every join is refused
    began = time.monotonic()
    _start(streams, tracker, _claim(server), media, configure=lambda _: attempts.append(
        time.monotonic()), rejoin_every=0.1, rejoin_max=1.6)  # fmt: skip
    _wait(lambda: len(attempts) >= 6, 10)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # Each gap is a join, its refusal, and the wait: 0.1, 0.2, 0.4, 0.8, then the cap 1.6.
    for gap, wait in zip(gaps, (0.1, 0.2, 0.4, 0.8, 1.6), strict=False):
        assert gap >= wait, gaps
    # Without the back-off a join every 0.1 s: a dozen or more in 2 s; with it, at most 5.
    assert len([at for at in attempts if at < began + 2.0]) <= 5, gaps

    server.client_secret = CLIENT_SECRET
    tracker.wait_for(lambda names: "connected" in names, 10)
    server.wait_joined("stream-1", {AUDIO, TRANSCRIPT})
    server.client_secret = "not-the-apps"
    tried = len(attempts)
    left = time.monotonic()
    server.stop_stream("stream-1", reason=13)  # a leave that does not end the stream: rejoin
    _wait(lambda: len(attempts) > tried, 5)
    assert attempts[tried] - left < 1.0  # 0.1 s after the leave, not the 1.6 s reached before


def test_a_lease_about_to_end_is_never_joined(
    server: RTMSServer, streams: list[ZoomStream[Claim]]
) -> None:
    """A claim whose lease ends within leave_margin: not known to be held, so not joined."""
    tracker, media = Tracker(), Media()
    claim = replace(_claim(server), expires_at=now_ms() + 2_000)
    stream = _start(streams, tracker, claim, media, leave_margin=3.0)
    assert stream.join(5)
    assert stream.ended == ZoomEnded("lost", claim_lost=LEASE_RAN_OUT)
    assert server.handshakes == []
    assert tracker.calls == []


# -- a database outage: PostgreSQL of the test's own, stopped -------------------------------------


class Told(StoreTracker):
    """A store tracker that counts the connection reports that failed."""

    failed_reports = 0

    def report_connected(self, claim: StoreClaim, at_ms: int | None = None) -> None:
        try:
            super().report_connected(claim, at_ms)
        except Exception:
            self.failed_reports += 1
            raise

    def report_disconnected(
        self, claim: StoreClaim, at_ms: int | None = None, reason: int | None = None
    ) -> None:
        try:
            super().report_disconnected(claim, at_ms, reason)
        except Exception:
            self.failed_reports += 1
            raise


def _claimed(postgres: PostgresServer, server: RTMSServer) -> Told:
    """A tracker on a new database where stream-1 (on ``server``) is live and claimed."""
    tracker = Told(postgres.url(create_database(postgres)))
    started = body("started", "stream-1", now_ms() - 1_000, scope_id="meeting-uuid==",
                   server_urls=server.url)  # fmt: skip
    tracker.ingest_batch([started])
    return tracker


def _joined(
    tracker: StoreTracker, server: RTMSServer, media: Media, lease: float, **options: Any
) -> ZoomStream[StoreClaim]:
    """stream-1 claimed for ``lease`` seconds, joined and connected."""
    claim = tracker.claim("worker-1", lease=lease)
    assert claim is not None
    stream = ZoomStream(tracker, claim, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                        on_audio_data=media.on_audio, **options).start()  # fmt: skip
    server.wait_joined("stream-1", {AUDIO})
    _wait(lambda: stream.connected, 5)
    return stream


def _said(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rtms_lifecycle.zoom" and text in r.message]


def test_an_outage_past_the_lease_leaves_before_the_lease_ends(
    server: RTMSServer,
    own_postgres: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Renewals fail (the server is stopped): retried quietly, one line; the stream is left
    leave_margin before the lease's end, and join() returns why, raising nothing."""
    caplog.set_level(logging.WARNING, "rtms_lifecycle.zoom")
    media = Media()
    with _claimed(own_postgres, server) as tracker:
        stream = _joined(tracker, server, media, 4, renew_every=0.5, leave_margin=1.5)
        try:
            joined = server.wait_joined("stream-1", set())
            with stopped(own_postgres):
                _wait(lambda: bool(_said(caplog, ": could not ")), 5)  # a renewal, or a report
                lease_end = stream.claim.expires_at  # no renewal can succeed any more
                assert stream.join(10)
                returned = now_ms()
                assert returned < lease_end - 1_000, (returned, lease_end)  # left, and ended
                assert stream.ended == ZoomEnded("lost", claim_lost=LEASE_RAN_OUT)
                _wait(lambda: joined.signalling.state.name == "CLOSED", 5)  # the SDK left
                joins = len(server.handshakes)
            assert len(server.handshakes) == joins  # and never joined again
        finally:
            stream.stop()
            stream.join(15)
    # One line for the outage (not one per failed renewal), one for leaving; no tracebacks.
    assert len(_said(caplog, ": could not ")) == 1, caplog.text
    assert len(_said(caplog, "no renewal succeeded")) == 1, caplog.text
    assert all(r.exc_info is None for r in _said(caplog, "")), caplog.text


def test_a_short_outage_costs_nothing_and_a_stop_during_one_returns(
    server: RTMSServer,
    own_postgres: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outage shorter than the lease: the stream stays joined, one line for the outage and
    one for its end. stop() during an outage: join() returns, saying the release failed."""
    caplog.set_level(logging.WARNING, "rtms_lifecycle.zoom")
    media = Media()
    with _claimed(own_postgres, server) as tracker:
        stream = _joined(tracker, server, media, 30, renew_every=0.2)
        claim = stream.claim
        try:
            with stopped(own_postgres):
                _wait(lambda: len(_said(caplog, ": could not ")) == 1, 5)
                failed_at = time.monotonic()
                _wait(lambda: time.monotonic() > failed_at + 1.0, 2)  # several renewals fail
            _wait(lambda: bool(_said(caplog, "the database answers again")), 10)
            assert stream.connected
            assert not stream.join(0)
            assert len(_said(caplog, ": could not ")) == 1, caplog.text

            with stopped(own_postgres):
                _wait(lambda: len(_said(caplog, ": could not ")) == 2, 5)
                stream.stop()
                assert stream.join(10)  # no StoreError
                ended = stream.ended
        finally:
            stream.stop()
            stream.join(15)
        assert ended is not None
        assert (ended.why, ended.code) == ("requested", RECEIVER_REQUEST_CLOSE)
        assert ended.release_failed is not None
        assert ended.release_failed.startswith("could not ")
        assert "\n" not in ended.release_failed
        (held,) = tracker.claims("worker-1")  # not released: its lease runs out
        assert held.token == claim.token
    assert len(_said(caplog, "the claim was not released")) == 1, caplog.text
    assert all(r.exc_info is None for r in _said(caplog, "")), caplog.text


def test_a_state_not_reported_in_an_outage_is_reported_once_the_database_answers(
    server: RTMSServer, own_postgres: PostgresServer
) -> None:
    """Media interrupted, then back, each during an outage: the report that failed is made
    once the database answers again, so the claim's stored state is the stream's."""
    media, tracker = Media(), _claimed(own_postgres, server)
    with tracker:

        def stored() -> bool:
            (claim,) = tracker.claims("worker-1")
            return claim.connected

        stream = _joined(tracker, server, media, 30, renew_every=0.2)
        try:
            _wait(stored, 5)
            with stopped(own_postgres):
                server.interrupt("stream-1")
                _wait(lambda: tracker.failed_reports == 1, 5)
                assert not stream.connected
            _wait(lambda: not stored(), 10)

            with stopped(own_postgres):
                server.send_audio("stream-1", b"back", 1, "Ann")
                _wait(lambda: tracker.failed_reports == 2, 5)
                assert stream.connected
            _wait(stored, 10)
            assert stream.connected
            assert not stream.join(0)
        finally:
            stream.stop()
            stream.join(15)
        assert tracker.failed_reports == 2


# -- a real store, SQLite and PostgreSQL ---------------------------------------------------------


def _store_stream(
    tracker: StoreTracker, claim: StoreClaim, media: Media, **options: Any
) -> ZoomStream[StoreClaim]:
    return ZoomStream(tracker, claim, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                      on_audio_data=media.on_audio, **options)  # fmt: skip


@pytest.mark.parametrize(
    "schedule",
    [
        {"rejoin_every": 0.1, "rejoin_max": 0.4},  # re-read on the rejoin schedule
        {"rejoin_every": 20.0, "rejoin_max": 30.0, "renew_every": 0.3},  # at a renewal
    ],
    ids=["rejoins", "renewals"],
)
def test_a_claim_before_its_server_urls_is_held_and_joined_once_they_come(
    server: RTMSServer, db_url: str, caplog: pytest.LogCaptureFixture, schedule: dict[str, float]
) -> None:
    """The interrupted event came before the started one: the claim has no server URLs. The
    SDK would refuse the join and say so only in its log: the claim is held, re-read on the
    rejoin schedule and at each renewal, and joined once the started event brought them."""
    caplog.set_level(logging.WARNING, "rtms_lifecycle.zoom")
    media, began = Media(), now_ms()
    with StoreTracker(db_url) as tracker:
        tracker.ingest_batch([body("interrupted", "stream-1", began, scope_id="meeting-uuid==")])
        claim = tracker.claim("worker-1", lease=30)
        assert claim is not None
        assert claim.stream.server_url_list == []
        stream = _store_stream(tracker, claim, media, **schedule).start()
        try:
            _wait(lambda: bool(_said(caplog, "server URLs are not known yet")), 5)
            time.sleep(0.5)  # several re-reads: none joins
            assert server.handshakes == []
            assert not stream.join(0)
            (held,) = tracker.claims("worker-1")
            assert held.token == claim.token

            started = body("started", "stream-1", began - 1_000, scope_id="meeting-uuid==",
                           server_urls=server.url)  # fmt: skip
            tracker.ingest_batch([started])
            server.wait_joined("stream-1", {AUDIO})
            _wait(lambda: stream.connected, 5)
            assert stream.claim.token == claim.token
        finally:
            stream.stop()
            assert stream.join(10)
        assert stream.ended == ZoomEnded("requested", RECEIVER_REQUEST_CLOSE)
        assert tracker.claims("worker-1") == []
    assert len(_said(caplog, "server URLs are not known yet")) == 1, caplog.text


def test_a_stream_that_stops_before_its_server_urls_come_ends_as_a_stop(
    server: RTMSServer, db_url: str
) -> None:
    media, began = Media(), now_ms()
    with StoreTracker(db_url) as tracker:
        tracker.ingest_batch([body("interrupted", "stream-1", began, scope_id="meeting-uuid==")])
        claim = tracker.claim("worker-1", lease=30)
        assert claim is not None
        stream = _store_stream(tracker, claim, media, renew_every=0.2).start()
        try:
            time.sleep(0.3)
            tracker.ingest_batch([body("stopped", "stream-1", began + 1, scope_id="meeting-uuid==",
                                       stop_reason=6)])  # fmt: skip
            assert stream.join(5)
        finally:
            stream.stop()
            stream.join(10)
        assert stream.ended == ZoomEnded("lost", claim_lost="stopped")
        assert server.handshakes == []


def test_stop_during_a_rejoin_back_off_returns_at_once_and_releases(
    server: RTMSServer, db_url: str
) -> None:
    """A refused join waits rejoin_every (20 s here) before the next: stop() ends the wait at
    once, and the release is seen by another tracker on the same database."""
    media = Media()
    with StoreTracker(db_url) as tracker, StoreTracker(db_url) as other:
        started = body("started", "stream-1", now_ms() - 1_000, scope_id="meeting-uuid==",
                       server_urls=server.url)  # fmt: skip
        tracker.ingest_batch([started])
        claim = tracker.claim("worker-1", lease=30)
        assert claim is not None
        stream = ZoomStream(
            tracker,
            claim,
            client_id=CLIENT_ID,
            client_secret="wrong",
            on_audio_data=media.on_audio,
            rejoin_every=20,
            rejoin_max=30,
        ).start()
        try:
            _wait(lambda: server.refused == ["stream-1"], 10)
            time.sleep(0.3)  # into the back-off
            asked = time.monotonic()
            stream.stop()
            assert stream.join(5)
            took = time.monotonic() - asked
        finally:
            stream.stop()
            stream.join(10)
        assert took < 1.0, took
        assert stream.ended == ZoomEnded("requested", None)
        assert other.claims("worker-1") == []
        again = other.claim("worker-2", lease=30)
        assert again is not None
        assert again.stream_id == "stream-1"


def test_a_join_the_sdk_never_answers_times_out_and_backs_off(
    sdk: Any,
    server: RTMSServer,
    streams: list[ZoomStream[Claim]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK joins on its poll's thread and only logs a join that failed there (as it did
    for empty server URLs): no answer ever comes. Each join waits join_timeout, then the
    rejoin back-off, and stop() still returns at once."""
    attempts: list[float] = []

    def failing(self: Any) -> None:
        raise ValueError("server_urls is required")

    monkeypatch.setattr(sdk.Client, "_do_alloc_and_join", failing)
    tracker = Tracker()
    stream = _start(streams, tracker, _claim(server), Media(), join_timeout=0.2,
                    rejoin_every=0.1, rejoin_max=0.4,
                    configure=lambda _: attempts.append(time.monotonic()))  # fmt: skip
    _wait(lambda: len(attempts) >= 4, 10)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    for gap, wait in zip(gaps, (0.1, 0.2, 0.4), strict=False):
        assert gap >= 0.2 + wait, gaps  # the join's timeout, then the back-off
    asked = time.monotonic()
    stream.stop()
    assert stream.join(5)
    assert time.monotonic() - asked < 1.0
    assert stream.ended == ZoomEnded("requested", None)
    assert tracker.calls == [("release", "worker stopped")]
    assert server.handshakes == []


def test_a_lease_ended_already_is_said_to_have_ended(
    server: RTMSServer, streams: list[ZoomStream[Claim]], caplog: pytest.LogCaptureFixture
) -> None:
    """A process frozen past its lease: the line says the lease ended, and how long ago."""
    caplog.set_level(logging.WARNING, "rtms_lifecycle.zoom")
    claim = replace(_claim(server), expires_at=now_ms() - 11_000)
    stream = _start(streams, Tracker(), claim, Media())
    assert stream.join(5)
    assert stream.ended == ZoomEnded("lost", claim_lost=LEASE_RAN_OUT)
    (said,) = _said(caplog, "lease")
    assert "without a renewal" in said.message, said.message
    assert "(11 s ago)" in said.message, said.message
    assert "before its lease ends" not in said.message
    assert server.handshakes == []


def test_an_async_tracker_is_refused_and_its_sync_tracker_serves_an_event_loop(
    server: RTMSServer, sqlite_url: str
) -> None:
    """AsyncTracker's methods are coroutines, which ZoomStream's thread would never run: a
    TypeError naming the fix. With ``.sync``, an event loop awaits ``stream.wait()``."""
    import asyncio

    from rtms_lifecycle import AsyncTracker

    async def main() -> ZoomEnded:
        async with AsyncTracker(sqlite_url) as atracker:
            started = body("started", "stream-1", now_ms() - 1_000, scope_id="meeting-uuid==",
                           server_urls=server.url)  # fmt: skip
            await atracker.ingest(started)
            claim = await atracker.claim("worker-1", lease=30)
            assert claim is not None
            with pytest.raises(TypeError, match=r"pass async_tracker\.sync"):
                ZoomStream(atracker, claim, client_id=CLIENT_ID,  # type: ignore[misc]
                           client_secret=CLIENT_SECRET, on_audio_data=Media().on_audio)  # fmt: skip
            stream = _store_stream(atracker.sync, claim, Media()).start()
            await asyncio.to_thread(server.wait_joined, "stream-1", {AUDIO})
            await asyncio.to_thread(_wait, lambda: stream.connected, 5)
            stream.stop()
            return await asyncio.wait_for(stream.wait(), 10)

    assert asyncio.run(main()) == ZoomEnded("requested", RECEIVER_REQUEST_CLOSE)


def test_a_tracker_without_the_methods_is_refused() -> None:
    with pytest.raises(TypeError, match="has no renew, release"):
        ZoomStream(object(), _claim_of("ws://x"), client_id="id",  # type: ignore[arg-type]
                   client_secret="secret", on_audio_data=Media().on_audio)  # fmt: skip


# -- without the SDK --------------------------------------------------------------------------


def test_a_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rtms", None)
    with pytest.raises(ImportError, match=r"rtms-lifecycle\[zoom\]"):
        load_sdk()


def test_media_is_required() -> None:
    with pytest.raises(ValueError, match="media: give at least one"):
        ZoomStream(Tracker(), _claim_of(""), client_id="id", client_secret="secret")


@pytest.mark.parametrize(
    ("reason", "ended"),
    [(6, True), (1, True), (8, True), (20, True), (13, False), (24, False), (502, False)],
)
def test_which_leave_reasons_end_the_stream(reason: int, ended: bool) -> None:
    assert stream_ended(reason) is ended


def test_the_signature_is_the_sdks() -> None:
    # echo -n 'cid,muuid==,sid1' | openssl dgst -sha256 -hmac csecret (seen on the wire)
    assert signature("cid", "csecret", "muuid==", "sid1") == (
        "b8c4dcf6a5e3e6d6d1aad20836661cec3c751830f6237c3e45f1fbd1a8b2e36a"
    )
