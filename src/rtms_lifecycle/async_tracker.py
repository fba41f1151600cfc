"""The embedding API for asyncio backends: :class:`AsyncTracker`, every method awaitable.

The database work and the parsing run in worker threads (on SQLite, writes in the store's one
write queue), so the event loop never waits on them; callbacks (plain or ``async def``) run on
the event loop after each commit, and durable subscriptions' callbacks on the event loop of
:meth:`AsyncTracker.run_subscriptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, overload

from rtms_lifecycle import subscriptions as _subs
from rtms_lifecycle.async_subscriptions import AsyncSubscriptionRunner
from rtms_lifecycle.defaults import (
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_EVENT_AHEAD,
    DEFAULT_MIN_EVENT_TIME,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETRY_DELAY,
)
from rtms_lifecycle.events import Scope
from rtms_lifecycle.exceptions import ConfigurationError, StoreTimeout
from rtms_lifecycle.machine import State, TransitionName
from rtms_lifecycle.records import (
    AuditReport,
    Claim,
    ClaimEvent,
    ClaimStats,
    ConcurrencyAlertRecord,
    DatabaseCapacity,
    DeliveryRecord,
    IngestResult,
    InterruptionStats,
    Outcome,
    Page,
    PruneRecord,
    PruneResult,
    ReprocessResult,
    StopReasonCount,
    StopReasonStat,
    Stream,
    SubscriptionStatus,
    Transition,
    UnhandledEventStat,
)
from rtms_lifecycle.store.core import FILE_CHECK_INTERVAL
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.tracker import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PAGE_SIZE,
    Body,
    IngestSummary,
    Subscription,
    Timestamp,
    Tracker,
    TransitionCallback,
    load_next,
    submit_deliveries,
    write_executor,
)
from rtms_lifecycle.tracking import (
    DEFAULT_CLAIM_LEASE,
    DEFAULT_CONNECT_BUCKETS,
    callback_failed,
    check_batch_size,
)
from rtms_lifecycle.webhook import DEFAULT_REPLAY_WINDOW, Verification

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["DEFAULT_MAX_THREADS", "AsyncTracker"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Worker threads for reads (and for writes on PostgreSQL), per AsyncTracker.
DEFAULT_MAX_THREADS: Final = 16

#: Callbacks run between two yields to the event loop. A callback that does not suspend (most
#: ``async def`` ones) would otherwise run a whole batch's worth in one step of the loop.
_NOTICES_PER_STEP: Final = 32

_Notice = tuple[Transition, Stream]
# The transitions a write in this worker-thread job applied, and which AsyncTracker asked: the
# Tracker calls its callbacks in the writing thread, and they belong on the event loop.
_COLLECTING: contextvars.ContextVar[tuple[AsyncTracker, list[_Notice]] | None] = (
    contextvars.ContextVar("rtms_lifecycle_collecting", default=None)
)


class AsyncTracker:
    """A :class:`Tracker` for asyncio: the same methods, each awaitable.

    Takes the same arguments as :class:`Tracker`, or an existing ``Tracker`` to share (its owner
    closes it). Reads run in worker threads (at most ``max_threads`` at a time); on SQLite,
    writes take their turn in the store's one write queue, with every other write of the process
    (the single writer SQLite admits), and concurrent ``ingest`` calls share commits. The event
    loop only waits for the results. A write that was called finishes, callbacks
    included, even if the awaiting task is cancelled; :meth:`close` waits for such writes.
    """

    def __init__(
        self,
        db: str | Engine | Tracker | None = None,
        *,
        migrate: bool = True,
        webhook_secrets: Sequence[str] | None = None,
        replay_window: float = DEFAULT_REPLAY_WINDOW,
        max_event_ahead: float = DEFAULT_MAX_EVENT_AHEAD,
        min_event_time: Timestamp = DEFAULT_MIN_EVENT_TIME,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        if isinstance(db, Tracker):
            if (
                not migrate
                or webhook_secrets is not None
                or replay_window != DEFAULT_REPLAY_WINDOW
                or max_event_ahead != DEFAULT_MAX_EVENT_AHEAD
                or min_event_time != DEFAULT_MIN_EVENT_TIME
            ):
                raise TypeError("an existing Tracker keeps its own options: pass db alone")
            self._sync, self._owned = db, False
        else:
            self._sync = Tracker(
                db,
                migrate=migrate,
                webhook_secrets=webhook_secrets,
                replay_window=replay_window,
                max_event_ahead=max_event_ahead,
                min_event_time=min_event_time,
            )
            self._owned = True
        self._threads = ThreadPoolExecutor(max_threads, thread_name_prefix="rtms-lifecycle")
        # SQLite admits one writer: writes take their turn in the store's queue, as every other
        # write of the process does, and deliveries there share commits (the event loop only
        # awaits their futures). PostgreSQL's writers run in worker threads, side by side.
        queue = write_executor(self._sync)
        self._queued = queue is not None
        self._writes: Executor = queue if queue is not None else self._threads
        self._subscriptions: tuple[Subscription, ...] = ()
        self._consumers: tuple[tuple[_subs.Consumer, TransitionCallback], ...] = ()
        # The run_subscriptions in progress, and what it sets when it ended.
        self._run: tuple[AsyncSubscriptionRunner, asyncio.Future[None]] | None = None
        self._collects = False
        self._lock = threading.Lock()
        # Writes in worker threads, and callbacks of writes whose caller stopped waiting.
        self._jobs: set[Future[Any]] = set()
        self._callbacks: set[asyncio.Task[None]] = set()
        # Where finished writes are handed to the event loop that awaits them (the last one).
        self._handoff: _Handoff | None = None
        self._closed = False

    @property
    def sync(self) -> Tracker:
        """The synchronous :class:`Tracker` underneath, for threads and scripts."""
        return self._sync

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine underneath."""
        return self._sync.engine

    async def watch_files(self, interval: float = FILE_CHECK_INTERVAL) -> None:
        """:meth:`Tracker.watch_files`: a thread of its own checks the files; nothing waits."""
        self._sync.watch_files(interval)

    async def close(self) -> None:
        """End :meth:`run_subscriptions`, wait for calls still running, then release the threads
        and (if owned) the database."""
        if self._run is not None:
            runner, ended = self._run
            runner.stop()
            await asyncio.shield(ended)
        while self._jobs or self._callbacks:
            # A job's end hands its callbacks to the loop before its wrapper here completes.
            await asyncio.gather(
                *(asyncio.wrap_future(job) for job in list(self._jobs)),
                *self._callbacks,
                return_exceptions=True,
            )
        if self._closed:
            return
        self._closed = True
        if self._owned:
            # In a worker thread: closing the store waits for its turn in the write queue.
            await asyncio.wrap_future(self._threads.submit(self._sync.close))
        self._threads.shutdown(wait=False)

    async def __aenter__(self) -> AsyncTracker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- where work runs --------------------------------------------------------------------

    async def _read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, _in_context(fn, *args, **kwargs))

    async def _write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._outcome(self._submit(functools.partial(fn, *args, **kwargs)))

    def _submit(self, call: Callable[[], T]) -> Future[tuple[T, list[_Notice]]]:
        return self._writes.submit(_in_context(self._collecting, call))

    async def _deliver(
        self,
        bodies: Sequence[Body],
        verified: Sequence[Verification | None] | None,
        headers: Mapping[str, str] | None,
        deadline: float | None,
    ) -> list[IngestResult]:
        # Queued in the store (SQLite), no thread waits: the writer thread parses, writes (with
        # the deliveries queued beside these) and runs the Tracker's callbacks; ours run here.
        # One future per write: the writer thread puts the transitions beside the results.
        notices: list[_Notice] = []

        def submit() -> Future[tuple[list[IngestResult], list[_Notice]]]:
            _COLLECTING.set((self, notices))
            return submit_deliveries(
                self._sync,
                bodies,
                verified=verified,
                headers=headers,
                deadline=deadline,
                then=lambda results: (results, notices),
            )

        return await self._outcome(contextvars.copy_context().run(submit))

    async def _outcome(
        self, job: Future[tuple[T, list[_Notice]]], deadline: float | None = None
    ) -> T:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[T, list[_Notice]]] = loop.create_future()
        handoff = self._handoff
        if handoff is None or handoff.loop is not loop:
            handoff = self._handoff = _Handoff(loop, self._settle)
        self._jobs.add(job)
        job.add_done_callback(functools.partial(self._finished, handoff, waiter))
        # The waiter is not linked back to the job: a commit cannot be called back once its thread
        # runs, so a cancelled caller stops waiting, and the write finishes, callbacks included.
        if deadline is None:
            result, notices = await waiter
        else:
            # The thread's own budget holds while the database answers; this one holds when it
            # does not (a connect, or a cancel, lost in a network partition).
            try:
                async with asyncio.timeout(deadline + _ANSWER_MARGIN_S - time.monotonic()):
                    result, notices = await waiter
            except TimeoutError:
                raise StoreTimeout("the database did not answer within the time budget") from None
        if notices:
            await asyncio.shield(self._notify_in_task(notices))
        return result

    def _finished(self, handoff: _Handoff, waiter: asyncio.Future[Any], job: Future[Any]) -> None:
        # In the worker thread: hand the outcome to the event loop (unless it is closed: nobody
        # is left to tell), then stop counting the job, so close() never misses its callbacks.
        handoff.post(waiter, job)
        self._jobs.discard(job)

    def _settle(self, waiter: asyncio.Future[Any], job: Future[Any]) -> None:
        exc = job.exception()
        if not waiter.cancelled():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(job.result())
        elif isinstance(exc, StoreTimeout):
            pass  # its caller was told already, at its deadline
        elif exc is not None:
            log.error("a write whose caller was cancelled failed", exc_info=exc)
        elif notices := job.result()[1]:
            self._notify_in_task(notices)

    def _notify_in_task(self, notices: Sequence[_Notice]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._notify(notices))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)
        return task

    def _collecting(self, call: Callable[[], T]) -> tuple[T, list[_Notice]]:
        # Runs in the job's own copy of the context: other jobs' threads collect their own.
        notices: list[_Notice] = []
        _COLLECTING.set((self, notices))
        return call(), notices

    def _collect(self, transition: Transition, stream: Stream) -> None:
        # Registered on the Tracker: in a job of this AsyncTracker, keep the transition for the
        # event loop; elsewhere (the Tracker used directly, or by another AsyncTracker) nothing.
        collecting = _COLLECTING.get()
        if collecting is not None and collecting[0] is self:
            collecting[1].append((transition, stream))

    async def _notify(self, notices: Sequence[_Notice]) -> None:
        subscriptions = self._subscriptions
        for index, (transition, stream) in enumerate(notices):
            if index and not index % _NOTICES_PER_STEP:
                await asyncio.sleep(0)  # a bulk load's callbacks must not hold the loop
            for subscription in subscriptions:
                if subscription.wants(transition, stream):
                    try:
                        outcome = subscription.callback(transition, stream)
                        if inspect.isawaitable(outcome):
                            await outcome
                    except Exception:
                        callback_failed(subscription.callback, transition)

    # --- writing ----------------------------------------------------------------------------

    async def ingest(
        self,
        body: Body,
        *,
        headers: Mapping[str, str] | None = None,
        verified: Verification | None = None,
        timeout: float | None = None,
    ) -> IngestResult:
        """Awaitable :meth:`Tracker.ingest`: one delivery, durably committed (on SQLite, with the
        deliveries queued beside it), callbacks after. ``timeout`` counts from this call, the
        wait for its turn included."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._queued:
            (result,) = await self._deliver([body], [verified], headers, deadline)
            return result
        if deadline is None:
            return await self._write(self._sync.ingest, body, headers=headers, verified=verified)

        def ingest() -> IngestResult:
            left = _left(deadline)
            return self._sync.ingest(body, headers=headers, verified=verified, timeout=left)

        return await self._outcome(self._submit(ingest), deadline)

    async def ingest_batch(
        self,
        bodies: Sequence[Body],
        *,
        verified: Sequence[Verification | None] | None = None,
        timeout: float | None = None,
    ) -> list[IngestResult]:
        """Awaitable :meth:`Tracker.ingest_batch`: a group commit, all or nothing. ``timeout``
        counts from this call, the wait for its turn included."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._queued:
            return await self._deliver(bodies, verified, None, deadline)

        def ingest_batch() -> list[IngestResult]:
            left = None if deadline is None else _left(deadline)
            return self._sync.ingest_batch(bodies, verified=verified, timeout=left)

        return await self._outcome(self._submit(ingest_batch), deadline)

    async def ingest_many(
        self,
        bodies: Iterable[Body] | AsyncIterable[Body],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        committed: Counter[Outcome] | None = None,
    ) -> IngestSummary:
        """Awaitable :meth:`Tracker.ingest_many`, from a sync or an async iterable.

        A sync iterable is read in the worker thread (a file or a generator may block); an async
        one on the event loop. Each batch is parsed and committed in a worker thread, and its
        callbacks run before the next batch is read. ``committed``: as for the Tracker's.
        """
        check_batch_size(batch_size)
        counts: Counter[Outcome] = Counter() if committed is None else committed
        if isinstance(bodies, AsyncIterable):
            batch: list[Body] = []
            async for body in bodies:
                batch.append(body)
                if len(batch) >= batch_size:
                    counts.update((await self._batch(iter(batch), batch_size)).counts)
                    batch = []
            if batch:
                counts.update((await self._batch(iter(batch), batch_size)).counts)
        else:
            iterator = iter(bodies)
            while (summary := await self._batch(iterator, batch_size)).total:
                counts.update(summary.counts)
        return IngestSummary(dict(counts))

    async def _batch(self, bodies: Iterator[Body], size: int) -> IngestSummary:
        """The next ``size`` bodies, read, parsed and recorded in one job (none: all read)."""
        return await self._write(load_next, self._sync, bodies, size)

    async def report_resumed(self, stream_id: str, at_ms: int) -> IngestResult:
        """Awaitable :meth:`Tracker.report_resumed`."""
        return await self._write(self._sync.report_resumed, stream_id, at_ms)

    # --- claims -----------------------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        *,
        lease: timedelta | float = DEFAULT_CLAIM_LEASE,
        scope: Scope | str | Iterable[Scope | str] | None = None,
        account_id: str | None = None,
        scope_id: str | None = None,
        exclude: Iterable[str] = (),
    ) -> Claim | None:
        """Awaitable :meth:`Tracker.claim`."""
        return await self._write(
            self._sync.claim,
            worker,
            lease=lease,
            scope=scope,
            account_id=account_id,
            scope_id=scope_id,
            exclude=tuple(exclude),
        )

    async def renew(self, claim: Claim, *, lease: timedelta | float | None = None) -> Claim:
        """Awaitable :meth:`Tracker.renew`."""
        return await self._write(self._sync.renew, claim, lease=lease)

    async def release(self, claim: Claim, reason: str | None = None) -> bool:
        """Awaitable :meth:`Tracker.release`."""
        return await self._write(self._sync.release, claim, reason)

    async def report_connected(self, claim: Claim, at_ms: int | None = None) -> None:
        """Awaitable :meth:`Tracker.report_connected`."""
        await self._write(self._sync.report_connected, claim, at_ms)

    async def report_disconnected(
        self, claim: Claim, at_ms: int | None = None, reason: int | None = None
    ) -> None:
        """Awaitable :meth:`Tracker.report_disconnected`."""
        await self._write(self._sync.report_disconnected, claim, at_ms, reason)

    async def claims(self, worker: str | None = None) -> list[Claim]:
        """Awaitable :meth:`Tracker.claims`."""
        return await self._read(self._sync.claims, worker)

    async def unclaimed_streams(self, older_than: timedelta | float = 0.0) -> list[Stream]:
        """Awaitable :meth:`Tracker.unclaimed_streams`."""
        return await self._read(self._sync.unclaimed_streams, older_than)

    async def unconnected_streams(self, older_than: timedelta | float = 30.0) -> list[Stream]:
        """Awaitable :meth:`Tracker.unconnected_streams`."""
        return await self._read(self._sync.unconnected_streams, older_than)

    async def claim_stats(
        self,
        older_than: timedelta | float = 30.0,
        buckets: Sequence[float] = DEFAULT_CONNECT_BUCKETS,
    ) -> ClaimStats:
        """Awaitable :meth:`Tracker.claim_stats`."""
        return await self._read(self._sync.claim_stats, older_than, buckets)

    async def connected_after_stop(self) -> list[Claim]:
        """Awaitable :meth:`Tracker.connected_after_stop`."""
        return await self._read(self._sync.connected_after_stop)

    async def claim_history(self, stream_id: str) -> list[ClaimEvent]:
        """Awaitable :meth:`Tracker.claim_history`."""
        return await self._read(self._sync.claim_history, stream_id)

    async def expire(
        self, stale_after: timedelta | float, *, dry_run: bool = False
    ) -> list[Stream]:
        """Awaitable :meth:`Tracker.expire`."""
        return await self._write(self._sync.expire, stale_after, dry_run=dry_run)

    async def reprocess(
        self,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        *,
        since: Timestamp | None = None,
        dry_run: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> ReprocessResult:
        """Awaitable :meth:`Tracker.reprocess`."""
        return await self._write(
            self._sync.reprocess, outcome, since=since, dry_run=dry_run, batch_size=batch_size
        )

    async def prune(
        self, older_than: timedelta | float, *, dry_run: bool = False, vacuum: bool = False
    ) -> PruneResult:
        """Awaitable :meth:`Tracker.prune` (it works in short transactions of its own)."""
        return await self._read(self._sync.prune, older_than, dry_run=dry_run, vacuum=vacuum)

    async def prunes(self, limit: int | None = None) -> list[PruneRecord]:
        """Awaitable :meth:`Tracker.prunes`."""
        return await self._read(self._sync.prunes, limit)

    async def verify_audit(
        self, stream_id: str | None = None, *, head: str | None = None
    ) -> AuditReport:
        """Awaitable :meth:`Tracker.verify_audit`."""
        return await self._read(self._sync.verify_audit, stream_id, head=head)

    async def audit_head(self) -> str:
        """Awaitable :meth:`Tracker.audit_head`."""
        return await self._read(self._sync.audit_head)

    # --- callbacks --------------------------------------------------------------------------

    @overload
    def on_transition(
        self, callback: TransitionCallback, *, to: Any = None, name: Any = None, scope: Any = None
    ) -> TransitionCallback: ...

    @overload
    def on_transition(
        self, callback: None = None, *, to: Any = None, name: Any = None, scope: Any = None
    ) -> Callable[[TransitionCallback], TransitionCallback]: ...

    def on_transition(
        self,
        callback: TransitionCallback | None = None,
        *,
        to: State | str | Iterable[State | str] | None = None,
        name: TransitionName | str | Iterable[TransitionName | str] | None = None,
        scope: Scope | str | Iterable[Scope | str] | None = None,
    ) -> TransitionCallback | Callable[[TransitionCallback], TransitionCallback]:
        """:meth:`Tracker.on_transition`, on the event loop: ``async def`` callbacks are awaited.

        Every callback runs on the event loop, in the task of the call that committed, after the
        commit and before that call returns, in registration order. One that raises is logged.
        """

        def register(fn: TransitionCallback) -> TransitionCallback:
            subscription = Subscription.of(fn, to, name, scope)
            with self._lock:
                self._subscriptions = (*self._subscriptions, subscription)
                if not self._collects:
                    # Only now: without callbacks, bulk loads skip building each transition.
                    self._sync.on_transition(self._collect)
                    self._collects = True
            return fn

        return register(callback) if callback is not None else register

    # --- durable subscriptions --------------------------------------------------------------

    @overload
    def subscribe(
        self,
        consumer: str,
        callback: TransitionCallback,
        *,
        to: Any = None,
        name: Any = None,
        scope: Any = None,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
    ) -> TransitionCallback: ...

    @overload
    def subscribe(
        self,
        consumer: str,
        callback: None = None,
        *,
        to: Any = None,
        name: Any = None,
        scope: Any = None,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
    ) -> Callable[[TransitionCallback], TransitionCallback]: ...

    def subscribe(
        self,
        consumer: str,
        callback: TransitionCallback | None = None,
        *,
        to: State | str | Iterable[State | str] | None = None,
        name: TransitionName | str | Iterable[TransitionName | str] | None = None,
        scope: Scope | str | Iterable[Scope | str] | None = None,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
    ) -> TransitionCallback | Callable[[TransitionCallback], TransitionCallback]:
        """:meth:`Tracker.subscribe`, delivered on the event loop: ``async def`` callbacks are
        awaited.

        Only registers (usable as a decorator), without touching the database: a consumer new to
        the database is stored when :meth:`run_subscriptions` starts, at the end of the feed as
        it is then (or at its start with ``from_start``). The callbacks run on the event loop
        that awaits :meth:`run_subscriptions`, one delivery at a time: a plain one must not
        block (an ``async def`` one may await ``asyncio.to_thread`` for blocking work).
        """

        def register(fn: TransitionCallback) -> TransitionCallback:
            core = self._sync.consumer(
                consumer,
                Subscription.of(fn, to, name, scope).wants,
                from_start=from_start,
                max_attempts=max_attempts,
                retry_delay=retry_delay,
                lease=lease,
                create=False,
            )
            with self._lock:
                if any(c.name == consumer for c, _ in self._consumers):
                    raise ConfigurationError(f"consumer {consumer!r} is already subscribed here")
                self._consumers = (*self._consumers, (core, fn))
            return fn

        return register(callback) if callback is not None else register

    async def run_subscriptions(
        self,
        *,
        stop: asyncio.Event | None = None,
        idle_exit: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        """Awaitable :meth:`Tracker.run_subscriptions`: deliver on this event loop until ``stop``
        is set or the task is cancelled, or after ``idle_exit`` seconds with nothing to do.

        The database work runs in worker threads and the wait for news on a timer (SQLite) or
        in a worker thread (PostgreSQL's ``LISTEN``), so the loop is never held. A delivery in
        progress when ``stop`` is set is finished first; one whose callback is cancelled is
        delivered again later. On the way out the leases are released. One run at a time per
        AsyncTracker; :meth:`close` ends it.
        """
        if self._closed:
            raise ConfigurationError("this AsyncTracker is closed")
        if self._run is not None:
            raise ConfigurationError("run_subscriptions is already running on this AsyncTracker")
        core = self._sync.subscription_runner(self._consumers, poll_interval)
        runner = AsyncSubscriptionRunner(core, self._writes, self._threads)
        ended = asyncio.get_running_loop().create_future()
        self._run = (runner, ended)
        try:
            await runner.run(stop, idle_exit)
        finally:
            self._run = None
            ended.set_result(None)

    async def subscriptions(self) -> list[SubscriptionStatus]:
        """Awaitable :meth:`Tracker.subscriptions`."""
        return await self._read(self._sync.subscriptions)

    async def retry_parked(self, consumer: str) -> int:
        """Awaitable :meth:`Tracker.retry_parked`."""
        return await self._write(self._sync.retry_parked, consumer)

    # --- reading ----------------------------------------------------------------------------

    async def stream(self, stream_id: str) -> Stream | None:
        """Awaitable :meth:`Tracker.stream`."""
        return await self._read(self._sync.stream, stream_id)

    async def stored_stream_ids(self, stream_ids: Iterable[str]) -> set[str]:
        """Awaitable :meth:`Tracker.stored_stream_ids`."""
        return await self._read(self._sync.stored_stream_ids, list(stream_ids))

    async def active_streams(
        self,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        *,
        account_id: str | None = None,
    ) -> list[Stream]:
        """Awaitable :meth:`Tracker.active_streams`."""
        return await self._read(self._sync.active_streams, scope, scope_id, account_id=account_id)

    async def streams(
        self,
        state: State | str | Iterable[State | str] | None = None,
        *,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        limit: int | None = None,
        account_id: str | None = None,
        began_since: Timestamp | None = None,
        began_until: Timestamp | None = None,
    ) -> list[Stream]:
        """Awaitable :meth:`Tracker.streams`."""
        return await self._read(
            self._sync.streams,
            state,
            scope=scope,
            scope_id=scope_id,
            since=since,
            until=until,
            limit=limit,
            account_id=account_id,
            began_since=began_since,
            began_until=began_until,
        )

    async def count_streams(
        self,
        state: State | str | Iterable[State | str] | None = None,
        *,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        account_id: str | None = None,
        began_since: Timestamp | None = None,
        began_until: Timestamp | None = None,
    ) -> int:
        """Awaitable :meth:`Tracker.count_streams`."""
        return await self._read(
            self._sync.count_streams,
            state,
            scope=scope,
            scope_id=scope_id,
            since=since,
            until=until,
            account_id=account_id,
            began_since=began_since,
            began_until=began_until,
        )

    async def stream_page(
        self,
        state: State | str | Iterable[State | str] | None = None,
        *,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        account_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        holders: bool = False,
    ) -> Page[Stream]:
        """Awaitable :meth:`Tracker.stream_page`."""
        return await self._read(
            self._sync.stream_page,
            state,
            scope=scope,
            scope_id=scope_id,
            since=since,
            until=until,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            holders=holders,
        )

    async def delivery_page(
        self,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        *,
        event: str | None = None,
        stream_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[DeliveryRecord]:
        """Awaitable :meth:`Tracker.delivery_page`."""
        return await self._read(
            self._sync.delivery_page,
            outcome,
            event=event,
            stream_id=stream_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    async def alert_page(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        *,
        account_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ConcurrencyAlertRecord]:
        """Awaitable :meth:`Tracker.alert_page`."""
        return await self._read(
            self._sync.alert_page,
            since,
            until,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
        )

    async def live_counts(
        self, long_after: timedelta | float
    ) -> list[tuple[Scope, State, int, int]]:
        """Awaitable :meth:`Tracker.live_counts`."""
        return await self._read(self._sync.live_counts, long_after)

    async def capacity(self) -> DatabaseCapacity:
        """Awaitable :meth:`Tracker.capacity`."""
        return await self._read(self._sync.capacity)

    async def recent_stops(self, within: timedelta | float) -> tuple[int, int]:
        """Awaitable :meth:`Tracker.recent_stops`."""
        return await self._read(self._sync.recent_stops, within)

    async def history(self, stream_id: str) -> list[Transition]:
        """Awaitable :meth:`Tracker.history`."""
        return await self._read(self._sync.history, stream_id)

    async def audit(self, stream_id: str) -> list[Transition]:
        """Awaitable :meth:`Tracker.audit`."""
        return await self._read(self._sync.audit, stream_id)

    async def transitions_since(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Transition], str]:
        """Awaitable :meth:`Tracker.transitions_since`."""
        return await self._read(self._sync.transitions_since, cursor, limit)

    async def deliveries(
        self,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        *,
        stream_id: str | None = None,
        limit: int | None = 100,
    ) -> list[DeliveryRecord]:
        """Awaitable :meth:`Tracker.deliveries`."""
        return await self._read(self._sync.deliveries, outcome, stream_id=stream_id, limit=limit)

    async def stop_reason_stats(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        by_scope: bool = False,
        *,
        account_id: str | None = None,
    ) -> list[StopReasonStat]:
        """Awaitable :meth:`Tracker.stop_reason_stats`."""
        return await self._read(
            self._sync.stop_reason_stats, since, until, by_scope, account_id=account_id
        )

    async def unhandled_stats(
        self, since: Timestamp | None = None, until: Timestamp | None = None
    ) -> list[UnhandledEventStat]:
        """Awaitable :meth:`Tracker.unhandled_stats`."""
        return await self._read(self._sync.unhandled_stats, since, until)

    async def stop_reason_counts(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        *,
        bucket: timedelta = timedelta(hours=1),
    ) -> list[StopReasonCount]:
        """Awaitable :meth:`Tracker.stop_reason_counts`."""
        return await self._read(self._sync.stop_reason_counts, since, until, bucket=bucket)

    async def interruption_stats(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        scope: Scope | str | None = None,
        *,
        account_id: str | None = None,
    ) -> InterruptionStats:
        """Awaitable :meth:`Tracker.interruption_stats`."""
        return await self._read(
            self._sync.interruption_stats, since, until, scope, account_id=account_id
        )

    async def interruption_stats_by_scope(
        self, since: Timestamp | None = None, until: Timestamp | None = None
    ) -> dict[Scope, InterruptionStats]:
        """Awaitable :meth:`Tracker.interruption_stats_by_scope`."""
        return await self._read(self._sync.interruption_stats_by_scope, since, until)

    async def concurrency_alerts(
        self, since: Timestamp | None = None, limit: int | None = None
    ) -> list[ConcurrencyAlertRecord]:
        """Awaitable :meth:`Tracker.concurrency_alerts`."""
        return await self._read(self._sync.concurrency_alerts, since, limit)

    async def latest_alert(self) -> ConcurrencyAlertRecord | None:
        """Awaitable :meth:`Tracker.latest_alert`."""
        return await self._read(self._sync.latest_alert)

    async def ping(self) -> bool:
        """Awaitable :meth:`Tracker.ping`."""
        return await self._read(self._sync.ping)

    async def active_counts(self) -> dict[Scope, int]:
        """Awaitable :meth:`Tracker.active_counts`."""
        return await self._read(self._sync.active_counts)

    async def schema_revision(self) -> str | None:
        """Awaitable :meth:`Tracker.schema_revision`."""
        return await self._read(self._sync.schema_revision)

    async def revoke_dashboard_session(self, session_id: str, until_ms: int) -> None:
        """Awaitable :meth:`Tracker.revoke_dashboard_session`."""
        await self._write(self._sync.revoke_dashboard_session, session_id, until_ms)

    async def dashboard_session_revoked(self, session_id: str) -> bool:
        """Awaitable :meth:`Tracker.dashboard_session_revoked`."""
        return await self._read(self._sync.dashboard_session_revoked, session_id)

    async def check_writable(self, timeout: float = DEFAULT_STORE_TIMEOUT) -> None:
        """Awaitable :meth:`Tracker.check_writable`. Not queued behind this tracker's writes: it
        asks whether the store can take a write now, within ``timeout``."""
        await self._read(self._sync.check_writable, timeout)


class _Handoff:
    """Finished jobs handed from other threads to one event loop, to settle there: one wake-up
    of the loop for the jobs that finish together (a group commit's), not one each (a system
    call in the writer thread, and a pass of the event loop, per delivery)."""

    __slots__ = ("_items", "_lock", "_settle", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settle: Callable[[asyncio.Future[Any], Future[Any]], None],
    ) -> None:
        self.loop = loop
        self._settle = settle
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Future[Any], Future[Any]]] = []

    def post(self, waiter: asyncio.Future[Any], job: Future[Any]) -> None:
        """Settle ``waiter`` from ``job`` on the loop (nothing if the loop is closed)."""
        with self._lock:
            self._items.append((waiter, job))
            if len(self._items) > 1:
                return  # the loop is already called to take them
        with contextlib.suppress(RuntimeError):  # closed: nobody is left to tell
            self.loop.call_soon_threadsafe(self._take)

    def _take(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for waiter, job in items:
            try:
                self._settle(waiter, job)
            except Exception:  # one waiter's failure must not strand the others
                log.exception("could not hand a finished write to its caller")


def _in_context(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Callable[[], T]:
    """``fn(*args, **kwargs)`` in a copy of the caller's context variables, as in to_thread."""
    return functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)


#: Seconds past a delivery's deadline that its caller waits for the thread recording it.
_ANSWER_MARGIN_S: Final = 0.1


def _left(deadline: float) -> float:
    """Seconds left before ``deadline`` (monotonic clock); none left is a :class:`StoreTimeout`."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise StoreTimeout("the write waited for a worker thread past its time budget")
    return left
