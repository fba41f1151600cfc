"""rtms_lifecycle: a trustworthy, queryable record of every Zoom RTMS stream.

Feed it Zoom's RTMS webhooks (and your app's resume reports); ask it which streams are live, what
happened to each, and why streams stop. See :class:`Tracker`.
"""

from .events import (
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
from .exceptions import (
    ConfigurationError,
    DeliveryRejected,
    FieldError,
    RTMSLifecycleError,
    SchemaOutdatedError,
    StoreError,
    WebhookRefused,
)
from .machine import State, TransitionName
from .records import (
    ConcurrencyAlertRecord,
    DeliveryRecord,
    IngestResult,
    InterruptionStats,
    Outcome,
    StopReasonCount,
    StopReasonStat,
    Stream,
    Transition,
)
from .stop_reasons import StopReason, StopReasonCategory, describe_stop_reason
from .tracker import IngestSummary, Tracker, TransitionCallback

__all__ = [
    "ConcurrencyAlert",
    "ConcurrencyAlertRecord",
    "ConfigurationError",
    "DeliveryRecord",
    "DeliveryRejected",
    "EventKind",
    "FieldError",
    "IngestResult",
    "IngestSummary",
    "InterruptionStats",
    "Outcome",
    "ParsedDelivery",
    "RTMSLifecycleError",
    "SchemaOutdatedError",
    "Scope",
    "Source",
    "State",
    "StopReason",
    "StopReasonCategory",
    "StopReasonCount",
    "StopReasonStat",
    "StoreError",
    "Stream",
    "StreamEvent",
    "Tracker",
    "Transition",
    "TransitionCallback",
    "TransitionName",
    "UnhandledDelivery",
    "UrlValidation",
    "WebhookRefused",
    "describe_stop_reason",
    "parse_delivery",
]
