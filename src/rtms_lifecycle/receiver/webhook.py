"""The webhook route: ``POST /webhook``, verified (docs/receiver.md), recorded by an
:class:`~rtms_lifecycle.AsyncTracker`; :func:`create_router` to include in an existing FastAPI app.

Status codes (docs/receiver.md explains each choice): 200 for every delivery the store recorded,
a rejected one included (Zoom would only retry the same unusable bytes); 401 for a request that
fails verification (nothing stored); 413 beyond the body size limit; 503 when the store fails, so
that Zoom retries. No secret, signature or token is ever logged or answered.
"""

from __future__ import annotations

import time
from typing import Final

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

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
from rtms_lifecycle.parsing import parse_delivery
from rtms_lifecycle.receiver import metrics as _metrics
from rtms_lifecycle.receiver.answers import (
    DeliveryAnswer,
    ErrorAnswer,
    UrlValidationAnswer,
    delivery_answer,
)
from rtms_lifecycle.receiver.http import REQUEST_STARTED
from rtms_lifecycle.receiver.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PATH,
    DEFAULT_REQUEST_TIMEOUT,
    check_positive,
    log,
)
from rtms_lifecycle.records import IngestResult, Outcome
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.tracker import Tracker
from rtms_lifecycle.unhandled import FirstSeen, looks_like_rtms
from rtms_lifecycle.webhook import RefusalReason, WebhookVerifier, url_validation_response

__all__ = ["create_router"]

_URL_VALIDATION: Final = "endpoint.url_validation"


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse(ErrorAnswer(error=error, detail=detail).model_dump(), status_code=status)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # The server has already refused a malformed Content-Length; a large one is refused before
    # a byte of the body is read.
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # chunked, or a Content-Length that lied
            raise _TooLarge
    return bytes(body)


def _answer_url_validation(secret: str, body: bytes) -> UrlValidationAnswer:
    # Parsed again here rather than for every delivery: challenges are rare, deliveries are not.
    challenge = parse_delivery(body)
    assert isinstance(challenge, UrlValidation), "the tracker applied it as a url validation"
    return UrlValidationAnswer(**url_validation_response(secret, challenge.plain_token))


def _log_recorded(result: IngestResult, seconds: float) -> None:
    # One line per delivery; the fields let a JSON log be searched by stream and outcome.
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


def create_router(
    tracker: AsyncTracker | Tracker,
    verifier: WebhookVerifier,
    *,
    path: str = DEFAULT_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> APIRouter:
    """A router with ``POST {path}``: verify, answer url validation, record the delivery.

    Deliveries are recorded by an :class:`AsyncTracker` (a :class:`Tracker` is wrapped in one
    that shares it): the event loop never waits on the database, and the tracker's callbacks
    (``async def`` ones too) run on the event loop before the answer. A delivery the store
    cannot commit within ``store_timeout`` seconds is answered 503 (nothing kept; Zoom retries);
    a body that takes over ``request_timeout`` seconds to arrive, 408. Include the router in
    your own app with ``app.include_router(router)``.
    """
    if not path.startswith("/"):
        raise ConfigurationError(f"the webhook path must start with '/', got {path!r}")
    if max_body_bytes < 1:
        raise ConfigurationError("max_body_bytes must be at least 1")
    check_positive("store_timeout", store_timeout, MAX_WAIT_SECONDS)
    check_positive("request_timeout", request_timeout)
    # The tracker queues each delivery in the store's one write queue (SQLite): deliveries
    # that arrive together share a commit, each within its own budget from its arrival.
    recorder = tracker if isinstance(tracker, AsyncTracker) else AsyncTracker(tracker)
    unhandled = FirstSeen()
    router = APIRouter(tags=["webhook"])

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
            408: {"model": ErrorAnswer, "description": "The body came too slowly; nothing stored."},
            413: {"model": ErrorAnswer, "description": f"Body over {max_body_bytes} bytes."},
            503: {
                "model": ErrorAnswer,
                "description": "The store failed, or did not commit within its time budget; "
                "nothing stored, Zoom will retry.",
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The delivery exactly as Zoom sent it; verified over these bytes.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "parameters": [
                {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                for name in ("x-zm-signature", "x-zm-request-timestamp")
            ],
        },
    )
    async def receive(request: Request) -> Response:
        # The whole request, headers included, within request_timeout of its first byte.
        began = request.scope.get(REQUEST_STARTED, time.monotonic())
        try:
            with anyio.fail_after(max(0.0, began + request_timeout - time.monotonic())):
                body = await _read_body(request, max_body_bytes)
        except TimeoutError:
            log.info("a webhook sender's body took over %s s; answered 408", request_timeout)
            return _error(408, "body_timeout", f"the body took over {request_timeout} s")
        except _TooLarge:
            _metrics.REFUSALS.labels("body_too_large").inc()
            return _error(413, "body_too_large", f"request body exceeds {max_body_bytes} bytes")
        except ClientDisconnect:
            # Nobody is left to answer, and half a body is nothing to record.
            log.info("a webhook sender disconnected before its body was complete")
            return Response(status_code=400)
        try:
            verified = verifier.verify(request.headers, body)
        except WebhookRefused as refused:
            client = request.client.host if request.client else "?"
            _metrics.REFUSALS.labels(refused.reason).inc()
            if refused.reason == RefusalReason.TIMESTAMP_STALE:
                # Genuine but old: a replay, a skewed clock, or a retry Zoom did not sign again.
                log.warning(
                    "refused a validly signed webhook request from %s signed %.0f s ago, "
                    "beyond the %g s replay window (see --replay-window)",
                    client,
                    refused.age_seconds,
                    verifier.replay_window,
                    extra={"reason": str(refused.reason), "client": client},
                )
            else:
                log.warning(
                    "refused a webhook request from %s: %s",
                    client,
                    refused.reason,
                    extra={"reason": str(refused.reason), "client": client},
                )
            return _error(401, refused.reason, str(refused))
        started = time.perf_counter()
        try:
            result = await recorder.ingest(body, verified=verified, timeout=store_timeout)
        except StoreTimeout as exc:
            # A busy store, not a broken one: one line, no traceback.
            log.warning("store busy: answered 503 so that Zoom retries: %s", exc)
            return _error(
                503,
                "store_busy",
                f"the store did not commit within {store_timeout} s; nothing was kept, retry later",
            )
        except (StoreError, DatabaseUnavailable):
            took = time.perf_counter() - started
            _metrics.STORE_FAILURES.inc()
            _metrics.STORE_SECONDS.observe(took)
            log.exception(
                "could not record a webhook delivery; answering 503 so Zoom retries",
                extra={"outcome": "store_failed", "duration_ms": round(took * 1000, 3)},
            )
            return _error(
                503, "store_unavailable", "the delivery could not be recorded; retry later"
            )
        took = time.perf_counter() - started
        _metrics.STORE_SECONDS.observe(took)
        _metrics.DELIVERIES.labels(result.outcome.value, _metrics.scope_label(result.event)).inc()
        if result.outcome is Outcome.UNHANDLED and looks_like_rtms(result.event or ""):
            _metrics.UNHANDLED_RTMS.inc()
        _metrics.count_stop(result)
        _log_recorded(result, took)
        if result.event == _URL_VALIDATION and result.outcome is Outcome.APPLIED:
            return JSONResponse(_answer_url_validation(verified.secret, body).model_dump())
        if result.outcome is Outcome.UNHANDLED and result.event and unhandled.first(result.event):
            log.warning(
                "first delivery of an event this version does not handle: %r%s; stored as "
                "unhandled (rtms-lifecycle stats --unhandled lists them)",
                result.event,
                " (it looks like an RTMS event)" if looks_like_rtms(result.event) else "",
            )
        return Response(
            delivery_answer(result.outcome, result.delivery_id, result.error),
            media_type="application/json",
        )

    return router
