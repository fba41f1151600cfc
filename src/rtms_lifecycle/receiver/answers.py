"""The receiver's answers and the API views of the records: their models make the OpenAPI schema
complete."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, Literal, Self, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from rtms_lifecycle.records import NOT_STREAM_KEYS, Outcome, StopReasonStat, Stream, Transition

__all__ = [
    "DeliveryAnswer",
    "DetailAnswer",
    "ErrorAnswer",
    "HealthAnswer",
    "RecordModel",
    "StopReasonStatModel",
    "StreamDetail",
    "StreamModel",
    "TransitionModel",
    "UrlValidationAnswer",
]


class DeliveryAnswer(BaseModel):
    """What became of a verified delivery; ``error`` says why when it was rejected."""

    outcome: Outcome
    delivery_id: int | None
    error: str | None = None


class UrlValidationAnswer(BaseModel):
    """The answer to Zoom's ``endpoint.url_validation`` challenge."""

    plainToken: str  # noqa: N815 - Zoom's own field names
    encryptedToken: str  # noqa: N815


class ErrorAnswer(BaseModel):
    """Why a webhook request was not recorded: a machine-readable code and a sentence."""

    error: str = Field(examples=["signature_invalid"])
    detail: str


class HealthAnswer(BaseModel):
    """Whether the store can record a delivery now; ``reason`` says why not."""

    status: Literal["ok", "unavailable"]
    reason: str | None = None


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


class StreamDetail(BaseModel):
    """A stream and its transitions in event-time order."""

    stream: StreamModel  # type: ignore[valid-type]
    history: list[TransitionModel]  # type: ignore[valid-type]


class DetailAnswer(BaseModel):
    """A read API error, in FastAPI's usual shape."""

    detail: str
