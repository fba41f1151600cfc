"""The one parser of webhook deliveries, and the check of an app-reported event.

:func:`parse_delivery` turns raw bytes (or text, or a decoded mapping) into the normalised view
of :mod:`rtms_lifecycle.events`; a body it cannot accept raises :class:`DeliveryRejected` naming
each bad field and why. The pydantic models it validates with live in :mod:`rtms_lifecycle.models`,
imported on the first parse: a process that only reads the database (``rtms-lifecycle stream
ID``) never builds them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtms_lifecycle.events import ParsedDelivery

__all__ = ["check_app_event", "named_in", "parse_delivery", "stream_event_names"]

Body = bytes | bytearray | memoryview | str | Mapping[str, Any]


def parse_delivery(body: Body) -> ParsedDelivery:
    """Parse one webhook body; raise :class:`DeliveryRejected` if it cannot be accepted."""
    return _parser()(body)


@cache
def _parser() -> Callable[[Body], ParsedDelivery]:
    # Per delivery: a cached call costs a tenth of what an import statement does.
    from rtms_lifecycle.models import parse_delivery as parse

    return parse


#: The longest event name :func:`named_in` gives back.
_NAME_LONGEST = 100


def named_in(body: bytes) -> tuple[str | None, str | None]:
    """The event name and the stream id a body names, as far as it reads; None for what does
    not. Never raises: it says what a delivery that failed elsewhere was about."""
    from rtms_lifecycle.models import stream_id_hint

    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            return None, None
        event = data.get("event")
        name = event[:_NAME_LONGEST] if isinstance(event, str) else None
        return name, stream_id_hint(data.get("payload"))
    except Exception:  # any body at all: not JSON, nested too deep, not UTF-8
        return None, None


def check_app_event(stream_id: Any, event_ts: Any) -> tuple[str, int]:
    """Validate an app-reported event's stream id and time as webhook fields are validated."""
    from rtms_lifecycle.models import check_app_event as check

    return check(stream_id, event_ts)


def stream_event_names() -> list[str]:
    """The 15 stream event names the parser understands."""
    from rtms_lifecycle.models import STREAM_MODELS

    return list(STREAM_MODELS)
