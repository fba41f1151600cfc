"""Zoom's RTMS stop reasons (``STOP_REASON`` 0-26 of the RTMS SDK) and our categories."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

__all__ = [
    "EXPIRED",
    "NOT_PROVIDED",
    "StopReason",
    "StopReasonCategory",
    "describe_stop_reason",
]


class StopReasonCategory(StrEnum):
    """Why a stream stopped, coarsely: what an operator should do about it differs per category."""

    NORMAL = "normal"
    BLOCKED = "blocked"
    REVOKED = "revoked"
    ABNORMAL = "abnormal"
    CONFIG_ERROR = "config_error"
    APP_CLOSED = "app_closed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"


_C = StopReasonCategory
_CATALOGUE: dict[int, tuple[str, StopReasonCategory]] = {
    0: ("UNDEFINED", _C.UNKNOWN),
    1: ("HOST_TRIGGERED", _C.NORMAL),
    2: ("USER_TRIGGERED", _C.NORMAL),
    3: ("USER_LEFT", _C.NORMAL),
    4: ("USER_EJECTED", _C.NORMAL),
    5: ("HOST_DISABLED_APP", _C.BLOCKED),
    6: ("MEETING_ENDED", _C.NORMAL),
    7: ("STREAM_CANCELED", _C.NORMAL),
    8: ("STREAM_REVOKED", _C.REVOKED),
    9: ("ALL_APPS_DISABLED", _C.BLOCKED),
    10: ("INTERNAL_EXCEPTION", _C.ABNORMAL),
    11: ("CONNECTION_TIMEOUT", _C.ABNORMAL),
    12: ("INSTANCE_CONNECTION_INTERRUPTED", _C.ABNORMAL),
    13: ("SIGNAL_CONNECTION_INTERRUPTED", _C.ABNORMAL),
    14: ("DATA_CONNECTION_INTERRUPTED", _C.ABNORMAL),
    15: ("SIGNAL_CONNECTION_CLOSED_ABNORMALLY", _C.ABNORMAL),
    16: ("DATA_CONNECTION_CLOSED_ABNORMALLY", _C.ABNORMAL),
    17: ("EXIT_SIGNAL", _C.ABNORMAL),
    18: ("AUTHENTICATION_FAILURE", _C.CONFIG_ERROR),
    19: ("AWAIT_RECONNECTION_TIMEOUT", _C.ABNORMAL),
    20: ("RECEIVER_REQUEST_CLOSE", _C.APP_CLOSED),
    21: ("CUSTOMER_DISCONNECTED", _C.NORMAL),
    22: ("AGENT_DISCONNECTED", _C.NORMAL),
    23: ("ADMIN_DISABLED_APP", _C.BLOCKED),
    24: ("KEEP_ALIVE_TIMEOUT", _C.ABNORMAL),
    25: ("MANUAL_API_TRIGGERED", _C.NORMAL),
    26: ("STREAMING_NOT_SUPPORTED", _C.CONFIG_ERROR),
}

# Zoom's failover guide: these codes mean "restart the whole RTMS connection".
_RESTART_CONNECTION = frozenset({10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 24})


@dataclass(frozen=True, slots=True)
class StopReason:
    """A stop reason: ``code`` is None for a stream the library expired itself."""

    code: int | None
    name: str
    category: StopReasonCategory

    @property
    def restart_connection(self) -> bool:
        """Whether Zoom's failover guide says to restart the whole RTMS connection."""
        return self.code in _RESTART_CONNECTION


EXPIRED = StopReason(None, "EXPIRED", StopReasonCategory.EXPIRED)
#: A ``stopped`` webhook that gave no reason (Zoom's Phone and Contact Center samples allow it).
NOT_PROVIDED = StopReason(None, "NOT_PROVIDED", StopReasonCategory.UNKNOWN)


@lru_cache(maxsize=256)
def describe_stop_reason(code: int | None, *, expired: bool = True) -> StopReason:
    """Name and categorise a stop reason code; any integer is accepted.

    None is an expiry's stop (``EXPIRED``), or with ``expired=False`` a webhook's stop that
    gave no reason (``NOT_PROVIDED``).
    """
    if code is None:
        return EXPIRED if expired else NOT_PROVIDED
    known = _CATALOGUE.get(code)
    if known is None:
        return StopReason(code, f"UNKNOWN_{code}", StopReasonCategory.UNKNOWN)
    return StopReason(code, known[0], known[1])
