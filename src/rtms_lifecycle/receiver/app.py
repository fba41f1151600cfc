"""The ready receiver: :func:`create_app` assembles the webhook route
(:mod:`~rtms_lifecycle.receiver.webhook`), the read API (:mod:`~rtms_lifecycle.receiver.api`) and
the ``/dashboard`` pages (:mod:`rtms_lifecycle.receiver.dashboard`) with ``GET /healthz`` and
``GET /metrics``; :func:`~rtms_lifecycle.receiver.runner.run` serves it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import anyio
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline

# Imported here, not at the first delivery: parsing imports the models lazily (for the command
# line), and under load that import alone outlasted a delivery's 2 s budget.
import rtms_lifecycle.models  # noqa: F401
from rtms_lifecycle.bounds import MAX_WAIT_SECONDS
from rtms_lifecycle.defaults import DEFAULT_MAX_EVENT_AHEAD, DEFAULT_MIN_EVENT_TIME
from rtms_lifecycle.exceptions import DatabaseUnavailable, StoreError, StoreTimeout
from rtms_lifecycle.receiver import metrics as _metrics
from rtms_lifecycle.receiver.answers import HealthAnswer
from rtms_lifecycle.receiver.api import RequireToken, create_read_router
from rtms_lifecycle.receiver.dashboard import create_dashboard_router
from rtms_lifecycle.receiver.dashboard.auth import DEFAULT_IDLE_SECONDS
from rtms_lifecycle.receiver.http import DefaultHeaders
from rtms_lifecycle.receiver.logthrottle import (
    RequestScope,
    bound_access_lines,
    throttle_tracebacks,
)
from rtms_lifecycle.receiver.settings import (
    API_TOKEN_ENV,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PATH,
    DEFAULT_REQUEST_TIMEOUT,
    check_api_token,
    check_positive,
    log,
)
from rtms_lifecycle.receiver.throttle import CredentialThrottle
from rtms_lifecycle.receiver.webhook import WebhookFront, WebhookHandler, check_path
from rtms_lifecycle.store import urls as _dburl
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.store.errors import health_reason
from rtms_lifecycle.tracker import Tracker
from rtms_lifecycle.webhook import DEFAULT_REPLAY_WINDOW, WebhookVerifier, labelled_secrets_from_env

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["DB_ENV", "create_app"]

DB_ENV: Final = _dburl.DB_ENV


def _api_token(api_token: str | None) -> str | None:
    token = (api_token if api_token is not None else os.environ.get(API_TOKEN_ENV, "")).strip()
    if token:
        check_api_token(token)
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
    min_event_time: int | datetime = DEFAULT_MIN_EVENT_TIME,
    dashboard_idle: float = DEFAULT_IDLE_SECONDS,
    claims_older_than: float = _metrics.DEFAULT_CLAIMS_OLDER_THAN,
    long_live: timedelta | float = _metrics.DEFAULT_LONG_LIVE,
) -> FastAPI:
    """The receiver: ``POST {path}``, ``GET /healthz``, ``GET /metrics`` and, with a token, the
    read API.

    ``db``: a URL, an engine or a ready :class:`Tracker` (which the caller then closes); by
    default ``RTMS_LIFECYCLE_DB``, else the tracker's default. ``secrets``: by label (a
    mapping), or a list; by default ``ZOOM_WEBHOOK_SECRET_TOKEN`` (entries ``label=token`` or
    ``token``); without any the app refuses to start
    (:class:`ConfigurationError`). ``api_token``: by default ``RTMS_LIFECYCLE_API_TOKEN``, at
    least 16 printable ASCII characters (else :class:`ConfigurationError`); the read API, the
    dashboard and the API docs (``/docs``, ``/redoc``, ``/openapi.json``) exist only when one
    is set, and it then guards ``/metrics`` too (without one, ``/metrics`` is public). Wrong
    tokens are throttled per client address (429). ``metrics``:
    whether to serve ``/metrics`` (Prometheus' text format; docs/operations.md).
    ``store_timeout``: seconds a delivery may take to commit before it is answered 503 (Zoom
    waits 3 s); ``/healthz`` uses the same budget. ``max_event_ahead``: seconds a delivery's
    ``event_ts`` may be ahead of this clock before it is rejected, ``min_event_time`` (epoch ms or
    a datetime; 0 by default) the earliest it may be (a given Tracker keeps its own); neither
    applies to the url validation challenge.
    ``dashboard_idle``: seconds an unused dashboard session lasts. ``claims_older_than``:
    seconds a live stream may go unclaimed or unconnected before ``/metrics`` counts it.
    ``long_live`` (seconds, or a
    timedelta): how long a stream may stay live before ``/metrics`` counts it in
    ``rtms_lifecycle_long_live_streams`` (12 hours by default).
    """
    # Verify the configuration before touching a database: a misconfigured receiver should
    # fail without creating anything.
    verifier = WebhookVerifier(
        labelled_secrets_from_env() if secrets is None else secrets, replay_window=replay_window
    )
    token = _api_token(api_token)
    check_positive("store_timeout", store_timeout, MAX_WAIT_SECONDS)
    if not isinstance(long_live, timedelta):
        check_positive("long_live", long_live)
        long_live = timedelta(seconds=long_live)
    elif long_live <= timedelta(0):
        check_positive("long_live", long_live.total_seconds())
    # An outage fails every request alike: one traceback a minute per kind is enough.
    throttle_tracebacks()
    # A refused webhook request is logged by its (grouped) WARNING, not once more by uvicorn;
    # what anyone may repeat at will (a 404, a malformed request) is grouped per address.
    bound_access_lines()
    registry = _metrics.new_registry() if metrics else None
    owned = not isinstance(db, Tracker)
    tracker = (
        db
        if isinstance(db, Tracker)
        else Tracker(
            db or os.environ.get(DB_ENV) or None,
            max_event_ahead=max_event_ahead,
            min_event_time=min_event_time,
        )
    )
    if registry is not None:
        _metrics.add_store_gauges(registry, tracker, long_live, claims_older_than)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # A database file deleted while idle is saved before a kill -9 can lose it.
        tracker.watch_files()
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

    # No slash redirects: Starlette builds their absolute URL from the Host header, so anyone
    # could make this server redirect to another site. A trailing slash is a 404.
    about: dict[str, Any] = {
        "title": "rtms-lifecycle receiver",
        "summary": "Records Zoom RTMS webhooks into a queryable stream lifecycle.",
        "lifespan": lifespan,
        "redirect_slashes": False,
    }
    # The API docs describe the read API: with it, and only with it. Swagger UI and ReDoc come
    # from the package: /docs works on a machine without internet.
    app = (
        FastAPIOffline(**about)
        if token is not None
        else FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **about)
    )
    app.state.tracker = tracker
    check_path(path)
    webhook = WebhookHandler(
        tracker,
        verifier,
        max_body_bytes=max_body_bytes,
        store_timeout=store_timeout,
        request_timeout=request_timeout,
    )
    # Declared for the OpenAPI schema; deliveries reach the handler in front of the routing.
    app.include_router(webhook.router(path))
    # Inside the webhook's front: only the requests the app routes pay for them.
    app.add_middleware(RequestScope)
    app.add_middleware(DefaultHeaders)
    app.add_middleware(WebhookFront, path=path, handler=webhook)
    # One count of wrong tokens per address for the read API, /metrics and the dashboard.
    throttle = CredentialThrottle()
    if token is not None:
        app.include_router(create_read_router(tracker, token, throttle=throttle))
        app.include_router(
            create_dashboard_router(
                tracker,
                token,
                request_timeout=request_timeout,
                idle_seconds=dashboard_idle,
                throttle=throttle,
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
        guard = [Depends(RequireToken(token, throttle))] if token is not None else []

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

    def _probe(self) -> tuple[str, str] | None:
        """None, or the reason answered (one of ``HEALTH_REASONS``) and the detail logged."""
        try:
            self._tracker.check_writable(self._timeout)
        except StoreTimeout as exc:
            return health_reason(exc, busy=True), f"store busy: {exc}"
        except (StoreError, DatabaseUnavailable) as exc:
            return health_reason(exc), " ".join(str(exc).split("\n", 1)[0].split())
        return None

    async def problem(self) -> str | None:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        with anyio.move_on_after(self._timeout + 0.25):
            found = await anyio.to_thread.run_sync(
                self._probe, limiter=self._limiter, abandon_on_cancel=True
            )
            # Logged when it changes, not at every probe; the answer names only the kind.
            detail = found[1] if found is not None else None
            if found is not None and detail != self._failed:
                log.warning("health check: the store cannot record deliveries (%s): %s", *found)
            self._failed = detail
            return found[0] if found is not None else None
        detail = f"store busy: no answer within {self._timeout} s"
        if detail != self._failed:
            log.warning("health check: the store cannot record deliveries: %s", detail)
            self._failed = detail
        return "store busy"
