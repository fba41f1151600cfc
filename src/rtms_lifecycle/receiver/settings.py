"""What the receiver's parts share: the logger they all write to, its defaults and the check of
its time settings."""

from __future__ import annotations

import logging
import math
from typing import Final

from rtms_lifecycle.defaults import API_TOKEN_ENV, api_token_problem
from rtms_lifecycle.exceptions import ConfigurationError

__all__ = [
    "API_TOKEN_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PATH",
    "DEFAULT_REQUEST_TIMEOUT",
    "check_api_token",
    "check_positive",
    "log",
]

# The name it has always logged under: operators filter on it.
log = logging.getLogger("rtms_lifecycle.server")

DEFAULT_PATH: Final = "/webhook"
# Zoom's RTMS deliveries are well under 4 KiB; 64 KiB leaves room for unknown fields while
# capping what an unauthenticated sender makes us buffer before the signature is checked.
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
#: Seconds a request has to arrive whole (headers and body): Zoom's take milliseconds.
DEFAULT_REQUEST_TIMEOUT: Final = 5.0


def check_positive(name: str, value: float, at_most: float = math.inf) -> None:
    """Refuse a time setting that is not a positive number of seconds up to ``at_most``."""
    if not 0 < value <= at_most:
        limit = f" (at most {at_most:,.0f})" if at_most < math.inf else ""
        raise ConfigurationError(
            f"{name} must be a positive number of seconds{limit}, got {value!r}"
        )


def check_api_token(token: str) -> None:
    """Refuse an API token that is short enough to guess (or that a header cannot carry)."""
    problem = api_token_problem(token)
    if problem is not None:
        raise ConfigurationError(f"the API token (api_token, {API_TOKEN_ENV}) {problem}")
