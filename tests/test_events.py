"""Parsing webhook deliveries (docs/concepts.md), checked against Zoom's schema and examples."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from rtms_lifecycle.events import (
    ConcurrencyAlert,
    StreamEvent,
    UnhandledDelivery,
    UrlValidation,
)
from rtms_lifecycle.exceptions import DeliveryRejected
from rtms_lifecycle.models import STREAM_MODELS, ConcurrencyLimited, ConcurrencyNearLimit
from rtms_lifecycle.parsing import parse_delivery

ZOOM = Path(__file__).resolve().parent / "zoom"  # a copy of Zoom's published schema (README there)
EXAMPLES = sorted((ZOOM / "examples").glob("*.json"))
WEBHOOKS: dict[str, Any] = json.loads((ZOOM / "rtms-webhooks.openapi.json").read_text())["webhooks"]

# docs/concepts.md, the stream event table: scope -> (event name prefix, scope id field).
SCOPES = {
    "meeting": ("meeting.rtms_", "meeting_uuid"),
    "webinar": ("webinar.rtms_", "webinar_uuid"),
    "session": ("session.rtms_", "session_id"),
    "contact_center": ("contact_center.voice_rtms_", "engagement_id"),
    "phone": ("phone.rtms_", "call_id"),
}
KINDS = ("started", "interrupted", "stopped")
# event name -> (scope, kind, scope id field)
STREAM_EVENTS = {
    prefix + kind: (scope, kind, id_field)
    for scope, (prefix, id_field) in SCOPES.items()
    for kind in KINDS
}
STOPPED_EVENTS = [name for name, (_, kind, _) in STREAM_EVENTS.items() if kind == "stopped"]
CONCURRENCY_MODELS: dict[str, type[ConcurrencyNearLimit | ConcurrencyLimited]] = {
    "rtms.concurrency_near_limit": ConcurrencyNearLimit,
    "rtms.concurrency_limited": ConcurrencyLimited,
}
# docs/concepts.md: id_field holds exactly one of these.
CONCURRENCY_ID_FIELDS = ("meeting_uuid", "webinar_uuid", "session_id")

STREAM_WEBHOOKS = sorted(name for name in WEBHOOKS if name in STREAM_EVENTS)
ACCOUNT_WEBHOOKS = sorted(name for name in WEBHOOKS if name not in STREAM_EVENTS)
UNKNOWN_EVENT = "meeting.participant_joined"
EVENT_TS = 1_700_000_000_000
MAX_TS = 2**63 - 1


MISSING: Any = object()
"""Marks a field removed from a body rather than set."""


def stream_payload(event: str, **fields: Any) -> dict[str, Any]:
    """A stream payload: an rtms_stream_id, a stop_reason on ``stopped``, and ``fields``."""
    payload: dict[str, Any] = {"rtms_stream_id": "stream-1"}
    if STREAM_EVENTS[event][1] == "stopped":
        payload["stop_reason"] = 1
    return payload | fields


def valid_payload(event: str) -> dict[str, Any]:
    """A minimal payload the parser accepts for ``event`` (any payload for an unknown event)."""
    if event == "rtms.concurrency_near_limit":
        return {"concurrency_limit": 10, "concurrency_number": 8, "percentage": 80}
    if event == "rtms.concurrency_limited":
        return {"operator_id": "op-1", "concurrency_number": 11, "id_field": {"meeting_uuid": "m"}}
    if event not in STREAM_EVENTS:
        return {}
    return stream_payload(event, **{STREAM_EVENTS[event][2]: "scope-1"})


def delivery(event: str, payload: Any = None, **envelope: Any) -> dict[str, Any]:
    """A delivery body of ``event``; ``payload`` defaults to a minimal valid one."""
    body = {"event": event, "event_ts": EVENT_TS, "payload": payload} | envelope
    if payload is None:
        body["payload"] = valid_payload(event)
    return body


def replaced(mapping: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``mapping`` with ``key`` set to ``value``, or removed if it is MISSING."""
    copied = dict(mapping)
    if value is MISSING:
        del copied[key]
    else:
        copied[key] = value
    return copied


def wire(body: Mapping[str, Any]) -> bytes:
    """``body`` as Zoom sends it: JSON bytes."""
    return json.dumps(body).encode()


def rejected(body: Any) -> DeliveryRejected:
    """The rejection ``parse_delivery`` raises for ``body``."""
    with pytest.raises(DeliveryRejected) as info:
        parse_delivery(body)
    return info.value


def reason_for(error: DeliveryRejected, field: str) -> str:
    """The reason ``error`` gives for ``field`` (lower-cased); fails if the field is not named."""
    reasons = {e.field: e.reason for e in error.errors}
    assert field in reasons, f"{field} not named in {error.errors}"
    assert reasons[field].strip()
    return reasons[field].lower()


def parse_stream(body: Any) -> StreamEvent:
    """Parse a body that must be a stream event."""
    parsed = parse_delivery(body)
    assert isinstance(parsed, StreamEvent)
    return parsed


# --- Zoom's published oracle -----------------------------------------------------------------


def test_schema_and_examples_are_found() -> None:
    """Zoom's schema holds the documented 11 webhooks and every example is one of them."""
    assert len(WEBHOOKS) == 11
    assert EXAMPLES
    assert {json.loads(path.read_text())["event"] for path in EXAMPLES} <= set(WEBHOOKS)


def test_parser_knows_exactly_the_spec_stream_events() -> None:
    """The parser's stream event names are the documented 15 (5 scopes x 3 kinds)."""
    assert set(STREAM_MODELS) == set(STREAM_EVENTS)


def test_every_schema_webhook_is_a_stream_or_concurrency_event() -> None:
    """Each schema webhook is a documented stream event or one of the two concurrency events."""
    assert set(ACCOUNT_WEBHOOKS) == set(CONCURRENCY_MODELS)


# --- examples ------------------------------------------------------------------------------------


STREAM_EXAMPLES = [p for p in EXAMPLES if json.loads(p.read_text())["event"] in STREAM_EVENTS]
ACCOUNT_EXAMPLES = [p for p in EXAMPLES if p not in STREAM_EXAMPLES]


@pytest.mark.parametrize("path", STREAM_EXAMPLES, ids=lambda p: p.stem)
def test_stream_example_parses(path: Path) -> None:
    """Each stream example parses to a StreamEvent with the documented scope, kind and ids."""
    body = json.loads(path.read_text())
    scope, kind, id_field = STREAM_EVENTS[body["event"]]
    payload = body["payload"]
    parsed = parse_stream(path.read_bytes())
    assert (parsed.event, parsed.scope, parsed.kind) == (body["event"], scope, kind)
    assert parsed.stream_id == payload["rtms_stream_id"]
    assert parsed.scope_id == payload[id_field]
    assert parsed.event_ts == body["event_ts"]
    assert isinstance(parsed.model, STREAM_MODELS[body["event"]])
    for name in ("server_urls", "operator_id", "session_key", "stop_reason"):
        assert getattr(parsed, name) == payload.get(name), name
    assert parsed.payload == payload


@pytest.mark.parametrize("path", ACCOUNT_EXAMPLES, ids=lambda p: p.stem)
def test_concurrency_example_parses(path: Path) -> None:
    """Each concurrency example parses to a ConcurrencyAlert carrying the example's fields."""
    body = json.loads(path.read_text())
    payload = body["payload"]
    parsed = parse_delivery(path.read_bytes())
    assert isinstance(parsed, ConcurrencyAlert)
    assert isinstance(parsed.model, CONCURRENCY_MODELS[body["event"]])
    assert (parsed.event, parsed.event_ts) == (body["event"], body["event_ts"])
    for name in ("concurrency_number", "concurrency_limit", "percentage", "operator_id"):
        assert getattr(parsed, name) == payload.get(name), name
    # id_field holds exactly one identifier (and is absent on near_limit)
    assert [(parsed.id_field, parsed.id_value)] == list(
        payload.get("id_field", {None: None}).items()
    )
    assert parsed.payload == payload


# --- the published schema as oracle --------------------------------------------------------------


def _identifier_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # An identifier is the key a stream (or alert) is stored under: a non-empty string (an
    # empty one identifies nothing) without NUL (no PostgreSQL text column can hold one), so the
    # parser rejects any other like an unusable identifier (tested below).
    return {**schema, "minLength": 1, "pattern": "^[^\x00]*$"}


def request_schema(name: str) -> dict[str, Any]:
    """The published JSON schema of webhook ``name``'s request body."""
    content = WEBHOOKS[name]["post"]["requestBody"]["content"]
    schema: dict[str, Any] = content["application/json"]["schema"]
    return schema


# Draws happen inside the test (st.data(), one test per webhook), so they count toward hypothesis'
# per-example deadline; generating nested JSON can take longer than it on a loaded CI machine.
SCHEMA_SETTINGS = settings(max_examples=50, deadline=None)


@cache
def delivery_strategy(name: str) -> st.SearchStrategy[Any]:
    """Deliveries of webhook ``name`` as its published schema allows, with the documented rules."""
    schema = copy.deepcopy(request_schema(name))
    props = schema["properties"]
    # The schema types `event` as any string; a delivery of this webhook names this webhook.
    props["event"] = {"const": name}
    # epoch ms as a signed 64-bit integer (the schema's own format int64, spelt out as bounds the
    # generator honours); a time before the epoch is not a delivery time.
    props["event_ts"] = {"type": "integer", "minimum": 0, "maximum": MAX_TS}
    payload = props["payload"]["properties"]
    if name in STREAM_EVENTS:
        for field in ("rtms_stream_id", STREAM_EVENTS[name][2]):
            payload[field] = _identifier_schema(payload[field])
    for field, field_schema in payload.items():
        if field_schema.get("type") == "integer" and "enum" not in field_schema:
            # Counts and percentages: the schema gives no width; the library stores them as 32-bit
            # integers, the width of the schema's format "int" for stop_reason.
            payload[field] = {**field_schema, "minimum": -(2**31), "maximum": 2**31 - 1}
    if "id_field" in payload:
        branches = payload["id_field"]["oneOf"]
        for branch, own in zip(branches, CONCURRENCY_ID_FIELDS, strict=True):
            branch["properties"][own] = _identifier_schema(branch["properties"][own])
            # id_field holds exactly one identifier. The schema's oneOf alone still allows
            # a second one of another type (it then fails that branch, so one branch matches).
            others = [{"required": [other]} for other in CONCURRENCY_ID_FIELDS if other != own]
            branch["not"] = {"anyOf": others}
    return from_schema(schema)


@pytest.mark.parametrize("name", STREAM_WEBHOOKS)
@SCHEMA_SETTINGS
@given(data=st.data())
def test_schema_stream_delivery_parses(name: str, data: st.DataObject) -> None:
    """Any delivery the schema allows for a stream webhook parses to that stream's event."""
    body = data.draw(delivery_strategy(name))
    scope, kind, id_field = STREAM_EVENTS[name]
    parsed = parse_stream(wire(body))
    assert (parsed.scope, parsed.kind, parsed.event_ts) == (scope, kind, body["event_ts"])
    assert parsed.stream_id == body["payload"]["rtms_stream_id"]
    assert parsed.scope_id == body["payload"][id_field]
    assert isinstance(parsed.model, STREAM_MODELS[name])


@pytest.mark.parametrize("name", ACCOUNT_WEBHOOKS)
@SCHEMA_SETTINGS
@given(data=st.data())
def test_schema_account_delivery_parses(name: str, data: st.DataObject) -> None:
    """Any delivery the schema allows for a concurrency webhook parses to a ConcurrencyAlert."""
    body = data.draw(delivery_strategy(name))
    parsed = parse_delivery(wire(body))
    assert isinstance(parsed, ConcurrencyAlert)
    assert isinstance(parsed.model, CONCURRENCY_MODELS[name])
    assert parsed.concurrency_number == body["payload"]["concurrency_number"]


def identifying_fields(name: str) -> list[str]:
    """The payload fields without which a delivery of ``name`` must be rejected.

    A stream event needs only its rtms_stream_id: its scope id and stop reason are tolerated
    as absent (Zoom's own samples omit them).
    """
    if name in STREAM_EVENTS:
        return ["rtms_stream_id"]
    payload = request_schema(name)["properties"]["payload"]
    return [f for f in payload["required"] if payload["properties"][f].get("type") == "integer"]


# Where the parser would read a removed field from instead: payload.object.
ALTERNATIVE_SOURCES = {"rtms_stream_id": ("object",)}


@pytest.mark.parametrize(
    ("name", "field"), [(name, field) for name in WEBHOOKS for field in identifying_fields(name)]
)
@settings(SCHEMA_SETTINGS, max_examples=20)
@given(data=st.data())
def test_schema_delivery_without_identifying_field_is_rejected(
    name: str, field: str, data: st.DataObject
) -> None:
    """Removing a required identifying field from any schema-valid delivery rejects it."""
    body = data.draw(delivery_strategy(name))
    removed = {field, *ALTERNATIVE_SOURCES.get(field, ())}
    body["payload"] = {k: v for k, v in body["payload"].items() if k not in removed}
    error = rejected(wire(body))
    assert "missing" in reason_for(error, f"payload.{field}")
    assert error.event == name


# --- tolerance (docs/concepts.md) ---------------------------------------------------------------


ALL_EVENTS = [*STREAM_EVENTS, *CONCURRENCY_MODELS]


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_unknown_extra_fields_are_accepted_and_kept(event: str) -> None:
    """Unknown envelope fields are accepted; unknown payload fields, nested too, are kept."""
    payload = valid_payload(event) | {"x_future": {"nested": [1, {"deep": None}]}, "x_flag": True}
    parsed = parse_delivery(wire(delivery(event, payload, x_envelope_extra="accepted")))
    assert isinstance(parsed, StreamEvent | ConcurrencyAlert)
    assert parsed.payload == payload


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_account_id_is_kept(event: str) -> None:
    """An account_id in the payload is kept on the parsed event."""
    parsed = parse_delivery(wire(delivery(event, valid_payload(event) | {"account_id": "acct-9"})))
    assert isinstance(parsed, StreamEvent | ConcurrencyAlert)
    assert parsed.account_id == "acct-9"


@pytest.mark.parametrize(
    "event", [e for e, (scope, _, _) in STREAM_EVENTS.items() if scope in {"meeting", "webinar"}]
)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("meeting_id", 81234567890),
        ("meeting_id", "81234567890"),
        ("webinar_id", 98765432100),
        ("webinar_id", "98765432100"),
        ("is_original_host", True),
        ("is_original_host", False),
    ],
)
def test_known_extra_fields_are_accepted(event: str, field: str, value: object) -> None:
    """meeting_id / webinar_id (string or number) and is_original_host are accepted and kept."""
    payload = valid_payload(event) | {field: value}
    parsed = parse_stream(wire(delivery(event, payload)))
    assert parsed.payload[field] == value
    assert parsed.scope_id == payload[STREAM_EVENTS[event][2]]


# (scope, identifiers in the payload, the one whose value is the scope id): docs/concepts.md's table
SCOPE_ID_CASES = [
    ("meeting", {"meeting_uuid": "m=="}, "meeting_uuid"),
    ("webinar", {"webinar_uuid": "w=="}, "webinar_uuid"),
    ("webinar", {"meeting_uuid": "m=="}, "meeting_uuid"),
    ("webinar", {"webinar_uuid": "w==", "meeting_uuid": "m=="}, "webinar_uuid"),
    ("session", {"session_id": "s==", "session_key": "key"}, "session_id"),
    ("contact_center", {"engagement_id": "e"}, "engagement_id"),
    ("contact_center", {"session_id": "s"}, "session_id"),
    ("contact_center", {"engagement_id": "e", "session_id": "s"}, "engagement_id"),
    ("phone", {"call_id": "c"}, "call_id"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("scope", "ids", "source"), SCOPE_ID_CASES)
def test_scope_id_comes_from_the_spec_field(
    scope: str, ids: dict[str, str], source: str, kind: str
) -> None:
    """Each scope takes its scope id from the documented field, or its fallback when absent."""
    event = SCOPES[scope][0] + kind
    parsed = parse_stream(wire(delivery(event, stream_payload(event, **ids))))
    assert (parsed.scope, parsed.kind) == (scope, kind)
    assert parsed.scope_id == ids[source]


CARRIED_VALUES = {
    "server_urls": "wss://a.zoom.us:443,wss://b.zoom.us:443",
    "operator_id": "30R7kT7bTIKSNUFEuH_Qlg",
    "session_key": "ABC36jaBI145",
}
# docs/concepts.md: started carries server_urls, and operator_id for meetings and webinars;
# session events carry session_key.
CARRIED = [
    *[(prefix + "started", "server_urls") for prefix, _ in SCOPES.values()],
    *[(SCOPES[scope][0] + "started", "operator_id") for scope in ("meeting", "webinar")],
    *[(SCOPES["session"][0] + kind, "session_key") for kind in KINDS],
]


@pytest.mark.parametrize(("event", "field"), CARRIED)
def test_carried_field_is_kept(event: str, field: str) -> None:
    """server_urls (comma-separated kept whole), operator_id and session_key are kept as given."""
    payload = valid_payload(event) | {field: CARRIED_VALUES[field]}
    parsed = parse_stream(wire(delivery(event, payload)))
    assert getattr(parsed, field) == CARRIED_VALUES[field]


@pytest.mark.parametrize("event", STREAM_EVENTS)
def test_missing_optional_fields_are_none(event: str) -> None:
    """Missing server_urls, session_key and operator_id are tolerated as None."""
    parsed = parse_stream(wire(delivery(event)))
    assert (parsed.server_urls, parsed.session_key, parsed.operator_id) == (None, None, None)


@pytest.mark.parametrize("event", STREAM_EVENTS)
def test_payload_object_is_unwrapped(event: str) -> None:
    """Without rtms_stream_id, fields come from payload.object and account_id from the payload."""
    inner = valid_payload(event) | CARRIED_VALUES
    outer = {"account_id": "acct-outer", "object": inner}
    parsed = parse_stream(wire(delivery(event, outer)))
    assert parsed.stream_id == inner["rtms_stream_id"]
    assert parsed.scope_id == inner[STREAM_EVENTS[event][2]]
    assert parsed.stop_reason == inner.get("stop_reason")
    assert parsed.account_id == "acct-outer"
    assert parsed.payload == outer


@pytest.mark.parametrize("event", STOPPED_EVENTS)
@pytest.mark.parametrize("code", [0, 1, 26, 27, 99, -1])
def test_any_integer_stop_reason_is_accepted(event: str, code: int) -> None:
    """A stopped event accepts any integer stop_reason, not only the schema's enum."""
    parsed = parse_stream(wire(delivery(event, valid_payload(event) | {"stop_reason": code})))
    assert parsed.stop_reason == code


@pytest.mark.parametrize("event", [*ALL_EVENTS, UNKNOWN_EVENT])
@pytest.mark.parametrize("event_ts", [0, 1626230691572, MAX_TS, "1626230691572", str(MAX_TS)])
def test_event_ts_integer_or_numeric_string_is_accepted(event: str, event_ts: int | str) -> None:
    """event_ts from 0 to 2**63-1 is accepted, also given as a numeric string."""
    parsed = parse_delivery(wire(delivery(event, event_ts=event_ts)))
    assert parsed.event_ts == int(event_ts)


BODY_TYPES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "bytes": wire,
    "str": json.dumps,
    "bytearray": lambda body: bytearray(wire(body)),
    "memoryview": lambda body: memoryview(wire(body)),
    "dict": lambda body: body,
    "read-only mapping": MappingProxyType,
}


@pytest.mark.parametrize("to_input", BODY_TYPES.values(), ids=list(BODY_TYPES))
def test_body_as_bytes_text_or_mapping_is_accepted(
    to_input: Callable[[dict[str, Any]], Any],
) -> None:
    """A body given as bytes, text or an already decoded mapping parses the same."""
    event = "session.rtms_started"
    body = delivery(event, valid_payload(event) | CARRIED_VALUES)
    parsed = parse_stream(to_input(body))
    assert (parsed.event, parsed.event_ts) == (event, body["event_ts"])
    assert (parsed.stream_id, parsed.scope_id) == ("stream-1", "scope-1")
    assert parsed.payload == body["payload"]


# --- rejections (docs/concepts.md) --------------------------------------------------------------


VALID_BYTES = wire(delivery("meeting.rtms_stopped"))
# body -> a word its rejection reason must contain
BAD_BODIES: dict[str, tuple[bytes | str, str]] = {
    "not JSON": (b"event=meeting.rtms_stopped", "json"),
    "truncated JSON": (VALID_BYTES[:-1], "json"),
    "empty": (b"", "json"),
    "not UTF-8": (VALID_BYTES.replace(b"stream-1", b"stream-\xff"), "not utf-8 text: byte 0xff"),
    "UTF-16": (VALID_BYTES.decode().encode("utf-16"), "not utf-8 text: byte 0xff at offset 0"),
    "array": (b'[{"event": "meeting.rtms_stopped"}]', "object"),
    "number": (b"1626230691572", "object"),
    "string": (b'"meeting.rtms_stopped"', "object"),
    "null": (b"null", "object"),
    "array as text": ("[]", "object"),
}


@pytest.mark.parametrize(("body", "word"), BAD_BODIES.values(), ids=list(BAD_BODIES))
def test_body_not_a_json_object_is_rejected(body: bytes | str, word: str) -> None:
    """A body that is not UTF-8 JSON holding an object is rejected, naming the body (and, for
    bytes that are not UTF-8, the first such byte and its offset)."""
    assert word in reason_for(rejected(body), "body")


@pytest.mark.parametrize(
    ("value", "word"),
    [(MISSING, "missing"), (5, "string"), (None, "string"), (["meeting.rtms_started"], "string")],
)
def test_event_not_a_string_is_rejected(value: object, word: str) -> None:
    """A delivery without a string event is rejected, naming event."""
    body = replaced(delivery("meeting.rtms_started"), "event", value)
    assert word in reason_for(rejected(wire(body)), "event")


@pytest.mark.parametrize(
    "event", ["meeting.rtms_started", "rtms.concurrency_limited", UNKNOWN_EVENT]
)
@pytest.mark.parametrize(
    ("value", "word"),
    [
        (MISSING, "missing"),
        (None, "integer"),
        ("soon", "integer"),
        ("1.5", "integer"),
        ("", "integer"),
        (True, "integer"),
        (False, "integer"),
        (1.5, "integer"),
        ({"ms": 1}, "integer"),
        (-1, "-1"),
        ("-1", "-1"),
        (MAX_TS + 1, str(MAX_TS + 1)),
        (str(MAX_TS + 1), str(MAX_TS + 1)),
    ],
)
def test_event_ts_not_an_epoch_ms_integer_is_rejected(event: str, value: object, word: str) -> None:
    """event_ts missing, not an integer (bool, float), negative or above 2**63-1 is rejected."""
    body = replaced(delivery(event), "event_ts", value)
    assert word in reason_for(rejected(wire(body)), "event_ts")


SCOPE_ID = "<the scope id field>"
STREAM_FIELD_CASES = [
    ("rtms_stream_id", MISSING, "missing"),
    ("rtms_stream_id", "", "empty"),
    ("rtms_stream_id", 609340, "string"),
    ("rtms_stream_id", None, "string"),
    ("rtms_stream_id", ["609340fb"], "string"),
    ("rtms_stream_id", "6093\x0040fb", "nul"),
    (SCOPE_ID, "4444\x00", "nul"),
    (SCOPE_ID, True, "string"),
    (SCOPE_ID, 44.5, "string"),
    (SCOPE_ID, {"uuid": "4444"}, "string"),
]


@pytest.mark.parametrize("event", STREAM_EVENTS)
@pytest.mark.parametrize(("field", "value", "word"), STREAM_FIELD_CASES)
def test_stream_without_identifiers_is_rejected(
    event: str, field: str, value: object, word: str
) -> None:
    """A stream event without a usable rtms_stream_id, or with an unusable scope id, is rejected."""
    field = STREAM_EVENTS[event][2] if field == SCOPE_ID else field
    body = delivery(event, replaced(valid_payload(event), field, value))
    error = rejected(wire(body))
    assert word in reason_for(error, f"payload.{field}")
    assert error.event == event


@pytest.mark.parametrize("event", STREAM_EVENTS)
def test_identifier_errors_inside_payload_object_name_that_path(event: str) -> None:
    """An unusable scope id inside payload.object is reported as payload.object.<field>."""
    field = STREAM_EVENTS[event][2]
    body = delivery(event, {"object": replaced(valid_payload(event), field, ["x"])})
    assert "string" in reason_for(rejected(wire(body)), f"payload.object.{field}")


@pytest.mark.parametrize("event", STOPPED_EVENTS)
@pytest.mark.parametrize(
    ("value", "word"),
    [
        (True, "integer"),
        (1.5, "integer"),
        ("1.0", "integer"),
        (" 6", "integer"),
        ("HOST_TRIGGERED", "integer"),
        ([6], "integer"),
        ("9" * 30 + "x", "integer"),
    ],
)
def test_stopped_with_a_non_integer_stop_reason_is_rejected(
    event: str, value: object, word: str
) -> None:
    """A stopped event whose stop_reason is present but not an integer is rejected."""
    body = delivery(event, replaced(valid_payload(event), "stop_reason", value))
    assert word in reason_for(rejected(wire(body)), "payload.stop_reason")


@pytest.mark.parametrize("event", STOPPED_EVENTS)
@pytest.mark.parametrize(
    ("value", "code"),
    [
        (2**31, 2**31),
        (-(2**31) - 1, -(2**31) - 1),
        (2**63 - 1, 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("0" * 30 + "6", 6),
        (2**63, 2**63 - 1),
        (-(10**30), -(2**63)),
        ("9" * 30, 2**63 - 1),
    ],
)
def test_stopped_with_a_wide_stop_reason_keeps_its_stop(
    event: str, value: object, code: int
) -> None:
    """Any 64-bit stop_reason is read as sent; one beyond 64 bits, which no column holds, is
    read as the nearer bound rather than refused (a refused stop would leave the stream live)."""
    body = delivery(event, replaced(valid_payload(event), "stop_reason", value))
    parsed = parse_delivery(wire(body))
    assert isinstance(parsed, StreamEvent)
    assert parsed.stop_reason == code


@pytest.mark.parametrize("event", ALL_EVENTS)
@pytest.mark.parametrize(
    ("value", "word"),
    [(MISSING, "missing"), (None, "object"), ([], "object"), ("payload", "object"), (7, "object")],
)
def test_payload_not_an_object_is_rejected(event: str, value: object, word: str) -> None:
    """A known event whose payload is missing or not an object is rejected, naming payload."""
    body = replaced(delivery(event), "payload", value)
    assert word in reason_for(rejected(wire(body)), "payload")


@pytest.mark.parametrize(
    ("event", "field"),
    [(name, field) for name in ACCOUNT_WEBHOOKS for field in identifying_fields(name)],
)
@pytest.mark.parametrize(
    ("value", "word"),
    [(MISSING, "missing"), ("80", "integer"), (True, "integer"), (0.5, "integer")],
)
def test_concurrency_count_not_an_integer_is_rejected(
    event: str, field: str, value: object, word: str
) -> None:
    """A concurrency alert whose count or percentage is missing or not an integer is rejected."""
    body = delivery(event, replaced(valid_payload(event), field, value))
    assert word in reason_for(rejected(wire(body)), f"payload.{field}")


ID_FIELD_CASES: dict[str, tuple[object, str]] = {
    "missing": (MISSING, "missing"),
    "not an object": (["meeting_uuid"], "object"),
    "no identifier": ({}, "exactly one"),
    "only an unknown identifier": ({"call_id": "c"}, "exactly one"),
    "two identifiers": ({"meeting_uuid": "m", "session_id": "s"}, "exactly one"),
    "three identifiers": (dict.fromkeys(CONCURRENCY_ID_FIELDS, "x"), "exactly one"),
    "non-string identifier": ({"webinar_uuid": 4444}, "string"),
    "empty identifier": ({"session_id": ""}, "empty"),
}


@pytest.mark.parametrize(("id_field", "word"), ID_FIELD_CASES.values(), ids=list(ID_FIELD_CASES))
def test_concurrency_limited_without_exactly_one_identifier_is_rejected(
    id_field: object, word: str
) -> None:
    """rtms.concurrency_limited needs id_field holding exactly one usable identifier."""
    event = "rtms.concurrency_limited"
    body = delivery(event, replaced(valid_payload(event), "id_field", id_field))
    assert word in reason_for(rejected(wire(body)), "payload.id_field")


@pytest.mark.parametrize("identifier", CONCURRENCY_ID_FIELDS)
def test_concurrency_limited_names_its_identifier(identifier: str) -> None:
    """rtms.concurrency_limited reports which identifier id_field holds, and its value."""
    event = "rtms.concurrency_limited"
    payload = valid_payload(event) | {"id_field": {identifier: "id-1", "extra": 1}}
    parsed = parse_delivery(wire(delivery(event, payload)))
    assert isinstance(parsed, ConcurrencyAlert)
    assert (parsed.id_field, parsed.id_value) == (identifier, "id-1")


# --- unhandled -----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [UNKNOWN_EVENT, "rtms.something_new"])
@pytest.mark.parametrize("payload", [MISSING, {}, {"anything": [1, None]}, [1, 2], "text", None])
def test_unknown_event_is_unhandled_not_rejected(event: str, payload: object) -> None:
    """A well-formed delivery of an unknown event is unhandled, its payload as given (or None)."""
    body = replaced(delivery(event), "payload", payload)
    parsed = parse_delivery(wire(body))
    expected = UnhandledDelivery(event, EVENT_TS, None if payload is MISSING else payload)
    assert parsed == expected


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("rtms_stream_id", "s" * 256, 255),
        ("meeting_uuid", "m" * 256, 255),
        ("operator_id", "o" * 256, 255),
        ("server_urls", "wss://x," * 300, 2000),
    ],
)
def test_overlong_field_is_rejected_with_its_limit(field: str, value: str, limit: int) -> None:
    """A value longer than its column holds is rejected up front, naming the field and limit."""
    payload = {"rtms_stream_id": "s1", "meeting_uuid": "m1", field: value}
    with pytest.raises(DeliveryRejected) as caught:
        parse_delivery({"event": "meeting.rtms_started", "event_ts": 1, "payload": payload})
    (error,) = caught.value.errors
    assert error.field == f"payload.{field}"
    assert f"at most {limit}" in error.reason


@pytest.mark.parametrize("length", [255, 1])
def test_identifier_at_the_limit_is_accepted(length: int) -> None:
    """Identifiers up to the column size parse."""
    sid = "s" * length
    event = parse_delivery(
        {
            "event": "meeting.rtms_started",
            "event_ts": 1,
            "payload": {"rtms_stream_id": sid, "meeting_uuid": "m1"},
        }
    )
    assert isinstance(event, StreamEvent)
    assert event.stream_id == sid


@pytest.mark.parametrize("value", [[], {"id": 1}, True, "x" * 300])
def test_unreadable_account_id_is_read_as_absent(value: Any) -> None:
    """account_id is in no published schema: a value nobody sends is read as absent, not refused."""
    body = delivery("webinar.rtms_stopped", valid_payload("webinar.rtms_stopped"))
    body["payload"]["account_id"] = value
    parsed = parse_delivery(wire(body))
    assert isinstance(parsed, StreamEvent)
    assert parsed.account_id is None


# --- shapes Zoom's docs and samples show beyond the published schema --------------------------


@pytest.mark.parametrize("event", STOPPED_EVENTS)
@pytest.mark.parametrize("value", [MISSING, None])
def test_stopped_without_stop_reason_parses(event: str, value: object) -> None:
    """A stopped event with no stop_reason (absent or null) parses, stop_reason None."""
    payload = replaced(valid_payload(event), "stop_reason", value)
    assert parse_stream(wire(delivery(event, payload))).stop_reason is None


@pytest.mark.parametrize("event", STOPPED_EVENTS)
@pytest.mark.parametrize(("text", "code"), [("6", 6), ("0", 0), ("-1", -1), ("26", 26)])
def test_integer_valued_string_stop_reason_counts_as_the_integer(
    event: str, text: str, code: int
) -> None:
    """A stop_reason written as an integer-valued string counts as that integer."""
    payload = valid_payload(event) | {"stop_reason": text}
    assert parse_stream(wire(delivery(event, payload))).stop_reason == code


@pytest.mark.parametrize("event", STREAM_EVENTS)
@pytest.mark.parametrize("value", [MISSING, None, ""])
def test_stream_event_without_scope_id_parses(event: str, value: object) -> None:
    """A stream event without a scope id (absent, null or empty) parses, scope_id None."""
    payload = replaced(valid_payload(event), STREAM_EVENTS[event][2], value)
    parsed = parse_stream(wire(delivery(event, payload)))
    assert (parsed.stream_id, parsed.scope_id) == ("stream-1", None)


@pytest.mark.parametrize("event", STOPPED_EVENTS)
def test_nested_stop_carrying_only_meeting_id_parses(event: str) -> None:
    """The documented nested shape: payload.object with rtms_stream_id and meeting_id only."""
    inner = {"rtms_stream_id": "stream-1", "meeting_id": 81234567890, "stop_reason": 6}
    parsed = parse_stream(wire(delivery(event, {"account_id": "acct", "object": inner})))
    assert (parsed.stream_id, parsed.scope_id, parsed.stop_reason) == ("stream-1", None, 6)
    assert parsed.account_id == "acct"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("scope", "value", "expected"),
    [
        ("phone", 7_123_456_789_012_345_678, "7123456789012345678"),
        ("phone", 0, "0"),
        ("meeting", 81234567890, "81234567890"),
        ("session", 2**70, str(2**70)),
    ],
)
def test_numeric_scope_id_is_kept_as_its_decimal_text(
    scope: str, value: int, expected: str, kind: str
) -> None:
    """A scope id given as a number (Zoom Phone's call_id) is kept as its decimal string."""
    event = SCOPES[scope][0] + kind
    payload = stream_payload(event, **{SCOPES[scope][1]: value})
    assert parse_stream(wire(delivery(event, payload))).scope_id == expected


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        (["wss://a.zoom.us", "wss://b.zoom.us"], "wss://a.zoom.us,wss://b.zoom.us"),
        (["wss://a.zoom.us"], "wss://a.zoom.us"),
        ([], None),
    ],
)
@pytest.mark.parametrize("event", [prefix + "started" for prefix, _ in SCOPES.values()])
def test_server_urls_as_a_list_are_kept_comma_separated(
    event: str, urls: list[str], expected: str | None
) -> None:
    """server_urls given as a list of strings is kept as the same URLs comma-separated."""
    payload = valid_payload(event) | {"server_urls": urls}
    assert parse_stream(wire(delivery(event, payload))).server_urls == expected


def test_server_urls_list_of_non_strings_is_rejected() -> None:
    """A server_urls list holding something else than strings is rejected, naming the field."""
    event = "meeting.rtms_started"
    payload = valid_payload(event) | {"server_urls": ["wss://a", 5]}
    assert "string" in reason_for(rejected(wire(delivery(event, payload))), "payload.server_urls")


@pytest.mark.parametrize("event_ts", [MISSING, None])
def test_url_validation_without_event_ts_parses(event_ts: object) -> None:
    """Zoom's endpoint challenge without event_ts (as Zoom's test scripts send it) parses."""
    body = replaced(
        delivery("endpoint.url_validation", {"plainToken": "tok"}), "event_ts", event_ts
    )
    parsed = parse_delivery(wire(body))
    assert isinstance(parsed, UrlValidation)
    assert (parsed.plain_token, parsed.event_ts) == ("tok", None)


@pytest.mark.parametrize("event", [r"meeting.rtms\u0000_started", r"\u0000", r"x.rtms_\u0000"])
def test_event_name_with_nul_is_rejected(event: str) -> None:
    """An event name holding NUL (no text column keeps it) is rejected, naming event."""
    body = b'{"event": "%s", "event_ts": 1, "payload": {}}' % event.encode()
    error = rejected(body)
    assert "nul" in reason_for(error, "event")
    assert error.event is None


@pytest.mark.parametrize(
    "stream_id", [r"s\u0000", "s" * 256], ids=["nul", "longer-than-its-column"]
)
def test_rejection_names_only_a_storable_stream(stream_id: str) -> None:
    """A rejected body's stream id hint is kept only when the stream_id column can hold it."""
    body = b'{"event": "meeting.rtms_stopped", "event_ts": "soon", "payload": %s}' % (
        b'{"rtms_stream_id": "%s"}' % stream_id.encode()
    )
    assert rejected(body).stream_id is None
