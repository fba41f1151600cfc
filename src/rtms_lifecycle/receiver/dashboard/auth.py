"""Signing in to the dashboard: the read API's token, exchanged once for a session cookie.

The cookie never holds the token itself: it holds the time it was issued and an HMAC of that
time keyed by the token. Nothing is stored on the server, so every receiver process accepts it;
changing the token signs every browser out. The token travels only in a POST body (the sign-in
form) or an ``Authorization`` header, never in a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["COOKIE_NAME", "SESSION_SECONDS", "Sessions"]

COOKIE_NAME: Final = "rtms_dashboard"
# A week: long enough for a wall screen left signed in, short enough that a cookie copied off a
# machine stops working on its own.
SESSION_SECONDS: Final = 7 * 24 * 3600
_PURPOSE: Final = b"rtms-lifecycle dashboard session v1:"


class Sessions:
    """Checks tokens and session cookies against one API token, in constant time."""

    def __init__(self, api_token: str) -> None:
        self._token = api_token.encode("utf-8")

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the API token."""
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)

    def _mac(self, issued: str) -> str:
        return hmac.new(self._token, _PURPOSE + issued.encode(), hashlib.sha256).hexdigest()

    def new_cookie(self, now: float | None = None) -> str:
        """A fresh session cookie value."""
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{self._mac(issued)}"

    def cookie_valid(self, value: str | None, now: float | None = None) -> bool:
        """Whether ``value`` is a cookie this token issued, less than a session ago."""
        issued, _, mac = (value or "").partition(".")
        # Bytes, not text: compare_digest raises on text that is not ASCII, and a cookie's value
        # is whatever the browser (or anyone) sends.
        given = mac.encode("utf-8", "surrogatepass")
        if not (issued.isascii() and issued.isdigit()) or not hmac.compare_digest(
            given, self._mac(issued).encode("ascii")
        ):
            return False
        age = (time.time() if now is None else now) - int(issued)
        return -60 <= age < SESSION_SECONDS

    def signed_in(self, request: Request) -> bool:
        """Whether the request carries a valid session cookie or the bearer token."""
        if self.cookie_valid(request.cookies.get(COOKIE_NAME)):
            return True
        given = request.headers.getlist("authorization")
        if len(given) != 1:
            # None, or several: a credential that depends on the headers' order is none.
            return False
        scheme, _, credentials = given[0].partition(" ")
        return scheme.lower() == "bearer" and bool(credentials) and self.token_matches(credentials)

    def sign_in(self, request: Request, response: Response) -> None:
        """Set the session cookie: HttpOnly, SameSite=Strict, Secure when served over HTTPS."""
        response.set_cookie(
            COOKIE_NAME,
            self.new_cookie(),
            max_age=SESSION_SECONDS,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def sign_out(request: Request, response: Response) -> None:
        """Remove the session cookie."""
        response.delete_cookie(
            COOKIE_NAME,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
