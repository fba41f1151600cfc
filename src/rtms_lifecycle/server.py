"""The webhook receiver as a FastAPI app (extra ``server``), and routers to embed in your own.

- :func:`create_router`: ``POST /webhook``, verified (spec section 8), recorded by a
  :class:`~rtms_lifecycle.Tracker`. Include it in an existing FastAPI app.
- :func:`create_read_router`: the bearer-token read API (``/streams``, ``/stats/stop-reasons``).
- :func:`create_app`: a ready app with both, plus ``GET /healthz`` and, with the read API, the
  ``/dashboard`` pages (:mod:`rtms_lifecycle.dashboard`); :func:`run` serves it.

Status codes (docs/receiver.md explains each choice): 200 for every delivery the store recorded,
a rejected one included (Zoom would only retry the same unusable bytes); 401 for a request that
fails verification (nothing stored); 413 beyond the body size limit; 503 when the store fails, so
that Zoom retries. No secret, signature or token is ever logged or answered.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

try:
    import anyio
    import uvicorn
    from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.requests import ClientDisconnect

    from .dashboard import create_dashboard_router
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"rtms_lifecycle.server needs FastAPI and uvicorn ({exc.name} is missing): "
        "install the 'server' extra, e.g. pip install 'rtms-lifecycle[server]'"
    ) from exc

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from .events import Scope, Source, UrlValidation, parse_delivery
from .exceptions import ConfigurationError, StoreError, WebhookRefused
from .machine import ACTIVE_STATES, State, TransitionName
from .records import IngestResult, Outcome, StopReasonStat, Stream, Transition
from .stop_reasons import StopReasonCategory
from .tracker import Tracker
from .webhook import (
    DEFAULT_REPLAY_WINDOW,
    WebhookVerifier,
    secrets_from_env,
    url_validation_response,
)

__all__ = [
    "API_TOKEN_ENV",
    "DB_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PATH",
    "DeliveryAnswer",
    "DetailAnswer",
    "ErrorAnswer",
    "HealthAnswer",
    "StopReasonStatModel",
    "StreamDetail",
    "StreamModel",
    "TransitionModel",
    "UrlValidationAnswer",
    "create_app",
    "create_read_router",
    "create_router",
    "run",
]

log = logging.getLogger(__name__)

API_TOKEN_ENV: Final = "RTMS_LIFECYCLE_API_TOKEN"
DB_ENV: Final = "RTMS_LIFECYCLE_DB"
DEFAULT_PATH: Final = "/webhook"
# Zoom's RTMS deliveries are well under 4 KiB; 64 KiB leaves room for unknown fields while
# capping what an unauthenticated sender makes us buffer before the signature is checked.
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
_URL_VALIDATION: Final = "endpoint.url_validation"


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
    """Whether the database answers."""

    status: Literal["ok", "unavailable"]


class StreamModel(BaseModel):
    """A stream, with exactly the keys of ``rtms-lifecycle streams --json`` (times: epoch ms)."""

    model_config = ConfigDict(extra="forbid")

    stream_id: str
    scope: Scope
    scope_id: str
    account_id: str | None
    session_key: str | None
    operator_id: str | None
    server_urls: str | None
    state: State
    started_at: int | None
    stopped_at: int | None
    last_event_at: int | None
    stop_reason: int | None
    stop_reason_name: str | None
    stop_reason_category: StopReasonCategory | None
    interruptions: int
    resumes: int
    failovers: int

    @classmethod
    def of(cls, stream: Stream) -> StreamModel:
        """The API view of a stored stream."""
        return cls.model_validate(stream.as_dict())


class TransitionModel(BaseModel):
    """One row of a stream's audit history."""

    id: int
    stream_id: str
    from_state: State
    to_state: State
    name: TransitionName
    kind: str
    event_ts: int
    source: Source
    late: bool
    recorded_at: int
    delivery_id: int | None

    @classmethod
    def of(cls, transition: Transition) -> TransitionModel:
        """The API view of a stored transition."""
        return cls.model_validate(transition.as_dict())


class StreamDetail(BaseModel):
    """A stream and its transitions in event-time order."""

    stream: StreamModel
    history: list[TransitionModel]


class StopReasonStatModel(BaseModel):
    """Streams stopped for one reason (in one scope, when grouped; else ``scope`` is null)."""

    stop_reason: int | None
    stop_reason_name: str
    stop_reason_category: StopReasonCategory
    count: int
    share: float
    median_duration_ms: int | None
    scope: Scope | None

    @classmethod
    def of(cls, stat: StopReasonStat) -> StopReasonStatModel:
        """The API view of one statistic; ``scope`` is always present, null when not grouped."""
        return cls.model_validate({"scope": None, **stat.as_dict()})


class DetailAnswer(BaseModel):
    """A read API error, in FastAPI's usual shape."""

    detail: str


# --- the webhook --------------------------------------------------------------------------------


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


class _Recorder:
    """Runs the synchronous tracker in worker threads, so the event loop never waits on the
    database; on SQLite, one write at a time.

    SQLite admits a single writer. Writers left to queue inside SQLite poll its lock with sleeps
    of up to 100 ms (its busy handler), which made the slowest answers under load exceed a second;
    queued here instead (FIFO), each write starts the moment the previous one commits.
    """

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._serial = tracker.engine.dialect.name == "sqlite"
        self._limiter: anyio.CapacityLimiter | None = None

    async def ingest(self, body: bytes) -> IngestResult:
        if self._serial and self._limiter is None:
            # Created on first use: older anyio versions need a running event loop for it.
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(self._tracker.ingest, body, limiter=self._limiter)


def create_router(
    tracker: Tracker,
    verifier: WebhookVerifier,
    *,
    path: str = DEFAULT_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> APIRouter:
    """A router with ``POST {path}``: verify, answer url validation, record the delivery.

    The tracker is synchronous; it runs in worker threads, so the event loop never waits on
    the database. Include the router in your own app with ``app.include_router(router)``.
    """
    if not path.startswith("/"):
        raise ConfigurationError(f"the webhook path must start with '/', got {path!r}")
    if max_body_bytes < 1:
        raise ConfigurationError("max_body_bytes must be at least 1")
    recorder = _Recorder(tracker)
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
            413: {"model": ErrorAnswer, "description": f"Body over {max_body_bytes} bytes."},
            503: {"model": ErrorAnswer, "description": "The store failed; Zoom will retry."},
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
        try:
            body = await _read_body(request, max_body_bytes)
        except _TooLarge:
            return _error(413, "body_too_large", f"request body exceeds {max_body_bytes} bytes")
        except ClientDisconnect:
            # Nobody is left to answer, and half a body is nothing to record.
            log.info("a webhook sender disconnected before its body was complete")
            return Response(status_code=400)
        try:
            secret = verifier.matching_secret(request.headers, body)
        except WebhookRefused as refused:
            client = request.client.host if request.client else "?"
            log.warning("refused a webhook request from %s: %s", client, refused.reason)
            return _error(401, refused.reason, str(refused))
        try:
            result = await recorder.ingest(body)
        except (StoreError, SQLAlchemyError):
            log.exception("could not record a webhook delivery; answering 503 so Zoom retries")
            return _error(
                503, "store_unavailable", "the delivery could not be recorded; retry later"
            )
        if result.event == _URL_VALIDATION and result.outcome is Outcome.APPLIED:
            return JSONResponse(_answer_url_validation(secret, body).model_dump())
        if result.outcome is Outcome.REJECTED:
            log.info("stored rejected delivery %s: %s", result.delivery_id, result.error)
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


_TIME_DOC: Final = "epoch milliseconds, or ISO 8601 (naive means UTC)"


_BEARER: Final = HTTPBearer(auto_error=False, description=f"The token set in {API_TOKEN_ENV}.")


class _RequireToken:
    """The read API's guard: the bearer token, compared in constant time."""

    def __init__(self, api_token: str) -> None:
        self._expected = api_token.encode("utf-8")

    def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> None:
        given = credentials.credentials.encode("utf-8", "surrogatepass") if credentials else b""
        if not hmac.compare_digest(given, self._expected):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )


def create_read_router(tracker: Tracker, api_token: str) -> APIRouter:
    """The read API, every route requiring ``Authorization: Bearer <api_token>``."""
    if not api_token:
        raise ConfigurationError("the read API needs a non-empty bearer token")
    router = APIRouter(
        tags=["read"],
        dependencies=[Depends(_RequireToken(api_token))],
        responses={401: {"model": DetailAnswer, "description": "Missing or wrong bearer token."}},
    )

    @router.get("/streams", summary="List streams, newest activity first")
    def list_streams(
        state: Annotated[list[State] | None, Query(description="Repeatable.")] = None,
        scope: Scope | None = None,
        active: Annotated[bool, Query(description="Only started or resumed.")] = False,
        limit: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[StreamModel]:
        states: set[State] | None = set(state) if state else None
        if active:
            states = set(ACTIVE_STATES) & states if states is not None else set(ACTIVE_STATES)
            if not states:
                return []  # the tracker reads an empty filter as "every state"
        found = tracker.streams(states, scope=scope, limit=limit)
        return [StreamModel.of(stream) for stream in found]

    @router.get(
        "/streams/{stream_id}",
        summary="One stream and its history",
        responses={404: {"model": DetailAnswer, "description": "No such stream."}},
    )
    def get_stream(stream_id: str) -> StreamDetail:
        stream = tracker.stream(stream_id)
        if stream is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        history = [TransitionModel.of(t) for t in tracker.history(stream_id)]
        return StreamDetail(stream=StreamModel.of(stream), history=history)

    @router.get("/stats/stop-reasons", summary="Why streams stopped in a time window")
    def stop_reasons(
        since: Annotated[int | datetime | None, Query(description=_TIME_DOC)] = None,
        until: Annotated[int | datetime | None, Query(description=_TIME_DOC)] = None,
        by_scope: bool = False,
    ) -> list[StopReasonStatModel]:
        stats = tracker.stop_reason_stats(_epoch_ms(since), _epoch_ms(until), by_scope)
        return [StopReasonStatModel.of(stat) for stat in stats]

    return router


# --- the ready app ------------------------------------------------------------------------------


def _api_token(api_token: str | None) -> str | None:
    token = (api_token if api_token is not None else os.environ.get(API_TOKEN_ENV, "")).strip()
    return token or None


def create_app(
    db: str | Engine | Tracker | None = None,
    *,
    secrets: Sequence[str] | None = None,
    path: str = DEFAULT_PATH,
    api_token: str | None = None,
    replay_window: float = DEFAULT_REPLAY_WINDOW,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The receiver: ``POST {path}``, ``GET /healthz`` and, with a token, the read API.

    ``db``: a URL, an engine or a ready :class:`Tracker` (which the caller then closes); by
    default ``RTMS_LIFECYCLE_DB``, else the tracker's default. ``secrets``: by default
    ``ZOOM_WEBHOOK_SECRET_TOKEN``; without any the app refuses to start
    (:class:`ConfigurationError`). ``api_token``: by default ``RTMS_LIFECYCLE_API_TOKEN``; the
    read API exists only when one is set.
    """
    # Verify the configuration before touching a database: a misconfigured receiver should
    # fail without creating anything.
    verifier = WebhookVerifier(
        secrets_from_env() if secrets is None else secrets, replay_window=replay_window
    )
    token = _api_token(api_token)
    owned = not isinstance(db, Tracker)
    tracker = db if isinstance(db, Tracker) else Tracker(db or os.environ.get(DB_ENV) or None)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            tracker.close()

    app = FastAPI(
        title="rtms-lifecycle receiver",
        summary="Records Zoom RTMS webhooks into a queryable stream lifecycle.",
        lifespan=lifespan,
    )
    app.state.tracker = tracker
    app.include_router(create_router(tracker, verifier, path=path, max_body_bytes=max_body_bytes))
    if token is not None:
        app.include_router(create_read_router(tracker, token))
        app.include_router(create_dashboard_router(tracker, token))

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Whether the database answers",
        response_model=HealthAnswer,
        responses={503: {"model": HealthAnswer, "description": "The database does not answer."}},
    )
    def healthz() -> HealthAnswer | JSONResponse:
        if tracker.ping():
            return HealthAnswer(status="ok")
        return JSONResponse(HealthAnswer(status="unavailable").model_dump(), status_code=503)

    return app


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = DEFAULT_PATH,
    db: str | None = None,
) -> None:
    """Serve :func:`create_app` with uvicorn (``rtms-lifecycle serve``) until interrupted."""
    app = create_app(db, path=path)
    # The access log shows method, path and status only: never a header, so never a signature.
    uvicorn.run(app, host=host, port=port, server_header=False)
