"""Signing in to the dashboard: the read API's token, exchanged once for a session cookie.

The cookie never holds the token itself: it holds a random session id, when the session was
issued and when it was last used, and an HMAC of those keyed by the token, so that every
receiver process accepts it; changing the token signs every browser out. A session ends after
``idle_seconds`` without a request (each request renews the cookie), after a week in any case,
and at sign-out: the sign-out is written to the database (``dashboard_revocations``), which
every receiver process sharing it reads on each dashboard request. The token travels only in a
POST body (the sign-in form) or an ``Authorization`` header, never in a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Final, Protocol

from starlette.requests import Request
from starlette.responses import Response

from rtms_lifecycle.receiver.bearer import SeveralAuthorizations, bearer_token
from rtms_lifecycle.receiver.logthrottle import mark_authenticated

__all__ = [
    "COOKIE_NAME",
    "DEFAULT_IDLE_SECONDS",
    "SESSION_SECONDS",
    "SharedRevocations",
    "Sessions",
    "same_origin",
]

COOKIE_NAME: Final = "rtms_dashboard"
# A week at most: long enough for a wall screen left signed in, short enough that a cookie
# copied off a machine stops working on its own.
SESSION_SECONDS: Final = 7 * 24 * 3600
#: A session unused this long ends (the overview refreshes itself every 10 s, so an open page
#: keeps its session).
DEFAULT_IDLE_SECONDS: Final = 30 * 60
_PURPOSE: Final = b"rtms-lifecycle dashboard session v2:"


class SharedRevocations(Protocol):
    """Where sign-outs are kept for every process (a :class:`~rtms_lifecycle.tracker.Tracker`);
    both raise the store's errors when the database fails."""

    def revoke_dashboard_session(self, session_id: str, until_ms: int) -> None: ...

    def dashboard_session_revoked(self, session_id: str) -> bool: ...


class Sessions:
    """Checks tokens and session cookies against one API token, in constant time.

    With ``shared``, a sign-out is recorded there and every cookie check reads it (one primary
    key lookup), so that a sign-out holds in every process reading the same database; a check
    whose read fails raises the store's error: the caller refuses the request.
    """

    def __init__(
        self,
        api_token: str,
        *,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        shared: SharedRevocations | None = None,
    ) -> None:
        if not 0 < idle_seconds <= SESSION_SECONDS:
            raise ValueError(f"idle_seconds must be from 1 to {SESSION_SECONDS}")
        self._token = api_token.encode("utf-8")
        self.idle_seconds = idle_seconds
        self._shared = shared
        # Sessions signed out here, until their cookie would have expired anyway: this process
        # refuses them even while the database does not answer.
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the API token."""
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)

    def _mac(self, fields: str) -> str:
        return hmac.new(self._token, _PURPOSE + fields.encode(), hashlib.sha256).hexdigest()

    def new_cookie(
        self, now: float | None = None, *, session: str | None = None, issued: int | None = None
    ) -> str:
        """A session cookie value: a new session, or ``session`` renewed at ``now``."""
        seen = int(time.time() if now is None else now)
        fields = f"{session or secrets.token_hex(16)}.{seen if issued is None else issued}.{seen}"
        return f"{fields}.{self._mac(fields)}"

    def _read(self, value: str | None, now: float) -> tuple[str, int] | None:
        # (session id, issued) of a valid cookie not signed out here; bytes compared, not text:
        # compare_digest raises on text that is not ASCII, and a cookie is whatever the browser
        # sends. The shared revocations are not read here.
        parts = (value or "").split(".")
        if len(parts) != 4 or not all(p.isascii() and p.isalnum() for p in parts):
            return None
        session, issued, seen, mac = parts
        if not (issued.isdigit() and seen.isdigit()) or not hmac.compare_digest(
            mac.encode("ascii"), self._mac(f"{session}.{issued}.{seen}").encode("ascii")
        ):
            return None
        if not (-60 <= now - int(issued) < SESSION_SECONDS) or now - int(seen) >= self.idle_seconds:
            return None
        with self._lock:
            if session in self._revoked:
                return None
        return session, int(issued)

    def cookie_valid(self, value: str | None, now: float | None = None) -> bool:
        """Whether ``value`` is a live session this token issued and nobody signed out; the
        store's error if the shared revocations cannot be read."""
        found = self._read(value, time.time() if now is None else now)
        if found is None:
            return False
        return self._shared is None or not self._shared.dashboard_session_revoked(found[0])

    def signed_in(self, request: Request) -> bool:
        """Whether the request carries the bearer token or a live session cookie (the store's
        error if the cookie's session cannot be checked)."""
        try:
            token = bearer_token(request)
        except SeveralAuthorizations:
            token = None  # a credential that depends on the headers' order is none
        if (token is not None and self.token_matches(token)) or self.cookie_valid(
            request.cookies.get(COOKIE_NAME)
        ):
            mark_authenticated(request.scope)
            return True
        return False

    def _set(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=SESSION_SECONDS,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def sign_in(self, request: Request, response: Response) -> None:
        """Set a new session cookie: HttpOnly, SameSite=Strict, Secure when served over HTTPS."""
        self._set(request, response, self.new_cookie())

    def renew(self, request: Request, response: Response) -> None:
        """Move the session's idle expiry on, if the request has a session cookie (checked
        before the page was made)."""
        now = time.time()
        found = self._read(request.cookies.get(COOKIE_NAME), now)
        if found is not None:
            session, issued = found
            self._set(request, response, self.new_cookie(now, session=session, issued=issued))

    def sign_out(self, request: Request) -> None:
        """End the request's session: here at once, then in the shared revocations (the
        store's error if that write fails; this process refuses the session all the same)."""
        now = time.time()
        found = self._read(request.cookies.get(COOKIE_NAME), now)
        if found is None:
            return
        session, issued = found
        until = issued + SESSION_SECONDS
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items() if t > now}
            self._revoked[session] = until
        if self._shared is not None:
            self._shared.revoke_dashboard_session(session, until * 1000)

    def forget(self, request: Request, response: Response) -> None:
        """Remove the session cookie from the browser."""
        response.delete_cookie(
            COOKIE_NAME,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


def same_origin(request: Request) -> bool:
    """Whether a form POST comes from a page of this site.

    A browser says so in ``Sec-Fetch-Site``, which no page can set; an older one by ``Origin``
    (or, without one, ``Referer``) naming this host. The pages send no referrer, and a browser
    then sends ``Origin: null`` with a form: only ``Sec-Fetch-Site`` tells then. A request with
    none of them is not a browser's, so it cannot be a forgery.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return True
        scheme, _, rest = referer.partition("://")
        origin = f"{scheme}://{rest.split('/', 1)[0]}"
    host = request.headers.get("host", "")
    return origin.lower() in {f"http://{host}".lower(), f"https://{host}".lower()}
