"""The webhook receiver's public import path (``from rtms_lifecycle.server import create_app``).

The receiver itself lives in :mod:`rtms_lifecycle.receiver`; this module only re-exports it.
"""

from rtms_lifecycle.receiver.answers import (
    DeliveryAnswer,
    DetailAnswer,
    ErrorAnswer,
    HealthAnswer,
    StopReasonStatModel,
    StreamDetail,
    StreamModel,
    TransitionModel,
    UrlValidationAnswer,
)
from rtms_lifecycle.receiver.api import StoredState, create_read_router
from rtms_lifecycle.receiver.app import DB_ENV, create_app
from rtms_lifecycle.receiver.runner import run
from rtms_lifecycle.receiver.settings import API_TOKEN_ENV, DEFAULT_MAX_BODY_BYTES, DEFAULT_PATH
from rtms_lifecycle.receiver.webhook import create_router
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT

__all__ = [
    "API_TOKEN_ENV",
    "DB_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PATH",
    "DEFAULT_STORE_TIMEOUT",
    "DeliveryAnswer",
    "DetailAnswer",
    "ErrorAnswer",
    "HealthAnswer",
    "StopReasonStatModel",
    "StoredState",
    "StreamDetail",
    "StreamModel",
    "TransitionModel",
    "UrlValidationAnswer",
    "create_app",
    "create_read_router",
    "create_router",
    "run",
]
