"""rtms_lifecycle: a trustworthy, queryable record of every Zoom RTMS stream.

Feed it Zoom's RTMS webhooks (and your app's resume reports); ask it which streams are live, what
happened to each, and why streams stop. See :class:`Tracker` (:class:`AsyncTracker` for asyncio).
"""

from .async_tracker import AsyncTracker
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
    UnhandledEventStat,
)
from .retention import PruneRecord, PruneResult
from .stop_reasons import StopReason, StopReasonCategory, describe_stop_reason
from .subscriptions import SubscriptionStatus
from .tracker import IngestSummary, Tracker, TransitionCallback

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
