"""uvicorn's HTTP protocol with the limits a webhook receiver needs and uvicorn lacks.

uvicorn closes a connection idle after a response (``timeout_keep_alive``), but not one that
never completes a request: a connection that sends nothing, or headers a byte at a time, stays
open for ever, holding a file descriptor. Thousands of them and the process can accept nothing
more. This protocol closes a connection whose request headers are not complete within
``request_timeout`` seconds of its first byte (or of its opening). Beyond ``limit_concurrency``
open connections, a new one whose request comes within ``OVER_LIMIT_GRACE`` seconds is answered
503 by uvicorn's own limit (a sender learns at once to retry; closing it unanswered made real
deliveries fail for about 4 s of retries), and one that sends nothing is closed then. The
monotonic time of a request's first byte is in its scope (``REQUEST_STARTED``): the body's wait
counts from it (for a connection's first request, from the opening). A request line and headers
over ``MAX_HEADER_BYTES`` are answered 431 and the connection closed. What an answer writes in
one pass of the event loop is sent at once (:class:`OneSendPerAnswer`). While uvicorn parses a
connection's bytes, its client address is :data:`~rtms_lifecycle.receiver.logthrottle.PEER`, so
that the warning of a malformed request can name it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from rtms_lifecycle.receiver.logthrottle import PEER

__all__ = [
    "DEFAULT_HEADERS",
    "MAX_HEADER_BYTES",
    "REQUEST_STARTED",
    "DefaultHeaders",
    "OneSendPerAnswer",
    "bounded_protocol",
]

#: Bytes a request's line and headers may take: more is answered 431 and the connection closed.
#: httptools (uvicorn's parser when installed) has no limit: a 50 MB header was read whole.
MAX_HEADER_BYTES: Final = 64 * 1024
_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)

#: Seconds a connection over the limit may take to send its request (answered 503), else closed.
OVER_LIMIT_GRACE: Final = 1.0
#: The scope key holding ``time.monotonic()`` of a request's first byte.
REQUEST_STARTED: Final = "rtms_lifecycle.request_started"

#: Headers every answer but the webhook's carries unless it sets its own: nothing the read API,
#: /metrics or the API docs answer is kept by a cache (a shared proxy, the browser's disk), and
#: no page of this server is shown inside another site's frame.
DEFAULT_HEADERS: Final = (
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)


class DefaultHeaders:
    """ASGI middleware: :data:`DEFAULT_HEADERS` added to each HTTP answer that lacks them."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(each for each in DEFAULT_HEADERS if each[0] not in present)
                message["headers"] = headers
            await send(message)

        await self._app(scope, receive, with_headers)


class OneSendPerAnswer:
    """A transport whose writes in one pass of the event loop leave in one ``send``.

    uvicorn writes an answer's head and its body apart: two system calls, each a pass through
    the loopback's TCP stack and a release of the interpreter lock (the largest share of the
    event loop's time under load). Gathered, an answer costs one.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        """Send what was written since the last flush."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def bounded_protocol(request_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools if installed, else h11), with the limits above."""

    class Bounded(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _rtms_timer: asyncio.TimerHandle | None = None
        _rtms_started: float | None = None
        _rtms_head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(OneSendPerAnswer(transport, self.loop))
            limit = self.limit_concurrency
            over = limit is not None and len(self.connections) > limit
            # The first request's time counts from the opening: a sender that waits before
            # its first byte gets no more time for the body.
            self._rtms_started = time.monotonic()
            self._rtms_watch(min(OVER_LIMIT_GRACE, request_timeout) if over else request_timeout)

        def data_received(self, data: bytes) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._rtms_started is None:
                # The first bytes of a next request on a kept-alive connection: a watch of its
                # own, so that an earlier one's leftover time is not added to it.
                if self._rtms_timer is not None:
                    self._rtms_timer.cancel()
                self._rtms_watch()
                self._rtms_started = time.monotonic()
            before = self.cycle
            peer = PEER.set(self.client[0] if self.client else None)
            try:
                super().data_received(data)
            finally:
                PEER.reset(peer)
            if self.cycle is not before:
                self._rtms_head_bytes = 0
            elif idle and not self.transport.is_closing():
                # Still no whole head: bound what the parser holds of it.
                self._rtms_head_bytes += len(data)
                if self._rtms_head_bytes > MAX_HEADER_BYTES:
                    self.transport.write(_TOO_LARGE)
                    self.transport.close()
                    return
            if self.cycle is not None and REQUEST_STARTED not in self.cycle.scope:
                self.cycle.scope[REQUEST_STARTED] = self._rtms_started or time.monotonic()
                self._rtms_started = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._rtms_timer is not None:
                self._rtms_timer.cancel()
                self._rtms_timer = None
            super().connection_lost(exc)

        def _rtms_watch(self, seconds: float = request_timeout) -> None:
            waiting = self.cycle
            self._rtms_timer = self.loop.call_later(seconds, self._rtms_expire, waiting)

        def _rtms_expire(self, waiting: object) -> None:
            self._rtms_timer = None
            # No request began since the watch started: nobody is waiting for an answer.
            if self.cycle is waiting and not self.transport.is_closing():
                self.transport.close()

    return Bounded
