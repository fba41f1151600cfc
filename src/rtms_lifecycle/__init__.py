"""rtms_lifecycle: a trustworthy, queryable record of every Zoom RTMS stream.

Feed it Zoom's RTMS webhooks (and your app's resume reports); ask it which streams are live, what
happened to each, and why streams stop. See :class:`Tracker` (:class:`AsyncTracker` for asyncio).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rtms_lifecycle.async_tracker import AsyncTracker
    from rtms_lifecycle.events import (
        ConcurrencyAlert,
        EventKind,
        ParsedDelivery,
        Scope,
        Source,
        StreamEvent,
        UnhandledDelivery,
        UrlValidation,
        parse_delivery,
    )
    from rtms_lifecycle.exceptions import (
        ConfigurationError,
        DatabaseUnavailable,
        DatabaseURLError,
        DeliveryRejected,
        FieldError,
        RTMSLifecycleError,
        SchemaOutdatedError,
        SchemaTooNewError,
        StoreError,
        StoreTimeout,
        WebhookRefused,
    )
    from rtms_lifecycle.machine import State, TransitionName
    from rtms_lifecycle.records import (
        ConcurrencyAlertRecord,
        DeliveryRecord,
        IngestResult,
        InterruptionStats,
        Outcome,
        PruneRecord,
        PruneResult,
        StopReasonCount,
        StopReasonStat,
        Stream,
        SubscriptionStatus,
        Transition,
        UnhandledEventStat,
    )
    from rtms_lifecycle.stop_reasons import StopReason, StopReasonCategory, describe_stop_reason
    from rtms_lifecycle.tracker import IngestSummary, Tracker, TransitionCallback

__all__ = [
    "AsyncTracker",
    "ConcurrencyAlert",
    "ConcurrencyAlertRecord",
    "ConfigurationError",
    "DatabaseURLError",
    "DatabaseUnavailable",
    "DeliveryRecord",
    "DeliveryRejected",
    "EventKind",
    "FieldError",
    "IngestResult",
    "IngestSummary",
    "InterruptionStats",
    "Outcome",
    "ParsedDelivery",
    "PruneRecord",
    "PruneResult",
    "RTMSLifecycleError",
    "SchemaOutdatedError",
    "SchemaTooNewError",
    "Scope",
    "Source",
    "State",
    "StopReason",
    "StopReasonCategory",
    "StopReasonCount",
    "StopReasonStat",
    "StoreError",
    "StoreTimeout",
    "Stream",
    "StreamEvent",
    "SubscriptionStatus",
    "Tracker",
    "Transition",
    "TransitionCallback",
    "TransitionName",
    "UnhandledDelivery",
    "UnhandledEventStat",
    "UrlValidation",
    "WebhookRefused",
    "describe_stop_reason",
    "parse_delivery",
]

# Each public name and the submodule defining it: importing the package loads none of them (no
# SQLAlchemy, pydantic or Alembic), so a command that needs none starts fast; a name's module is
# imported the first time the name is used.
_SOURCES: Final[dict[str, str]] = {
    "AsyncTracker": "async_tracker",
    "ConcurrencyAlert": "events",
    "ConcurrencyAlertRecord": "records",
    "ConfigurationError": "exceptions",
    "DatabaseURLError": "exceptions",
    "DatabaseUnavailable": "exceptions",
    "DeliveryRecord": "records",
    "DeliveryRejected": "exceptions",
    "EventKind": "events",
    "FieldError": "exceptions",
    "IngestResult": "records",
    "IngestSummary": "tracker",
    "InterruptionStats": "records",
    "Outcome": "records",
    "ParsedDelivery": "events",
    "PruneRecord": "records",
    "PruneResult": "records",
    "RTMSLifecycleError": "exceptions",
    "SchemaOutdatedError": "exceptions",
    "SchemaTooNewError": "exceptions",
    "Scope": "events",
    "Source": "events",
    "State": "machine",
    "StopReason": "stop_reasons",
    "StopReasonCategory": "stop_reasons",
    "StopReasonCount": "records",
    "StopReasonStat": "records",
    "StoreError": "exceptions",
    "StoreTimeout": "exceptions",
    "Stream": "records",
    "StreamEvent": "events",
    "SubscriptionStatus": "records",
    "Tracker": "tracker",
    "Transition": "records",
    "TransitionCallback": "tracker",
    "TransitionName": "machine",
    "UnhandledDelivery": "events",
    "UnhandledEventStat": "records",
    "UrlValidation": "events",
    "WebhookRefused": "exceptions",
    "describe_stop_reason": "stop_reasons",
    "parse_delivery": "events",
}


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{source}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
