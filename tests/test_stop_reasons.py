"""Stop reason names and categories (docs/stop-reasons.md)."""

from __future__ import annotations

import pytest

from rtms_lifecycle.stop_reasons import EXPIRED, StopReasonCategory, describe_stop_reason

# docs/stop-reasons.md, verbatim: code -> (name, category).
SPEC_TABLE = {
    0: ("UNDEFINED", "unknown"),
    1: ("HOST_TRIGGERED", "normal"),
    2: ("USER_TRIGGERED", "normal"),
    3: ("USER_LEFT", "normal"),
    4: ("USER_EJECTED", "normal"),
    5: ("HOST_DISABLED_APP", "blocked"),
    6: ("MEETING_ENDED", "normal"),
    7: ("STREAM_CANCELED", "normal"),
    8: ("STREAM_REVOKED", "revoked"),
    9: ("ALL_APPS_DISABLED", "blocked"),
    10: ("INTERNAL_EXCEPTION", "abnormal"),
    11: ("CONNECTION_TIMEOUT", "abnormal"),
    12: ("INSTANCE_CONNECTION_INTERRUPTED", "abnormal"),
    13: ("SIGNAL_CONNECTION_INTERRUPTED", "abnormal"),
    14: ("DATA_CONNECTION_INTERRUPTED", "abnormal"),
    15: ("SIGNAL_CONNECTION_CLOSED_ABNORMALLY", "abnormal"),
    16: ("DATA_CONNECTION_CLOSED_ABNORMALLY", "abnormal"),
    17: ("EXIT_SIGNAL", "abnormal"),
    18: ("AUTHENTICATION_FAILURE", "config_error"),
    19: ("AWAIT_RECONNECTION_TIMEOUT", "abnormal"),
    20: ("RECEIVER_REQUEST_CLOSE", "app_closed"),
    21: ("CUSTOMER_DISCONNECTED", "normal"),
    22: ("AGENT_DISCONNECTED", "normal"),
    23: ("ADMIN_DISABLED_APP", "blocked"),
    24: ("KEEP_ALIVE_TIMEOUT", "abnormal"),
    25: ("MANUAL_API_TRIGGERED", "normal"),
    26: ("STREAMING_NOT_SUPPORTED", "config_error"),
}
# docs/stop-reasons.md: Zoom's failover guide restarts the whole RTMS connection for these.
RESTART_CONNECTION = {*range(10, 20), 24}
UNKNOWN_CODES = [-1, 27, 99, 1000, 2**31 - 1, -(2**31), 2**31, 2**63 - 1, -(2**63)]


@pytest.mark.parametrize(("code", "name", "category"), [(c, *row) for c, row in SPEC_TABLE.items()])
def test_known_code_has_the_spec_name_and_category(code: int, name: str, category: str) -> None:
    """Each stop reason 0-26 has the name and category of the documented table."""
    reason = describe_stop_reason(code)
    assert (reason.code, reason.name, reason.category) == (code, name, category)


@pytest.mark.parametrize("code", UNKNOWN_CODES)
def test_unknown_code_is_named_after_itself(code: int) -> None:
    """A code outside 0-26 is UNKNOWN_<code> in category unknown, keeping its code."""
    reason = describe_stop_reason(code)
    assert (reason.code, reason.name, reason.category) == (code, f"UNKNOWN_{code}", "unknown")


def test_no_code_means_expired() -> None:
    """None (a stream the library expired) is EXPIRED in category expired, with no code."""
    reason = describe_stop_reason(None)
    assert (reason.code, reason.name, reason.category) == (None, "EXPIRED", "expired")
    assert reason == EXPIRED


def test_categories_are_the_spec_ones() -> None:
    """The category enum holds exactly the documented categories, including unknown and expired."""
    spec_categories = {category for _, category in SPEC_TABLE.values()} | {"unknown", "expired"}
    assert {category.value for category in StopReasonCategory} == spec_categories


@pytest.mark.parametrize("code", [*SPEC_TABLE, *UNKNOWN_CODES, None])
def test_restart_connection_exactly_for_10_to_19_and_24(code: int | None) -> None:
    """restart_connection is true exactly for codes 10-19 and 24, false otherwise and on expiry."""
    assert describe_stop_reason(code).restart_connection is (code in RESTART_CONNECTION)
