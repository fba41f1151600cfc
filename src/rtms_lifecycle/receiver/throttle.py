"""Wrong credentials, counted per client address over a moving minute: the dashboard's sign-in
form and every bearer token (read API, ``/metrics``, dashboard) share one count, so a guesser
gains nothing by switching between them. Past the limit that address alone is answered 429.

There is no limit for all addresses together: with a token of 16 characters or more, guessing
fails at any speed, and a shared limit only let anyone lock every user out. Many failures from
many addresses are logged instead.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Final

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import HTTPConnection

from rtms_lifecycle.receiver.settings import log

__all__ = [
    "FAILURES_LOGGED",
    "FAILURES_PER_ADDRESS",
    "CredentialThrottle",
    "address_key",
    "client_key",
]

#: Wrong credentials a minute from one address before it is answered 429.
FAILURES_PER_ADDRESS: Final = 5
#: Wrong credentials a minute from all addresses together before a WARNING (nobody is refused).
FAILURES_LOGGED: Final = 50
_ALL: Final = "*"


def client_key(request: HTTPConnection) -> str:
    """The address failures are counted under: the client's (behind a trusted proxy, the one
    X-Forwarded-For names); an IPv6 client's /64, which one subscriber usually holds whole."""
    return address_key(request.client.host if request.client else "unknown")


def address_key(host: str) -> str:
    """:func:`client_key` of a client address as the server gives it."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class CredentialThrottle:
    """Failed credentials per client address, in this process (not shared: counting them in the
    database would let anyone make every process write)."""

    def __init__(
        self, per_address: int = FAILURES_PER_ADDRESS, logged: int = FAILURES_LOGGED
    ) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_address = RateLimitItemPerMinute(per_address)
        self._logged = RateLimitItemPerMinute(logged)
        # Keys noted now, so that a burst is logged once, not once per attempt.
        self._noted: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, request: HTTPConnection) -> int | None:
        """Seconds until the request's address may try a credential again, or None if now."""
        key = client_key(request)
        if self._limiter.test(self._per_address, "credentials", key):
            return None
        reset = self._limiter.get_window_stats(self._per_address, "credentials", key).reset_time
        self._note(key, reset)
        return max(1, int(reset - time.time() + 0.999))

    def failed(self, request: HTTPConnection) -> None:
        """Count a wrong credential from the request's address."""
        self._limiter.hit(self._per_address, "credentials", client_key(request))
        if not self._limiter.hit(self._logged, "credentials", _ALL):
            reset = self._limiter.get_window_stats(self._logged, "credentials", _ALL).reset_time
            self._note(_ALL, reset)

    def _note(self, key: str, until: float) -> None:
        with self._lock:
            now = time.time()
            self._noted = {k: t for k, t in self._noted.items() if t > now}
            if key in self._noted:
                self._noted[key] = max(self._noted[key], until)
                return
            self._noted[key] = until
        if key == _ALL:
            log.warning(
                "over %d wrong API tokens a minute from all addresses together "
                "(sign-ins and bearer tokens; nobody refused for it)",
                self._logged.amount,
            )
        else:
            log.warning(
                "too many wrong API tokens from address %s (dashboard sign-ins and bearer "
                "tokens): refused for now (429)",
                key,
            )
