"""Builders of webhook bodies for tests: one place that knows each scope's event names and ids."""

from __future__ import annotations

import json
from typing import Any

from rtms_lifecycle import EventKind, Scope

# The keys of a stream in every JSON the project prints (docs/cli.md), exactly.
SPEC_STREAM_KEYS = frozenset(
    {
        "stream_id",
        "scope",
        "scope_id",
        "account_id",
        "session_key",
        "operator_id",
        "server_urls",
        "state",
        "started_at",
        "stopped_at",
        "last_event_at",
        "stop_reason",
        "stop_reason_name",
        "stop_reason_category",
        "interruptions",
        "resumes",
        "failovers",
    }
)

# scope -> (event name prefix, scope id field)
SCOPES: dict[Scope, tuple[str, str]] = {
    Scope.MEETING: ("meeting.rtms_", "meeting_uuid"),
    Scope.WEBINAR: ("webinar.rtms_", "webinar_uuid"),
    Scope.SESSION: ("session.rtms_", "session_id"),
    Scope.CONTACT_CENTER: ("contact_center.voice_rtms_", "engagement_id"),
    Scope.PHONE: ("phone.rtms_", "call_id"),
}


def body(
    kind: EventKind | str,
    stream_id: str,
    event_ts: int,
    *,
    scope: Scope | str = Scope.MEETING,
    scope_id: str = "scope-1",
    stop_reason: int | str | None = 1,
    server_urls: str | list[str] | None = "wss://rtms.zoom.us/1",
    **extra: Any,
) -> dict[str, Any]:
    """A webhook body of ``kind`` (started, interrupted or stopped) for one stream.

    ``stop_reason`` and ``server_urls`` take what Zoom should not send, too (a name for a code,
    a list for a URL), for the tests of what the library rejects or accepts.
    """
    kind = EventKind(kind)
    prefix, id_field = SCOPES[Scope(scope)]
    payload: dict[str, Any] = {"rtms_stream_id": stream_id, id_field: scope_id, **extra}
    if kind is EventKind.STARTED and server_urls is not None:
        payload["server_urls"] = server_urls
    if kind is EventKind.STOPPED and stop_reason is not None:
        payload["stop_reason"] = stop_reason
    return {"event": prefix + kind.value, "event_ts": event_ts, "payload": payload}


def raw(kind: EventKind | str, stream_id: str, event_ts: int, **kwargs: Any) -> bytes:
    """The same body as bytes, as Zoom would send it."""
    return json.dumps(body(kind, stream_id, event_ts, **kwargs)).encode()
