"""Defaults and choice lists the command line shows before it imports anything heavy.

``rtms-lifecycle --help`` builds every option from this module and Click alone: no SQLAlchemy,
pydantic or Rich. The modules that use these values import them from here; the names of the
enums' members are repeated as plain strings (a test checks they agree with the enums).
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = [
    "API_TOKEN_ENV",
    "DEFAULT_FORWARDED_ALLOW_IPS",
    "FORWARDED_ALLOW_IPS_ENV",
    "MIN_API_TOKEN_CHARS",
    "api_token_problem",
    "forwarded_allow_ips_problem",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "DB_ENV",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DB_URL",
    "DEFAULT_FORWARD_TIMEOUT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_EVENT_AHEAD",
    "MAX_EVENT_AHEAD_ENV",
    "DEFAULT_MIN_EVENT_TIME",
    "DEFAULT_MIN_EVENT_TIME_TEXT",
    "MIN_EVENT_TIME_ENV",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_RETRY_DELAY",
    "MAX_BATCH_SIZE",
    "OUTCOMES",
    "SCOPES",
    "STATES",
]

#: The environment variable naming the database, read by the CLI, ``serve`` and ``Tracker()``.
DB_ENV: Final = "RTMS_LIFECYCLE_DB"
DEFAULT_DB_URL: Final = "sqlite:///rtms_lifecycle.db"
#: Deliveries per transaction in bulk ingestion. Each batch rewrites pages spread all over the
#: stream-keyed indexes; 5,000 rather than 1,000 wrote 2.6 times fewer bytes to the database's
#: log for a 64,000-delivery load, at about 10 MB of memory per batch.
DEFAULT_BATCH_SIZE: Final = 5000
#: The largest batch: two batches are held in memory at once (one read ahead), each about 2 KB
#: per delivery (10 MB for 5,000, above), so about 400 MB at this size.
MAX_BATCH_SIZE: Final = 100_000
DEFAULT_MAX_ATTEMPTS: Final = 5
#: Seconds before the first retry of a failing callback; each further retry waits twice as long.
DEFAULT_RETRY_DELAY: Final = 1.0
#: Seconds ``forward`` waits for the receiver's answer: well under the lease.
DEFAULT_FORWARD_TIMEOUT: Final = 10.0
#: Seconds a process holds a consumer without renewing; a callback must return within it.
DEFAULT_LEASE: Final = 30.0
#: Seconds between looks at the feed when nothing woke the runner (PostgreSQL: a safety net).
DEFAULT_POLL_INTERVAL: Final = 0.5

#: Seconds an event's ``event_ts`` may be ahead of the receiving clock; beyond it the delivery is
#: rejected. A day allows for any clock skew, and refuses a time that would hold a stream live
#: (and its times unreadable) for years.
DEFAULT_MAX_EVENT_AHEAD: Final = 86_400.0
#: The environment variable ``serve`` reads it from.
MAX_EVENT_AHEAD_ENV: Final = "RTMS_LIFECYCLE_MAX_EVENT_AHEAD"
#: The earliest ``event_ts`` accepted on arrival (epoch ms): 0, no bound beyond the parser's
#: (1970), as the delivery contract says. A deployment sets one (docs/deploying.md) to refuse a
#: time sent in seconds instead of milliseconds (1.7e9 ms is January 1970).
DEFAULT_MIN_EVENT_TIME: Final = 0
#: Its spelling as ``serve --help`` shows it.
DEFAULT_MIN_EVENT_TIME_TEXT: Final = "0"
#: The environment variable ``serve`` reads it from.
MIN_EVENT_TIME_ENV: Final = "RTMS_LIFECYCLE_MIN_EVENT_TIME"

#: The values of ``Scope``, ``State`` and ``Outcome``, in their order.
SCOPES: Final = ("meeting", "webinar", "session", "contact_center", "phone")
STATES: Final = ("new", "started", "interrupted", "resumed", "stopped")
OUTCOMES: Final = ("applied", "ignored", "duplicate", "conflict", "rejected", "unhandled")

#: The receiver's log formats and levels (``serve --log-format``, ``--log-level``).
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

#: The read API's, ``/metrics``' and the dashboard's bearer token (none: no read API).
API_TOKEN_ENV: Final = "RTMS_LIFECYCLE_API_TOKEN"
#: The shortest API token accepted: 16 random characters make guessing hopeless even at full
#: speed from many addresses; ``secrets.token_urlsafe(32)`` gives 43.
MIN_API_TOKEN_CHARS: Final = 16
_MAKE_TOKEN: Final = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
#: Where ``serve`` (as uvicorn) reads the addresses trusted to set X-Forwarded-For/-Proto.
FORWARDED_ALLOW_IPS_ENV: Final = "FORWARDED_ALLOW_IPS"
#: uvicorn's own default: a proxy on the same machine.
DEFAULT_FORWARDED_ALLOW_IPS: Final = "127.0.0.1,::1"


def api_token_problem(token: str) -> str | None:
    """Why ``token`` (already stripped; not empty) cannot be the API token, or None. The
    token itself is never part of the answer."""
    if len(token) < MIN_API_TOKEN_CHARS:
        return (
            f"must be at least {MIN_API_TOKEN_CHARS} characters, got {len(token)}; "
            f"make one with: {_MAKE_TOKEN}"
        )
    if not all("!" <= c <= "~" for c in token):
        # A header carries Latin-1 and the sign-in form UTF-8: only ASCII reads alike in both.
        return (
            "must be printable ASCII without spaces (an HTTP header could not carry it); "
            f"make one with: {_MAKE_TOKEN}"
        )
    return None


def forwarded_allow_ips_problem(value: str) -> str | None:
    """Why ``value`` cannot name the proxies trusted to set X-Forwarded-For/-Proto, or None:
    ``*``, or addresses and networks (``10.0.0.0/8``) separated by commas."""
    if value.strip() == "*":
        return None
    for item in (part.strip() for part in value.split(",")):
        try:
            if "/" in item:
                ipaddress.ip_network(item)
            else:
                ipaddress.ip_address(item)
        except ValueError:
            return (
                f"{item!r} is not an IP address or network (e.g. 10.0.0.5, 172.18.0.0/16), "
                "nor * alone"
            )
    return None
