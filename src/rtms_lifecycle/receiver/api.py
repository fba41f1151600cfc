"""The read API: bearer-token routes over the tracker's reads (``/streams``,
``/stats/stop-reasons``), their query parameters checked, a failing store answered 503."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BeforeValidator, Field

from rtms_lifecycle.bounds import MAX_COUNT, MAX_EPOCH_MS, MIN_EPOCH_MS
from rtms_lifecycle.events import Scope
from rtms_lifecycle.exceptions import ConfigurationError, DatabaseUnavailable, StoreError
from rtms_lifecycle.machine import ACTIVE_STATES, State
from rtms_lifecycle.receiver.answers import (
    DetailAnswer,
    RecordModel,
    StopReasonStatModel,
    StreamDetail,
    StreamModel,
    TransitionModel,
)
from rtms_lifecycle.receiver.bearer import SeveralAuthorizations, bearer_token
from rtms_lifecycle.receiver.settings import API_TOKEN_ENV, log
from rtms_lifecycle.tracker import Tracker

__all__ = ["RequireToken", "StoredState", "create_read_router"]


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


class RequireToken:
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
        dependencies=[Depends(RequireToken(api_token))],
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
    ) -> list[RecordModel]:
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
    ) -> list[RecordModel]:
        stats = tracker.stop_reason_stats(
            _epoch_ms(since), _epoch_ms(until), by_scope, account_id=account_id
        )
        return [StopReasonStatModel.of(stat) for stat in stats]

    return router
