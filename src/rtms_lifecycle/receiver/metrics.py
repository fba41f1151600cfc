"""The receiver's Prometheus metrics (``GET /metrics``, extra ``server``).

Counters and the store-time histogram live in this process (or, with ``PROMETHEUS_MULTIPROC_DIR``
set, in files shared by every worker process, which a scrape adds up). What the database knows
(live streams, subscriptions, the schema revision) is read from it at scrape time, so that every
receiver in front of one database reports the same numbers. deploy/prometheus/alerts.yml and
deploy/grafana/rtms-lifecycle.json use these names: tests/test_monitoring.py keeps them in step.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _exposition
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from rtms_lifecycle.events import Scope
from rtms_lifecycle.exceptions import ConfigurationError
from rtms_lifecycle.machine import ACTIVE_STATES, State, TransitionName
from rtms_lifecycle.records import ClaimStats, DatabaseCapacity, IngestResult
from rtms_lifecycle.stop_reasons import describe_stop_reason
from rtms_lifecycle.tracker import Tracker
from rtms_lifecycle.webhook import RefusalReason

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_CLAIMS_OLDER_THAN",
    "DEFAULT_LONG_LIVE",
    "RECENT_STOPS",
    "DELIVERIES",
    "MULTIPROC_ENV",
    "REFUSALS",
    "STORE_FAILURES",
    "STOPS",
    "STORE_SECONDS",
    "NO_SCOPE",
    "UNHANDLED_RTMS",
    "add_store_gauges",
    "count_delivery",
    "count_stop",
    "exposition",
    "new_registry",
    "scope_label",
]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: The scope label of a delivery about no stream (rejected, account alerts, url validation).
NO_SCOPE: Final = "none"
_SCOPES: Final = frozenset(scope.value for scope in Scope)

# Created once per process and never registered globally: each app's registry adds them. Two
# metric objects of one name would overwrite each other's files in multiprocess mode.
DELIVERIES: Final = Counter(
    "rtms_lifecycle_deliveries",
    "Verified webhook deliveries recorded, by outcome and by the scope their event names.",
    ["outcome", "scope"],
    registry=None,
)
REFUSALS: Final = Counter(
    "rtms_lifecycle_webhook_refusals",
    "Webhook requests refused before anything was stored, by reason.",
    ["reason"],
    registry=None,
)
STORE_FAILURES: Final = Counter(
    "rtms_lifecycle_store_failures",
    "Deliveries the store could not record (answered 503, so Zoom retries).",
    registry=None,
)
# Zoom gives up on an answer after 3 s: the buckets resolve the range up to it and beyond.
STORE_SECONDS: Final = Histogram(
    "rtms_lifecycle_store_seconds",
    "Time to record one delivery (waiting for the store included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
    registry=None,
)
UNHANDLED_RTMS: Final = Counter(
    "rtms_lifecycle_unhandled_rtms_deliveries",
    "Deliveries of an event name this version does not handle that mentions RTMS "
    "(stats --unhandled names them).",
    registry=None,
)
STOPS: Final = Counter(
    "rtms_lifecycle_stops",
    "Streams a webhook delivery stopped, by stop reason (its name; codes this version does not "
    "know as UNKNOWN) and category.",
    ["reason", "category"],
    registry=None,
)
_PROCESS_METRICS: Final = (
    DELIVERIES,
    REFUSALS,
    STORE_FAILURES,
    STORE_SECONDS,
    UNHANDLED_RTMS,
    STOPS,
)
# The claims work adds its process metrics (claims taken, lost, expired) beside these.

#: How long a stream may stay live before ``rtms_lifecycle_long_live_streams`` counts it.
DEFAULT_LONG_LIVE: Final = timedelta(hours=12)
#: The window ``rtms_lifecycle_recent_stops`` counts stops in (an expiry is dated when it ran).
RECENT_STOPS: Final = timedelta(hours=6)
#: Seconds a live stream may go unclaimed or unconnected before the gauges count it.
DEFAULT_CLAIMS_OLDER_THAN: Final = 30.0


def scope_label(event: str | None) -> str:
    """The scope an event name starts with (``meeting.rtms_started``: meeting), else ``none``.

    Only known scopes: a label value taken as sent would let any signed body add series.
    """
    prefix = (event or "").partition(".")[0]
    return prefix if prefix in _SCOPES else NO_SCOPE


# DELIVERIES' series by (outcome, scope): labels() takes a lock and checks its values each time.
_DELIVERED: Final[dict[tuple[str, str], Counter]] = {}


def count_delivery(result: IngestResult) -> None:
    """Count a recorded delivery in ``DELIVERIES``, by its outcome and its event's scope."""
    key = (result.outcome.value, scope_label(result.event))
    series = _DELIVERED.get(key)
    if series is None:
        series = _DELIVERED[key] = DELIVERIES.labels(*key)
    series.inc()


def count_stop(result: IngestResult) -> None:
    """Count the stop ``result`` applied, if it applied one, by its reason's name and category.

    Only the catalogue's names: a code label taken as sent would let any signed body add series.
    """
    if result.transition is None or result.transition.name is not TransitionName.STOP:
        return
    code = result.stream.stop_reason if result.stream is not None else None
    described = describe_stop_reason(code, expired=False)
    # UNDEFINED (code 0) and NOT_PROVIDED are named; only codes outside the catalogue share one.
    uncatalogued = described.name == f"UNKNOWN_{code}"
    STOPS.labels("UNKNOWN" if uncatalogued else described.name, described.category.value).inc()


def _package_version() -> str:
    try:
        return version("rtms-lifecycle")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "unknown"


class _FromStore(Collector):
    """Gauges read from the database at each scrape: a few cheap queries (the live partial
    index grouped; the window's stops; one row per durable consumer; the schema revision; two
    aggregates over the claims; on PostgreSQL ``pg_database_size``), each part left out alone
    when it fails, and ``rtms_lifecycle_store_readable`` saying whether all of them answered.
    The SQLite file and disk gauges need no read: they answer during an outage."""

    def __init__(self, tracker: Tracker, long_live: timedelta, claims_older_than: float) -> None:
        self._tracker = tracker
        self._version = _package_version()
        self._long_live = long_live
        self._claims_older_than = claims_older_than

    def collect(self) -> Iterable[Metric]:
        metrics: list[Metric] = []
        readable = self._main(metrics)
        readable &= self._claims(metrics)
        readable &= self._capacity(metrics)
        yield from metrics
        yield GaugeMetricFamily(
            "rtms_lifecycle_store_readable",
            "1 if this scrape read every gauge that comes from the store, 0 if some are left "
            "out (the database did not answer): unknown, not zero.",
            value=int(readable),
        )

    def _main(self, metrics: list[Metric]) -> bool:
        info = GaugeMetricFamily(
            "rtms_lifecycle_info",
            "This receiver's version and its database's schema revision (always 1).",
            labels=["version", "schema_revision"],
        )
        metrics.append(info)
        try:
            revision = self._tracker.schema_revision()
            live = self._tracker.live_counts(self._long_live)
            stops = self._tracker.recent_stops(RECENT_STOPS)
            subscriptions = self._tracker.subscriptions()
        except Exception:
            # A scrape during an outage still answers: the process counters are what shows it.
            log.warning("metrics: the database did not answer; store gauges left out")
            info.add_metric([self._version, "unknown"], 1)
            return False
        info.add_metric([self._version, revision or "none"], 1)
        metrics.extend(self._streams(live))
        metrics.extend(_recent_stops(*stops))
        lag = GaugeMetricFamily(
            "rtms_lifecycle_subscription_lag",
            "Transitions in the feed after a durable consumer's cursor.",
            labels=["consumer"],
        )
        parked = GaugeMetricFamily(
            "rtms_lifecycle_subscription_parked",
            "Transitions a durable consumer's callback kept failing on, set aside.",
            labels=["consumer"],
        )
        for status in subscriptions:
            lag.add_metric([status.consumer], status.lag)
            parked.add_metric([status.consumer], status.parked)
        metrics += (lag, parked)
        return True

    def _claims(self, metrics: list[Metric]) -> bool:
        try:
            stats = self._tracker.claim_stats(self._claims_older_than)
        except Exception:
            log.warning("metrics: the database did not answer; claim gauges left out")
            return False
        metrics.extend(_claim_gauges(stats, self._claims_older_than))
        return True

    def _capacity(self, metrics: list[Metric]) -> bool:
        try:
            capacity = self._tracker.capacity()
        except Exception:
            # PostgreSQL's size is a query; SQLite's gauges are os.stat and never get here.
            log.warning("metrics: the database did not answer; its size left out")
            return False
        metrics.extend(_capacity_gauges(capacity))
        return True

    def _streams(self, live: list[tuple[Scope, State, int, int]]) -> Iterable[Metric]:
        active = GaugeMetricFamily(
            "rtms_lifecycle_active_streams",
            "Streams whose media flows now (started or resumed), by scope, read from the store.",
            labels=["scope"],
        )
        interrupted = GaugeMetricFamily(
            "rtms_lifecycle_interrupted_streams",
            "Streams interrupted now (no resume or stop yet), by scope.",
            labels=["scope"],
        )
        long_live = GaugeMetricFamily(
            "rtms_lifecycle_long_live_streams",
            "Live streams (not stopped) that started more than "
            "rtms_lifecycle_long_live_seconds ago, by scope.",
            labels=["scope"],
        )
        counts = {scope: [0, 0, 0] for scope in Scope}
        for scope, state, count, older in live:
            counts[scope][0 if state in ACTIVE_STATES else 1] += count
            counts[scope][2] += older
        for scope, (flowing, down, older) in counts.items():
            active.add_metric([scope.value], flowing)
            interrupted.add_metric([scope.value], down)
            long_live.add_metric([scope.value], older)
        threshold = GaugeMetricFamily(
            "rtms_lifecycle_long_live_seconds",
            "How long a stream may be live before rtms_lifecycle_long_live_streams counts it.",
        )
        threshold.add_metric([], self._long_live.total_seconds())
        yield from (active, interrupted, long_live, threshold)


def _recent_stops(webhook: int, expired: int) -> Iterable[Metric]:
    recent = GaugeMetricFamily(
        "rtms_lifecycle_recent_stops",
        "Streams stopped in the last rtms_lifecycle_recent_stops_seconds (by their stop time), "
        "by a webhook's stop or by an expiry (a stop that never came), read from the store.",
        labels=["kind"],
    )
    recent.add_metric(["webhook"], webhook)
    recent.add_metric(["expired"], expired)
    window = GaugeMetricFamily(
        "rtms_lifecycle_recent_stops_seconds",
        "The window rtms_lifecycle_recent_stops counts stops in.",
    )
    window.add_metric([], RECENT_STOPS.total_seconds())
    yield from (recent, window)


def _capacity_gauges(capacity: DatabaseCapacity) -> Iterable[Metric]:
    """The database's size, and its disk's (SQLite), for alerts before the disk is full."""
    files = GaugeMetricFamily(
        "rtms_lifecycle_database_bytes",
        "Bytes of the database: file=db (the SQLite file, or PostgreSQL's pg_database_size) "
        "and file=wal (SQLite's write-ahead log).",
        labels=["file"],
    )
    for name, size in (("db", capacity.database_bytes), ("wal", capacity.wal_bytes)):
        if size is not None:
            files.add_metric([name], size)
    if files.samples:
        yield files
    for suffix, size, what in (
        ("free", capacity.disk_free_bytes, "Bytes this process may still write"),
        ("size", capacity.disk_size_bytes, "Bytes in all"),
    ):
        if size is not None:
            yield GaugeMetricFamily(
                f"rtms_lifecycle_database_disk_{suffix}_bytes",
                f"{what} on the file system of the SQLite database's folder.",
                value=size,
            )


def new_registry() -> CollectorRegistry:
    """A registry of this process's metrics (or every worker's, in multiprocess mode).

    Raises :class:`ConfigurationError` for a multiprocess directory that does not exist, before
    anything else is set up.
    """
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        try:
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigurationError(
                f"{MULTIPROC_ENV} must name an existing directory: {exc}"
            ) from None
    else:
        for metric in _PROCESS_METRICS:
            registry.register(metric)
    # Every refusal reason from zero: the first refusal of a kind is then an increase, which a
    # rule over a few refusals an hour (a rotated secret on a quiet account) must see.
    for reason in RefusalReason:
        REFUSALS.labels(reason.value)
    return registry


def add_store_gauges(
    registry: CollectorRegistry,
    tracker: Tracker,
    long_live: timedelta = DEFAULT_LONG_LIVE,
    claims_older_than: float = DEFAULT_CLAIMS_OLDER_THAN,
) -> None:
    """Add the gauges read from ``tracker``'s database at each scrape; ``long_live``: how long
    a stream may be live before ``rtms_lifecycle_long_live_streams`` counts it;
    ``claims_older_than``: the age in seconds from which the claim gauges count a live stream."""
    if not 0 <= claims_older_than <= 86_400:
        raise ConfigurationError(
            f"claims_older_than must be from 0 to 86400 seconds, got {claims_older_than!r}"
        )
    registry.register(_FromStore(tracker, long_live, claims_older_than))


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format."""
    return _exposition(registry)


# --- claims: who takes care of the live streams (read from the store at each scrape) ---------


def _claim_gauges(stats: ClaimStats, older_than: float) -> Iterable[Metric]:
    """Live streams no worker holds or has joined, and the start-to-connected latency."""
    after = f"started more than {older_than:g} s ago"
    yield GaugeMetricFamily(
        "rtms_lifecycle_unclaimed_streams",
        f"Live streams {after} that no worker holds (read from the store).",
        value=stats.unclaimed,
    )
    yield GaugeMetricFamily(
        "rtms_lifecycle_unconnected_streams",
        f"Live streams {after} whose media no worker reports connected.",
        value=stats.unconnected,
    )
    yield GaugeHistogramMetricFamily(
        "rtms_lifecycle_connect_latency_seconds",
        "Seconds from a live stream's start to its first connection a worker reported, "
        "over the live streams (a gauge histogram: streams leave it when they stop).",
        buckets=[(_le(bound), n) for bound, n in stats.connect_buckets],
        gsum_value=stats.connect_seconds,
    )


def _le(seconds: float) -> str:
    return "+Inf" if seconds == math.inf else repr(seconds)  # as prometheus_client writes it


# --- end of claims --------------------------------------------------------------------------------
