"""What a Zoom RTMS webhook delivery says: the normalised view every later layer uses.

A delivery is a :class:`StreamEvent`, a :class:`ConcurrencyAlert`, a :class:`UrlValidation` or
an :class:`UnhandledDelivery`; :func:`rtms_lifecycle.parsing.parse_delivery` builds them. This
module imports no other of the package: the parser depends on it, never the reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

# For the `model` fields' types only: the models import this module, not the reverse.
if TYPE_CHECKING:
    from rtms_lifecycle.models import (
        ConcurrencyLimited,
        ConcurrencyNearLimit,
        EndpointUrlValidation,
        StreamDelivery,
    )

__all__ = [
    "ConcurrencyAlert",
    "EventKind",
    "ParsedDelivery",
    "Scope",
    "Source",
    "StreamEvent",
    "UnhandledDelivery",
    "UrlValidation",
]

# Column sizes (see store/tables.py): identifiers and short texts, and the server URL list.
MAX_ID_LENGTH: Final = 255
MAX_URLS_LENGTH: Final = 2000


class Scope(StrEnum):
    """The Zoom product a stream belongs to."""

    MEETING = "meeting"
    WEBINAR = "webinar"
    SESSION = "session"
    CONTACT_CENTER = "contact_center"
    PHONE = "phone"


class EventKind(StrEnum):
    """What happened to a stream; ``resumed`` is reported by the app, never by Zoom."""

    STARTED = "started"
    INTERRUPTED = "interrupted"
    RESUMED = "resumed"
    STOPPED = "stopped"

    @property
    def rank(self) -> int:
        """Tie-break between events of one stream with the same ``event_ts`` (docs/concepts.md)."""
        return _RANK[self]


_RANK: Final = {
    EventKind.STARTED: 0,
    EventKind.INTERRUPTED: 1,
    EventKind.RESUMED: 2,
    EventKind.STOPPED: 3,
}


class Source(StrEnum):
    """Who reported an event: Zoom's webhook, the app's media connector, the library itself, or
    a webhook body an earlier version refused, parsed again (``Tracker.reprocess``)."""

    WEBHOOK = "webhook"
    APP = "app"
    SYSTEM = "system"
    REPROCESS = "reprocess"

    @property
    def from_zoom(self) -> bool:
        """Whether the event is a webhook body Zoom sent (received now, or reprocessed)."""
        return self in _FROM_ZOOM


_FROM_ZOOM: Final = frozenset({Source.WEBHOOK, Source.REPROCESS})
#: The ``source`` values of the deliveries whose bytes are a body Zoom sent.
ZOOM_SOURCES: Final = tuple(sorted(source.value for source in _FROM_ZOOM))


# --- the normalised view -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of one stream, whatever its scope or source: what the lifecycle folds over.

    ``scope`` is None only for an app-reported event of a stream that no webhook has told us
    about yet; every webhook event has one. ``scope_id`` is None when the delivery carried none
    (some documented shapes carry only ``meeting_id``): the stream takes it from another event.
    """

    event: str
    scope: Scope | None
    kind: EventKind
    stream_id: str
    scope_id: str | None
    event_ts: int
    source: Source = Source.WEBHOOK
    account_id: str | None = None
    session_key: str | None = None
    operator_id: str | None = None
    server_urls: str | None = None
    stop_reason: int | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    model: StreamDelivery | None = None

    @property
    def identity(self) -> tuple[str, EventKind, int]:
        """``(rtms_stream_id, kind, event_ts)``: two events with one identity are one event."""
        return (self.stream_id, self.kind, self.event_ts)

    @property
    def position(self) -> tuple[int, int]:
        """Where the event sits in its stream's fold: ``(event_ts, rank)``."""
        return (self.event_ts, _RANK[self.kind])


@dataclass(frozen=True, slots=True)
class ConcurrencyAlert:
    """An account-level ``rtms.concurrency_*`` alert."""

    event: str
    event_ts: int
    concurrency_number: int
    concurrency_limit: int | None
    percentage: int | None
    operator_id: str | None
    id_field: str | None
    id_value: str | None
    account_id: str | None
    payload: Mapping[str, Any]
    model: ConcurrencyNearLimit | ConcurrencyLimited


@dataclass(frozen=True, slots=True)
class UrlValidation:
    """Zoom's ``endpoint.url_validation`` challenge."""

    event: str
    event_ts: int | None
    plain_token: str
    payload: Mapping[str, Any]
    model: EndpointUrlValidation


@dataclass(frozen=True, slots=True)
class UnhandledDelivery:
    """A well-formed delivery of an event this library does not know: stored, not interpreted."""

    event: str
    event_ts: int
    payload: Any


ParsedDelivery = StreamEvent | ConcurrencyAlert | UrlValidation | UnhandledDelivery
