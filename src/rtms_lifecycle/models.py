"""The pydantic models of every Zoom RTMS webhook delivery, and the parser built on them.

Reached through :func:`rtms_lifecycle.parsing.parse_delivery`: building these models is most of
what importing pydantic costs, so only a process that parses a delivery imports this module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError, from_json

from rtms_lifecycle.events import (
    MAX_ID_LENGTH,
    MAX_URLS_LENGTH,
    ConcurrencyAlert,
    EventKind,
    ParsedDelivery,
    Scope,
    StreamEvent,
    UnhandledDelivery,
    UrlValidation,
)
from rtms_lifecycle.exceptions import DeliveryRejected, FieldError

log = logging.getLogger(__name__)

__all__ = [
    "STREAM_MODELS",
    "ConcurrencyLimited",
    "ConcurrencyNearLimit",
    "EndpointUrlValidation",
    "StreamDelivery",
    "check_app_event",
    "parse_delivery",
    "stream_id_hint",
]

# Largest epoch-ms a BIGINT column holds; anything beyond is not a timestamp.
_MAX_TS: Final = 2**63 - 1


# --- field types -------------------------------------------------------------------------------


def _event_ts(value: Any) -> int:
    # Real deliveries sometimes carry the timestamp as a numeric string; bools are ints in Python
    # but never a timestamp.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError(
            "event_ts", "must be an integer (epoch milliseconds), got {got}", {"got": _show(value)}
        )
    if not 0 <= value <= _MAX_TS:
        raise PydanticCustomError(
            "event_ts", "must be between 0 and 2**63-1, got {got}", {"got": value}
        )
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int", "must be an integer, got {got}", {"got": _show(value)})
    return value


def _strict_int(value: Any) -> int:
    number = _integer(value)
    if not -(2**31) <= number < 2**31:
        raise PydanticCustomError("int", "out of range, got {got}", {"got": number})
    return number


#: The stop codes a column holds (BIGINT; SQLite's INTEGER): any other is stored as the nearer.
MIN_STOP_CODE: Final = -(2**63)
MAX_STOP_CODE: Final = 2**63 - 1


def _stop_reason(value: Any) -> int | None:
    # Zoom's own Phone and Contact Center samples treat stop_reason as optional: a stop without
    # one is still a stop (losing it would leave the stream live forever).
    if value is None:
        return None
    code = value
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        # More than 19 digits is beyond 64 bits: its sign is all that matters, unread.
        beyond = len(value.lstrip("-").lstrip("0")) > 19
        code = (-1 if value.startswith("-") else 1) * 2**64 if beyond else int(value)
    code = _integer(code)
    if MIN_STOP_CODE <= code <= MAX_STOP_CODE:
        return code
    # No column holds it, and refusing it would lose the stop (the stream would stay live):
    # the stop is applied with the nearer 64-bit bound; the stored body keeps the code as sent.
    stored = MAX_STOP_CODE if code > 0 else MIN_STOP_CODE
    log.warning(
        "payload.stop_reason: %s is outside the 64-bit range %d..%d; the stop is applied with"
        " stop_reason %d (the stored body keeps the code as sent)",
        _show(value),
        MIN_STOP_CODE,
        MAX_STOP_CODE,
        stored,
    )
    return stored


# An integer written as text ("6"); a longer one than 64 bits holds is not read digit by digit.
_INTEGER_TEXT: Final = re.compile(r"-?[0-9]+")


def _scope_id(value: Any) -> str | None:
    # The scope id is recorded when present and tolerated as absent (some documented shapes
    # carry only meeting_id); Zoom Phone sends call_id as a number, kept as its decimal text.
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _identifier(value)


def _event_name(value: Any) -> str:
    # The event name is stored as text: NUL cannot be (PostgreSQL refuses it in any text column).
    if not isinstance(value, str):
        raise PydanticCustomError("event", "must be a string, got {got}", {"got": _show(value)})
    if "\x00" in value:
        raise PydanticCustomError("event", "must not contain NUL characters", {})
    return value


def _identifier(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError(
            "identifier", "must be a string, got {got}", {"got": _show(value)}
        )
    if not value:
        raise PydanticCustomError("identifier", "must not be empty", {})
    if "\x00" in value:
        raise PydanticCustomError("identifier", "must not contain NUL characters", {})
    _check_length(value, MAX_ID_LENGTH)
    return value


def _check_length(value: str, limit: int) -> None:
    # The columns have these sizes on PostgreSQL: a longer value would fail the whole
    # transaction there, so it is refused here, with the reason.
    if len(value) > limit:
        raise PydanticCustomError(
            "too_long",
            "too long: {length} characters, at most {limit}",
            {"length": len(value), "limit": limit},
        )


def _text(limit: int) -> Any:
    def _optional_text(value: Any) -> str | None:
        # Tolerated as null when absent; numbers are kept as their text so nothing is lost.
        if value is None:
            return None
        if value.__class__ is str:
            # The usual case, before the checks of other types (several per delivery).
            plain: str = value.replace("\x00", "") if "\x00" in value else value
            _check_length(plain, limit)
            return plain
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            # server_urls as a list of URLs: kept as the same URLs comma-separated.
            value = ",".join(value) if value else None
            if value is None:
                return None
        if not isinstance(value, str):
            raise PydanticCustomError("text", "must be a string, got {got}", {"got": _show(value)})
        text: str = value.replace("\x00", "")
        _check_length(text, limit)
        return text

    return _optional_text


def _absent_if_unreadable(read: Any) -> Any:
    # For a field the published schema does not declare: a value nobody would send (a list, an
    # object, a boolean, an id too long to store) is read as absent, never a reason to reject
    # the delivery (extra fields are accepted); the raw payload keeps it as it came.
    def _lenient(value: Any) -> Any:
        try:
            return read(value)
        except PydanticCustomError:
            return None

    return _lenient


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


EventTs = Annotated[int, BeforeValidator(_event_ts)]
EventName = Annotated[str, BeforeValidator(_event_name)]
Identifier = Annotated[str, BeforeValidator(_identifier)]
ScopeId = Annotated[str | None, BeforeValidator(_scope_id)]
StopReasonCode = Annotated[int | None, BeforeValidator(_stop_reason)]
OptionalText = Annotated[str | None, BeforeValidator(_text(MAX_ID_LENGTH))]
# account_id: a known extra field, in no payload of the published schema.
ExtraText = Annotated[str | None, BeforeValidator(_absent_if_unreadable(_text(MAX_ID_LENGTH)))]
# Several comma-separated URLs; generous, but bounded like every indexed column.
ServerUrls = Annotated[str | None, BeforeValidator(_text(MAX_URLS_LENGTH))]
Int32 = Annotated[int, BeforeValidator(_strict_int)]

_LENIENT = ConfigDict(extra="allow", frozen=True)


# --- payloads ----------------------------------------------------------------------------------


class _StreamPayload(BaseModel):
    model_config = _LENIENT
    rtms_stream_id: Identifier
    account_id: ExtraText = None


class _StartedFields(BaseModel):
    model_config = _LENIENT
    server_urls: ServerUrls = None


class _OperatorFields(BaseModel):
    model_config = _LENIENT
    operator_id: OptionalText = None


class _StoppedFields(BaseModel):
    model_config = _LENIENT
    stop_reason: StopReasonCode = None


class MeetingPayload(_StreamPayload):
    """Fields every meeting stream event carries."""

    meeting_uuid: ScopeId = None


class WebinarPayload(_StreamPayload):
    """Webinar stream events: Zoom's SDK docs show ``webinar_uuid`` and ``meeting_uuid`` both."""

    webinar_uuid: ScopeId = None


class SessionPayload(_StreamPayload):
    """Video SDK session stream events."""

    session_id: ScopeId = None
    session_key: OptionalText = None


class ContactCenterPayload(_StreamPayload):
    """Contact Center voice stream events: ``engagement_id``, else ``session_id``."""

    engagement_id: ScopeId = None


class PhonePayload(_StreamPayload):
    """Zoom Phone stream events."""

    call_id: ScopeId = None


class MeetingStartedPayload(MeetingPayload, _StartedFields, _OperatorFields):
    """``meeting.rtms_started`` payload."""


class MeetingStoppedPayload(MeetingPayload, _StoppedFields):
    """``meeting.rtms_stopped`` payload."""


class WebinarStartedPayload(WebinarPayload, _StartedFields, _OperatorFields):
    """``webinar.rtms_started`` payload."""


class WebinarStoppedPayload(WebinarPayload, _StoppedFields):
    """``webinar.rtms_stopped`` payload."""


class SessionStartedPayload(SessionPayload, _StartedFields):
    """``session.rtms_started`` payload."""


class SessionStoppedPayload(SessionPayload, _StoppedFields):
    """``session.rtms_stopped`` payload."""


class ContactCenterStartedPayload(ContactCenterPayload, _StartedFields):
    """``contact_center.voice_rtms_started`` payload."""


class ContactCenterStoppedPayload(ContactCenterPayload, _StoppedFields):
    """``contact_center.voice_rtms_stopped`` payload."""


class PhoneStartedPayload(PhonePayload, _StartedFields):
    """``phone.rtms_started`` payload."""


class PhoneStoppedPayload(PhonePayload, _StoppedFields):
    """``phone.rtms_stopped`` payload."""


# --- deliveries --------------------------------------------------------------------------------


class Delivery(BaseModel):
    """The envelope every webhook body shares."""

    model_config = _LENIENT
    event: EventName
    event_ts: EventTs


class StreamDelivery(Delivery):
    """A stream event: which scope and kind it is are class attributes."""

    scope: ClassVar[Scope]
    kind: ClassVar[EventKind]
    scope_id_field: ClassVar[str]
    payload: _StreamPayload


def _stream_model(
    scope: Scope, kind: EventKind, event: str, scope_id_field: str, payload: type[_StreamPayload]
) -> type[StreamDelivery]:
    name = "".join(part.title() for part in event.replace(".", "_").split("_"))
    model: type[StreamDelivery] = type(  # pydantic builds the model from the annotations
        name,
        (StreamDelivery,),
        {
            "__module__": __name__,
            "__doc__": f"The ``{event}`` webhook delivery.",
            "__annotations__": {"event": Literal[event], "payload": payload},
        },
    )
    model.scope, model.kind, model.scope_id_field = scope, kind, scope_id_field
    return model


# scope: (event name prefix, scope id field, payload of started / interrupted / stopped)
_PAYLOADS: Final[dict[Scope, tuple[str, str, tuple[type[_StreamPayload], ...]]]] = {
    Scope.MEETING: (
        "meeting.rtms_",
        "meeting_uuid",
        (MeetingStartedPayload, MeetingPayload, MeetingStoppedPayload),
    ),
    Scope.WEBINAR: (
        "webinar.rtms_",
        "webinar_uuid",
        (WebinarStartedPayload, WebinarPayload, WebinarStoppedPayload),
    ),
    Scope.SESSION: (
        "session.rtms_",
        "session_id",
        (SessionStartedPayload, SessionPayload, SessionStoppedPayload),
    ),
    Scope.CONTACT_CENTER: (
        "contact_center.voice_rtms_",
        "engagement_id",
        (ContactCenterStartedPayload, ContactCenterPayload, ContactCenterStoppedPayload),
    ),
    Scope.PHONE: (
        "phone.rtms_",
        "call_id",
        (PhoneStartedPayload, PhonePayload, PhoneStoppedPayload),
    ),
}
_WEBHOOK_KINDS: Final = (EventKind.STARTED, EventKind.INTERRUPTED, EventKind.STOPPED)
# Where a scope id is read from when its own field is absent: Zoom's docs show webinars with
# meeting_uuid, and Contact Center engagements with session_id.
_FALLBACK_SCOPE_IDS: Final = {Scope.WEBINAR: "meeting_uuid", Scope.CONTACT_CENTER: "session_id"}

#: Every stream event name Zoom sends, mapped to its typed delivery model.
STREAM_MODELS: Final[dict[str, type[StreamDelivery]]] = {
    prefix + kind.value: _stream_model(scope, kind, prefix + kind.value, id_field, payload)
    for scope, (prefix, id_field, payloads) in _PAYLOADS.items()
    for kind, payload in zip(_WEBHOOK_KINDS, payloads, strict=True)
}


class ConcurrencyNearLimitPayload(BaseModel):
    """``rtms.concurrency_near_limit`` payload."""

    model_config = _LENIENT
    concurrency_limit: Int32
    concurrency_number: Int32
    percentage: Int32
    account_id: ExtraText = None


class MeetingIdField(BaseModel):
    """``id_field`` naming a meeting."""

    model_config = _LENIENT
    meeting_uuid: Identifier


class WebinarIdField(BaseModel):
    """``id_field`` naming a webinar."""

    model_config = _LENIENT
    webinar_uuid: Identifier


class SessionIdField(BaseModel):
    """``id_field`` naming a Video SDK session."""

    model_config = _LENIENT
    session_id: Identifier


_ID_FIELDS: Final = ("meeting_uuid", "webinar_uuid", "session_id")


class ConcurrencyLimitedPayload(BaseModel):
    """``rtms.concurrency_limited`` payload; ``id_field`` holds exactly one identifier."""

    model_config = _LENIENT
    operator_id: OptionalText = None
    concurrency_number: Int32
    id_field: MeetingIdField | WebinarIdField | SessionIdField
    account_id: ExtraText = None

    @field_validator("id_field", mode="before")
    @classmethod
    def _exactly_one_id(cls, id_field: Any) -> Any:
        # Checked here so that the error names id_field once, not once per union branch.
        if not isinstance(id_field, dict):
            raise PydanticCustomError(
                "id_field", "must be an object, got {got}", {"got": _show(id_field)}
            )
        present = [name for name in _ID_FIELDS if name in id_field]
        if len(present) != 1:
            raise PydanticCustomError(
                "id_field",
                "must hold exactly one of {names}, got {got}",
                {"names": ", ".join(_ID_FIELDS), "got": ", ".join(present) or "none"},
            )
        try:
            _identifier(id_field[present[0]])
        except PydanticCustomError as exc:
            raise PydanticCustomError(
                "id_field", "{name} {reason}", {"name": present[0], "reason": exc.message()}
            ) from None
        return id_field


class ConcurrencyNearLimit(Delivery):
    """The ``rtms.concurrency_near_limit`` webhook delivery."""

    event: Literal["rtms.concurrency_near_limit"]
    payload: ConcurrencyNearLimitPayload


class ConcurrencyLimited(Delivery):
    """The ``rtms.concurrency_limited`` webhook delivery."""

    event: Literal["rtms.concurrency_limited"]
    payload: ConcurrencyLimitedPayload


class UrlValidationPayload(BaseModel):
    """``endpoint.url_validation`` payload."""

    model_config = _LENIENT
    plainToken: Identifier  # noqa: N815 - Zoom's own field name


class EndpointUrlValidation(Delivery):
    """Zoom's endpoint challenge; Zoom's own test scripts send it without ``event_ts``."""

    event: Literal["endpoint.url_validation"]
    event_ts: EventTs | None = None  # type: ignore[assignment]
    payload: UrlValidationPayload


# The deliveries the library handles that concern no stream: alerts and the endpoint challenge.
_STREAMLESS_MODELS: Final[dict[str, type[Delivery]]] = {
    "rtms.concurrency_near_limit": ConcurrencyNearLimit,
    "rtms.concurrency_limited": ConcurrencyLimited,
    "endpoint.url_validation": EndpointUrlValidation,
}


_ENVELOPE: Final = TypeAdapter(Delivery)


def _decode(body: bytes | bytearray | memoryview | str | Mapping[str, Any]) -> dict[str, Any]:
    # bytes first: every stored or received body is bytes, and the Mapping check is an ABC's.
    if body.__class__ is not bytes and isinstance(body, Mapping):
        # Any mapping is accepted, not only a dict (e.g. a framework's read-only view of the body).
        data: Any = dict(body)
    else:
        raw = body if isinstance(body, str | bytes) else bytes(body)
        try:
            data = from_json(raw)
        except ValueError as exc:
            raise DeliveryRejected([FieldError("body", _not_json(raw, exc))]) from None
    if not isinstance(data, dict):
        raise DeliveryRejected(
            [FieldError("body", f"must be a JSON object, got {type(data).__name__}")]
        )
    return data


def _not_json(raw: bytes | str, exc: ValueError) -> str:
    # JSON is UTF-8: name the first byte that is not, rather than the parser's guess at a token.
    if isinstance(raw, bytes):
        try:
            raw.decode()
        except UnicodeDecodeError as bad:
            return f"not UTF-8 text: byte 0x{raw[bad.start]:02x} at offset {bad.start}"
    return f"not valid JSON: {exc}"


# pydantic's wording for the few built-in checks left, in the words of the rest of our errors
_REASONS: Final = {
    "missing": "missing",
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _field_errors(exc: ValidationError, rename: str | None) -> list[FieldError]:
    errors = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "body"
        if rename and path.startswith("payload."):
            path = rename + path[len("payload") :]
        reason = _REASONS.get(error["type"], error["msg"])
        if error["type"] in _REASONS and error["type"] != "missing":
            reason = f"{reason}, got {_show(error['input'])}"
        errors.append(FieldError(path, reason))
    return errors


def parse_delivery(
    body: bytes | bytearray | memoryview | str | Mapping[str, Any],
) -> ParsedDelivery:
    """Parse one webhook body; raise :class:`DeliveryRejected` if it cannot be accepted."""
    data = _decode(body)
    event = data.get("event")
    model = STREAM_MODELS.get(event) if isinstance(event, str) else None
    if model is None:
        streamless = _STREAMLESS_MODELS.get(event) if isinstance(event, str) else None
        if streamless is None:
            envelope = _validate(_ENVELOPE.validate_python, data, event, None)
            return UnhandledDelivery(envelope.event, envelope.event_ts, data.get("payload"))
        return _streamless_delivery(_validate(streamless.model_validate, data, event, None), data)
    payload = data.get("payload")
    rename = None
    if (
        isinstance(payload, dict)
        and "rtms_stream_id" not in payload
        and isinstance(payload.get("object"), dict)
    ):
        inner = dict(payload["object"])
        inner.setdefault("account_id", payload.get("account_id"))
        data = {**data, "payload": inner}
        rename = "payload.object"
    parsed = _validate(model.model_validate, data, event, rename)
    assert isinstance(parsed, StreamDelivery)
    # The model's declared fields only: an undeclared one (a meeting's "session_key") is an
    # unvalidated extra, kept in the raw payload but not read as the field.
    fields = parsed.payload.__dict__
    scope_id = fields[model.scope_id_field]
    fallback = _FALLBACK_SCOPE_IDS.get(model.scope)
    if scope_id is None and fallback is not None:
        scope_id = _fallback_scope_id(data["payload"], fallback, parsed, rename)
    return StreamEvent(
        event=parsed.event,
        scope=model.scope,
        kind=model.kind,
        stream_id=fields["rtms_stream_id"],
        scope_id=scope_id,
        event_ts=parsed.event_ts,
        account_id=fields["account_id"],
        session_key=fields.get("session_key"),
        operator_id=fields.get("operator_id"),
        server_urls=fields.get("server_urls"),
        stop_reason=fields.get("stop_reason"),
        payload=payload if isinstance(payload, dict) else {},
        model=parsed,
    )


def _fallback_scope_id(
    payload: dict[str, Any], name: str, parsed: Delivery, rename: str | None
) -> str | None:
    try:
        return _scope_id(payload.get(name))
    except PydanticCustomError as exc:
        raise DeliveryRejected(
            [FieldError(f"{rename or 'payload'}.{name}", exc.message())],
            parsed.event,
            stream_id_hint(payload),
            event_ts=parsed.event_ts,
        ) from None


def _validate(validate: Any, data: dict[str, Any], event: Any, rename: str | None) -> Delivery:
    try:
        result: Delivery = validate(data)
    except ValidationError as exc:
        errors = _field_errors(exc, rename) or [FieldError("body", str(exc))]
        raise DeliveryRejected(
            errors,
            event if isinstance(event, str) and "\x00" not in event else None,
            stream_id_hint(data.get("payload")),
            event_ts=_event_ts_hint(data.get("event_ts"), errors),
        ) from None
    return result


def _event_ts_hint(value: Any, errors: Sequence[FieldError]) -> int | None:
    """A rejected body's event time, unless it is missing or itself rejected."""
    if any(e.field == "event_ts" for e in errors):
        return None
    try:
        return _event_ts(value)
    except PydanticCustomError:
        return None


def stream_id_hint(payload: Any) -> str | None:
    """The stream id a delivery's payload names, if it is one the store can hold; else None."""
    if not isinstance(payload, dict):
        return None
    found = payload.get("rtms_stream_id")
    if found is None and isinstance(payload.get("object"), dict):
        found = payload["object"].get("rtms_stream_id")
    # Only an id the stream_id column can hold: a rejection must always be storable.
    try:
        return _identifier(found)
    except PydanticCustomError:
        return None


def _streamless_delivery(parsed: Delivery, data: dict[str, Any]) -> ParsedDelivery:
    """A validated alert or endpoint challenge as the delivery the store records."""
    payload = data["payload"]
    if isinstance(parsed, EndpointUrlValidation):
        return UrlValidation(
            parsed.event, parsed.event_ts, parsed.payload.plainToken, payload, parsed
        )
    if isinstance(parsed, ConcurrencyNearLimit):
        near = parsed.payload
        return ConcurrencyAlert(
            parsed.event,
            parsed.event_ts,
            near.concurrency_number,
            near.concurrency_limit,
            near.percentage,
            None,
            None,
            None,
            near.account_id,
            payload,
            parsed,
        )
    assert isinstance(parsed, ConcurrencyLimited)
    limited = parsed.payload
    id_name, id_value = next(iter(limited.id_field.model_dump(include=set(_ID_FIELDS)).items()))
    return ConcurrencyAlert(
        parsed.event,
        parsed.event_ts,
        limited.concurrency_number,
        None,
        None,
        limited.operator_id,
        id_name,
        id_value,
        limited.account_id,
        payload,
        parsed,
    )


class _AppEvent(BaseModel):
    model_config = ConfigDict(frozen=True)
    rtms_stream_id: Identifier
    event_ts: EventTs


def check_app_event(stream_id: Any, event_ts: Any) -> tuple[str, int]:
    """Validate an app-reported event's stream id and time as webhook fields are validated."""
    try:
        checked = _AppEvent(rtms_stream_id=stream_id, event_ts=event_ts)
    except ValidationError as exc:
        errors = _field_errors(exc, None)
        raise DeliveryRejected(errors, event_ts=_event_ts_hint(event_ts, errors)) from None
    return checked.rtms_stream_id, checked.event_ts
