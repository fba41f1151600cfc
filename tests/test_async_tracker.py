"""AsyncTracker on real SQLite and PostgreSQL: Tracker's answers awaited, callbacks on the loop."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import json
import logging
import sqlite3
import threading
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import (
    AsyncTracker,
    EventKind,
    IngestResult,
    Outcome,
    State,
    Stream,
    Tracker,
    Transition,
    WebhookRefused,
)
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.server import create_router
from rtms_lifecycle.store.core import LOAD_CHUNK
from rtms_lifecycle.webhook import WebhookVerifier
from tests._live import SECRET, serving, signed

from ._deliveries import body, raw
from .test_tracker import (
    HOUR,
    LIFECYCLE_TRANSITIONS,
    T0,
    all_transitions,
    lifecycle,
    limited,
    near_limit,
    workload,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """AsyncTracker is for asyncio (FastAPI on uvicorn)."""
    return "asyncio"


@pytest.fixture
async def atracker(db_url: str) -> AsyncIterator[AsyncTracker]:
    """An AsyncTracker on a fresh database of each backend."""
    async with AsyncTracker(db_url) as t:
        yield t


@pytest.fixture
def twin_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A second fresh database of the same backend as ``db_url``."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/twin.db"
    make: Callable[[], str] = request.getfixturevalue("make_postgres_url")
    return make()


def comparable(result: IngestResult) -> IngestResult:
    """A result without what differs between two databases: ids and recording times."""
    transition = result.transition
    if transition is not None:
        transition = replace(transition, id=0, recorded_at=0, delivery_id=None)
    return replace(result, delivery_id=None, transition=transition)


# --- the same API, awaitable --------------------------------------------------------------------


def test_every_tracker_method_has_an_awaitable_twin() -> None:
    """Each public Tracker method exists on AsyncTracker as a coroutine function, with its name;
    the registrations (on_transition, subscribe) stay plain methods."""
    public = {
        name for name, member in inspect.getmembers(Tracker, callable) if not name.startswith("_")
    }
    registrations = {"on_transition", "subscribe"}
    # The synchronous delivery core's factories: an AsyncTracker reaches them through .sync.
    factories = {"consumer", "subscription_runner"}
    assert public >= registrations | factories
    for name in public - registrations - factories:
        assert inspect.iscoroutinefunction(getattr(AsyncTracker, name)), name
    for name in registrations:
        assert not inspect.iscoroutinefunction(getattr(AsyncTracker, name)), name


QUERIES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("stream", ("s1",), {}),
    ("stream", ("nobody",), {}),
    ("stored_stream_ids", (["s1", "nobody", "s1"],), {}),
    ("active_streams", (), {}),
    ("active_streams", ("meeting",), {}),
    ("streams", (), {}),
    ("streams", ("stopped",), {"limit": 1}),
    ("streams", (), {"scope": "meeting", "since": T0, "until": T0 + HOUR}),
    ("history", ("s1",), {}),
    ("audit", ("s1",), {}),
    ("transitions_since", (None, 4), {}),
    ("deliveries", ("applied",), {"limit": None}),
    ("deliveries", (), {"stream_id": "s1"}),
    ("stop_reason_stats", (), {}),
    ("stop_reason_stats", (), {"by_scope": True}),
    ("interruption_stats", (), {}),
    ("recent_stops", (10**9,), {}),
    ("unhandled_stats", (), {}),
    ("subscriptions", (), {}),
    ("concurrency_alerts", (), {}),
    ("latest_alert", (), {}),
    ("ping", (), {}),
]


@pytest.mark.parametrize(
    ("method", "args", "kwargs"), QUERIES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(QUERIES)]
)
async def test_every_query_awaits_to_the_sync_answer(
    atracker: AsyncTracker, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Each query of AsyncTracker answers exactly what Tracker answers on the same database."""
    bodies = [d for d, _ in workload(3)]
    bodies += [near_limit(T0 + 5), limited(T0 + 6, "mtg-s1"), body("started", "live", T0 + 7)]
    await atracker.ingest_many(bodies, batch_size=5)
    with Tracker(atracker.engine) as tracker:
        expected = getattr(tracker, method)(*args, **kwargs)
    assert await getattr(atracker, method)(*args, **kwargs) == expected


async def test_every_write_awaits_to_the_sync_result(db_url: str, twin_url: str) -> None:
    """ingest, ingest_many, report_resumed and expire give what Tracker gives on a twin database."""
    now = now_ms()
    singles = [d for d, _ in workload(2)]
    bulk = [d for d, _ in lifecycle("bulk", T0 + 9 * HOUR)]
    app = [body("started", "app", now - 3 * HOUR), body("interrupted", "app", now - 2 * HOUR)]
    with Tracker(twin_url) as tracker:
        expected = (
            [comparable(tracker.ingest(d)) for d in singles + app],
            tracker.ingest_many(bulk, batch_size=4),
            comparable(tracker.report_resumed("app", now - 2 * HOUR + 5)),
            [s.stream_id for s in tracker.expire(timedelta(hours=1))],
            tracker.streams(),
        )
    async with AsyncTracker(db_url) as atracker:
        got = (
            [comparable(await atracker.ingest(d)) for d in singles + app],
            await atracker.ingest_many(bulk, batch_size=4),
            comparable(await atracker.report_resumed("app", now - 2 * HOUR + 5)),
            [s.stream_id for s in await atracker.expire(timedelta(hours=1))],
            await atracker.streams(),
        )
    assert got[:4] == expected[:4]
    # Expiry stops the stream at the moment it runs, which differs between the two runs.
    assert [replace(s, stopped_at=0, last_event_at=0) for s in got[4]] == [
        replace(s, stopped_at=0, last_event_at=0) for s in expected[4]
    ]


async def test_a_bulk_transaction_decided_a_few_at_a_time_records_what_one_at_a_time_does(
    db_url: str, twin_url: str
) -> None:
    """ingest_many's transaction, parsed and decided LOAD_CHUNK deliveries at a time, sees the
    chunks before it: copies, conflicts and late events far apart give what one delivery per
    transaction gives."""
    per_stream = [[d for d, _ in lifecycle(f"s{i}", T0 + i * HOUR)] for i in range(12)]
    # Each stream's late events and copies come more than a chunk after its first events.
    bodies = [d for events in per_stream for d in events[:5]]
    bodies += [d for events in per_stream for d in events[5:]]
    bodies += bodies[:80]
    assert len(bodies) > 3 * LOAD_CHUNK
    with Tracker(twin_url) as tracker:
        expected = (
            tracker.ingest_many(bodies, batch_size=1),
            [(d.outcome, d.stream_id, d.detail) for d in tracker.deliveries(limit=None)],
            tracker.streams(),
        )
    async with AsyncTracker(db_url) as atracker:
        got = (
            await atracker.ingest_many(bodies, batch_size=len(bodies)),
            [(d.outcome, d.stream_id, d.detail) for d in await atracker.deliveries(limit=None)],
            await atracker.streams(),
        )
    assert got == expected


async def test_a_bulk_load_with_callbacks_calls_back_each_transition_and_lets_the_loop_run(
    db_url: str, twin_url: str
) -> None:
    """Decided a chunk at a time, a batch calls back what one delivery per transaction does, in
    order; its callbacks, none of which suspends, leave the loop other turns meanwhile."""
    per_stream = [[d for d, _ in lifecycle(f"s{i}", T0 + i * HOUR)] for i in range(45)]
    bodies = [d for events in per_stream for d in events] + [d for d, _ in workload(1)]
    expected: list[tuple[str, str, str]] = []
    with Tracker(twin_url) as tracker:
        tracker.on_transition(lambda t, s: expected.append((t.stream_id, t.name, s.state)))
        tracker.ingest_many(bodies, batch_size=1)
    got: list[tuple[str, str, str]] = []
    turns = 0
    turns_seen: list[int] = []

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def callback(transition: Transition, stream: Stream) -> None:
        got.append((transition.stream_id, transition.name, stream.state))
        turns_seen.append(turns)

    async with AsyncTracker(db_url) as atracker:
        atracker.on_transition(callback)
        ticker = asyncio.create_task(other_work())
        await atracker.ingest_many(bodies, batch_size=len(bodies))
        ticker.cancel()
    assert len(got) > 3 * LOAD_CHUNK
    assert got == expected
    assert turns_seen[-1] > turns_seen[0]


async def test_a_dashboard_sign_out_is_recorded_and_read_back(atracker: AsyncTracker) -> None:
    assert not await atracker.dashboard_session_revoked("sid")
    await atracker.revoke_dashboard_session("sid", now_ms() + 60_000)
    assert await atracker.dashboard_session_revoked("sid")
    assert not await atracker.dashboard_session_revoked("other")


async def test_ingest_many_reads_an_async_iterable(atracker: AsyncTracker) -> None:
    """An async generator of bodies is recorded in batches, with the outcomes a list gets."""
    items = workload(3)

    async def arrive() -> AsyncIterator[dict[str, Any]]:
        for delivery, _ in items:
            await asyncio.sleep(0)
            yield delivery

    summary = await atracker.ingest_many(arrive(), batch_size=5)

    assert summary.counts == Counter(outcome for _, outcome in items)
    assert [s.state for s in await atracker.streams()] == [State.STOPPED] * 3


async def test_ingest_many_reads_a_sync_iterable_off_the_event_loop(
    atracker: AsyncTracker,
) -> None:
    """A blocking generator is read in a worker thread: the loop runs while it waits."""
    loop_ran = threading.Event()

    def arrive() -> Iterator[bytes]:
        yield raw("started", "s1", T0)
        # Only a coroutine on the event loop sets this: read on the loop, this would time out.
        assert loop_ran.wait(timeout=30)
        yield raw("stopped", "s1", T0 + 1)

    async def mark() -> None:
        loop_ran.set()

    marker = asyncio.ensure_future(mark())
    summary = await atracker.ingest_many(arrive(), batch_size=10)
    await marker

    assert summary["applied"] == 2


async def test_ingest_many_counts_what_it_committed_before_failing(
    atracker: AsyncTracker,
) -> None:
    """``committed`` holds the batches recorded before a body that cannot be read stops it."""

    def arrive() -> Iterator[object]:
        yield from (body("started", f"s{n}", T0 + n) for n in range(4))
        yield 42  # not a body: TypeError, after the batches before it

    committed: Counter[Outcome] = Counter()
    with pytest.raises(TypeError):
        await atracker.ingest_many(arrive(), batch_size=2, committed=committed)  # type: ignore[arg-type]
    assert committed == Counter({Outcome.APPLIED: 4})
    assert len(await atracker.streams()) == 4


async def test_ingest_many_rejects_a_batch_size_below_one(atracker: AsyncTracker) -> None:
    """batch_size=0 is a ValueError before anything is read."""
    with pytest.raises(ValueError, match="batch_size"):
        await atracker.ingest_many([body("started", "s1", T0)], batch_size=0)
    assert await atracker.deliveries() == []


async def test_ingest_with_headers_verifies_the_signature(db_url: str) -> None:
    """webhook_secrets reach the Tracker: genuine deliveries are recorded, forged ones refused."""
    delivery = raw("started", "signed", T0)
    async with AsyncTracker(db_url, webhook_secrets=[SECRET]) as atracker:
        with pytest.raises(WebhookRefused):
            await atracker.ingest(delivery, headers=signed(delivery, "forged"))
        result = await atracker.ingest(delivery, headers=signed(delivery))
    assert result.outcome is Outcome.APPLIED


async def test_an_existing_tracker_is_shared_and_left_open(db_url: str) -> None:
    """AsyncTracker(tracker) writes through it, and closing the AsyncTracker leaves it usable."""
    with Tracker(db_url) as tracker:
        async with AsyncTracker(tracker) as atracker:
            assert atracker.sync is tracker
            await atracker.ingest(body("started", "s1", T0))
        assert tracker.ingest(body("stopped", "s1", T0 + 1)).outcome is Outcome.APPLIED
        with pytest.raises(TypeError, match="own options"):
            AsyncTracker(tracker, webhook_secrets=[SECRET])


# --- callbacks ----------------------------------------------------------------------------------


async def test_async_callback_is_awaited_after_commit_before_the_call_returns(
    atracker: AsyncTracker,
) -> None:
    """Inside an async callback the transition is committed; the ingest returns after it."""
    seen: list[Stream | None] = []

    @atracker.on_transition
    async def look(transition: Transition, stream: Stream) -> None:
        await asyncio.sleep(0.01)
        with Tracker(atracker.engine) as other:
            seen.append(other.stream(stream.stream_id))

    result = await atracker.ingest(body("started", "s1", T0))

    assert result.outcome is Outcome.APPLIED
    assert len(seen) == 1
    assert seen[0] is not None
    assert seen[0].state is State.STARTED


async def test_every_callback_runs_on_the_event_loop_thread(atracker: AsyncTracker) -> None:
    """Plain and async callbacks alike run in the event loop's thread, not a worker's."""
    threads: list[int] = []

    async def coroutine(transition: Transition, stream: Stream) -> None:
        threads.append(threading.get_ident())

    atracker.on_transition(lambda t, s: threads.append(threading.get_ident()))
    atracker.on_transition(coroutine)
    await atracker.ingest_many([body("started", "s1", T0), body("stopped", "s1", T0 + 1)])

    assert threads == [threading.get_ident()] * 4


async def test_async_callbacks_once_per_applied_transition_on_every_write_path(
    atracker: AsyncTracker,
) -> None:
    """ingest, ingest_many (sync and async input), report_resumed and expire notify once each."""
    calls: list[Transition] = []

    @atracker.on_transition
    async def record(transition: Transition, stream: Stream) -> None:
        assert stream.state is transition.to_state
        calls.append(transition)

    async def arrive() -> AsyncIterator[dict[str, Any]]:
        for delivery, _ in lifecycle("async-bulk", T0 + 20 * HOUR):
            yield delivery

    now = now_ms()
    for delivery, _ in workload(2):
        await atracker.ingest(delivery)
    await atracker.ingest_many((d for d, _ in lifecycle("bulk", T0 + 9 * HOUR)), batch_size=4)
    await atracker.ingest_many(arrive(), batch_size=3)
    await atracker.ingest(body("started", "app", now - 3 * HOUR))
    await atracker.ingest(body("interrupted", "app", now - 2 * HOUR))
    await atracker.report_resumed("app", now - 2 * HOUR + 5)
    await atracker.report_resumed("app", now - 2 * HOUR + 5)  # duplicate
    expired = await atracker.expire(timedelta(hours=1))

    assert [s.stream_id for s in expired] == ["app"]
    stored = await asyncio.to_thread(all_transitions, atracker.sync)
    assert len(stored) == 4 * LIFECYCLE_TRANSITIONS + 4
    assert calls == stored


async def test_async_callback_filters_and_decorator_forms(atracker: AsyncTracker) -> None:
    """Filters narrow async callbacks as they do plain ones; both decorator forms work."""
    stops: list[str] = []
    every: list[str] = []

    @atracker.on_transition(to="stopped")
    async def on_stop(transition: Transition, stream: Stream) -> None:
        stops.append(stream.stream_id)

    @atracker.on_transition
    async def on_any(transition: Transition, stream: Stream) -> None:
        every.append(transition.name)

    await atracker.ingest_many([body("started", "s1", T0), body("stopped", "s1", T0 + 1)])

    assert on_stop.__name__ == "on_stop"
    assert inspect.iscoroutinefunction(on_any)
    assert stops == ["s1"]
    assert every == ["start", "stop"]


async def test_raising_async_callback_is_logged_and_blocks_nothing(
    atracker: AsyncTracker, caplog: pytest.LogCaptureFixture
) -> None:
    """An async callback that raises is logged; the transition stays and later callbacks run."""
    after: list[int] = []

    @atracker.on_transition
    async def broken(transition: Transition, stream: Stream) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("callback bug")

    atracker.on_transition(lambda t, s: after.append(t.id))

    with caplog.at_level(logging.ERROR):
        result = await atracker.ingest(body("started", "s-boom", T0))

    assert result.transition is not None
    assert after == [result.transition.id]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert "s-boom" in errors[0].getMessage()
    stream = await atracker.stream("s-boom")
    assert stream is not None
    assert stream.state is State.STARTED


async def test_plain_callback_returning_an_awaitable_is_awaited(atracker: AsyncTracker) -> None:
    """A lambda handing back a coroutine (an asyncio.Queue's put) is awaited like an async def."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    atracker.on_transition(lambda t, s: queue.put(t.name))

    await atracker.ingest(body("started", "s1", T0))

    assert queue.get_nowait() == "start"


async def test_concurrent_ingests_each_notify_once(db_url: str) -> None:
    """Racing tasks sending the same deliveries: one applied result and one callback each."""
    kinds = ["started", "interrupted", "started", "stopped"]
    deliveries = [
        body(kind, f"s{i}", T0 + step * 100, scope_id=f"m{i}")
        for i in range(8)
        for step, kind in enumerate(kinds)
    ]
    calls: list[int] = []
    async with AsyncTracker(db_url) as atracker:

        @atracker.on_transition
        async def count(transition: Transition, stream: Stream) -> None:
            calls.append(transition.id)

        results = await asyncio.gather(*(atracker.ingest(d) for d in deliveries * 4))
        stored = await asyncio.to_thread(all_transitions, atracker.sync)

    assert Counter(r.outcome for r in results) == {
        Outcome.APPLIED: len(deliveries),
        Outcome.DUPLICATE: 3 * len(deliveries),
    }
    assert sorted(calls) == [t.id for t in stored]
    assert len(stored) == len(deliveries)


async def test_cancelled_ingest_still_commits_and_notifies(sqlite_url: str) -> None:
    """A caller cancelled while its write waits for the lock: write and callback still happen."""
    calls: list[str] = []
    atracker = AsyncTracker(sqlite_url)
    atracker.on_transition(lambda t, s: calls.append(t.stream_id))
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer holds SQLite's only write lock
    try:
        caller = asyncio.ensure_future(atracker.ingest(body("started", "s1", T0)))
        await asyncio.sleep(0.2)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await atracker.close()  # waits for the write the caller left behind
    await atracker.close()  # and a second close is harmless

    assert calls == ["s1"]
    with Tracker(sqlite_url) as tracker:
        assert [d.stream_id for d in tracker.deliveries()] == ["s1"]


# --- the sync Tracker refuses what it cannot await ----------------------------------------------


async def _coroutine_callback(transition: Transition, stream: Stream) -> None:
    """Never awaited by a Tracker."""


class _AsyncCallable:
    async def __call__(self, transition: Transition, stream: Stream) -> None:
        """Never awaited by a Tracker."""


@pytest.mark.parametrize(
    "register",
    [
        pytest.param(lambda t: t.on_transition(_coroutine_callback), id="async-def"),
        pytest.param(lambda t: t.on_transition(to="stopped")(_coroutine_callback), id="decorator"),
        pytest.param(
            lambda t: t.on_transition(functools.partial(_coroutine_callback)), id="partial"
        ),
        pytest.param(lambda t: t.on_transition(_AsyncCallable()), id="async-call"),
    ],
)
def test_tracker_refuses_a_coroutine_callback(
    db_url: str, register: Callable[[Tracker], object]
) -> None:
    """Tracker.on_transition raises TypeError naming AsyncTracker, and registers nothing."""
    with Tracker(db_url) as tracker:
        with pytest.raises(TypeError, match="AsyncTracker"):
            register(tracker)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "coroutine was never awaited"
            assert tracker.ingest(body("started", "s1", T0)).outcome is Outcome.APPLIED
            gc.collect()


def test_tracker_logs_a_callback_that_returns_a_coroutine(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain callback handing back a coroutine is logged as failed, naming AsyncTracker."""
    with Tracker(db_url) as tracker:
        tracker.on_transition(lambda t, s: _coroutine_callback(t, s))
        with caplog.at_level(logging.ERROR), warnings.catch_warnings():
            warnings.simplefilter("error")
            result = tracker.ingest(body("started", "s1", T0))
            gc.collect()

    assert result.outcome is Outcome.APPLIED
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info is not None
    assert "AsyncTracker" in str(error.exc_info[1])


# --- the receiver -------------------------------------------------------------------------------


def test_router_on_an_async_tracker_answers_after_its_async_callbacks(sqlite_url: str) -> None:
    """create_router(AsyncTracker): a delivery is answered once its async callback has run."""
    atracker = AsyncTracker(sqlite_url)
    notified: list[str] = []

    @atracker.on_transition
    async def notify(transition: Transition, stream: Stream) -> None:
        await asyncio.sleep(0.01)
        notified.append(stream.stream_id)

    app = FastAPI()
    app.include_router(create_router(atracker, WebhookVerifier([SECRET])))
    delivery = raw("started", "s1", T0)
    with serving(app) as url:
        answer = httpx.post(f"{url}/webhook", content=delivery, headers=signed(delivery))
        assert answer.json()["outcome"] == "applied"
        assert notified == ["s1"]
    atracker.sync.close()


# --- a property ---------------------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    # One database pair serves every example; each example writes only streams with fresh ids.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(list(EventKind)[:3]), st.integers(min_value=T0 + 1, max_value=T0 + 20)
        ),
        min_size=1,
        max_size=12,
    ),
    batch_size=st.integers(min_value=1, max_value=6),
)
def test_async_ingest_many_stores_what_the_sync_one_stores(
    db_url: str, twin_url: str, events: list[tuple[EventKind, int]], batch_size: int
) -> None:
    """Any deliveries (retries included), any batch size: AsyncTracker and Tracker agree."""
    sid = f"s-{uuid.uuid4()}"
    bodies = [json.dumps(body(kind, sid, ts)).encode() for kind, ts in events]

    async def arrive() -> AsyncIterator[bytes]:
        for delivery in bodies:
            yield delivery

    async def run_async() -> tuple[Any, ...]:
        async with AsyncTracker(db_url) as atracker:
            summary = await atracker.ingest_many(arrive(), batch_size=batch_size)
            return summary, await atracker.stream(sid), await atracker.history(sid)

    with Tracker(twin_url) as tracker:
        summary = tracker.ingest_many(bodies, batch_size=batch_size)
        expected = (summary, tracker.stream(sid), tracker.history(sid))
    got = asyncio.run(run_async())

    assert got[:2] == expected[:2]
    assert [(t.name, t.event_ts, t.late) for t in got[2]] == [
        (t.name, t.event_ts, t.late) for t in expected[2]
    ]


def test_every_awaitable_twin_takes_the_same_parameters() -> None:
    """Each AsyncTracker twin of a Tracker method takes the same parameters, in the same order."""
    differ = {
        name: (list(inspect.signature(member).parameters), list(inspect.signature(twin).parameters))
        for name, member in inspect.getmembers(Tracker, callable)
        if not name.startswith("_") and (twin := getattr(AsyncTracker, name, None)) is not None
    }
    assert {name: pair for name, pair in differ.items() if pair[0] != pair[1]} == {}
