"""The one SQLite write queue: the receiver, Tracker threads and AsyncTracker tasks share it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from rtms_lifecycle import AsyncTracker, StoreTimeout, Tracker
from rtms_lifecycle.records import IngestResult, Outcome
from rtms_lifecycle.server import create_app
from rtms_lifecycle.store.batch import Incoming, to_incoming
from rtms_lifecycle.store.queue import WriteQueue
from rtms_lifecycle.tracker import write_executor

from . import _deliveries
from ._live import SECRET, serving, signed

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them


def _queue(tracker: Tracker) -> WriteQueue:
    queue = write_executor(tracker)
    assert isinstance(queue, WriteQueue)
    return queue


def _started(stream: str) -> bytes:
    return _deliveries.raw("started", stream, T0 + 1_000)


def _until(check: Callable[[], bool], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextmanager
def _loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_receiver_tracker_and_async_tracker_share_one_queue_and_one_commit(
    sqlite_url: str,
) -> None:
    """While the writer is held, deliveries from the receiver, Tracker threads and AsyncTracker
    tasks all queue in the store's one queue; released, they are written in one group commit."""
    senders = 6
    with Tracker(sqlite_url) as tracker, _loop_in_thread() as loop:
        queue = _queue(tracker)
        atracker = AsyncTracker(tracker)
        with (
            serving(create_app(tracker, secrets=[SECRET])) as url,
            httpx.Client(base_url=url, timeout=30) as client,
            ThreadPoolExecutor(2 * senders) as pool,
        ):
            groups = queue.groups
            posted: list[Future[httpx.Response]] = []
            threaded: list[Future[object]] = []
            awaited: list[Future[object]] = []
            with tracker._store.exclusive():  # the test thread is the writer for now
                for i in range(senders):
                    body = _started(f"http-{i}")
                    posted.append(
                        pool.submit(client.post, "/webhook", content=body, headers=signed(body))
                    )
                    threaded.append(pool.submit(tracker.ingest, _started(f"thread-{i}")))
                    awaited.append(
                        asyncio.run_coroutine_threadsafe(
                            atracker.ingest(_started(f"async-{i}")), loop
                        )
                    )
                _until(lambda: queue.waiting == 3 * senders)
                assert tracker.deliveries() == []
            answers = [p.result(30) for p in posted]
            results = [f.result(30) for f in (*threaded, *awaited)]
            asyncio.run_coroutine_threadsafe(atracker.close(), loop).result(30)
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["outcome"] for a in answers} == {"applied"}
        assert {getattr(r, "outcome", None) for r in results} == {Outcome.APPLIED}
        assert queue.groups - groups == 1
        assert list(queue.group_sizes)[-1] == 3 * senders
        stored = {d.stream_id for d in tracker.deliveries(limit=None)}
        assert len(stored) == 3 * senders


def test_concurrent_receiver_deliveries_share_commits(sqlite_url: str) -> None:
    """Concurrent senders get their answers from fewer commits than deliveries."""
    senders = 40
    with Tracker(sqlite_url) as tracker:
        queue = _queue(tracker)
        with (
            serving(create_app(tracker, secrets=[SECRET])) as url,
            httpx.Client(base_url=url, timeout=30) as client,
            ThreadPoolExecutor(senders) as pool,
        ):
            groups = queue.groups
            bodies = [_started(f"s-{i}") for i in range(senders)]
            with tracker._store.exclusive():
                sent = [
                    pool.submit(client.post, "/webhook", content=b, headers=signed(b))
                    for b in bodies
                ]
                _until(lambda: queue.waiting == senders)
            answers = [s.result(30) for s in sent]
        assert {a.json()["outcome"] for a in answers} == {"applied"}
        assert queue.groups - groups == 1
        assert len(tracker.deliveries(limit=None)) == senders


def test_a_write_on_an_idle_queue_is_written_by_its_caller_and_counted_as_a_group(
    sqlite_url: str,
) -> None:
    """With nothing writing nor queued, ``Tracker.ingest`` writes in the calling thread (no
    handover to the writer thread: nothing taken from the queue), a group of one."""
    with Tracker(sqlite_url) as tracker:
        queue = _queue(tracker)
        jobs, groups = queue.jobs, queue.groups
        for i in range(3):
            assert tracker.ingest(_started(f"s-{i}")).outcome is Outcome.APPLIED
        assert queue.jobs == jobs
        assert queue.groups - groups == 3
        assert list(queue.group_sizes)[-3:] == [1, 1, 1]
        assert not queue.writing
        # The turn was given back: a held writer still makes the next write queue behind it.
        with ThreadPoolExecutor(1) as pool:
            with tracker._store.exclusive():
                queued = pool.submit(tracker.ingest, _started("queued"))
                _until(lambda: queue.waiting == 1)
                assert not queued.done()
            assert queued.result(10).outcome is Outcome.APPLIED
        assert queue.jobs == jobs + 1


def test_tracker_threads_writing_at_once_each_get_their_delivery_stored(sqlite_url: str) -> None:
    """Threads that find the queue idle write themselves, the others queue behind them: every
    delivery is stored once, each caller gets its own applied result."""
    with Tracker(sqlite_url) as tracker, ThreadPoolExecutor(6) as pool:

        def send(thread: int) -> list[Outcome]:
            return [tracker.ingest(_started(f"t{thread}-{i}")).outcome for i in range(25)]

        outcomes = [o for done in pool.map(send, range(6)) for o in done]
        assert outcomes == [Outcome.APPLIED] * 150
        stored = [d.stream_id or "" for d in tracker.deliveries(limit=None)]
        assert sorted(stored) == sorted(f"t{t}-{i}" for t in range(6) for i in range(25))
        assert not _queue(tracker).writing


def test_a_write_queued_past_its_deadline_times_out_at_it_and_writes_nothing(
    sqlite_url: str,
) -> None:
    """Behind a held writer, a write with a deadline fails at its deadline, not at the release;
    the write queued beside it without one is written once the writer is free."""
    with Tracker(sqlite_url) as tracker, ThreadPoolExecutor(2) as pool:
        queue = _queue(tracker)
        with tracker._store.exclusive():
            begun = time.monotonic()
            late = pool.submit(tracker.ingest, _started("late"), timeout=0.3)
            _until(lambda: queue.waiting == 1)
            patient = pool.submit(tracker.ingest, _started("patient"))
            with pytest.raises(StoreTimeout):
                late.result(10)
            assert time.monotonic() - begun < 2
            assert not patient.done()
        assert patient.result(10).outcome is Outcome.APPLIED
        assert [d.stream_id for d in tracker.deliveries()] == ["patient"]


def test_a_group_member_past_its_deadline_is_left_out_and_the_others_written(
    sqlite_url: str,
) -> None:
    """A queued write that ran out of time is answered StoreTimeout; the group is written
    without it, each other member with its own result."""
    with Tracker(sqlite_url) as tracker, ThreadPoolExecutor(1) as pool:
        queue = _queue(tracker)
        store = tracker._store

        def submit(stream: str, within: float | None) -> Future[list[IngestResult | None]]:
            deadline = None if within is None else time.monotonic() + within
            return pool.submit(store.submit, [_incoming(stream)], deadline=deadline).result()

        with store.exclusive():  # another thread's writes queue behind this one
            late = submit("late", 0.2)
            kept = submit("kept-1", 30)
            kept2 = submit("kept-2", None)
            with pytest.raises(StoreTimeout):
                late.result(10)
        assert [r.stream_id for r in kept.result(10) if r] == ["kept-1"]
        assert [r.stream_id for r in kept2.result(10) if r] == ["kept-2"]
        assert list(queue.group_sizes)[-1] == 2
        assert sorted(d.stream_id or "" for d in tracker.deliveries()) == ["kept-1", "kept-2"]


def test_queued_writes_fail_each_at_its_own_deadline_whatever_their_order(
    sqlite_url: str,
) -> None:
    """The queue's one alarm serves every queued deadline: a later-queued write with an earlier
    deadline fails at it, then the next at its own, while a write without one waits its turn."""
    with Tracker(sqlite_url) as tracker, ThreadPoolExecutor(1) as pool:
        store = tracker._store

        def submit(stream: str, within: float | None) -> Future[list[IngestResult | None]]:
            deadline = None if within is None else time.monotonic() + within
            return pool.submit(store.submit, [_incoming(stream)], deadline=deadline).result()

        with store.exclusive():
            begun = time.monotonic()
            second = submit("second", 1.5)
            first = submit("first", 0.2)
            patient = submit("patient", None)
            with pytest.raises(StoreTimeout):
                first.result(10)
            assert not second.done(), "failed before its own deadline"
            with pytest.raises(StoreTimeout):
                second.result(10)
            assert time.monotonic() - begun < 5, "failed at the release, not at the deadline"
            assert not patient.done()
        assert [r.stream_id for r in patient.result(10) if r] == ["patient"]
        assert [d.stream_id for d in tracker.deliveries()] == ["patient"]


def test_bad_input_fails_its_own_write_alone(sqlite_url: str) -> None:
    """A body of an unsupported type fails its caller with TypeError; its group is written."""
    with Tracker(sqlite_url) as tracker, _loop_in_thread() as loop:
        atracker = AsyncTracker(tracker)
        with tracker._store.exclusive():
            bad = asyncio.run_coroutine_threadsafe(atracker.ingest(42), loop)  # type: ignore[arg-type]
            good = asyncio.run_coroutine_threadsafe(atracker.ingest(_started("good")), loop)
            _until(lambda: _queue(tracker).waiting == 2)
        with pytest.raises(TypeError):
            bad.result(10)
        assert good.result(10).outcome is Outcome.APPLIED
        asyncio.run_coroutine_threadsafe(atracker.close(), loop).result(30)


def test_writes_and_holds_take_their_turns_in_arrival_order(sqlite_url: str) -> None:
    """Jobs on the writer thread and threads holding the writer alternate in FIFO order."""
    order: list[str] = []
    with Tracker(sqlite_url) as tracker, ThreadPoolExecutor(2) as pool:
        queue = _queue(tracker)

        def hold(name: str) -> None:
            with tracker._store.exclusive():
                order.append(name)

        with tracker._store.exclusive():
            first = queue.submit(order.append, "job-1")
            held = pool.submit(hold, "hold-2")
            _until(lambda: queue.waiting == 2)
            last = queue.submit(order.append, "job-3")
        first.result(10)
        held.result(10)
        last.result(10)
        assert order == ["job-1", "hold-2", "job-3"]


def _incoming(stream: str) -> Incoming:
    return to_incoming(_started(stream))


def test_threads_holding_the_writer_take_turns_before_any_queued_write(sqlite_url: str) -> None:
    """Two bulk loads in two threads, the first write of the store: each waits its turn."""
    with Tracker(sqlite_url) as tracker, ThreadPoolExecutor(2) as pool:
        loads = [
            pool.submit(
                tracker.ingest_many, [_started(f"{n}-{i}") for i in range(50)], batch_size=1
            )
            for n in ("a", "b")
        ]
        assert [load.result(30).total for load in loads] == [50, 50]
