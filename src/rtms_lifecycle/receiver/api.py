"""The read API: bearer-token routes over the tracker's reads (streams, deliveries, alerts,
statistics, subscriptions), their query parameters checked (an unknown one is a 422), lists paged
by a keyset cursor, a failing store answered 503."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BeforeValidator, Field

from rtms_lifecycle.bounds import MAX_EPOCH_MS, MIN_EPOCH_MS
from rtms_lifecycle.events import Scope
from rtms_lifecycle.exceptions import DatabaseUnavailable, StoreError
from rtms_lifecycle.machine import ACTIVE_STATES, State
from rtms_lifecycle.receiver.answers import (
    AlertModel,
    AlertPage,
    DeliveryModel,
    DeliveryPage,
    DetailAnswer,
    InterruptionStatsModel,
    RecordModel,
    StopReasonStatModel,
    StreamDetail,
    StreamModel,
    StreamPage,
    SubscriptionModel,
    SubscriptionPage,
    TransitionModel,
    UnhandledEventStatModel,
)
from rtms_lifecycle.receiver.bearer import SeveralAuthorizations, bearer_token
from rtms_lifecycle.receiver.logthrottle import mark_authenticated
from rtms_lifecycle.receiver.paths import STREAM_PATH
from rtms_lifecycle.receiver.settings import API_TOKEN_ENV, check_api_token, log
from rtms_lifecycle.receiver.throttle import CredentialThrottle
from rtms_lifecycle.records import Outcome, Page, decode_cursor, encode_cursor
from rtms_lifecycle.tracker import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Tracker

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
_Limit = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"Page size (default {DEFAULT_PAGE_SIZE}, at most {MAX_PAGE_SIZE}).",
    ),
]
_Cursor = Annotated[
    _Text | None, Query(description="The `next` of the page before (opaque).", max_length=512)
]
_Account = Annotated[_Text | None, Query(description="One Zoom account.")]


def _invalid(name: str, message: str, value: object) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": message, "input": value}]
    )


def _window(
    since: int | datetime | None, until: int | datetime | None
) -> tuple[int | datetime | None, int | datetime | None]:
    """``[since, until)`` as given, naive times read as UTC; a 422 unless until is after since."""
    since, until = _epoch_ms(since), _epoch_ms(until)
    if since is not None and until is not None and _ms(until) <= _ms(since):
        raise _invalid("until", "must be after since", str(until))
    return since, until


def _ms(value: int | datetime) -> int:
    return value if isinstance(value, int) else int(value.timestamp() * 1000)


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for each in dependant.dependencies:
        names |= _query_names(each)
    return names


def _only_known_parameters(request: Request) -> None:
    """An unknown query parameter is a 422: a misspelt filter must not silently match all."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "unknown query parameter; known: "
                    + (", ".join(sorted(known)) or "none"),
                    "input": request.query_params.get(name),
                }
                for name in unknown
            ]
        )


def _paged(
    request: Request, response: Response, page: Page[Any], view: Callable[[Any], Any]
) -> dict[str, Any]:
    """A page's body, and its ``Link: <next>; rel="next"`` header when there is a next page."""
    following = None
    if page.next is not None:
        url = request.url.include_query_params(cursor=page.next)
        following = f"{url.path}?{url.query}"
        response.headers["Link"] = f'<{following}>; rel="next"'
    return {"items": [view(item) for item in page.items], "next": following}


def _cursor_or_422(read: Callable[[], Page[Any]]) -> Page[Any]:
    try:
        return read()
    except ValueError as exc:
        raise _invalid("cursor", str(exc), None) from None


_BEARER: Final = HTTPBearer(auto_error=False, description=f"The token set in {API_TOKEN_ENV}.")


class RequireToken:
    """The read API's guard: the bearer token, compared in constant time; an address that sent
    too many wrong ones is answered 429 for a while (``throttle``)."""

    def __init__(self, api_token: str, throttle: CredentialThrottle | None = None) -> None:
        self._expected = api_token.encode("utf-8")
        self._throttle = throttle or CredentialThrottle()

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
        if token is None:
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        # Checked before the token: a guess from a throttled address learns nothing.
        wait = self._throttle.retry_after(request)
        if wait is not None:
            raise HTTPException(
                429,
                f"too many wrong bearer tokens from this address: retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._expected):
            self._throttle.failed(request)
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        mark_authenticated(request.scope)


class _StoreFailuresAre503(APIRoute):
    """A read route whose store fails answers 503, as the webhook does, rather than 500; every
    answer is ``Cache-Control: no-store``."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except (StoreError, DatabaseUnavailable):
                log.exception("the read API could not read the store; answered 503")
                response = JSONResponse(
                    DetailAnswer(detail="the store is unavailable; retry later").model_dump(),
                    status_code=503,
                )
            # Also where the router is mounted in another app: no cache keeps what a token read.
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return guarded


def create_read_router(
    tracker: Tracker, api_token: str, *, throttle: CredentialThrottle | None = None
) -> APIRouter:
    """The read API, every route requiring ``Authorization: Bearer <api_token>`` (at least 16
    printable ASCII characters). Wrong tokens are counted per client address in ``throttle``
    (by default one of the router's own): past 5 a minute that address is answered 429."""
    check_api_token(api_token)
    router = APIRouter(
        tags=["read"],
        dependencies=[
            Depends(RequireToken(api_token, throttle)),
            Depends(_only_known_parameters),
        ],
        responses={
            401: {"model": DetailAnswer, "description": "Missing or wrong bearer token."},
            429: {
                "model": DetailAnswer,
                "description": "Too many wrong bearer tokens from this address; see Retry-After.",
            },
            503: {"model": DetailAnswer, "description": "The store is unavailable."},
        },
        route_class=_StoreFailuresAre503,
    )

    @router.get(
        "/streams",
        summary="List streams that began in a time window, newest start first",
        response_model=StreamPage,
    )
    def list_streams(
        request: Request,
        response: Response,
        state: Annotated[list[StoredState] | None, Query(description="Repeatable.")] = None,
        scope: Scope | None = None,
        active: Annotated[bool, Query(description="Only started or resumed.")] = False,
        since: _TimeQuery = None,
        until: _TimeQuery = None,
        account_id: _Account = None,
        limit: _Limit = DEFAULT_PAGE_SIZE,
        cursor: _Cursor = None,
    ) -> dict[str, Any]:
        since, until = _window(since, until)
        states: set[State] | None = {State(s) for s in state} if state else None
        if active:
            states = set(ACTIVE_STATES) & states if states is not None else set(ACTIVE_STATES)
            if not states:
                # The tracker reads an empty filter as "every state".
                return {"items": [], "next": None}
        page = _cursor_or_422(
            lambda: tracker.stream_page(
                states,
                scope=scope,
                since=since,
                until=until,
                account_id=account_id,
                limit=limit,
                cursor=cursor,
            )
        )
        return _paged(request, response, page, StreamModel.of)

    @router.get(
        STREAM_PATH,
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
        "/deliveries",
        summary="Stored deliveries received in a time window, newest first",
        response_model=DeliveryPage,
    )
    def list_deliveries(
        request: Request,
        response: Response,
        outcome: Annotated[list[Outcome] | None, Query(description="Repeatable.")] = None,
        event: Annotated[_Text | None, Query(description="One event name.")] = None,
        stream_id: Annotated[_Text | None, Query(description="One stream.")] = None,
        since: _TimeQuery = None,
        until: _TimeQuery = None,
        limit: _Limit = DEFAULT_PAGE_SIZE,
        cursor: _Cursor = None,
    ) -> dict[str, Any]:
        since, until = _window(since, until)
        page = _cursor_or_422(
            lambda: tracker.delivery_page(
                outcome or None,
                event=event,
                stream_id=stream_id,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )
        return _paged(request, response, page, DeliveryModel.of)

    @router.get(
        "/alerts",
        summary="Account concurrency alerts in a time window, newest first",
        response_model=AlertPage,
    )
    def list_alerts(
        request: Request,
        response: Response,
        since: _TimeQuery = None,
        until: _TimeQuery = None,
        account_id: _Account = None,
        limit: _Limit = DEFAULT_PAGE_SIZE,
        cursor: _Cursor = None,
    ) -> dict[str, Any]:
        since, until = _window(since, until)
        page = _cursor_or_422(
            lambda: tracker.alert_page(
                since, until, account_id=account_id, limit=limit, cursor=cursor
            )
        )
        return _paged(request, response, page, AlertModel.of)

    @router.get(
        "/stats/stop-reasons",
        summary="Why streams stopped in a time window",
        response_model=list[StopReasonStatModel],  # type: ignore[valid-type]
    )
    def stop_reasons(
        since: _TimeQuery = None,
        until: _TimeQuery = None,
        by_scope: bool = False,
        account_id: _Account = None,
    ) -> list[RecordModel]:
        since, until = _window(since, until)
        stats = tracker.stop_reason_stats(since, until, by_scope, account_id=account_id)
        return [StopReasonStatModel.of(stat) for stat in stats]

    @router.get(
        "/stats/interruptions",
        summary="Interruptions of the streams that began in a time window",
    )
    def interruptions(
        since: _TimeQuery = None,
        until: _TimeQuery = None,
        scope: Scope | None = None,
        by_scope: Annotated[bool, Query(description="One entry per scope.")] = False,
        account_id: _Account = None,
    ) -> list[InterruptionStatsModel]:
        since, until = _window(since, until)
        if by_scope and scope is not None:
            raise _invalid("scope", "by_scope lists every scope: give one or the other", scope)
        scopes: list[Scope | None] = list(Scope) if by_scope else [scope]
        return [
            InterruptionStatsModel.of(
                each,
                tracker.interruption_stats(since, until, scope=each, account_id=account_id),
            )
            for each in scopes
        ]

    @router.get(
        "/stats/unhandled",
        summary="Event names this version does not handle, received in a time window",
        response_model=list[UnhandledEventStatModel],  # type: ignore[valid-type]
    )
    def unhandled(since: _TimeQuery = None, until: _TimeQuery = None) -> list[RecordModel]:
        since, until = _window(since, until)
        return [UnhandledEventStatModel.of(stat) for stat in tracker.unhandled_stats(since, until)]

    @router.get(
        "/subscriptions",
        summary="Durable consumers: cursor, lag, parked transitions, last error",
        response_model=SubscriptionPage,
    )
    def list_subscriptions(
        request: Request,
        response: Response,
        limit: _Limit = DEFAULT_PAGE_SIZE,
        cursor: _Cursor = None,
    ) -> dict[str, Any]:
        def read() -> Page[Any]:
            after = decode_cursor("subscriptions", cursor, (str,))[0] if cursor else None
            # A few consumers per database: read whole, paged by name.
            found = [s for s in tracker.subscriptions() if after is None or s.consumer > after]
            found.sort(key=lambda s: s.consumer)
            more = len(found) > limit
            found = found[:limit]
            following = encode_cursor("subscriptions", [found[-1].consumer]) if more else None
            return Page(found, following)

        return _paged(request, response, _cursor_or_422(read), SubscriptionModel.of)

    return router
