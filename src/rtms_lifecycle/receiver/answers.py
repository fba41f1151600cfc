"""The receiver's answers and the API views of the records: their models make the OpenAPI schema
complete."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Collection, Mapping
from typing import Any, Final, Literal, Self, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from rtms_lifecycle.events import Scope, Source
from rtms_lifecycle.records import (
    NOT_STREAM_KEYS,
    ConcurrencyAlertRecord,
    DeliveryRecord,
    InterruptionStats,
    Outcome,
    StopReasonStat,
    Stream,
    SubscriptionStatus,
    Transition,
    UnhandledEventStat,
)

__all__ = [
    "AlertModel",
    "AlertPage",
    "DeliveryAnswer",
    "DeliveryModel",
    "DeliveryPage",
    "DetailAnswer",
    "ErrorAnswer",
    "HealthAnswer",
    "InterruptionStatsModel",
    "RecordModel",
    "StopReasonStatModel",
    "StreamDetail",
    "StreamModel",
    "StreamPage",
    "SubscriptionModel",
    "SubscriptionPage",
    "TransitionModel",
    "UnhandledEventStatModel",
    "delivery_answer",
    "UrlValidationAnswer",
]


class DeliveryAnswer(BaseModel):
    """What became of a verified delivery; ``error`` says why when it was rejected."""

    outcome: Outcome
    delivery_id: int | None
    error: str | None = None


# The answer's bytes as JSONResponse renders DeliveryAnswer, without a model and a dict per
# delivery: the prefix per outcome is made once.
_ANSWER_PREFIX: Final = {
    outcome: f'{{"outcome":"{outcome._value_}","delivery_id":'.encode() for outcome in Outcome
}


def delivery_answer(outcome: Outcome, delivery_id: int | None, error: str | None) -> bytes:
    """``DeliveryAnswer(...)`` as the JSON bytes of the webhook's answer."""
    tail = b',"error":null}' if error is None else b',"error":%s}' % _json_text(error)
    head = b"null" if delivery_id is None else b"%d" % delivery_id
    return _ANSWER_PREFIX[outcome] + head + tail


def _json_text(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


class UrlValidationAnswer(BaseModel):
    """The answer to Zoom's ``endpoint.url_validation`` challenge."""

    plainToken: str  # noqa: N815 - Zoom's own field names
    encryptedToken: str  # noqa: N815


class ErrorAnswer(BaseModel):
    """Why a webhook request was not recorded: a machine-readable code and a sentence."""

    error: str = Field(examples=["signature_invalid"])
    detail: str


class HealthAnswer(BaseModel):
    """Whether the store can record a delivery now; ``reason`` says why not, in a few fixed
    words (the database's own message is in the receiver's log)."""

    status: Literal["ok", "unavailable"]
    reason: str | None = Field(
        default=None,
        description="store busy, database unreachable, database refuses writes, disk full, "
        "database damaged, or database error",
    )


class RecordModel(BaseModel):
    """An API view of a record dataclass: its fields are the record's, read from its attributes."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, record: object) -> Self:
        """The API view of a stored record."""
        return cls.model_validate(record)


def _record_model(
    name: str,
    record: type,
    doc: str,
    *,
    without: Collection[str] = (),
    computed: Mapping[str, Collection[str]] = {},
    forbid_extra: bool = False,
) -> type[RecordModel]:
    """A model with the fields of the ``record`` dataclass, in its order, every one required.

    ``computed``: properties of the record that the API shows too, after the field they follow.
    """
    hints = get_type_hints(record)
    fields: dict[str, Any] = {}
    for each in dataclasses.fields(record):
        if each.name not in without:
            fields[each.name] = (hints[each.name], ...)
        for prop in computed.get(each.name, ()):
            fields[prop] = (get_type_hints(getattr(record, prop).fget)["return"], ...)
    return create_model(
        name,
        __base__=RecordModel,
        __doc__=doc,
        __module__=__name__,
        __cls_kwargs__={"extra": "forbid"} if forbid_extra else None,
        **fields,
    )


StreamModel = _record_model(
    "StreamModel",
    Stream,
    "A stream, with exactly the keys of ``rtms-lifecycle streams --json`` (times: epoch ms).",
    without=NOT_STREAM_KEYS,
    computed={"stop_reason": ("stop_reason_name", "stop_reason_category")},
    forbid_extra=True,
)
TransitionModel = _record_model(
    "TransitionModel", Transition, "One row of a stream's audit history."
)
StopReasonStatModel = _record_model(
    "StopReasonStatModel",
    StopReasonStat,
    "Streams stopped for one reason (in one scope, when grouped; else ``scope`` is null).",
)


AlertModel = _record_model(
    "AlertModel", ConcurrencyAlertRecord, "An account's concurrency alert (times: epoch ms)."
)
UnhandledEventStatModel = _record_model(
    "UnhandledEventStatModel",
    UnhandledEventStat,
    "Deliveries of one event name this version does not handle; ``rtms``: it looks like RTMS.",
)
SubscriptionModel = _record_model(
    "SubscriptionModel",
    SubscriptionStatus,
    "Where one durable consumer is: cursor, lag, parked transitions, last error.",
)


class InterruptionStatsModel(BaseModel):
    """Interruptions of the streams that began in the window (of one scope, or all: null)."""

    scope: Scope | None
    streams: int
    interrupted_streams: int
    interruptions: int
    recovered: int
    median_recovery_ms: int | None
    stopped_while_interrupted: int

    @classmethod
    def of(cls, scope: Scope | None, stats: InterruptionStats) -> Self:
        """The API view of one scope's statistics."""
        return cls(scope=scope, **stats.as_dict())


class DeliveryModel(BaseModel):
    """A stored delivery; ``raw`` is its body as text when that is UTF-8, else base64
    (``raw_encoding`` says which)."""

    id: int
    received_at: int
    source: Source
    event: str | None
    event_ts: int | None
    stream_id: str | None
    outcome: Outcome
    error: list[dict[str, str]] | None
    detail: str | None
    raw: str
    raw_encoding: Literal["utf-8", "base64"]
    signed_at: int | None
    secret_label: str | None
    #: Reprocessed: the id of the refused delivery whose bytes these are.
    reprocess_of: int | None

    @classmethod
    def of(cls, record: DeliveryRecord) -> Self:
        """The API view of a stored delivery."""
        try:
            raw, encoding = record.raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            raw, encoding = base64.b64encode(record.raw).decode("ascii"), "base64"
        fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        return cls(**{**fields, "raw": raw, "raw_encoding": encoding})


def _page_model(name: str, item: type[BaseModel], what: str) -> type[BaseModel]:
    return create_model(
        name,
        __doc__=(
            f"A page of {what}; ``next``: the URL of the page after it (also in the ``Link`` "
            "header), null on the last."
        ),
        __module__=__name__,
        items=(list[item], ...),  # type: ignore[valid-type]
        next=(str | None, ...),
    )


StreamPage = _page_model("StreamPage", StreamModel, "streams")
DeliveryPage = _page_model("DeliveryPage", DeliveryModel, "deliveries")
AlertPage = _page_model("AlertPage", AlertModel, "concurrency alerts")
SubscriptionPage = _page_model("SubscriptionPage", SubscriptionModel, "durable consumers")


class StreamDetail(BaseModel):
    """A stream and its transitions in event-time order."""

    stream: StreamModel  # type: ignore[valid-type]
    history: list[TransitionModel]  # type: ignore[valid-type]


class DetailAnswer(BaseModel):
    """A read API error, in FastAPI's usual shape."""

    detail: str
