"""AsyncTracker's durable subscriptions on real SQLite and PostgreSQL: delivered on the loop."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import AsyncTracker, ConfigurationError, Stream, Tracker, Transition
from rtms_lifecycle.subscriptions import SubscriptionStatus

from ._deliveries import body
from .test_feed import PER_STREAM, T0, drain, stream_bodies

pytestmark = pytest.mark.anyio

DEADLINE_S = 60.0
STREAMS = 6


@pytest.fixture
def anyio_backend() -> str:
    """AsyncTracker is for asyncio (FastAPI on uvicorn)."""
    return "asyncio"


@pytest.fixture
async def atracker(db_url: str) -> AsyncIterator[AsyncTracker]:
    """An AsyncTracker on a fresh database of each backend."""
    async with AsyncTracker(db_url) as t:
        yield t


def _write(url: str) -> None:
    # Another receiver process: its streams' events shuffled, one delivery per transaction.
    with Tracker(url) as tracker:
        for n in range(STREAMS):
            for delivery in stream_bodies(f"proc-s{n}", seed=n):
                tracker.ingest(delivery)
                time.sleep(0.002)


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _start(atracker: AsyncTracker, sid: str, n: int = 0) -> None:
    await atracker.ingest(body("started", sid, T0 + n, scope_id=sid))


async def _holder(atracker: AsyncTracker, consumer: str) -> str | None:
    statuses = await atracker.subscriptions()
    return next((s.holder for s in statuses if s.consumer == consumer), None)


async def test_async_subscriber_gets_every_transition_of_another_process_in_feed_order(
    atracker: AsyncTracker, db_url: str
) -> None:
    """An ``async def`` subscriber receives each transition another process records, in order."""
    got: list[int] = []

    @atracker.subscribe("async-feed", from_start=True)
    async def record(transition: Transition, stream: Stream) -> None:
        await asyncio.sleep(0)
        got.append(transition.id)

    stop = asyncio.Event()
    run = asyncio.create_task(atracker.run_subscriptions(stop=stop, poll_interval=0.05))
    writer = multiprocessing.get_context("spawn").Process(target=_write, args=(db_url,))
    writer.start()
    await asyncio.to_thread(writer.join, DEADLINE_S)
    assert writer.exitcode == 0
    feed, _ = await asyncio.to_thread(drain, atracker.sync, None, 1000)
    assert len(feed) == STREAMS * PER_STREAM

    async def all_delivered() -> bool:
        return len(got) >= len(feed)

    await _until(all_delivered, "every transition")
    stop.set()
    await asyncio.wait_for(run, 10)
    assert got == [t.id for t in feed]


async def test_raising_async_callback_is_retried_then_parked(atracker: AsyncTracker) -> None:
    """An ``async def`` callback that keeps raising is retried, then parked; the rest flow."""
    calls: Counter[str] = Counter()
    got: list[str] = []

    @atracker.subscribe("picky", from_start=True, max_attempts=3, retry_delay=0.01)
    async def bill(transition: Transition, stream: Stream) -> None:
        calls[transition.stream_id] += 1
        await asyncio.sleep(0)
        if transition.stream_id == "bad":
            raise ValueError("cannot bill")
        got.append(transition.stream_id)

    for n, sid in enumerate(("good1", "bad", "good2")):
        await _start(atracker, sid, n)
    await atracker.run_subscriptions(idle_exit=0.5, poll_interval=0.05)
    (status,) = await atracker.subscriptions()
    assert (got, calls["bad"]) == (["good1", "good2"], 3)
    assert (status.parked, status.lag, status.last_error) == (1, 0, "ValueError: cannot bill")


async def test_retry_parked_is_awaitable_and_the_next_run_delivers(
    atracker: AsyncTracker,
) -> None:
    """``await retry_parked`` re-queues what was parked; the next run delivers it."""
    broken = True
    got: list[str] = []

    async def until_fixed(transition: Transition, stream: Stream) -> None:
        if broken:
            raise ConnectionError("down")
        got.append(transition.stream_id)

    atracker.subscribe("fixme", until_fixed, from_start=True, max_attempts=1)
    await _start(atracker, "x")
    await atracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert (await atracker.subscriptions())[0].parked == 1
    broken = False
    assert await atracker.retry_parked("fixme") == 1
    await atracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert (got, (await atracker.subscriptions())[0].parked) == (["x"], 0)


async def test_stop_ends_the_run_and_releases_the_lease(atracker: AsyncTracker) -> None:
    """Setting ``stop`` ends run_subscriptions promptly and gives the lease up."""
    atracker.subscribe("stoppable", lambda t, s: None)
    stop = asyncio.Event()
    run = asyncio.create_task(atracker.run_subscriptions(stop=stop))

    async def held() -> bool:
        return await _holder(atracker, "stoppable") is not None

    await _until(held, "the lease")
    stop.set()
    await asyncio.wait_for(run, 5)
    assert await _holder(atracker, "stoppable") is None


async def test_stop_lets_the_delivery_in_progress_finish_and_no_other(
    atracker: AsyncTracker,
) -> None:
    """A stop during a callback ends the run once that delivery is reported, not after the round."""
    stop = asyncio.Event()
    got: list[str] = []

    async def slow(transition: Transition, stream: Stream) -> None:
        stop.set()
        await asyncio.sleep(0.2)
        got.append(transition.stream_id)

    atracker.subscribe("one-more", slow, from_start=True)
    for n, sid in enumerate(("a", "b", "c")):
        await _start(atracker, sid, n)
    await asyncio.wait_for(atracker.run_subscriptions(stop=stop), 10)
    (status,) = await atracker.subscriptions()
    assert (got, status.delivered, status.lag, status.holder) == (["a"], 1, 2, None)


async def test_cancelling_the_run_releases_the_lease(atracker: AsyncTracker) -> None:
    """Cancelling the task of run_subscriptions ends it and gives the lease up."""
    atracker.subscribe("cancellable", lambda t, s: None)
    run = asyncio.create_task(atracker.run_subscriptions(poll_interval=5.0))

    async def held() -> bool:
        return await _holder(atracker, "cancellable") is not None

    await _until(held, "the lease")
    await asyncio.sleep(0.1)  # into its wait for news
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 5)
    assert await _holder(atracker, "cancellable") is None


async def test_a_callback_cancelled_mid_delivery_is_delivered_again(
    atracker: AsyncTracker,
) -> None:
    """A delivery whose callback was cancelled with the run keeps its place: the next run has it."""
    entered = asyncio.Event()
    got: list[str] = []

    async def slow(transition: Transition, stream: Stream) -> None:
        got.append(transition.stream_id)
        entered.set()
        await asyncio.sleep(60)

    atracker.subscribe("slow", slow, from_start=True)
    await _start(atracker, "x")
    run = asyncio.create_task(atracker.run_subscriptions())
    await asyncio.wait_for(entered.wait(), DEADLINE_S)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    (status,) = await atracker.subscriptions()
    assert (status.delivered, status.lag, status.holder) == (0, 1, None)


async def test_close_ends_a_running_run(db_url: str) -> None:
    """close() stops run_subscriptions (releasing its lease) before closing the database."""
    atracker = AsyncTracker(db_url)
    atracker.subscribe("closing", lambda t, s: None)
    run = asyncio.create_task(atracker.run_subscriptions())

    async def held() -> bool:
        return await _holder(atracker, "closing") is not None

    await _until(held, "the lease")
    await asyncio.wait_for(atracker.close(), 5)
    assert run.done()
    assert run.exception() is None
    with Tracker(db_url) as tracker:
        assert tracker.subscriptions()[0].holder is None


async def test_the_event_loop_keeps_ticking_while_a_run_waits(atracker: AsyncTracker) -> None:
    """While a run waits for news (2 s here), the loop runs other tasks without a long stall."""
    got: list[str] = []
    atracker.subscribe("ticking", lambda t, s: got.append(t.stream_id), from_start=True)
    await _start(atracker, "before")
    stop = asyncio.Event()
    run = asyncio.create_task(atracker.run_subscriptions(stop=stop, poll_interval=2.0))

    async def delivered() -> bool:
        return got == ["before"]

    await _until(delivered, "the first delivery")
    gaps = []
    last = time.monotonic()
    for _ in range(100):
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    stop.set()
    await asyncio.wait_for(run, 5)
    # A wait that held the loop would show one gap of up to the whole 2 s.
    assert max(gaps) < 1.0


async def test_callbacks_run_on_the_event_loop_thread(atracker: AsyncTracker) -> None:
    """Plain and ``async def`` subscribers alike are called in the thread of the event loop."""
    threads: list[int] = []

    async def coro(transition: Transition, stream: Stream) -> None:
        threads.append(threading.get_ident())

    atracker.subscribe("plain", lambda t, s: threads.append(threading.get_ident()), from_start=True)
    atracker.subscribe("coro", coro, from_start=True)
    await _start(atracker, "x")
    await atracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert threads == [threading.get_ident()] * 2


async def test_plain_callback_returning_an_awaitable_is_awaited(atracker: AsyncTracker) -> None:
    """A plain subscriber that returns an awaitable has it awaited before the cursor moves."""
    got: list[str] = []

    async def later(sid: str) -> None:
        got.append(sid)

    atracker.subscribe("returns", lambda t, s: later(t.stream_id), from_start=True)
    await _start(atracker, "x")
    await atracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert got == ["x"]


async def test_subscribe_registers_without_touching_the_database(
    atracker: AsyncTracker,
) -> None:
    """subscribe only registers; the consumer is stored when the run starts, at the feed's end."""
    got: list[str] = []
    await _start(atracker, "before-run")

    @atracker.subscribe("lazy")
    def record(transition: Transition, stream: Stream) -> None:
        got.append(transition.stream_id)

    assert callable(record)
    assert await atracker.subscriptions() == []
    await atracker.run_subscriptions(idle_exit=0.1, poll_interval=0.05)
    assert [s.consumer for s in await atracker.subscriptions()] == ["lazy"]
    await _start(atracker, "after-run", 1)
    await atracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert got == ["after-run"]


async def test_one_run_at_a_time_and_not_without_subscriptions(atracker: AsyncTracker) -> None:
    """A run needs a subscription, and a second run beside the first is refused."""
    with pytest.raises(ConfigurationError, match="subscribe"):
        await atracker.run_subscriptions(idle_exit=0.1)
    atracker.subscribe("once", lambda t, s: None)
    with pytest.raises(ConfigurationError, match="already subscribed"):
        atracker.subscribe("once", lambda t, s: None)
    stop = asyncio.Event()
    run = asyncio.create_task(atracker.run_subscriptions(stop=stop))
    await asyncio.sleep(0)
    with pytest.raises(ConfigurationError, match="already running"):
        await atracker.run_subscriptions(idle_exit=0.1)
    stop.set()
    await asyncio.wait_for(run, 5)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(failures=st.lists(st.integers(0, 3), min_size=1, max_size=5), attempts=st.integers(1, 3))
def test_each_transition_is_delivered_or_parked_on_the_loop(
    db_url: str, failures: list[int], attempts: int
) -> None:
    """Whatever an ``async def`` subscriber fails how often: a transition is delivered iff it
    failed fewer than max_attempts times, else parked; feed order kept; no lag left."""
    consumer = f"p{uuid.uuid4().hex[:12]}"
    left = {f"{consumer}-{n}": count for n, count in enumerate(failures)}
    delivered: list[str] = []

    async def callback(transition: Transition, stream: Stream) -> None:
        await asyncio.sleep(0)
        if transition.stream_id not in left:
            return  # an earlier example's, on the same database
        if left[transition.stream_id]:
            left[transition.stream_id] -= 1
            raise RuntimeError("failing on purpose")
        delivered.append(transition.stream_id)

    async def scenario() -> list[SubscriptionStatus]:
        async with AsyncTracker(db_url) as atracker:
            atracker.subscribe(
                consumer, callback, from_start=True, max_attempts=attempts, retry_delay=0
            )
            for n, sid in enumerate(left):
                await _start(atracker, sid, n)
            await atracker.run_subscriptions(idle_exit=0.1, poll_interval=0.02)
            return [s for s in await atracker.subscriptions() if s.consumer == consumer]

    (status,) = asyncio.run(scenario())
    assert delivered == [f"{consumer}-{n}" for n, f in enumerate(failures) if f < attempts]
    assert status.parked == sum(f >= attempts for f in failures)
    assert status.lag == 0


async def test_run_outlives_dropped_connections(postgres_url: str) -> None:
    """When PostgreSQL drops every connection, the run reconnects (LISTEN too) and delivers on."""
    import psycopg
    from sqlalchemy.engine import make_url

    async with AsyncTracker(postgres_url) as atracker:
        got: list[str] = []

        async def record(transition: Transition, stream: Stream) -> None:
            got.append(transition.stream_id)

        atracker.subscribe("survivor", record)
        stop = asyncio.Event()
        run = asyncio.create_task(atracker.run_subscriptions(stop=stop, poll_interval=0.05))
        try:

            async def created() -> bool:
                return bool(await atracker.subscriptions())

            await _until(created, "the consumer")
            await _start(atracker, "before")

            async def first() -> bool:
                return got == ["before"]

            await _until(first, "the first delivery")
            url = make_url(postgres_url)
            admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (url.database,),
                )
            with Tracker(postgres_url) as writer:
                writer.ingest(body("started", "after", T0 + 1, scope_id="after"))

            async def second() -> bool:
                # At least once: "before" comes again if the outage cut its acknowledgement
                # (the test ends the connections as soon as it was delivered).
                return list(dict.fromkeys(got)) == ["before", "after"]

            await _until(second, "a delivery after the outage")
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)
