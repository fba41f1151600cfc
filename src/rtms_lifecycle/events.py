"""What a Zoom RTMS webhook delivery says, and the one parser that reads them.

:func:`parse_delivery` turns raw bytes (or text, or a decoded mapping) into a normalised view
that every later layer uses: a :class:`StreamEvent`, a :class:`ConcurrencyAlert`, a
:class:`UrlValidation` or an :class:`UnhandledDelivery`. A body it cannot accept raises
:class:`DeliveryRejected` naming each bad field and why. The typed (pydantic) models of every
delivery shape that it validates with live in ``_parsing``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, Final

# The pydantic models live in _parsing, imported on the first parse: a process that only reads
# the database (`rtms-lifecycle stream ID`) never builds them.
if TYPE_CHECKING:
    from rtms_lifecycle.parsing import (
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
    "parse_delivery",
    "stream_event_names",
]

# Column sizes (see _tables): identifiers and short texts, and the server URL list.
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
    """Who reported an event: Zoom's webhook, the app's media connector, or the library itself."""

    WEBHOOK = "webhook"
    APP = "app"
    SYSTEM = "system"


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


def parse_delivery(
    body: bytes | bytearray | memoryview | str | Mapping[str, Any],
) -> ParsedDelivery:
    """Parse one webhook body; raise :class:`DeliveryRejected` if it cannot be accepted."""
    return _parser()(body)


@cache
def _parser() -> Callable[
    [bytes | bytearray | memoryview | str | Mapping[str, Any]], ParsedDelivery
]:
    # Per delivery: a cached call costs a tenth of what an import statement does.
    from rtms_lifecycle.parsing import parse_delivery as parse

    return parse


def check_app_event(stream_id: Any, event_ts: Any) -> tuple[str, int]:
    """Validate an app-reported event's stream id and time as webhook fields are validated."""
    from rtms_lifecycle.parsing import check_app_event as check

    return check(stream_id, event_ts)


def stream_event_names() -> list[str]:
    """The 15 stream event names the parser understands."""
    from rtms_lifecycle.parsing import STREAM_MODELS

    return list(STREAM_MODELS)
