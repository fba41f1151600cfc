"""uvicorn's HTTP protocol with the limits a webhook receiver needs and uvicorn lacks.

uvicorn closes a connection idle after a response (``timeout_keep_alive``), but not one that
never completes a request: a connection that sends nothing, or headers a byte at a time, stays
open for ever, holding a file descriptor. Thousands of them and the process can accept nothing
more. This protocol closes a connection whose request headers are not complete within
``request_timeout`` seconds of its first byte (or of its opening), and, beyond
``limit_concurrency`` open connections, closes a new one at once instead of holding it idle
(uvicorn's own limit only answers 503 once a request arrives).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["bounded_protocol"]


def bounded_protocol(request_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools if installed, else h11), with the limits above."""

    class Bounded(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _rtms_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            limit = self.limit_concurrency
            if limit is not None and len(self.connections) > limit:
                self.transport.close()
                return
            self._rtms_watch()

        def data_received(self, data: bytes) -> None:
            # The first bytes of a next request on a kept-alive connection: its headers too
            # must come in time.
            if self._rtms_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._rtms_watch()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._rtms_timer is not None:
                self._rtms_timer.cancel()
                self._rtms_timer = None
            super().connection_lost(exc)

        def _rtms_watch(self) -> None:
            waiting = self.cycle
            self._rtms_timer = self.loop.call_later(request_timeout, self._rtms_expire, waiting)

        def _rtms_expire(self, waiting: object) -> None:
            self._rtms_timer = None
            # No request began since the watch started: nobody is waiting for an answer.
            if self.cycle is waiting and not self.transport.is_closing():
                self.transport.close()

    return Bounded
