"""What each dashboard page shows, gathered from the Tracker's indexed queries."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence, Set
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.events import Scope
from rtms_lifecycle.machine import ACTIVE_STATES, LIVE_STATES
from rtms_lifecycle.receiver.dashboard.charts import ReasonBar, ShareBucket
from rtms_lifecycle.records import (
    ClaimEvent,
    ConcurrencyAlertRecord,
    DeliveryRecord,
    InterruptionStats,
    Outcome,
    StopReasonCount,
    Stream,
    Transition,
)
from rtms_lifecycle.stop_reasons import StopReasonCategory, describe_stop_reason
from rtms_lifecycle.tracker import Tracker

__all__ = [
    "PAGE_SIZE",
    "WINDOWS",
    "Overview",
    "StatsCache",
    "StreamPage",
    "Window",
    "WindowStats",
    "overview",
    "stream_page",
    "window_stats",
]

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 50
RECENT_PROBLEMS: Final = 20
RECENT_ALERTS: Final = 10
HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
WEEK: Final = timedelta(days=7)
# Beyond this many days, "all" draws a bar per week: a bar a few pixels wide says nothing.
_MAX_DAY_BARS: Final = 120


@dataclass(frozen=True, slots=True)
class Window:
    """A choice of period for the statistics: its length (None: all time) and its bar width."""

    key: str
    label: str
    length: timedelta | None
    bucket: timedelta


WINDOWS: Final = {
    w.key: w
    for w in (
        Window("24h", "24 hours", timedelta(hours=24), HOUR),
        Window("7d", "7 days", timedelta(days=7), DAY),
        Window("30d", "30 days", timedelta(days=30), DAY),
        Window("all", "all time", None, DAY),
    )
}


@dataclass(frozen=True, slots=True)
class ScopeInterruptions:
    """Interruption statistics of one scope's streams that began in the window."""

    scope: Scope
    stats: InterruptionStats

    @property
    def recovered_share(self) -> float | None:
        """Recovered interruptions over all interruptions; None without any."""
        found = self.stats.interruptions
        return self.stats.recovered / found if found else None


@dataclass(frozen=True, slots=True)
class WindowStats:
    """The statistics of one window: why streams stopped, and their interruptions."""

    window: Window
    computed_ms: int
    since_ms: int | None
    stopped: int
    reasons: Sequence[ReasonBar]
    shares: Sequence[ShareBucket]
    share_unit: str
    interruptions: Sequence[ScopeInterruptions]


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything on ``/dashboard``; ``stats`` is None while the first computation runs."""

    now_ms: int
    window: Window
    active: int
    interrupted: int
    active_by_scope: dict[Scope, int]
    live: Sequence[Stream]
    page: int
    pages: int
    stats: WindowStats | None
    problems: Sequence[DeliveryRecord]
    #: The problems' stream ids that name a stored stream: only these link to a stream page.
    problem_streams: Set[str]
    alerts: Sequence[ConcurrencyAlertRecord]


def _reason_bars(counts: Sequence[StopReasonCount]) -> list[ReasonBar]:
    per_reason: Counter[tuple[int | None, bool]] = Counter()
    for row in counts:
        per_reason[row.stop_reason, row.expired] += row.count
    total = sum(per_reason.values())
    bars = []
    for (code, expired), count in per_reason.items():
        described = describe_stop_reason(code, expired=expired)
        bars.append(
            ReasonBar(code, described.name, described.category, count, round(count / total, 6))
        )
    bars.sort(key=lambda b: (-b.count, b.code if b.code is not None else -1))
    return bars


def _share_buckets(
    counts: Sequence[StopReasonCount], since: int | None, until: int, window: Window
) -> tuple[list[ShareBucket], str]:
    """The abnormal share per bucket, every bucket of the window drawn (empty ones too), and the
    bucket's name (hour, day or week)."""
    step = int(window.bucket.total_seconds() * 1000)
    if since is None and counts:
        first, last = counts[0].bucket_start, counts[-1].bucket_start
        if (last - first) // step > _MAX_DAY_BARS:
            step = int(WEEK.total_seconds() * 1000)
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for row in counts:
        bucket = totals[row.bucket_start - row.bucket_start % step]
        bucket[1] += row.count
        if row.described.category is StopReasonCategory.ABNORMAL:
            bucket[0] += row.count
    if since is not None:
        start, stop = since - since % step, until
    elif totals:
        start, stop = min(totals), max(totals) + 1
    else:
        return [], "day"
    buckets = []
    for at in range(start, stop, step):
        abnormal, total = totals.get(at, (0, 0))
        buckets.append(ShareBucket(at, abnormal, total))
    return buckets, {3_600_000: "hour", 86_400_000: "day"}.get(step, "week")


def window_stats(tracker: Tracker, window: Window) -> WindowStats:
    """Stop reasons (per reason, and the abnormal share per bucket) and interruptions per scope
    over ``window``, ending now."""
    now = now_ms()
    since = None if window.length is None else now - int(window.length.total_seconds() * 1000)
    counts = tracker.stop_reason_counts(since, None, bucket=window.bucket)
    shares, share_unit = _share_buckets(counts, since, now, window)
    interruptions = [
        ScopeInterruptions(scope, stats)
        for scope, stats in tracker.interruption_stats_by_scope(since, None).items()
    ]
    return WindowStats(
        window=window,
        computed_ms=now,
        since_ms=since,
        stopped=sum(row.count for row in counts),
        reasons=_reason_bars(counts),
        shares=shares,
        share_unit=share_unit,
        interruptions=interruptions,
    )


class StatsCache:
    """Window statistics computed in the background, so that no page waits long for them.

    Interruption statistics re-fold the events of every interrupted stream of the window: on a
    small store that takes milliseconds, on a million streams seconds for 30 days. The first
    page of a window waits up to ``wait_s`` for them; later pages show the newest result with
    the time it was computed, at once, and start the next computation when it is older than the
    refresh interval or five times as long as it took (so that watching a big store keeps one
    core at most a fifth busy).
    """

    def __init__(self, tracker: Tracker, *, fresh_s: float = 10.0, wait_s: float = 0.15) -> None:
        self._tracker = tracker
        self._fresh_s = fresh_s
        self._wait_s = wait_s
        self._lock = threading.Lock()
        # One computation at a time: they are reads, but each can keep a core busy.
        self._one_at_a_time = threading.Lock()
        self._done: dict[str, tuple[float, float, WindowStats]] = {}
        self._running: dict[str, threading.Thread] = {}

    def get(self, window: Window) -> WindowStats | None:
        """The newest statistics of ``window`` (None while the first computation runs); starts
        a new computation when they are stale."""
        with self._lock:
            done = self._done.get(window.key)
            running = self._running.get(window.key)
            stale = done is None or time.monotonic() - done[0] > max(self._fresh_s, 5 * done[1])
            if stale and running is None:
                # A daemon thread: stopping the receiver never waits for a dashboard statistic.
                running = threading.Thread(
                    target=self._compute, args=(window,), name="rtms-dashboard-stats", daemon=True
                )
                self._running[window.key] = running
                running.start()
        if done is None and running is not None:
            # Only the first visit of a window waits (briefly); later ones show the previous
            # result while the next is computed.
            running.join(timeout=self._wait_s)
            with self._lock:
                done = self._done.get(window.key)
        return done[2] if done else None

    def _compute(self, window: Window) -> None:
        try:
            with self._one_at_a_time:
                started = time.monotonic()
                stats = window_stats(self._tracker, window)
            with self._lock:
                self._done[window.key] = (time.monotonic(), time.monotonic() - started, stats)
        except Exception:
            log.exception("could not compute the dashboard's statistics over %s", window.label)
        finally:
            with self._lock:
                del self._running[window.key]


def _problems(tracker: Tracker) -> list[DeliveryRecord]:
    # One outcome per query: each then reads its newest rows straight from
    # ix_deliveries_unapplied, where both at once made SQLite scan every delivery.
    found = [
        record
        for outcome in (Outcome.REJECTED, Outcome.UNHANDLED)
        for record in tracker.deliveries(outcome, limit=RECENT_PROBLEMS)
    ]
    found.sort(key=lambda record: record.id, reverse=True)
    return found[:RECENT_PROBLEMS]


def overview(tracker: Tracker, stats: StatsCache, window: Window, page: int) -> Overview:
    """Live streams (one page of them), statistics over ``window``, recent problem deliveries
    and concurrency alerts."""
    live = tracker.streams(LIVE_STATES)
    live.sort(key=lambda s: (s.started_at or 0, s.stream_id), reverse=True)
    active = [s for s in live if s.state in ACTIVE_STATES]
    pages = max(1, -(-len(live) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    problems = _problems(tracker)
    # A rejected delivery names a stream it did not create: no page to link to.
    mentioned = {record.stream_id for record in problems if record.stream_id}
    return Overview(
        now_ms=now_ms(),
        window=window,
        active=len(active),
        interrupted=len(live) - len(active),
        active_by_scope=dict(Counter(s.scope for s in active).most_common()),
        live=live[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        page=page,
        pages=pages,
        stats=stats.get(window),
        problems=problems,
        problem_streams=tracker.stored_stream_ids(mentioned) if mentioned else set(),
        alerts=tracker.concurrency_alerts(limit=RECENT_ALERTS),
    )


@dataclass(frozen=True, slots=True)
class StreamPage:
    """Everything on ``/dashboard/streams/{stream_id}``."""

    now_ms: int
    stream: Stream
    history: Sequence[Transition]
    deliveries: Sequence[DeliveryRecord]
    #: The claim history: which worker held the stream, when, and what it reported.
    claims: Sequence[ClaimEvent]


def stream_page(tracker: Tracker, stream_id: str) -> StreamPage | None:
    """One stream, its history in event-time order and its deliveries; None if unknown."""
    found = tracker.stream(stream_id)
    if found is None:
        return None
    return StreamPage(
        now_ms=now_ms(),
        stream=found,
        history=tracker.history(stream_id),
        deliveries=tracker.deliveries(stream_id=stream_id, limit=200),
        claims=tracker.claim_history(stream_id),
    )
