"""The webhook receiver as a FastAPI app (extra ``server``), and routers to embed in your own.

- :func:`create_router`: ``POST /webhook``, verified (docs/receiver.md), recorded by an
  :class:`~rtms_lifecycle.AsyncTracker`. Include it in an existing FastAPI app.
- :func:`create_read_router`: the bearer-token read API (``/streams``, ``/stats/stop-reasons``).
- :func:`create_app`: a ready app with both, plus ``GET /healthz`` and, with the read API, the
  ``/dashboard`` pages (:mod:`rtms_lifecycle.receiver.dashboard`); :func:`run` serves it.

Status codes (docs/receiver.md explains each choice): 200 for every delivery the store recorded,
a rejected one included (Zoom would only retry the same unusable bytes); 401 for a request that
fails verification (nothing stored); 413 beyond the body size limit; 503 when the store fails, so
that Zoom retries. No secret, signature or token is ever logged or answered.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import logging.config
import math
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self, get_type_hints

try:
    import anyio
    import uvicorn
    from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import JSONResponse, Response
    from fastapi.routing import APIRoute
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from fastapi_offline import FastAPIOffline
    from starlette.requests import ClientDisconnect

    from rtms_lifecycle.receiver import metrics as _metrics
    from rtms_lifecycle.receiver.dashboard import create_dashboard_router
    from rtms_lifecycle.receiver.dashboard.auth import DEFAULT_IDLE_SECONDS
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"rtms_lifecycle.server needs FastAPI and uvicorn ({exc.name} is missing): "
        "install the 'server' extra, e.g. pip install 'rtms-lifecycle[server]'"
    ) from exc

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from rtms_lifecycle.async_tracker import AsyncTracker
from rtms_lifecycle.bounds import MAX_COUNT, MAX_EPOCH_MS, MAX_WAIT_SECONDS, MIN_EPOCH_MS
from rtms_lifecycle.defaults import DEFAULT_MAX_EVENT_AHEAD
from rtms_lifecycle.events import Scope, UrlValidation
from rtms_lifecycle.exceptions import (
    ConfigurationError,
    DatabaseUnavailable,
    StoreError,
    StoreTimeout,
    WebhookRefused,
)
from rtms_lifecycle.machine import ACTIVE_STATES, State

# From _parsing, not events: the receiver builds the delivery models as it starts, not while it
# answers Zoom's first delivery.
from rtms_lifecycle.parsing import parse_delivery
from rtms_lifecycle.receiver.bearer import SeveralAuthorizations, bearer_token
from rtms_lifecycle.receiver.http import REQUEST_STARTED, bounded_protocol
from rtms_lifecycle.receiver.logs import LogFormat, log_config
from rtms_lifecycle.receiver.logthrottle import throttle_tracebacks
from rtms_lifecycle.records import IngestResult, Outcome, StopReasonStat, Stream, Transition
from rtms_lifecycle.store import urls as _dburl
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.tracker import Tracker
from rtms_lifecycle.unhandled import FirstSeen, looks_like_rtms
from rtms_lifecycle.webhook import (
    DEFAULT_REPLAY_WINDOW,
    RefusalReason,
    WebhookVerifier,
    labelled_secrets_from_env,
    url_validation_response,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "API_TOKEN_ENV",
    "DB_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PATH",
    "DEFAULT_STORE_TIMEOUT",
    "DeliveryAnswer",
    "DetailAnswer",
    "ErrorAnswer",
    "HealthAnswer",
    "StopReasonStatModel",
    "StoredState",
    "StreamDetail",
    "StreamModel",
    "TransitionModel",
    "UrlValidationAnswer",
    "create_app",
    "create_read_router",
    "create_router",
    "run",
]

# The name it has always logged under: operators filter on it.
log = logging.getLogger("rtms_lifecycle.server")

API_TOKEN_ENV: Final = "RTMS_LIFECYCLE_API_TOKEN"
DB_ENV: Final = _dburl.DB_ENV
DEFAULT_PATH: Final = "/webhook"
# Zoom's RTMS deliveries are well under 4 KiB; 64 KiB leaves room for unknown fields while
# capping what an unauthenticated sender makes us buffer before the signature is checked.
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
_URL_VALIDATION: Final = "endpoint.url_validation"
#: Idle seconds after a response before a kept-alive connection is closed.
DEFAULT_KEEP_ALIVE_TIMEOUT: Final = 5
#: Seconds a request has to arrive whole (headers and body): Zoom's take milliseconds.
DEFAULT_REQUEST_TIMEOUT: Final = 5.0
# Connections the kernel queues before the server accepts them, at most. Zoom waits 3 s for an
# answer: a long queue only makes senders wait for answers they will no longer take.
_MAX_BACKLOG: Final = 256
# Open connections at most, by default: below the process's file descriptor limit, which must
# leave room for the database, the log and the worker threads' files.
_MAX_CONNECTIONS: Final = 1000
_RESERVED_FDS: Final = 64


# --- answers (their models make the OpenAPI schema complete) ------------------------------------


class DeliveryAnswer(BaseModel):
    """What became of a verified delivery; ``error`` says why when it was rejected."""

    outcome: Outcome
    delivery_id: int | None
    error: str | None = None


class UrlValidationAnswer(BaseModel):
    """The answer to Zoom's ``endpoint.url_validation`` challenge."""

    plainToken: str  # noqa: N815 - Zoom's own field names
    encryptedToken: str  # noqa: N815


class ErrorAnswer(BaseModel):
    """Why a webhook request was not recorded: a machine-readable code and a sentence."""

    error: str = Field(examples=["signature_invalid"])
    detail: str


class HealthAnswer(BaseModel):
    """Whether the store can record a delivery now; ``reason`` says why not."""

    status: Literal["ok", "unavailable"]
    reason: str | None = None


class _RecordModel(BaseModel):
    """An API view of a record dataclass: its fields are the record's, read from its attributes."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, record: object) -> Self:
        """The API view of a stored record."""
        return cls.model_validate(record)


def _record_model(
    name: str,
    record: type,
    doc: str,
    *,
    without: Collection[str] = (),
    computed: Mapping[str, Collection[str]] = {},
    forbid_extra: bool = False,
) -> type[_RecordModel]:
    """A model with the fields of the ``record`` dataclass, in its order, every one required.

    ``computed``: properties of the record that the API shows too, after the field they follow.
    """
    hints = get_type_hints(record)
    fields: dict[str, Any] = {}
    for each in dataclasses.fields(record):
        if each.name not in without:
            fields[each.name] = (hints[each.name], ...)
        for prop in computed.get(each.name, ()):
            fields[prop] = (get_type_hints(getattr(record, prop).fget)["return"], ...)
    return create_model(
        name,
        __base__=_RecordModel,
        __doc__=doc,
        __module__=__name__,
        __cls_kwargs__={"extra": "forbid"} if forbid_extra else None,
        **fields,
    )


StreamModel = _record_model(
    "StreamModel",
    Stream,
    "A stream, with exactly the keys of ``rtms-lifecycle streams --json`` (times: epoch ms).",
    without=("stop_source",),
    computed={"stop_reason": ("stop_reason_name", "stop_reason_category")},
    forbid_extra=True,
)
TransitionModel = _record_model(
    "TransitionModel", Transition, "One row of a stream's audit history."
)
StopReasonStatModel = _record_model(
    "StopReasonStatModel",
    StopReasonStat,
    "Streams stopped for one reason (in one scope, when grouped; else ``scope`` is null).",
)


class StreamDetail(BaseModel):
    """A stream and its transitions in event-time order."""

    stream: StreamModel  # type: ignore[valid-type]
    history: list[TransitionModel]  # type: ignore[valid-type]


class DetailAnswer(BaseModel):
    """A read API error, in FastAPI's usual shape."""

    detail: str


# --- the webhook --------------------------------------------------------------------------------


def _positive(name: str, value: float, at_most: float = math.inf) -> None:
    if not 0 < value <= at_most:
        limit = f" (at most {at_most:,.0f})" if at_most < math.inf else ""
        raise ConfigurationError(
            f"{name} must be a positive number of seconds{limit}, got {value!r}"
        )


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
    _positive("store_timeout", store_timeout, MAX_WAIT_SECONDS)
    _positive("request_timeout", request_timeout)
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
        delivery = DeliveryAnswer(
            outcome=result.outcome, delivery_id=result.delivery_id, error=result.error
        )
        return JSONResponse(delivery.model_dump(mode="json"))

    return router


# --- the read API -------------------------------------------------------------------------------


def _epoch_ms(value: int | datetime | None) -> int | datetime | None:
    # A naive datetime is read as UTC: the server's local zone means nothing to an API client.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _whole_ms(value: Any) -> Any:
    # pydantic reads a number given for a datetime as epoch *seconds*: since=1999.5 meant
    # 1,999,500 ms while since=1999 means 1,999 ms. A number here is whole epoch milliseconds.
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # not a number: a date and time, or a 422 of its own
        if math.isfinite(number) and not number.is_integer():
            raise ValueError("epoch milliseconds must be a whole number")
    return value


def _no_nul(value: str | None) -> str | None:
    # No stored id holds NUL (a delivery with one is rejected, or cleaned of it), and PostgreSQL
    # cannot compare text with one: the query failed, and the client got a 503.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


_TIME_DOC: Final = "epoch milliseconds, or ISO 8601 (naive means UTC)"
#: The states a stored stream can be in: ``new`` is only the state before its first event, so a
#: filter on it could only ever find nothing; the API refuses it, as the command line does.
StoredState = Literal["started", "interrupted", "resumed", "stopped"]
# Out of range is a 422 like any bad value, not an overflow deep in the database driver.
_EpochMs = Annotated[int, Field(ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)]
_Text = Annotated[str, AfterValidator(_no_nul)]
_TimeQuery = Annotated[
    _EpochMs | datetime | None, BeforeValidator(_whole_ms), Query(description=_TIME_DOC)
]


_BEARER: Final = HTTPBearer(auto_error=False, description=f"The token set in {API_TOKEN_ENV}.")


class _RequireToken:
    """The read API's guard: the bearer token, compared in constant time."""

    def __init__(self, api_token: str) -> None:
        self._expected = api_token.encode("utf-8")

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        # ``credentials`` declares the scheme in the OpenAPI document; the header is read by
        # the rule the dashboard uses too.
        try:
            token = bearer_token(request)
        except SeveralAuthorizations:
            # Only the first was read: the same two headers in the other order were a 401.
            raise HTTPException(
                400,
                "more than one Authorization header: send the bearer token once",
                headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
            ) from None
        given = (token or "").encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, self._expected):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )


class _StoreFailuresAre503(APIRoute):
    """A read route whose store fails answers 503, as the webhook does, rather than 500."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except (StoreError, DatabaseUnavailable):
                log.exception("the read API could not read the store; answered 503")
                return JSONResponse(
                    DetailAnswer(detail="the store is unavailable; retry later").model_dump(),
                    status_code=503,
                )
            return response

        return guarded


def create_read_router(tracker: Tracker, api_token: str) -> APIRouter:
    """The read API, every route requiring ``Authorization: Bearer <api_token>``."""
    if not api_token:
        raise ConfigurationError("the read API needs a non-empty bearer token")
    router = APIRouter(
        tags=["read"],
        dependencies=[Depends(_RequireToken(api_token))],
        responses={
            401: {"model": DetailAnswer, "description": "Missing or wrong bearer token."},
            503: {"model": DetailAnswer, "description": "The store is unavailable."},
        },
        route_class=_StoreFailuresAre503,
    )

    @router.get(
        "/streams",
        summary="List streams, newest activity first",
        response_model=list[StreamModel],  # type: ignore[valid-type]
    )
    def list_streams(
        state: Annotated[list[StoredState] | None, Query(description="Repeatable.")] = None,
        scope: Scope | None = None,
        active: Annotated[bool, Query(description="Only started or resumed.")] = False,
        limit: Annotated[int | None, Query(ge=1, le=MAX_COUNT)] = None,
        account_id: Annotated[_Text | None, Query(description="One Zoom account.")] = None,
    ) -> list[_RecordModel]:
        states: set[State] | None = {State(s) for s in state} if state else None
        if active:
            states = set(ACTIVE_STATES) & states if states is not None else set(ACTIVE_STATES)
            if not states:
                return []  # the tracker reads an empty filter as "every state"
        found = tracker.streams(states, scope=scope, limit=limit, account_id=account_id)
        return [StreamModel.of(stream) for stream in found]

    @router.get(
        "/streams/{stream_id:path}",
        summary="One stream and its history",
        responses={404: {"model": DetailAnswer, "description": "No such stream."}},
    )
    def get_stream(stream_id: _Text) -> StreamDetail:
        stream = tracker.stream(stream_id)
        if stream is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        history = [TransitionModel.of(t) for t in tracker.history(stream_id)]
        return StreamDetail(stream=StreamModel.of(stream), history=history)

    @router.get(
        "/stats/stop-reasons",
        summary="Why streams stopped in a time window",
        response_model=list[StopReasonStatModel],  # type: ignore[valid-type]
    )
    def stop_reasons(
        since: _TimeQuery = None,
        until: _TimeQuery = None,
        by_scope: bool = False,
        account_id: Annotated[_Text | None, Query(description="One Zoom account.")] = None,
    ) -> list[_RecordModel]:
        stats = tracker.stop_reason_stats(
            _epoch_ms(since), _epoch_ms(until), by_scope, account_id=account_id
        )
        return [StopReasonStatModel.of(stat) for stat in stats]

    return router


# --- the ready app ------------------------------------------------------------------------------


def _api_token(api_token: str | None) -> str | None:
    token = (api_token if api_token is not None else os.environ.get(API_TOKEN_ENV, "")).strip()
    return token or None


def create_app(
    db: str | Engine | Tracker | None = None,
    *,
    secrets: Sequence[str] | Mapping[str, str] | None = None,
    path: str = DEFAULT_PATH,
    api_token: str | None = None,
    replay_window: float = DEFAULT_REPLAY_WINDOW,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    metrics: bool = True,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_event_ahead: float = DEFAULT_MAX_EVENT_AHEAD,
    dashboard_idle: float = DEFAULT_IDLE_SECONDS,
) -> FastAPI:
    """The receiver: ``POST {path}``, ``GET /healthz``, ``GET /metrics`` and, with a token, the
    read API.

    ``db``: a URL, an engine or a ready :class:`Tracker` (which the caller then closes); by
    default ``RTMS_LIFECYCLE_DB``, else the tracker's default. ``secrets``: by label (a
    mapping), or a list; by default ``ZOOM_WEBHOOK_SECRET_TOKEN`` (entries ``label=token`` or
    ``token``); without any the app refuses to start
    (:class:`ConfigurationError`). ``api_token``: by default ``RTMS_LIFECYCLE_API_TOKEN``; the
    read API exists only when one is set, and then guards ``/metrics`` too. ``metrics``:
    whether to serve ``/metrics`` (Prometheus' text format; docs/operations.md).
    ``store_timeout``: seconds a delivery may take to commit before it is answered 503 (Zoom
    waits 3 s); ``/healthz`` uses the same budget. ``max_event_ahead``: seconds a delivery's
    ``event_ts`` may be ahead of this clock before it is rejected (a given Tracker keeps its own).
    ``dashboard_idle``: seconds an unused dashboard session lasts.
    """
    # Verify the configuration before touching a database: a misconfigured receiver should
    # fail without creating anything.
    verifier = WebhookVerifier(
        labelled_secrets_from_env() if secrets is None else secrets, replay_window=replay_window
    )
    token = _api_token(api_token)
    _positive("store_timeout", store_timeout, MAX_WAIT_SECONDS)
    # An outage fails every request alike: one traceback a minute per kind is enough.
    throttle_tracebacks()
    registry = _metrics.new_registry() if metrics else None
    owned = not isinstance(db, Tracker)
    tracker = (
        db
        if isinstance(db, Tracker)
        else Tracker(db or os.environ.get(DB_ENV) or None, max_event_ahead=max_event_ahead)
    )
    if registry is not None:
        _metrics.add_store_gauges(registry, tracker)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "receiver ready: database %s, %d webhook secret(s), webhook path %s, "
            "read API %s, metrics %s",
            tracker.engine.url.render_as_string(hide_password=True),
            len(verifier.labels),
            path,
            "on" if token is not None else "off (no API token)",
            "off" if registry is None else "on" + (" (token required)" if token else ""),
        )
        yield
        if owned:
            tracker.close()

    # Swagger UI and ReDoc from the package: /docs works on a machine without internet.
    app = FastAPIOffline(
        title="rtms-lifecycle receiver",
        summary="Records Zoom RTMS webhooks into a queryable stream lifecycle.",
        lifespan=lifespan,
    )
    app.state.tracker = tracker
    app.include_router(
        create_router(
            tracker,
            verifier,
            path=path,
            max_body_bytes=max_body_bytes,
            store_timeout=store_timeout,
            request_timeout=request_timeout,
        )
    )
    if token is not None:
        app.include_router(create_read_router(tracker, token))
        app.include_router(
            create_dashboard_router(
                tracker, token, request_timeout=request_timeout, idle_seconds=dashboard_idle
            )
        )
    health = _Health(tracker, store_timeout)

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Whether the store can record a delivery now",
        response_model=HealthAnswer,
        response_model_exclude_none=True,
        responses={503: {"model": HealthAnswer, "description": "It cannot; `reason` says why."}},
    )
    async def healthz() -> HealthAnswer | JSONResponse:
        reason = await health.problem()
        if reason is None:
            return HealthAnswer(status="ok")
        answer = HealthAnswer(status="unavailable", reason=reason)
        return JSONResponse(answer.model_dump(), status_code=503)

    # Load balancers often probe with HEAD: the same check, the status alone.
    app.add_api_route(
        "/healthz",
        healthz,
        methods=["HEAD"],
        include_in_schema=False,
        response_model=HealthAnswer,
        response_model_exclude_none=True,
    )
    if registry is not None:
        guard = [Depends(_RequireToken(token))] if token is not None else []

        @app.get(
            "/metrics",
            tags=["health"],
            summary="Prometheus metrics (text format)",
            dependencies=guard,
            response_class=Response,
            responses={200: {"content": {_metrics.CONTENT_TYPE: {}}}},
        )
        def metrics_page() -> Response:
            return Response(_metrics.exposition(registry), media_type=_metrics.CONTENT_TYPE)

    return app


class _Health:
    """The health check: can the store begin a write and write a row within the budget?

    It runs in a thread of its own, never behind the webhook's or the read API's threads; a probe
    stuck in the database (a server that stopped answering) is abandoned at the budget, and later
    checks report it until it returns.
    """

    def __init__(self, tracker: Tracker, timeout: float) -> None:
        self._tracker = tracker
        self._timeout = timeout
        self._limiter: anyio.CapacityLimiter | None = None
        self._failed: str | None = None

    def _probe(self) -> str | None:
        try:
            self._tracker.check_writable(self._timeout)
        except StoreTimeout as exc:
            return f"store busy: {exc}"
        except (StoreError, DatabaseUnavailable) as exc:
            return " ".join(str(exc).split("\n", 1)[0].split())
        return None

    async def problem(self) -> str | None:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        with anyio.move_on_after(self._timeout + 0.25):
            reason = await anyio.to_thread.run_sync(
                self._probe, limiter=self._limiter, abandon_on_cancel=True
            )
            if reason is not None and reason != self._failed:
                log.warning("health check: the store cannot record deliveries: %s", reason)
            self._failed = reason
            return reason
        return f"store busy: no answer within {self._timeout} s"


def _check_listenable(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on (a port in use, a host
    that is not this machine's) before the app opens the database and says it is ready."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    except UnicodeError as exc:  # a name IDNA cannot encode: a label over 63 characters, ...
        raise ConfigurationError(f"cannot listen on {host!r}: not a host name ({exc})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: SO_REUSEADDR, so a port left in TIME_WAIT is not taken for in use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc


def default_limits() -> tuple[int, int]:
    """``(limit_concurrency, backlog)`` that fit the process's file descriptor limit.

    At most 1000 connections and a backlog of 256. The server accepts up to ``backlog``
    connections at a time before it can close those over the limit, so both must fit in the
    descriptors left once the database, the log and the threads have theirs.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAX_CONNECTIONS, _MAX_BACKLOG
    backlog = max(8, min(_MAX_BACKLOG, soft // 8))
    return max(1, min(_MAX_CONNECTIONS, soft - _RESERVED_FDS - backlog)), backlog


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = DEFAULT_PATH,
    db: str | None = None,
    *,
    log_level: str = "info",
    log_format: LogFormat = "text",
    metrics: bool = True,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    limit_concurrency: int | None = None,
    backlog: int | None = None,
    replay_window: float = DEFAULT_REPLAY_WINDOW,
    max_event_ahead: float = DEFAULT_MAX_EVENT_AHEAD,
    dashboard_idle: float = DEFAULT_IDLE_SECONDS,
) -> None:
    """Serve :func:`create_app` with uvicorn (``rtms-lifecycle serve``) until interrupted.

    ``log_level`` and ``log_format`` (``text`` or ``json`` lines) apply to the library's loggers
    and uvicorn's, all on stderr. Connections idle ``keep_alive_timeout`` seconds after a
    response are closed, and those whose request is not whole within ``request_timeout``; beyond
    ``limit_concurrency`` open connections new ones are closed at once and requests answered
    503; ``backlog`` connections wait in the kernel's queue (defaults: :func:`default_limits`).
    """
    _positive("keep_alive_timeout", keep_alive_timeout)
    _positive("request_timeout", request_timeout)
    default_limit, default_backlog = default_limits()
    limit = default_limit if limit_concurrency is None else limit_concurrency
    backlog = default_backlog if backlog is None else backlog
    if limit < 1 or backlog < 1:
        raise ConfigurationError("limit_concurrency and backlog must be at least 1")
    _check_listenable(host, port)
    config = log_config(log_level, log_format)
    # Configured before the app exists, so that what creating it logs is formatted too.
    logging.config.dictConfig(config)
    app = create_app(
        db,
        path=path,
        metrics=metrics,
        store_timeout=store_timeout,
        request_timeout=request_timeout,
        replay_window=replay_window,
        max_event_ahead=max_event_ahead,
        dashboard_idle=dashboard_idle,
    )
    # The access log shows method, path and status only: never a header, so never a signature.
    uvicorn.run(
        app,
        host=host,
        port=port,
        server_header=False,
        log_config=config,
        log_level=log_level.lower(),
        http=bounded_protocol(request_timeout),
        timeout_keep_alive=keep_alive_timeout,
        limit_concurrency=limit,
        backlog=backlog,
    )
