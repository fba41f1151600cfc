"""The dashboard's routes: sign-in, the overview, a page per stream, and its packaged files."""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, quote

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import ClientDisconnect

from rtms_lifecycle.clock import format_duration, format_time
from rtms_lifecycle.display import printable
from rtms_lifecycle.exceptions import DatabaseUnavailable, StoreError
from rtms_lifecycle.receiver.bearer import SeveralAuthorizations, bearer_token
from rtms_lifecycle.receiver.dashboard.auth import DEFAULT_IDLE_SECONDS, Sessions, same_origin
from rtms_lifecycle.receiver.dashboard.charts import reason_bars, share_columns, timeline
from rtms_lifecycle.receiver.dashboard.pages import (
    PAGE_SIZE,
    WINDOWS,
    StatsCache,
    overview,
    stream_page,
)
from rtms_lifecycle.receiver.logthrottle import LINES_EVERY, LineGroups, mark_authenticated
from rtms_lifecycle.receiver.paths import STREAM_PATH
from rtms_lifecycle.receiver.settings import check_api_token, log
from rtms_lifecycle.receiver.throttle import CredentialThrottle, client_key
from rtms_lifecycle.tracker import Tracker

__all__ = ["PREFIX", "REFRESH_SECONDS", "STREAM_BY_QUERY", "create_dashboard_router", "stream_href"]

# ``log`` is the receiver's logger: its tracebacks are throttled (one a minute per kind), so
# that an outage failing every request does not write a traceback per request.

PREFIX: Final = "/dashboard"
REFRESH_SECONDS: Final = 10
# The sign-in form posts one short field; anything longer is not a sign-in.
_MAX_FORM_BYTES: Final = 8 * 1024
# For an answer given with the form unread: the connection closes with it. Kept open, the
# server went on reading a trickled form until its request timeout ran again (408 at 5 s,
# closed at 10 s).
_CLOSE: Final = {"Connection": "close"}
# The overview's pages of problem deliveries: past this, a number is a typo.
_LAST_PAGE: Final = 1_000_000
# The read API's bound on a cursor; the dashboard's are far shorter.
_LONGEST_CURSOR: Final = 512
_OVERVIEW_PARAMETERS: Final = frozenset({"window", "cursor", "page"})
_CURSOR_EXPECTED: Final = "the position an “older →” link gives (without page)"
_STATIC: Final = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
_HEADERS: Final = {
    # Everything the pages need is served from here: no inline script or style, no other origin.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _shown(value: object) -> object:
    return printable(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("rtms_lifecycle.receiver.dashboard", "templates"),
        autoescape=select_autoescape(default=True),
        # Autoescaping stops HTML; a bidi control (U+202E) or an ESC in an id from a delivery
        # would still show: every value printed is escaped with printable, but the markup the
        # page builds itself (charts).
        finalize=_shown,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = format_time
    env.filters["stream_href"] = stream_href
    env.filters["duration"] = format_duration
    env.globals.update(
        prefix=PREFIX,
        refresh_seconds=REFRESH_SECONDS,
        windows=WINDOWS,
        reason_bars=reason_bars,
        share_columns=share_columns,
        timeline=timeline,
        page_size=PAGE_SIZE,
    )
    return env


#: The stream page by query, for the ids a path cannot carry: a browser resolves a segment
#: ``.`` or ``..`` (``%2E%2E`` too) before it asks, and so asked for another page.
STREAM_BY_QUERY: Final = "/stream"


def stream_href(stream_id: str) -> str:
    """The link to a stream's page: its id one percent-encoded path segment (a ``/`` in it
    too), or a query for an id that is a dot segment."""
    if stream_id in (".", ".."):
        return f"{PREFIX}{STREAM_BY_QUERY}?id={quote(stream_id, safe='')}"
    return f"{PREFIX}/streams/{quote(stream_id, safe='')}"


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _safe_next(target: str | None) -> str:
    # Only back into the dashboard: never an open redirect to another site.
    if target and target.startswith(PREFIX) and not target.startswith("//"):
        return target
    return PREFIX


def create_dashboard_router(
    tracker: Tracker,
    api_token: str,
    *,
    request_timeout: float = 5.0,
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    throttle: CredentialThrottle | None = None,
) -> APIRouter:
    """``/dashboard``: pages for people, behind a sign-in with the read API's token.

    A sign-in form whose body takes over ``request_timeout`` seconds to arrive is answered 408.
    A session unused for ``idle_seconds`` ends; a sign-out is written to the tracker's
    database, and holds in every process reading it. Wrong tokens, signing in or as a bearer
    token, are counted per client address in ``throttle`` (429 past the limit, in this
    process); a form POST from another origin is refused (403).
    """
    check_api_token(api_token)
    sessions = Sessions(api_token, idle_seconds=idle_seconds, shared=tracker)
    throttle = throttle or CredentialThrottle()
    env = _environment()
    stats = StatsCache(tracker, fresh_s=REFRESH_SECONDS)
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    # Browsers leaving mid-form, per address: anyone can repeat it at will.
    left = LineGroups(LINES_EVERY)

    def page(
        name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> HTMLResponse:
        html = env.get_template(name).render(**context)
        answer = HTMLResponse(html, status_code=status, headers={**_HEADERS, **(headers or {})})
        answer.headers["Cache-Control"] = "no-store"
        return answer

    def refused(request: Request) -> Response | None:
        """The answer to a request without a live session, or None if it has one. A session
        that cannot be checked (the database does not answer) is refused with 503; a bearer
        token from an address that sent too many wrong ones, with 429."""
        try:
            token = bearer_token(request)
        except SeveralAuthorizations:
            token = None  # no credential (Sessions.signed_in reads it so too): nothing to count
        if token is not None:
            wait = throttle.retry_after(request)
            if wait is not None:
                detail = f"too many wrong bearer tokens from this address: retry in {wait} s"
                return JSONResponse(
                    {"detail": detail},
                    429,
                    headers={"Retry-After": str(wait)},
                )
            if not sessions.token_matches(token):
                throttle.failed(request)
        try:
            if sessions.signed_in(request):
                return None
        except (StoreError, DatabaseUnavailable):
            log.exception("the dashboard could not check a session's sign-out; answered 503")
            if _wants_html(request):
                return page("unavailable.html", 503, {"Retry-After": str(REFRESH_SECONDS)})
            return JSONResponse(
                {"detail": "the store is unavailable; retry later"},
                503,
                headers={"Retry-After": str(REFRESH_SECONDS)},
            )
        if _wants_html(request):
            # The path as sent: decoded, an id's %2F would come back as a "../" to resolve.
            raw = request.scope.get("raw_path")
            path = raw.decode("latin-1") if raw else quote(request.url.path)
            target = path + (f"?{request.url.query}" if request.url.query else "")
            location = f"{PREFIX}/login?next={quote(target, safe='/')}"
            return RedirectResponse(location, 303, headers=_HEADERS)
        return JSONResponse(
            {"detail": "sign in first"}, 401, headers={"WWW-Authenticate": "Bearer"}
        )

    @router.get("/login")
    def login_form(request: Request, next: str | None = None) -> Response:
        try:
            known = sessions.signed_in(request)
        except (StoreError, DatabaseUnavailable):
            known = False  # unchecked: the form, as to anyone not signed in
        if known:
            return RedirectResponse(_safe_next(next), 303, headers=_HEADERS)
        return page("login.html", next=_safe_next(next), error=None)

    def cross_origin() -> Response:
        error = (
            "This form was sent from another site (its Origin is not this dashboard's): "
            "refused. Sign in from the dashboard's own page."
        )
        return page("login.html", 403, _CLOSE, next=PREFIX, error=error)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return cross_origin()
        wait = throttle.retry_after(request)
        if wait is not None:
            too_many = f"Too many failed sign-ins: try again in {wait} s."
            headers = {"Retry-After": str(wait), **_CLOSE}
            return page("login.html", 429, headers, next=PREFIX, error=too_many)
        body = bytearray()
        try:
            # A body that never comes would hold the connection for ever: the server's own
            # time limit covers the request's headers only.
            with anyio.fail_after(request_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > _MAX_FORM_BYTES:  # read no further: nobody signs in with that
                        too_large = "The form is too large."
                        return page("login.html", 413, _CLOSE, next=PREFIX, error=too_large)
        except TimeoutError:
            late = f"The form took over {request_timeout:g} s to arrive."
            return page("login.html", 408, _CLOSE, next=PREFIX, error=late)
        except ClientDisconnect:
            # Nobody is left to answer: not an error of the server's.
            host = request.client.host if request.client else "?"
            said = left.note(client_key(request))
            if said is not None:
                log.info(
                    "a browser (%s) disconnected before its sign-in form was complete%s",
                    host,
                    said,
                )
            return Response(status_code=400)
        fields = parse_qs(body.decode("utf-8", "replace"))
        target = _safe_next((fields.get("next") or [""])[0])
        token = (fields.get("token") or [""])[0].strip()
        if not sessions.token_matches(token):
            throttle.failed(request)
            error = "That is not the API token (RTMS_LIFECYCLE_API_TOKEN)." if token else None
            return page(
                "login.html", 401, next=target, error=error or "Enter the API token to sign in."
            )
        mark_authenticated(request.scope)
        answer = RedirectResponse(target, 303, headers=_HEADERS)
        sessions.sign_in(request, answer)
        return answer

    @router.post("/logout")
    def logout(request: Request) -> Response:
        if not same_origin(request):
            return cross_origin()
        answer: Response
        try:
            sessions.sign_out(request)
        except (StoreError, DatabaseUnavailable):
            log.exception("the dashboard could not record a sign-out in the store; answered 503")
            idle = format_duration(int(sessions.idle_seconds * 1000))
            answer = page("unrecorded.html", 503, idle=idle)
        else:
            answer = RedirectResponse(f"{PREFIX}/login", 303, headers=_HEADERS)
        sessions.forget(request, answer)
        return answer

    def invalid(parameter: str, value: str, expected: str, reason: str | None = None) -> Response:
        shown = value if len(value) <= 60 else value[:57] + "..."
        return page(
            "invalid.html",
            422,
            parameter=parameter,
            value=shown,
            expected=expected,
            reason=reason,
        )

    def unexpected(request: Request, known: frozenset[str]) -> Response | None:
        """The 422 page for a query parameter the page does not take or that comes twice (as
        the read API refuses them), or None: a typo must not show another page as asked."""
        seen: set[str] = set()
        for name, value in request.query_params.multi_items():
            if name not in known:
                takes = ", ".join(sorted(known)) or "none"
                return invalid(
                    name[:60], value, "", f"this page takes no such parameter (it takes: {takes})"
                )
            if name in seen:
                return invalid(name, value, "", "given more than once: give it once")
            seen.add(name)
        return None

    def unavailable() -> Response:
        log.exception("the dashboard could not read the store")
        return page("unavailable.html", 503, headers={"Retry-After": str(REFRESH_SECONDS)})

    @router.get("")
    def dashboard(
        request: Request,
        window: str = "24h",
        cursor: str | None = None,
        page_number: Annotated[str | None, Query(alias="page")] = None,
    ) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        if (wrong := unexpected(request, _OVERVIEW_PARAMETERS)) is not None:
            return wrong
        # Checked here, not by FastAPI: its 422 is JSON, which a browser shows as raw text.
        if window not in WINDOWS:
            return invalid("window", window, f"one of {', '.join(WINDOWS)}")
        if page_number is not None and (
            not (page_number.isascii() and page_number.isdigit())
            or not 1 <= int(page_number) <= _LAST_PAGE
        ):
            return invalid("page", page_number, f"a whole number from 1 to {_LAST_PAGE:,}")
        if cursor is not None and (page_number is not None or len(cursor) > _LONGEST_CURSOR):
            return invalid("cursor", cursor, _CURSOR_EXPECTED)
        try:
            view = overview(tracker, stats, WINDOWS[window], cursor)
        except ValueError:
            return invalid("cursor", cursor or "", _CURSOR_EXPECTED)
        except (StoreError, DatabaseUnavailable):
            return unavailable()
        # Numbered pages shifted as streams started and stopped; an old link gets the newest
        # page, saying so.
        renumbered = page_number is not None and page_number != "1"
        answer = page("overview.html", view=view, renumbered=renumbered)
        sessions.renew(request, answer)
        return answer

    @router.get(STREAM_BY_QUERY)
    def stream_by_query(request: Request, stream_id: Annotated[str, Query(alias="id")]) -> Response:
        return stream_view(request, stream_id, frozenset({"id"}))

    @router.get(STREAM_PATH)
    def stream(request: Request, stream_id: str) -> Response:
        return stream_view(request, stream_id, frozenset())

    def stream_view(request: Request, stream_id: str, known: frozenset[str]) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        if (wrong := unexpected(request, known)) is not None:
            return wrong
        if "\x00" in stream_id:
            # No stream id holds NUL, and PostgreSQL cannot even look one up: its query failed.
            return page("missing.html", 404, stream_id=stream_id)
        try:
            view = stream_page(tracker, stream_id)
        except (StoreError, DatabaseUnavailable):
            return unavailable()
        if view is None:
            return page("missing.html", 404, stream_id=stream_id)
        answer = page("stream.html", view=view)
        sessions.renew(request, answer)
        return answer

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        # Styles and the refresh script only: nothing of the record, so no sign-in needed
        # (the sign-in form uses them too).
        media_type = _STATIC.get(name)
        if media_type is None:
            raise HTTPException(404, "no such file")
        content = files("rtms_lifecycle.receiver.dashboard").joinpath("static", name).read_bytes()
        headers = {**_HEADERS, "Cache-Control": "public, max-age=3600"}
        return Response(content, media_type=media_type, headers=headers)

    return router
