"""Real Zoom traffic on real SQLite and PostgreSQL: documented shapes are recorded, not refused;
no body, whatever it holds, fails a write or makes ``ingest`` raise."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import Outcome, Scope, State, Tracker
from rtms_lifecycle.webhook import Verification

from ._deliveries import body, raw

T0 = 1_700_000_000_000
MINUTE = 60_000


def stopped_without_reason(stream_id: str, event_ts: int, **payload: Any) -> dict[str, Any]:
    """A meeting stop with no stop_reason at all, as Zoom's Phone/Contact Center samples send."""
    return body("stopped", stream_id, event_ts, stop_reason=None, **payload)


def only_delivery(tracker: Tracker) -> Any:
    """The one stored delivery."""
    (found,) = tracker.deliveries(limit=None)
    return found


# --- stops without a reason ---------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["absent", None])
def test_stop_without_reason_is_applied_as_not_provided(tracker: Tracker, reason: Any) -> None:
    """A stop without stop_reason (or null) stops the stream: NOT_PROVIDED, category unknown."""
    tracker.ingest(body("started", "s1", T0))
    stop = stopped_without_reason("s1", T0 + MINUTE)
    if reason is None:
        stop["payload"]["stop_reason"] = None
    assert tracker.ingest(stop).outcome is Outcome.APPLIED
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.stop_reason) == (State.STOPPED, None)
    assert (stream.stop_reason_name, stream.stop_reason_category) == ("NOT_PROVIDED", "unknown")
    assert stream.as_dict()["stop_reason_name"] == "NOT_PROVIDED"


def test_stats_list_not_provided_apart_from_expired(tracker: Tracker) -> None:
    """Stop-reason statistics count stops without a reason as NOT_PROVIDED, apart from expiries."""
    tracker.ingest(body("started", "given", T0))
    tracker.ingest(stopped_without_reason("given", T0 + MINUTE))
    tracker.ingest(body("started", "expired", T0))
    tracker.expire(60)
    stats = {s.stop_reason_name: s for s in tracker.stop_reason_stats()}
    assert set(stats) == {"NOT_PROVIDED", "EXPIRED"}
    assert (stats["NOT_PROVIDED"].stop_reason, stats["NOT_PROVIDED"].count) == (None, 1)
    assert stats["NOT_PROVIDED"].stop_reason_category == "unknown"
    assert stats["EXPIRED"].stop_reason_category == "expired"


def test_integer_valued_string_stop_reason_is_stored_as_the_integer(tracker: Tracker) -> None:
    """stop_reason "6" is stored as 6: MEETING_ENDED."""
    tracker.ingest(body("started", "s1", T0))
    tracker.ingest(body("stopped", "s1", T0 + MINUTE, stop_reason="6"))
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.stop_reason, stream.stop_reason_name) == (6, "MEETING_ENDED")


# --- scope ids ----------------------------------------------------------------------------------


def test_nested_stop_with_only_meeting_id_stops_the_stream(tracker: Tracker) -> None:
    """The documented nested stop carrying only meeting_id is applied; the scope id stays."""
    tracker.ingest(body("started", "s1", T0, scope_id="uuid=="))
    nested = {
        "event": "meeting.rtms_stopped",
        "event_ts": T0 + MINUTE,
        "payload": {
            "account_id": "acct",
            "object": {"rtms_stream_id": "s1", "meeting_id": 81234567890, "stop_reason": 6},
        },
    }
    assert tracker.ingest(json.dumps(nested).encode()).outcome is Outcome.APPLIED
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.scope_id, stream.stop_reason) == (State.STOPPED, "uuid==", 6)


def test_scope_id_is_filled_in_by_a_later_event(tracker: Tracker) -> None:
    """A stream begun without a scope id takes it from the next event that carries one."""
    started = body("started", "s1", T0)
    del started["payload"]["meeting_uuid"]
    tracker.ingest(started)
    first = tracker.stream("s1")
    assert first is not None
    assert (first.state, first.scope_id) == (State.STARTED, None)
    tracker.ingest(body("stopped", "s1", T0 + MINUTE, scope_id="uuid=="))
    assert tracker.streams(scope_id="uuid==")[0].stream_id == "s1"


def test_scope_id_is_filled_in_by_an_earlier_event_arriving_late(tracker: Tracker) -> None:
    """A stop without a scope id, then its stream's start arriving late with one: it is kept."""
    stop = body("stopped", "s1", T0 + MINUTE)
    del stop["payload"]["meeting_uuid"]
    tracker.ingest(stop)
    tracker.ingest(body("started", "s1", T0, scope_id="uuid=="))
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.scope_id, stream.started_at) == (State.STOPPED, "uuid==", T0)


def test_numeric_call_id_is_stored_as_its_decimal_text(tracker: Tracker) -> None:
    """Zoom Phone's numeric call_id is the stream's scope id as a decimal string."""
    started = body("started", "s1", T0, scope=Scope.PHONE)
    started["payload"]["call_id"] = 7_123_456_789_012_345_678
    tracker.ingest(started)
    stream = tracker.stream("s1")
    assert stream is not None
    assert stream.scope_id == "7123456789012345678"


def test_server_urls_list_is_stored_comma_separated(tracker: Tracker) -> None:
    """server_urls as a list of strings is stored as the same URLs comma-separated."""
    tracker.ingest(body("started", "s1", T0, server_urls=["wss://a.zoom.us", "wss://b.zoom.us"]))
    stream = tracker.stream("s1")
    assert stream is not None
    assert stream.server_urls == "wss://a.zoom.us,wss://b.zoom.us"
    assert stream.server_url_list == ["wss://a.zoom.us", "wss://b.zoom.us"]


# --- url validation, unknown events -----------------------------------------------------------


def test_url_validation_without_event_ts_is_applied(tracker: Tracker) -> None:
    """Zoom's endpoint challenge without event_ts is recorded as applied, event_ts null."""
    result = tracker.ingest(b'{"event":"endpoint.url_validation","payload":{"plainToken":"t"}}')
    assert result.outcome is Outcome.APPLIED
    assert only_delivery(tracker).event_ts is None


RTMS_LOOKALIKES = ["phone.call_rtms_started", "contactcenter.rtms_started", "meeting.rtms.started"]


def test_unhandled_stats_count_each_unknown_name(tracker: Tracker) -> None:
    """unhandled_stats lists unknown event names with counts and first/last seen, RTMS first."""
    names = [*RTMS_LOOKALIKES, "meeting.participant_joined", "meeting.participant_joined"]
    for i, name in enumerate(names):
        result = tracker.ingest({"event": name, "event_ts": T0 + i, "payload": {}})
        assert result.outcome is Outcome.UNHANDLED
    stats = tracker.unhandled_stats()
    assert [(s.event, s.count, s.rtms) for s in stats] == [
        *((name, 1, True) for name in sorted(RTMS_LOOKALIKES)),
        ("meeting.participant_joined", 2, False),
    ]
    joined = stats[-1]
    assert joined.first_seen <= joined.last_seen
    assert tracker.unhandled_stats(since=joined.last_seen + 1) == []


# --- nothing lost, whatever the bytes -----------------------------------------------------------


NUL_BODIES = {
    "event name": b'{"event":"meeting.rtms\\u0000_started","event_ts":1,"payload":{}}',
    "unknown event name": b'{"event":"x\\u0000","event_ts":1,"payload":{}}',
    "rtms_stream_id": b'{"event":"meeting.rtms_started","event_ts":1,'
    b'"payload":{"rtms_stream_id":"s\\u0000","meeting_uuid":"m"}}',
    "scope id": b'{"event":"meeting.rtms_started","event_ts":1,'
    b'"payload":{"rtms_stream_id":"s","meeting_uuid":"m\\u0000"}}',
    "plainToken": b'{"event":"endpoint.url_validation","payload":{"plainToken":"\\u0000"}}',
}
NUL_FIELDS = {
    "event name": "event",
    "unknown event name": "event",
    "rtms_stream_id": "payload.rtms_stream_id",
    "scope id": "payload.meeting_uuid",
    "plainToken": "payload.plainToken",
}


@pytest.mark.parametrize("name", NUL_BODIES)
def test_nul_in_a_stored_text_is_rejected_and_kept(tracker: Tracker, name: str) -> None:
    """A NUL where a text column would hold it: rejected naming the field, raw bytes stored."""
    result = tracker.ingest(NUL_BODIES[name])
    assert result.outcome is Outcome.REJECTED
    assert NUL_FIELDS[name] in [e.field for e in result.errors]
    stored = only_delivery(tracker)
    assert (stored.outcome, stored.raw) == (Outcome.REJECTED, NUL_BODIES[name])


def test_nul_body_does_not_stop_a_batch(tracker: Tracker) -> None:
    """A NUL body among good ones: the batch is recorded whole, the NUL body rejected."""
    bodies = [raw("started", "s1", T0), *NUL_BODIES.values(), raw("stopped", "s1", T0 + 1)]
    summary = tracker.ingest_many(bodies)
    assert (summary["applied"], summary["rejected"]) == (2, len(NUL_BODIES))
    assert len(tracker.deliveries(limit=None)) == len(bodies)


def _cycle() -> dict[str, Any]:
    looped: dict[str, Any] = {"event": "meeting.rtms_started", "event_ts": 1}
    looped["payload"] = {"self": looped}
    return looped


def _nested(levels: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    for _ in range(levels):
        inner = {"x": inner}
    return {"event": "x.unknown", "event_ts": 1, "payload": inner}


UNSTORABLE: dict[str, tuple[str | dict[str, Any], str]] = {
    "str with a lone surrogate": (
        '{"event":"meeting.rtms_started","event_ts":1,"payload":{"rtms_stream_id":"\ud800"}}',
        "body",
    ),
    "mapping with a lone surrogate": (
        {"event": "x.unknown\udfff", "event_ts": 1, "payload": {}},
        "body.event",
    ),
    "mapping nested 5000 levels": (_nested(5000), "body.payload" + ".x" * 199),
    "mapping with a non-string key": (
        {"event": "x.unknown", "event_ts": 1, "payload": {("a", 1): 2}},
        "body.payload",
    ),
    "mapping with a cycle": (_cycle(), "body.payload.self"),
    "event_ts of 5000 digits": ({"event": "x.unknown", "event_ts": 10**5000}, "body.event_ts"),
}


@pytest.mark.parametrize("name", UNSTORABLE)
def test_unrepresentable_body_is_rejected_not_raised(tracker: Tracker, name: str) -> None:
    """ingest never raises for a str or mapping body: what JSON cannot hold is rejected."""
    given_body, field = UNSTORABLE[name]
    result = tracker.ingest(given_body)
    assert result.outcome is Outcome.REJECTED
    assert field in [e.field for e in result.errors], result.errors
    assert only_delivery(tracker).outcome is Outcome.REJECTED


def test_surrogate_escaped_text_keeps_its_original_bytes(tracker: Tracker) -> None:
    """Text decoded with surrogateescape is stored as the bytes it was decoded from."""
    original = b'{"event":"x.unknown","event_ts":1,"payload":{"v":"\xff"}}'
    tracker.ingest(original.decode("utf-8", "surrogateescape"))
    assert only_delivery(tracker).raw == original


@pytest.mark.parametrize("value", [None, 42, 1.5, ["event"], object()])
def test_other_body_types_raise_type_error_and_store_nothing(tracker: Tracker, value: Any) -> None:
    """A body that is not bytes, str or a mapping raises TypeError; nothing is stored."""
    with pytest.raises(TypeError, match="bytes, str or a mapping"):
        tracker.ingest(value)
    assert tracker.deliveries(limit=None) == []


def test_retry_of_a_body_holding_nan_is_a_duplicate(tracker: Tracker) -> None:
    """A retry of a body with NaN in it is a duplicate, not a conflict (NaN equals NaN)."""
    started = raw("started", "s1", T0, x_metric=float("nan"))
    assert b"NaN" in started
    assert tracker.ingest(started).outcome is Outcome.APPLIED
    assert tracker.ingest(started).outcome is Outcome.DUPLICATE
    respaced = started.replace(b", ", b",")
    assert tracker.ingest(respaced).outcome is Outcome.DUPLICATE


def test_retry_of_a_mapping_holding_nan_is_a_duplicate(tracker: Tracker) -> None:
    """The same mapping with NaN, ingested twice, is stored once and then a duplicate."""
    mapping = body("started", "s1", T0, x_metric=float("nan"))
    assert tracker.ingest(mapping).outcome is Outcome.APPLIED
    assert tracker.ingest(mapping).outcome is Outcome.DUPLICATE


# Values some database column refuses, wherever they turn up in a body.
HOSTILE_TEXT = st.sampled_from(["\x00", "a\x00b", "\ud800", "\udcff", "é", "", "s" * 300])
HOSTILE_NUMBER = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, 10**400, 2**31, -1])
HOSTILE = st.one_of(HOSTILE_TEXT, HOSTILE_NUMBER, st.just(float("nan")), st.none())
FIELDS = [
    "event",
    "event_ts",
    "payload.rtms_stream_id",
    "payload.meeting_uuid",
    "payload.call_id",
    "payload.operator_id",
    "payload.session_key",
    "payload.server_urls",
    "payload.account_id",
    "payload.stop_reason",
    "payload.concurrency_number",
    "payload.plainToken",
    "payload.object.rtms_stream_id",
    "payload.extra",
]
EVENTS = st.sampled_from(
    [
        "meeting.rtms_started",
        "meeting.rtms_stopped",
        "phone.rtms_stopped",
        "rtms.concurrency_near_limit",
        "rtms.concurrency_limited",
        "endpoint.url_validation",
        "x.rtms_new",
    ]
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> Any:
    """A delivery with hostile values in some fields, as a mapping, text or bytes."""
    data: dict[str, Any] = {
        "event": draw(EVENTS),
        "event_ts": T0,
        "payload": {
            "rtms_stream_id": "s1",
            "meeting_uuid": "m",
            "concurrency_limit": 10,
            "concurrency_number": 8,
            "percentage": 80,
            "id_field": {"meeting_uuid": "m"},
            "plainToken": "t",
        },
    }
    for path in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)):
        target, *keys = path.split(".")
        holder = data if not keys else data["payload"]
        for key in keys[:-1]:
            holder = holder.setdefault(key, {})
        holder[keys[-1] if keys else target] = draw(HOSTILE)
    form = draw(st.sampled_from(["mapping", "text", "bytes"]))
    if form == "mapping":
        return data
    text = json.dumps(data, ensure_ascii=draw(st.booleans()))
    if form == "text":
        return text
    return text.encode("utf-8", "surrogatepass")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(hostile_bodies(), min_size=1, max_size=5))
def test_hostile_values_never_fail_a_write(tracker: Tracker, batch: list[Any]) -> None:
    """Whatever value a body holds where, ingest records it (rejected with a reason, or not)."""
    before = len(tracker.deliveries(limit=None))
    results = [tracker.ingest(item) for item in batch]
    summary = tracker.ingest_many(batch)
    assert summary.total == len(batch)
    for result in results:
        assert isinstance(result.outcome, Outcome)
        if result.outcome is Outcome.REJECTED:
            assert result.errors
            assert all(e.field and e.reason for e in result.errors)
    assert len(tracker.deliveries(limit=None)) == before + 2 * len(batch)


# --- signatures ---------------------------------------------------------------------------------


def test_verified_delivery_records_when_and_which_secret(tracker: Tracker) -> None:
    """A delivery verified by the receiver records signed_at and the secret's label."""
    verified = Verification("app2", T0, "not-stored")
    tracker.ingest(raw("started", "s1", T0), verified=verified)
    stored = only_delivery(tracker)
    assert (stored.signed_at, stored.secret_label) == (T0, "app2")
    assert "not-stored" not in json.dumps(stored.as_dict())
