"""Durable subscriptions driven from an asyncio event loop, for :class:`AsyncTracker`.

The same core as :class:`~rtms_lifecycle.subscriptions.SubscriptionRunner`: each consumer's
database work (:class:`~rtms_lifecycle.subscriptions.Consumer`'s calls) runs in a worker thread,
one call at a time, and the callbacks, plain or ``async def``, run on the event loop. Waiting for
news takes no thread on SQLite (a timer on the loop) and one on PostgreSQL (``LISTEN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from rtms_lifecycle.subscriptions import ROUND, FeedWaker, SubscriptionRunner

__all__ = ["AsyncSubscriptionRunner"]

# The synchronous runner's logger: operators' filters match one name for both.
log = logging.getLogger("rtms_lifecycle.subscriptions")

T = TypeVar("T")


class AsyncSubscriptionRunner:
    """Runs a :class:`SubscriptionRunner`'s consumers on the event loop until stopped or idle.

    ``calls`` runs the consumers' database work (on SQLite, the store's write queue, so that it
    queues with the other writes rather than in SQLite's busy handler); ``waits`` runs
    the PostgreSQL ``LISTEN`` wait. One run per instance.
    """

    def __init__(self, runner: SubscriptionRunner, calls: Executor, waits: Executor) -> None:
        self._runner = runner
        self._calls = calls
        self._waits = waits
        self._halt = asyncio.Event()
        # The same request for a waiting thread, which cannot watch an asyncio.Event.
        self._halted = threading.Event()
        # The run is sequential: at most one job of it is in a worker thread at any time.
        self._job: Future[Any] | None = None

    def stop(self) -> None:
        """End the run soon: the delivery in progress is finished and reported first."""
        self._halt.set()
        self._halted.set()

    async def _in_thread(self, executor: Executor, fn: Callable[..., T], *args: Any) -> T:
        self._job = executor.submit(fn, *args)
        return await asyncio.wrap_future(self._job)

    async def _step(self) -> int:
        """One round on the loop: what :meth:`SubscriptionRunner.step` does in a thread."""
        ran = 0
        for consumer, callback in self._runner.consumers:
            for _ in range(ROUND):
                if self._halt.is_set():
                    return ran  # stopped: the delivery in progress was the last
                delivery = await self._in_thread(self._calls, consumer.next)
                if delivery is None:
                    break
                ran += 1
                try:
                    outcome = callback(delivery.transition, delivery.stream)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception as exc:
                    await self._in_thread(self._calls, consumer.failed, delivery, exc)
                else:
                    await self._in_thread(self._calls, consumer.succeeded, delivery)
        return ran

    async def _idle(self, waker: FeedWaker, seconds: float) -> None:
        if waker.listens:
            # The thread sees a stop within a quarter of a second.
            await self._in_thread(self._waits, waker.wait, seconds, self._halted)
            return
        await self._pause(seconds)

    async def _pause(self, seconds: float) -> None:
        # A timer on the loop, ended early by stop().
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._halt.wait(), seconds)

    async def run(self, stop: asyncio.Event | None, idle_exit: float | None) -> None:
        """Deliver until :meth:`stop`, ``stop`` is set or the task is cancelled, or until
        ``idle_exit`` seconds passed with nothing to do; then release the leases."""
        runner = self._runner
        watch = asyncio.ensure_future(self._watch(stop)) if stop is not None else None
        waker: FeedWaker | None = None
        created = False
        idle_since = time.monotonic()
        outage = 0
        try:
            while not self._halt.is_set():
                try:
                    if not created:
                        # Left to the run by subscribe, which must not touch the database.
                        for consumer, _ in runner.consumers:
                            await self._in_thread(self._calls, consumer.create)
                        created = True
                    if waker is None:
                        waker = await self._in_thread(self._waits, FeedWaker, runner.store)
                    ran = await self._step()
                except Exception as exc:
                    outage += 1
                    if waker is not None:
                        await self._in_thread(self._waits, waker.close)
                        waker = None
                    await self._pause(runner.outage_pause(outage, exc))
                    continue
                outage = 0
                if ran:
                    idle_since = time.monotonic()
                    continue
                if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                    return
                try:
                    await self._idle(waker, runner.sleep_for())
                except Exception as exc:
                    log.warning("subscriptions: lost the notification connection: %s", exc)
                    await self._in_thread(self._waits, waker.close)
                    waker = None
        finally:
            if watch is not None:
                watch.cancel()
            # A cancelled task stops awaiting, not its job: that must end before the consumers
            # (not thread-safe) are released, and before the waker's connection is closed.
            self._halted.set()
            if self._job is not None and not self._job.done():
                await asyncio.wait([asyncio.wrap_future(self._job)])
            if waker is not None:
                await self._in_thread(self._waits, waker.close)
            await self._in_thread(self._calls, runner.release)

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stop()
