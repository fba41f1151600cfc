"""What each dashboard page shows, gathered from the Tracker's indexed queries."""

from __future__ import annotations

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
from rtms_lifecycle.receiver.settings import log
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
    "LONG_WINDOW_MAX_AGE_S",
    "CachedStats",
    "StatsCache",
    "StreamPage",
    "Window",
    "WindowStats",
    "max_age_s",
    "overview",
    "stream_page",
    "window_stats",
]

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
    #: One page of live streams, newest start first, after ``cursor`` (None: the newest page).
    live: Sequence[Stream]
    cursor: str | None
    #: The cursor of the page after this one; None on the last.
    next_cursor: str | None
    stats: WindowStats | None
    #: Whether newer statistics of the window are being computed.
    stats_updating: bool
    problems: Sequence[DeliveryRecord]
    #: The problems' stream ids that name a stored stream: only these link to a stream page.
    problem_streams: Set[str]
    alerts: Sequence[ConcurrencyAlertRecord]

    @property
    def stats_age_ms(self) -> int | None:
        """How old the window's statistics are (None without any)."""
        return None if self.stats is None else max(0, self.now_ms - self.stats.computed_ms)


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


#: How old a long window's (7d, 30d, all) statistics may get before a page asks for new ones;
#: the 24 h window's bound is the refresh interval. One computation at 100,000 streams took
#: 0.08 s (7d), 0.34 s (30d), 1.65 s (all) median on the shared 2-vCPU machine (load 6 to 9),
#: 0.71, 1.14 and 8.2 s under load 11 (bench_window_stats, docs/benchmarks.md "Dashboard"):
#: every 60 s is 3% of a core, 14% at the worst, and under the five-times guard below.
LONG_WINDOW_MAX_AGE_S: Final = 60.0
#: A computation starts no sooner than this many times its last duration after the last one
#: started, so that watching a very big store keeps a core at most a fifth busy (at 1,000,000
#: streams "all" took 64 s: its figures are then up to about 5 minutes old, and say so).
_CPU_SHARE: Final = 5


def max_age_s(window: Window, refresh_s: float, long_s: float = LONG_WINDOW_MAX_AGE_S) -> float:
    """How old ``window``'s statistics may be before a page asks for new ones (seconds)."""
    short = window.length is not None and window.length <= DAY
    return refresh_s if short else max(refresh_s, long_s)


@dataclass(frozen=True, slots=True)
class CachedStats:
    """A window's newest statistics, and whether newer ones are being computed."""

    stats: WindowStats | None
    updating: bool


class StatsCache:
    """Window statistics computed in the background, so that no page waits long for them.

    Interruption statistics re-fold the events of every interrupted stream of the window: on a
    small store that takes milliseconds, on a million streams seconds for 30 days. A page whose
    window has no statistics yet, or statistics older than :func:`max_age_s` (the refresh
    interval for 24 hours, :data:`LONG_WINDOW_MAX_AGE_S` for longer windows), starts a new
    computation and waits up to ``wait_s`` for it; past that it shows the previous result (the
    page says how old) and the next refresh the new one.
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        fresh_s: float = 10.0,
        wait_s: float = 0.15,
        long_s: float = LONG_WINDOW_MAX_AGE_S,
    ) -> None:
        self._tracker = tracker
        self._fresh_s = fresh_s
        self._long_s = long_s
        self._wait_s = wait_s
        self._lock = threading.Lock()
        # One computation at a time: they are reads, but each can keep a core busy.
        self._one_at_a_time = threading.Lock()
        # window -> (monotonic start of the computation, its duration, its result)
        self._done: dict[str, tuple[float, float, WindowStats]] = {}
        self._running: dict[str, threading.Thread] = {}

    def get(self, window: Window) -> CachedStats:
        """The newest statistics of ``window`` (None while the first computation runs); starts
        a new computation when they are older than the window's bound."""
        with self._lock:
            done = self._done.get(window.key)
            running = self._running.get(window.key)
            stale = done is None or time.monotonic() - done[0] > max(
                max_age_s(window, self._fresh_s, self._long_s), _CPU_SHARE * done[1]
            )
            if stale and running is None:
                # A daemon thread: stopping the receiver never waits for a dashboard statistic.
                running = threading.Thread(
                    target=self._compute, args=(window,), name="rtms-dashboard-stats", daemon=True
                )
                self._running[window.key] = running
                running.start()
        if stale and running is not None:
            # Briefly: a page that cannot have fresh figures at once shows the previous ones,
            # with their age, while the next are computed.
            running.join(timeout=self._wait_s)
            with self._lock:
                done = self._done.get(window.key)
                running = self._running.get(window.key)
        return CachedStats(done[2] if done else None, running is not None)

    def _compute(self, window: Window) -> None:
        try:
            with self._one_at_a_time:
                started = time.monotonic()
                stats = window_stats(self._tracker, window)
            with self._lock:
                self._done[window.key] = (started, time.monotonic() - started, stats)
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


def overview(
    tracker: Tracker, stats: StatsCache, window: Window, cursor: str | None = None
) -> Overview:
    """Live streams (the page after ``cursor``), statistics over ``window``, recent problem
    deliveries and concurrency alerts. ValueError for a cursor of another list."""
    # Keyset paging, as the read API's: a page starts after a position, not a count, so that
    # streams starting and stopping between pages neither repeat rows nor skip them.
    live = tracker.stream_page(LIVE_STATES, limit=PAGE_SIZE, cursor=cursor, holders=True)
    # Counted by the database on the live index: a count per scope (a handful).
    by_scope = {
        scope: count
        for scope in Scope
        if (count := tracker.count_streams(ACTIVE_STATES, scope=scope))
    }
    problems = _problems(tracker)
    # A rejected delivery names a stream it did not create: no page to link to.
    mentioned = {record.stream_id for record in problems if record.stream_id}
    cached = stats.get(window)
    return Overview(
        now_ms=now_ms(),
        window=window,
        active=sum(by_scope.values()),
        interrupted=tracker.count_streams(LIVE_STATES - ACTIVE_STATES),
        active_by_scope=dict(sorted(by_scope.items(), key=lambda item: -item[1])),
        live=live.items,
        cursor=cursor,
        next_cursor=live.next,
        stats=cached.stats,
        stats_updating=cached.updating,
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
