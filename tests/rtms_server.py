"""A small RTMS media server on loopback, speaking what Zoom's RTMS SDK (``rtms``) expects.

The protocol as the SDK 1.1.0 speaks it (docs/decisions/0092-zoom-sdk.md): JSON over plain
``ws://``; a signalling socket (handshake ``msg_type`` 1 -> 2, keep-alives 12 -> 13, session
state updates 9) and one data socket per media type (handshake 3 -> 4, then frames).

The server runs its own asyncio loop on a thread; every method is called from the test's thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

# Message types (rtms.MessageType).
SIGNAL_HANDSHAKE_REQ = 1
SIGNAL_HANDSHAKE_RESP = 2
DATA_HANDSHAKE_REQ = 3
DATA_HANDSHAKE_RESP = 4
EVENT_UPDATE = 6
CLIENT_READY_ACK = 7
STREAM_STATE_UPDATE = 8
SESSION_STATE_UPDATE = 9
KEEP_ALIVE_REQ = 12
KEEP_ALIVE_RESP = 13
MEDIA_DATA_AUDIO = 14
MEDIA_DATA_TRANSCRIPT = 17

# Media types (rtms.MediaDataType) and the name of each one's URL in the handshake response.
AUDIO = 1
VIDEO = 2
DESKSHARE = 4
TRANSCRIPT = 8
MEDIA_NAMES = {AUDIO: "audio", VIDEO: "video", DESKSHARE: "deskshare", TRANSCRIPT: "transcript"}

SESSION_STARTED = 2  # rtms.SessionState
SESSION_STOPPED = 5
STREAM_TERMINATED = 4  # rtms.StreamState
EVENT_MEDIA_CONNECTION_INTERRUPTED = 7  # rtms.EVENT_MEDIA_CONNECTION_INTERRUPTED
STATUS_OK = 0
STATUS_INVALID_SIGNATURE = 6  # any non-zero status refuses a handshake


def wheel_exists_here() -> bool:
    """Whether Zoom publishes an ``rtms`` wheel for this platform (as CI runs it)."""
    return (
        sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info >= (3, 11)
    )


def sdk_or_skip() -> ModuleType:
    """The ``rtms`` module; the test is skipped where it is missing, and fails instead under
    ``CI=true`` where its wheel exists."""
    try:
        return importlib.import_module("rtms")
    except ImportError:
        reason = "Zoom's RTMS SDK is not installed: pip install -e '.[zoom]'"
        if os.environ.get("CI", "").lower() == "true" and wheel_exists_here():
            pytest.fail(f"{reason} [failing, not skipping: CI=true and its wheel exists here]")
        pytest.skip(reason)


def signature(client_id: str, client_secret: str, meeting_uuid: str, stream_id: str) -> str:
    """What the SDK sends: hex HMAC-SHA256 of ``client_id,meeting_uuid,stream_id``."""
    message = f"{client_id},{meeting_uuid},{stream_id}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass
class Joined:
    """One accepted signalling connection, and the data sockets opened for its stream."""

    stream_id: str
    meeting_uuid: str
    signalling: ServerConnection
    data: dict[int, ServerConnection] = field(default_factory=dict)
    keep_alive_replies: list[int] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return f"session-{self.stream_id}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _state_update(joined: Joined, msg_type: int, state: int, reason: int) -> str:
    """A session (``msg_type`` 9) or stream (8) state update: the SDK needs ``rtms_session_id``
    (of a session it was told started) and ``reason``, and ignores an update without them."""
    message = {
        "msg_type": msg_type,
        "rtms_session_id": joined.session_id,
        "state": state,
        "reason": reason,
        "timestamp": _now_ms(),
    }
    return json.dumps(message)


class RTMSServer:
    """An RTMS server for one app (``client_id``/``client_secret``) on ``127.0.0.1``.

    It checks each handshake's signature (a wrong one gets a non-zero ``status_code``), sends
    keep-alives with small sequence numbers, and can stop a stream, vanish, and come back on
    the same port.
    """

    def __init__(
        self, client_id: str, client_secret: str, *, keep_alive_every: float = 1.0
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.keep_alive_every = keep_alive_every
        self.port = 0
        self.refused: list[str] = []  # stream ids whose handshake carried a wrong signature
        self.handshakes: list[dict[str, Any]] = []  # every signalling and data handshake
        self._joined: dict[str, Joined] = {}
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rtms-server")
        self._server: Server | None = None
        self._sequence = 0
        # Keep-alive loops, ended with the server so that none is left pending on a closed loop.
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle (test thread) ------------------------------------------------------------

    def start(self) -> RTMSServer:
        """Listen (on a free port the first time, then on the same one)."""
        if not self._thread.is_alive():
            self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        """Vanish and end the server's thread."""
        if self._thread.is_alive():
            self.vanish()
            self._call(self._end_tasks())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    @property
    def url(self) -> str:
        """The signalling URL, what a webhook's ``server_urls`` holds."""
        return f"ws://127.0.0.1:{self.port}/signal"

    def vanish(self) -> None:
        """Stop listening and drop every connection without a word (a crashed server)."""
        self._call(self._vanish())

    def stop_stream(self, stream_id: str, reason: int = 6) -> None:
        """Stop the stream (6: MEETING_ENDED) as Zoom does: the session stopped (the SDK's
        ``on_session_update``), then the stream terminated (its ``on_leave(reason)``)."""
        joined = self._joined[stream_id]
        self._call(
            joined.signalling.send(
                _state_update(joined, SESSION_STATE_UPDATE, SESSION_STOPPED, reason)
            )
        )
        self._call(
            joined.signalling.send(
                _state_update(joined, STREAM_STATE_UPDATE, STREAM_TERMINATED, reason)
            )
        )

    def interrupt(self, stream_id: str) -> None:
        """Say the stream's media connection was interrupted (the SDK's
        ``on_media_connection_interrupted``): an event update whose ``event`` names it."""
        event = {"event_type": EVENT_MEDIA_CONNECTION_INTERRUPTED, "timestamp": _now_ms()}
        signalling = self._joined[stream_id].signalling
        self._call(signalling.send(json.dumps({"msg_type": EVENT_UPDATE, "event": event})))

    # -- media (test thread) ----------------------------------------------------------------

    def send_audio(self, stream_id: str, data: bytes, user_id: int, user_name: str) -> None:
        """One audio frame (the SDK hands the callback the raw bytes)."""
        import base64

        content = {
            "user_id": user_id,
            "user_name": user_name,
            "data": base64.b64encode(data).decode(),
            "timestamp": _now_ms(),
        }
        self._send_media(stream_id, AUDIO, MEDIA_DATA_AUDIO, content)

    def send_transcript(self, stream_id: str, text: str, user_id: int, user_name: str) -> None:
        """One transcript line; the SDK drops a line without ``start_time``."""
        now = _now_ms()
        content = {
            "user_id": user_id,
            "user_name": user_name,
            "data": text,
            "timestamp": now,
            "start_time": now - 500,
            "end_time": now,
            "language": 9,
        }
        self._send_media(stream_id, TRANSCRIPT, MEDIA_DATA_TRANSCRIPT, content)

    def _send_media(
        self, stream_id: str, media: int, msg_type: int, content: dict[str, Any]
    ) -> None:
        socket = self._joined[stream_id].data[media]
        self._call(socket.send(json.dumps({"msg_type": msg_type, "content": content})))

    # -- waiting (test thread) --------------------------------------------------------------

    def wait_joined(self, stream_id: str, media: set[int], timeout: float = 5.0) -> Joined:
        """Wait until the stream's signalling and the given data sockets are up."""
        with self._changed:
            ready = self._changed.wait_for(
                lambda: (j := self._joined.get(stream_id)) is not None and media <= set(j.data),
                timeout,
            )
            assert ready, f"{stream_id}: not joined with media {media} within {timeout}s"
            return self._joined[stream_id]

    def joined(self, stream_id: str) -> Joined | None:
        return self._joined.get(stream_id)

    # -- the server's own loop ------------------------------------------------------------

    def _call(self, coroutine: Any, timeout: float = 5.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    async def _listen(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _vanish(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=False)
            for connection in list(server.connections):
                connection.transport.abort()  # no closing handshake: the server is gone
            await server.wait_closed()
        with self._changed:
            self._joined.clear()
            self._changed.notify_all()

    async def _handle(self, connection: ServerConnection) -> None:
        try:
            async for raw in connection:
                message = json.loads(raw)
                kind = message.get("msg_type")
                if kind == SIGNAL_HANDSHAKE_REQ:
                    await self._signal_handshake(connection, message)
                elif kind == DATA_HANDSHAKE_REQ:
                    await self._data_handshake(connection, message)
                elif kind == CLIENT_READY_ACK:
                    await self._client_ready(connection)
                elif kind == KEEP_ALIVE_RESP:
                    self._keep_alive_reply(connection, message)
        except ConnectionClosed:
            pass

    def _signed(self, message: dict[str, Any]) -> bool:
        expected = signature(
            self.client_id,
            self.client_secret,
            str(message.get("meeting_uuid")),
            str(message.get("rtms_stream_id")),
        )
        return hmac.compare_digest(expected, str(message.get("signature", "")))

    async def _signal_handshake(
        self, connection: ServerConnection, message: dict[str, Any]
    ) -> None:
        self.handshakes.append(message)
        stream_id = str(message.get("rtms_stream_id"))
        if not self._signed(message):
            self.refused.append(stream_id)
            await connection.send(
                json.dumps(
                    {
                        "msg_type": SIGNAL_HANDSHAKE_RESP,
                        "protocol_version": 1,
                        "status_code": STATUS_INVALID_SIGNATURE,
                        "reason": "invalid signature",
                    }
                )
            )
            await connection.close()
            return
        base = f"ws://127.0.0.1:{self.port}"
        urls = {name: f"{base}/{name}" for name in MEDIA_NAMES.values()}
        await connection.send(
            json.dumps(
                {
                    "msg_type": SIGNAL_HANDSHAKE_RESP,
                    "protocol_version": 1,
                    "status_code": STATUS_OK,
                    "media_server": {"server_urls": {**urls, "all": f"{base}/all"}},
                }
            )
        )
        with self._changed:
            self._joined[stream_id] = Joined(stream_id, str(message["meeting_uuid"]), connection)
            self._changed.notify_all()
        task = asyncio.get_running_loop().create_task(self._keep_alive(stream_id, connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _data_handshake(self, connection: ServerConnection, message: dict[str, Any]) -> None:
        self.handshakes.append(message)
        stream_id = str(message.get("rtms_stream_id"))
        ok = self._signed(message) and stream_id in self._joined
        media = int(message.get("media_type", 0))
        await connection.send(
            json.dumps(
                {
                    "msg_type": DATA_HANDSHAKE_RESP,
                    "protocol_version": 1,
                    "status_code": STATUS_OK if ok else STATUS_INVALID_SIGNATURE,
                    "sequence": 0,
                    "payload_encrypted": False,
                    "media_params": message.get("media_params"),
                }
            )
        )
        if ok:
            with self._changed:
                self._joined[stream_id].data[media] = connection
                self._changed.notify_all()

    async def _client_ready(self, connection: ServerConnection) -> None:
        # The SDK knows a session only once told it started; it ignores a stop for another.
        for joined in list(self._joined.values()):
            if joined.signalling is connection:
                await connection.send(
                    _state_update(joined, SESSION_STATE_UPDATE, SESSION_STARTED, 0)
                )

    async def _end_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keep_alive(self, stream_id: str, connection: ServerConnection) -> None:
        while self._joined.get(stream_id) is not None:
            await asyncio.sleep(self.keep_alive_every)
            self._sequence += 1  # small integers: the SDK refused a millisecond clock value
            request = {
                "msg_type": KEEP_ALIVE_REQ,
                "sequence": self._sequence,
                "timestamp": _now_ms(),
            }
            try:
                await connection.send(json.dumps(request))
            except ConnectionClosed:
                return

    def _keep_alive_reply(self, connection: ServerConnection, message: dict[str, Any]) -> None:
        for joined in self._joined.values():
            if joined.signalling is connection:
                joined.keep_alive_replies.append(int(message.get("sequence", -1)))


@contextmanager
def running_server(client_id: str, client_secret: str) -> Iterator[RTMSServer]:
    """An :class:`RTMSServer`, started, closed on exit."""
    server = RTMSServer(client_id, client_secret).start()
    try:
        yield server
    finally:
        server.close()
