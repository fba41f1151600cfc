"""The webhook route: ``POST /webhook``, verified (docs/receiver.md), recorded by an
:class:`~rtms_lifecycle.AsyncTracker`; :func:`create_router` to include in an existing FastAPI app.

Status codes (docs/receiver.md explains each choice): 200 for every delivery the store recorded,
a rejected one included (Zoom would only retry the same unusable bytes); 401 for a request that
fails verification (nothing stored); 413 beyond the body size limit; 408 for a body slower than
the request timeout (a WARNING line, grouped per client address and reason, instead of an access
line); 503 when the store fails, so that Zoom retries. No secret, signature or token is ever
logged or answered.

The route is served by :class:`WebhookHandler`, a plain ASGI app: ``create_app`` puts it in front
of FastAPI's routing (:class:`WebhookFront`), so that a delivery crosses no framework layer; the
FastAPI route :func:`create_router` declares (the OpenAPI schema's entry, and the route of an
embedding app) hands its requests to the same handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from rtms_lifecycle.async_tracker import AsyncTracker
from rtms_lifecycle.bounds import MAX_WAIT_SECONDS
from rtms_lifecycle.events import UrlValidation
from rtms_lifecycle.exceptions import (
    ConfigurationError,
    DatabaseUnavailable,
    StoreError,
    StoreTimeout,
    WebhookRefused,
)

# From parsing, not events: the receiver builds the delivery models as it starts, not while it
# answers Zoom's first delivery.
from rtms_lifecycle.parsing import named_in, parse_delivery
from rtms_lifecycle.receiver import metrics as _metrics
from rtms_lifecycle.receiver.answers import (
    DeliveryAnswer,
    ErrorAnswer,
    UrlValidationAnswer,
    delivery_answer,
)
from rtms_lifecycle.receiver.http import REQUEST_STARTED
from rtms_lifecycle.receiver.logthrottle import ACCESS_LINE_SKIPPED, LineGroups
from rtms_lifecycle.receiver.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PATH,
    DEFAULT_REQUEST_TIMEOUT,
    check_positive,
    log,
)
from rtms_lifecycle.receiver.throttle import address_key
from rtms_lifecycle.records import IngestResult, Outcome
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.tracker import Tracker
from rtms_lifecycle.unhandled import FirstSeen, looks_like_rtms
from rtms_lifecycle.webhook import (
    SECRET_ENV,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RefusalReason,
    WebhookVerifier,
    url_validation_response,
)

__all__ = ["WebhookFront", "WebhookHandler", "check_path", "create_router", "json_bytes"]

_URL_VALIDATION: Final = "endpoint.url_validation"
_CONTENT_LENGTH: Final = b"content-length"
_SIGNATURE: Final = SIGNATURE_HEADER.encode()
_TIMESTAMP: Final = TIMESTAMP_HEADER.encode()
_JSON_TYPE: Final = (b"content-type", b"application/json")
# A body refused unread (too slow, too large): the connection closes with the answer. Kept
# open, uvicorn went on reading the trickle until its keep-alive timeout (408 at 5 s, closed at
# 10 s).
_CLOSING: Final = frozenset({408, 413})
_CLOSE: Final = (b"connection", b"close")
# Answers a WARNING line (grouped) stands for: uvicorn's access line is left out for them.
_REFUSED: Final = frozenset({401, 408, 413})
#: Seconds between two refusal lines of one client address and reason (the first is at once).
REFUSAL_LINES_EVERY: Final = 60.0
# What a refusal's line adds to its reason code: the usual cause, and what to do.
_HINTS: Final[dict[str, str]] = {
    RefusalReason.SIGNATURE_INVALID: (
        " (no configured secret signed it: if Zoom's deliveries are all refused, its Secret "
        f"Token was likely regenerated in the Marketplace but not here; give both, "
        f'{SECRET_ENV}="new=NEW,old=OLD", and restart)'
    ),
}


def json_bytes(content: object) -> bytes:
    """``content`` as Starlette's ``JSONResponse`` renders it: compact JSON, UTF-8."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _error(error: str, detail: str) -> bytes:
    return json_bytes(ErrorAnswer(error=error, detail=detail).model_dump())


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    # The server has already refused a malformed Content-Length; a large one is refused before
    # a byte of the body is read.
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body: bytes = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body += message.get("body", b"")
        if len(body) > limit:  # chunked, or a Content-Length that lied
            raise _TooLarge
        if not message.get("more_body", False):
            return body


def _client(scope: Scope) -> str:
    peer = scope.get("client")
    return str(peer[0]) if peer else "?"


def check_path(path: str) -> None:
    """Refuse a webhook path that does not start with ``/``."""
    if not path.startswith("/"):
        raise ConfigurationError(f"the webhook path must start with '/', got {path!r}")


def _answer_url_validation(secret: str, body: bytes) -> bytes:
    # Parsed again here rather than for every delivery: challenges are rare, deliveries are not.
    challenge = parse_delivery(body)
    assert isinstance(challenge, UrlValidation), "the tracker applied it as a url validation"
    answer = UrlValidationAnswer(**url_validation_response(secret, challenge.plain_token))
    return json_bytes(answer.model_dump())


def _log_recorded(result: IngestResult, seconds: float) -> None:
    # One line per delivery; the fields let a JSON log be searched by stream and outcome. Its
    # fields are not even gathered when the level is off.
    if not log.isEnabledFor(logging.INFO):
        return
    reason = result.error or result.detail
    error = f": {reason}" if reason else ""
    log.info(
        "recorded delivery %s (%s, stream %s): %s%s",
        result.delivery_id,
        result.event or "?",
        result.stream_id or "-",
        result.outcome.value,
        error,
        extra={
            "event": result.event,
            "stream_id": result.stream_id,
            "delivery_id": result.delivery_id,
            "outcome": result.outcome.value,
            "reason": reason,
            "duration_ms": round(seconds * 1000, 3),
        },
    )


class WebhookHandler:
    """The webhook route as an ASGI app: verify, answer url validation, record the delivery.

    Deliveries are recorded by an :class:`AsyncTracker` (a :class:`Tracker` is wrapped in one
    that shares it): the event loop never waits on the database, and the tracker's callbacks
    (``async def`` ones too) run on the event loop before the answer. A delivery the store
    cannot commit within ``store_timeout`` seconds is answered 503 (nothing kept; Zoom retries);
    a body that takes over ``request_timeout`` seconds to arrive, 408. Every request it is given
    is taken for a ``POST`` of a delivery: routing is the caller's.
    """

    def __init__(
        self,
        tracker: AsyncTracker | Tracker,
        verifier: WebhookVerifier,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        store_timeout: float = DEFAULT_STORE_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be at least 1")
        check_positive("store_timeout", store_timeout, MAX_WAIT_SECONDS)
        check_positive("request_timeout", request_timeout)
        # The tracker queues each delivery in the store's one write queue (SQLite): deliveries
        # that arrive together share a commit, each within its own budget from its arrival.
        self._recorder = tracker if isinstance(tracker, AsyncTracker) else AsyncTracker(tracker)
        self._verifier = verifier
        self._unhandled = FirstSeen()
        self._refusal_lines = LineGroups(REFUSAL_LINES_EVERY)
        self.max_body_bytes = max_body_bytes
        self._store_timeout = store_timeout
        self._request_timeout = request_timeout
        # The answers that do not depend on the request, rendered once.
        self._too_large = _error(
            RefusalReason.BODY_TOO_LARGE, f"request body exceeds {max_body_bytes} bytes"
        )
        self._too_slow = _error(
            RefusalReason.BODY_TIMEOUT, f"the body took over {request_timeout} s"
        )
        self._busy = _error(
            "store_busy",
            f"the store did not commit within {store_timeout} s; nothing was kept, retry later",
        )
        self._unavailable = _error(
            "store_unavailable", "the delivery could not be recorded; retry later"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = await self._answer(scope, receive)
        # The headers Starlette's Response gives: a length, and a type when there is a body.
        length = (_CONTENT_LENGTH, b"%d" % len(body))
        headers = [length, _JSON_TYPE] if body else [length]
        if status in _CLOSING:
            headers.append(_CLOSE)
        skipped = ACCESS_LINE_SKIPPED.set(status in _REFUSED)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
        finally:
            ACCESS_LINE_SKIPPED.reset(skipped)
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        declared: bytes | None = None
        wanted: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                declared = value if declared is None else declared
            elif name in (_SIGNATURE, _TIMESTAMP):
                wanted.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        # The whole request, headers included, within request_timeout of its first byte.
        began = scope.get(REQUEST_STARTED, time.monotonic())
        try:
            # asyncio's own timeout: a third of anyio's cost per request, on the event loop
            # AsyncTracker requires anyway.
            async with asyncio.timeout(max(0.0, began + self._request_timeout - time.monotonic())):
                body = await _read_body(receive, declared, self.max_body_bytes)
        except TimeoutError:
            self._log_refused(WebhookRefused(RefusalReason.BODY_TIMEOUT), scope)
            return 408, self._too_slow
        except _TooLarge:
            self._log_refused(WebhookRefused(RefusalReason.BODY_TOO_LARGE), scope)
            return 413, self._too_large
        except _Disconnected:
            # Nobody is left to answer, and half a body is nothing to record. Anyone can do
            # it at will: grouped per address as refusals are.
            said = self._refusal_lines.note(f"{address_key(_client(scope))} disconnected")
            if said is not None:
                log.info(
                    "a webhook sender (%s) disconnected before its body was complete%s",
                    _client(scope),
                    said,
                )
            return 400, b""
        try:
            verified = self._verifier.verify(wanted, body)
        except WebhookRefused as refused:
            self._log_refused(refused, scope)
            return 401, _error(refused.reason, str(refused))
        started = time.perf_counter()
        try:
            result = await self._recorder.ingest(
                body, verified=verified, timeout=self._store_timeout
            )
        except StoreTimeout as exc:
            # A busy store, not a broken one: one line, no traceback.
            log.warning("store busy: answered 503 so that Zoom retries: %s", exc)
            return 503, self._busy
        except (StoreError, DatabaseUnavailable):
            took = time.perf_counter() - started
            _metrics.STORE_FAILURES.inc()
            _metrics.STORE_SECONDS.observe(took)
            # Named, so that the on-call can list the streams whose events wait for a retry.
            event, stream_id = named_in(body)
            log.exception(
                "could not record a webhook delivery (%s, stream %s); answering 503 so Zoom "
                "retries",
                event or "?",
                stream_id or "-",
                extra={
                    "event": event,
                    "stream_id": stream_id,
                    "outcome": "store_failed",
                    "duration_ms": round(took * 1000, 3),
                },
            )
            return 503, self._unavailable
        took = time.perf_counter() - started
        _metrics.STORE_SECONDS.observe(took)
        _metrics.count_delivery(result)
        if result.outcome is Outcome.UNHANDLED and looks_like_rtms(result.event or ""):
            _metrics.UNHANDLED_RTMS.inc()
        _metrics.count_stop(result)
        _log_recorded(result, took)
        if result.event == _URL_VALIDATION and result.outcome is Outcome.APPLIED:
            return 200, _answer_url_validation(verified.secret, body)
        if (
            result.outcome is Outcome.UNHANDLED
            and result.event
            and self._unhandled.first(result.event)
        ):
            log.warning(
                "first delivery of an event this version does not handle: %r%s; stored as "
                "unhandled (rtms-lifecycle stats --unhandled lists them)",
                result.event,
                " (it looks like an RTMS event)" if looks_like_rtms(result.event) else "",
            )
        return 200, delivery_answer(result.outcome, result.delivery_id, result.error)

    def _log_refused(self, refused: WebhookRefused, scope: Scope) -> None:
        # Every refusal (401, 408, 413) is counted; logged at WARNING, grouped per client
        # address and reason (a flood from one address is a line a minute, not one a request).
        _metrics.REFUSALS.labels(refused.reason).inc()
        client = _client(scope)
        said = self._refusal_lines.note(f"{address_key(client)} {refused.reason}")
        if said is None:
            return
        extra = {"reason": str(refused.reason), "client": client}
        age = refused.age_seconds
        if refused.reason == RefusalReason.TIMESTAMP_STALE and age is not None:
            # Genuine but old: a clock ahead here, a replay, or a retry Zoom did not sign again.
            log.warning(
                "refused a validly signed webhook request from %s signed %.0f s ago, "
                "beyond the %g s replay window: check this host's clock (NTP) before widening "
                "--replay-window%s",
                client,
                age,
                self._verifier.replay_window,
                said,
                extra=extra,
            )
        elif refused.reason == RefusalReason.TIMESTAMP_FUTURE and age is not None:
            log.warning(
                "refused a validly signed webhook request from %s signed %.0f s in the future, "
                "beyond the %g s replay window: this host's clock is likely behind (check "
                "NTP)%s",
                client,
                -age,
                self._verifier.replay_window,
                said,
                extra=extra,
            )
        else:
            log.warning(
                "refused a webhook request from %s: %s%s%s",
                client,
                refused.reason,
                _HINTS.get(refused.reason, ""),
                said,
                extra=extra,
            )

    def router(self, path: str = DEFAULT_PATH) -> APIRouter:
        """A router declaring ``POST {path}`` (its OpenAPI entry), whose requests this handler
        answers."""
        check_path(path)
        router = APIRouter(tags=["webhook"])
        handler = self

        @router.post(
            path,
            response_model=None,
            summary="Receive a Zoom RTMS webhook delivery",
            responses={
                200: {
                    "model": DeliveryAnswer | UrlValidationAnswer,
                    "description": "Recorded (a rejected body too: see `outcome` and `error`), "
                    "or the answer to Zoom's url validation challenge.",
                },
                401: {"model": ErrorAnswer, "description": "Verification failed; nothing stored."},
                408: {
                    "model": ErrorAnswer,
                    "description": "The body came too slowly; nothing stored.",
                },
                413: {
                    "model": ErrorAnswer,
                    "description": f"Body over {self.max_body_bytes} bytes.",
                },
                503: {
                    "model": ErrorAnswer,
                    "description": "The store failed, or did not commit within its time budget; "
                    "nothing stored, Zoom will retry.",
                },
            },
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "description": "The delivery exactly as Zoom sent it; verified over these "
                    "bytes.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "parameters": [
                    {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                    for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER)
                ],
            },
        )
        async def receive(request: Request) -> Response:
            return _Handled(handler)

        return router


class _Handled(Response):
    """The answer of an ASGI app: FastAPI passes it the request's receive and send, unread."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class WebhookFront:
    """ASGI middleware: ``POST {path}`` straight to ``handler``, every other request to ``app``.

    A delivery then skips FastAPI's routing, request and response objects (about a third of the
    event loop's time under load); the route FastAPI declares answers through the same handler.
    """

    def __init__(self, app: ASGIApp, *, path: str, handler: ASGIApp) -> None:
        self._app = app
        self._path = path
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Behind a root path, FastAPI's route matching applies (it answers with the same handler).
        if (
            scope["type"] == "http"
            and scope["path"] == self._path
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self._handler(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def create_router(
    tracker: AsyncTracker | Tracker,
    verifier: WebhookVerifier,
    *,
    path: str = DEFAULT_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> APIRouter:
    """A router with ``POST {path}``, answered by a :class:`WebhookHandler` (see it for the
    arguments). Include it in your own app with ``app.include_router(router)``."""
    check_path(path)
    handler = WebhookHandler(
        tracker,
        verifier,
        max_body_bytes=max_body_bytes,
        store_timeout=store_timeout,
        request_timeout=request_timeout,
    )
    return handler.router(path)
