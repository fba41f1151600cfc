"""Failures logged one line each, a traceback only for the first of a kind per minute; and
lines that a sender can repeat at will grouped per key (:class:`LineGroups`): uvicorn's access
lines of unauthenticated 3xx/4xx answers and its "Invalid HTTP request received." warnings, per
client address (:func:`bound_access_lines`), each access line's path cut short.

An outage (a database gone, a file-descriptor limit reached) fails every request the same way:
with a traceback each time, thousands of identical tracebacks bury the log (and fill the disk)
while telling nothing new. The first of a kind keeps its traceback; the rest in the following
minute are one line, with the exception's type and message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from rtms_lifecycle.receiver.throttle import address_key

__all__ = [
    "ACCESS_LINE_SKIPPED",
    "AUTHENTICATED",
    "GROUPED_WARNINGS",
    "GROUPS_HELD",
    "INVALID_REQUEST",
    "LINES_EVERY",
    "OTHERS",
    "PATH_SHOWN",
    "PEER",
    "REQUEST_SCOPE",
    "AccessLines",
    "InvalidRequestLines",
    "LineGroups",
    "RequestScope",
    "TracebackThrottle",
    "bound_access_lines",
    "mark_authenticated",
    "shortened",
    "throttle_tracebacks",
]

#: Loggers whose failures come in floods: ours, asyncio's (``accept()`` out of file
#: descriptors) and uvicorn's.
FLOODED: Final = ("rtms_lifecycle.server", "asyncio", "uvicorn.error")
_LONGEST: Final = 500
#: Seconds between two lines of one group (the first is written at once).
LINES_EVERY: Final = 60.0
#: Characters of a request's path and query an access line shows; the rest is counted.
PATH_SHOWN: Final = 200
# A method is a short word: one longer is cut as a path is (h11 takes any token).
_METHOD_SHOWN: Final = 20
#: uvicorn's warning for a request its parser refused (it answers 400 itself).
INVALID_REQUEST: Final = "Invalid HTTP request received."
#: uvicorn's warnings for requests anyone may send at will, grouped per address.
GROUPED_WARNINGS: Final = frozenset({INVALID_REQUEST, "Unsupported upgrade request."})
# The hint uvicorn adds to an upgrade it does not serve: the receiver serves no WebSocket.
_NO_WEBSOCKETS: Final = "No supported WebSocket library detected"
#: Keys :class:`LineGroups` follows at once; beyond, new keys share one group.
GROUPS_HELD: Final = 4096
#: The key of that shared group.
OTHERS: Final = "others"


class TracebackThrottle(logging.Filter):
    """A logging filter: keeps a record's traceback only if its kind had none in ``period``.

    The kind is the logger, the message template and the exception type. A record stripped of
    its traceback says the exception in its one line instead.
    """

    def __init__(self, period: float = 60.0) -> None:
        super().__init__()
        self._period = period
        self._last: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        kind = (record.name, str(record.msg), type(exc).__qualname__)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is None or now - last >= self._period:
                self._last[kind] = now
                return True
        said = " ".join(str(exc).split())[:_LONGEST]
        # One line: asyncio's messages span several.
        message = "; ".join(record.getMessage().splitlines())
        record.msg = f"{message} ({type(exc).__name__}: {said})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


#: Set while a request whose answer is logged otherwise (a refused webhook request) sends it:
#: uvicorn writes its access line from inside that ``send``, in the request's context.
ACCESS_LINE_SKIPPED: Final[ContextVar[bool]] = ContextVar("access_line_skipped", default=False)


#: The ASGI scope of the request being answered, for the access line's filter
#: (:class:`RequestScope` sets it for the requests the app routes; the webhook's are not).
REQUEST_SCOPE: Final[ContextVar[MutableMapping[str, Any] | None]] = ContextVar(
    "request_scope", default=None
)
#: The scope key of a request whose credential was verified: its answers keep their lines.
AUTHENTICATED: Final = "rtms_lifecycle.authenticated"
#: The client address of the connection whose bytes the server is parsing (set by the
#: protocol of ``rtms-lifecycle serve``; absent, invalid requests share one group).
PEER: Final[ContextVar[str | None]] = ContextVar("peer", default=None)


def mark_authenticated(scope: MutableMapping[str, Any]) -> None:
    """Note that this request carried a valid credential: its access line is never grouped."""
    scope[AUTHENTICATED] = True


def shortened(text: str, limit: int = PATH_SHOWN) -> str:
    """``text`` whole up to ``limit`` characters; beyond, its first ``limit``, an ellipsis and
    its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


class RequestScope:
    """ASGI middleware: the scope of each HTTP request it passes on is :data:`REQUEST_SCOPE`
    while the request is answered (uvicorn writes the access line from inside ``send``)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        token = REQUEST_SCOPE.set(scope)
        try:
            await self._app(scope, receive, send)
        finally:
            REQUEST_SCOPE.reset(token)


class AccessLines(logging.Filter):
    """A filter for uvicorn's access logger.

    It leaves out the line of a request that set :data:`ACCESS_LINE_SKIPPED` (a refused webhook
    request, logged otherwise); cuts the method and path to :data:`PATH_SHOWN` characters; and
    groups per client address (:class:`LineGroups`) the lines of 3xx and 4xx answers to
    requests the app routed without a verified credential, so that what anyone can repeat at
    will costs a line a minute per address. 2xx and 5xx answers, and authenticated requests,
    keep their line each.
    """

    def __init__(self, period: float = LINES_EVERY) -> None:
        super().__init__()
        self._groups = LineGroups(period)

    def filter(self, record: logging.LogRecord) -> bool:
        if ACCESS_LINE_SKIPPED.get():
            return False
        args = record.args
        # uvicorn's: (client, method, path with query, HTTP version, status).
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        client, method, path, version, status = args
        if len(str(path)) > PATH_SHOWN or len(str(method)) > _METHOD_SHOWN:
            record.args = (
                client,
                shortened(str(method), _METHOD_SHOWN),
                shortened(str(path)),
                version,
                status,
            )
        scope = REQUEST_SCOPE.get()
        if (
            scope is None
            or scope.get(AUTHENTICATED)
            or not isinstance(status, int)
            or not 300 <= status < 500
        ):
            return True
        peer = scope.get("client")
        host = str(peer[0]) if peer else "?"
        said = self._groups.note(address_key(host), "unauthenticated 3xx/4xx answers")
        if said is None:
            return False
        record.client = host
        if said:
            # Only the message grows: uvicorn's own formatter reads the five arguments.
            record.msg = f"{record.msg}{said.replace('%', '%%')}"
        return True


class InvalidRequestLines(logging.Filter):
    """A filter for uvicorn's error logger: its :data:`GROUPED_WARNINGS` (a malformed request,
    an upgrade it does not serve) grouped per client address (:data:`PEER`) and kind, each
    line naming the address; uvicorn's hint to install a WebSocket library left out."""

    def __init__(self, period: float = LINES_EVERY) -> None:
        super().__init__()
        self._groups = LineGroups(period)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str) or record.args:
            return True
        if message.startswith(_NO_WEBSOCKETS):
            return False
        if message not in GROUPED_WARNINGS:
            return True
        host = PEER.get()
        said = self._groups.note(f"{address_key(host) if host else '?'} {message}")
        if said is None:
            return False
        if host:
            record.client = host
        record.msg = f"{message.rstrip('.')} from {host or 'an unknown address'}{said}"
        return True


def _attach_once(name: str, kind: type[logging.Filter]) -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def bound_access_lines() -> None:
    """Attach one :class:`AccessLines` to uvicorn's access logger and one
    :class:`InvalidRequestLines` to its error logger (once: idempotent)."""
    _attach_once("uvicorn.access", AccessLines)
    _attach_once("uvicorn.error", InvalidRequestLines)


def throttle_tracebacks(names: tuple[str, ...] = FLOODED) -> None:
    """Attach one :class:`TracebackThrottle` to each named logger (once: idempotent)."""
    for name in names:
        _attach_once(name, TracebackThrottle)


class LineGroups:
    """Which lines of a kind to write, per key (a client address and a reason): the first, then
    at most one every ``period`` seconds, which says how many were left out before it.

    A flood of refused requests from one address then costs a line every ``period``, not one
    per request. At most ``held`` keys are followed; past them, new keys share the group
    :data:`OTHERS` until old groups have nothing left to report.
    """

    def __init__(self, period: float = 60.0, held: int = GROUPS_HELD) -> None:
        self._period = period
        self._held = held
        # key -> [when its last line was written, lines left out since]
        self._groups: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> tuple[str, int] | None:
        """``(group, lines left out before this one)`` if this line is to be written, else None."""
        now = time.monotonic()
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                if len(self._groups) >= self._held:
                    self._forget(now)
                if len(self._groups) >= self._held:
                    key = OTHERS
                    group = self._groups.get(key)
            if group is None:
                self._groups[key] = [now, 0]
                return key, 0
            if now - group[0] < self._period:
                group[1] += 1
                return None
            left_out = int(group[1])
            group[0], group[1] = now, 0
            return key, left_out

    def note(self, key: str, what: str = "like it") -> str | None:
        """What a line of ``key`` admitted by :meth:`admit` adds to its message: ``""`` for the
        first, else how many (``what``) were left out before it; None if it is left out."""
        admitted = self.admit(key)
        if admitted is None:
            return None
        group, left_out = admitted
        if not left_out:
            return ""
        source = "this address" if group != OTHERS else "addresses not followed one by one"
        return f"; {left_out} more {what} from {source} since the last such line"

    def _forget(self, now: float) -> None:
        # Groups whose period is over with nothing left out: their next line is a first one.
        self._groups = {
            key: group
            for key, group in self._groups.items()
            if group[1] or now - group[0] < self._period
        }
