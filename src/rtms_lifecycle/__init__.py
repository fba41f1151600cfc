"""rtms_lifecycle: a trustworthy, queryable record of every Zoom RTMS stream.

Feed it Zoom's RTMS webhooks (and your app's resume reports); ask it which streams are live, what
happened to each, and why streams stop. See :class:`Tracker` (:class:`AsyncTracker` for asyncio).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Final

# The public names, each with the submodule defining it: the one list (``__all__`` is its keys).
# Importing the package loads none of them (no SQLAlchemy, pydantic or Alembic), so a command
# that needs none starts fast; a name's module is imported the first time the name is used.
_SOURCES: Final[dict[str, str]] = {
    "AsyncTracker": "async_tracker",
    "ConcurrencyAlert": "events",
    "EventKind": "events",
    "ParsedDelivery": "events",
    "Scope": "events",
    "Source": "events",
    "StreamEvent": "events",
    "UnhandledDelivery": "events",
    "UrlValidation": "events",
    "ConfigurationError": "exceptions",
    "DatabaseURLError": "exceptions",
    "DatabaseUnavailable": "exceptions",
    "DeliveryRejected": "exceptions",
    "FieldError": "exceptions",
    "RTMSLifecycleError": "exceptions",
    "SchemaOutdatedError": "exceptions",
    "SchemaTooNewError": "exceptions",
    "StoreError": "exceptions",
    "StoreTimeout": "exceptions",
    "ClaimLost": "exceptions",
    "WebhookRefused": "exceptions",
    "State": "machine",
    "TransitionName": "machine",
    "parse_delivery": "parsing",
    "Claim": "records",
    "ClaimEvent": "records",
    "ClaimStats": "records",
    "ConcurrencyAlertRecord": "records",
    "DatabaseCapacity": "records",
    "DeliveryRecord": "records",
    "IngestResult": "records",
    "InterruptionStats": "records",
    "Outcome": "records",
    "StopReasonCount": "records",
    "StopReasonStat": "records",
    "Stream": "records",
    "Transition": "records",
    "UnhandledEventStat": "records",
    "AuditBreak": "records",
    "AuditReport": "records",
    "PruneRecord": "records",
    "PruneResult": "records",
    "StopReason": "stop_reasons",
    "StopReasonCategory": "stop_reasons",
    "describe_stop_reason": "stop_reasons",
    "SubscriptionStatus": "records",
    "IngestSummary": "tracker",
    "Tracker": "tracker",
    "TransitionCallback": "tracker",
}

__all__ = sorted(_SOURCES)

# For type checkers and IDEs, which cannot follow ``__getattr__``: the same names, from the same
# modules (tests/test_public_api.py checks that this block and the table agree).
if TYPE_CHECKING:
    from rtms_lifecycle.async_tracker import AsyncTracker as AsyncTracker
    from rtms_lifecycle.events import ConcurrencyAlert as ConcurrencyAlert
    from rtms_lifecycle.events import EventKind as EventKind
    from rtms_lifecycle.events import ParsedDelivery as ParsedDelivery
    from rtms_lifecycle.events import Scope as Scope
    from rtms_lifecycle.events import Source as Source
    from rtms_lifecycle.events import StreamEvent as StreamEvent
    from rtms_lifecycle.events import UnhandledDelivery as UnhandledDelivery
    from rtms_lifecycle.events import UrlValidation as UrlValidation
    from rtms_lifecycle.exceptions import ClaimLost as ClaimLost
    from rtms_lifecycle.exceptions import ConfigurationError as ConfigurationError
    from rtms_lifecycle.exceptions import DatabaseUnavailable as DatabaseUnavailable
    from rtms_lifecycle.exceptions import DatabaseURLError as DatabaseURLError
    from rtms_lifecycle.exceptions import DeliveryRejected as DeliveryRejected
    from rtms_lifecycle.exceptions import FieldError as FieldError
    from rtms_lifecycle.exceptions import RTMSLifecycleError as RTMSLifecycleError
    from rtms_lifecycle.exceptions import SchemaOutdatedError as SchemaOutdatedError
    from rtms_lifecycle.exceptions import SchemaTooNewError as SchemaTooNewError
    from rtms_lifecycle.exceptions import StoreError as StoreError
    from rtms_lifecycle.exceptions import StoreTimeout as StoreTimeout
    from rtms_lifecycle.exceptions import WebhookRefused as WebhookRefused
    from rtms_lifecycle.machine import State as State
    from rtms_lifecycle.machine import TransitionName as TransitionName
    from rtms_lifecycle.parsing import parse_delivery as parse_delivery
    from rtms_lifecycle.records import AuditBreak as AuditBreak
    from rtms_lifecycle.records import AuditReport as AuditReport
    from rtms_lifecycle.records import Claim as Claim
    from rtms_lifecycle.records import ClaimEvent as ClaimEvent
    from rtms_lifecycle.records import ClaimStats as ClaimStats
    from rtms_lifecycle.records import ConcurrencyAlertRecord as ConcurrencyAlertRecord
    from rtms_lifecycle.records import DatabaseCapacity as DatabaseCapacity
    from rtms_lifecycle.records import DeliveryRecord as DeliveryRecord
    from rtms_lifecycle.records import IngestResult as IngestResult
    from rtms_lifecycle.records import InterruptionStats as InterruptionStats
    from rtms_lifecycle.records import Outcome as Outcome
    from rtms_lifecycle.records import PruneRecord as PruneRecord
    from rtms_lifecycle.records import PruneResult as PruneResult
    from rtms_lifecycle.records import StopReasonCount as StopReasonCount
    from rtms_lifecycle.records import StopReasonStat as StopReasonStat
    from rtms_lifecycle.records import Stream as Stream
    from rtms_lifecycle.records import SubscriptionStatus as SubscriptionStatus
    from rtms_lifecycle.records import Transition as Transition
    from rtms_lifecycle.records import UnhandledEventStat as UnhandledEventStat
    from rtms_lifecycle.stop_reasons import StopReason as StopReason
    from rtms_lifecycle.stop_reasons import StopReasonCategory as StopReasonCategory
    from rtms_lifecycle.stop_reasons import describe_stop_reason as describe_stop_reason
    from rtms_lifecycle.tracker import IngestSummary as IngestSummary
    from rtms_lifecycle.tracker import Tracker as Tracker
    from rtms_lifecycle.tracker import TransitionCallback as TransitionCallback


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"rtms_lifecycle.{source}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
