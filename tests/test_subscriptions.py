"""Durable subscriptions: every transition reaches every consumer, from any process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import ConfigurationError, Stream, Tracker, Transition

from ._deliveries import body
from .test_feed import PER_STREAM, T0, drain, stream_bodies

DEADLINE_S = 90.0
WRITERS = 2
STREAMS_PER_WRITER = 15


def _write(url: str, writer: int) -> None:
    # A receiver process: its streams' events in a shuffled order, one delivery per transaction.
    with Tracker(url) as tracker:
        for n in range(STREAMS_PER_WRITER):
            for delivery in stream_bodies(f"w{writer}-s{n}", seed=writer * 1000 + n):
                tracker.ingest(delivery)
                time.sleep(0.002)


def _consume(url: str, consumer: str, log: str, delay: float, idle_exit: float = 4.0) -> None:
    # A consumer process: appends each delivered transition's id and stream to the consumer's log
    # (O_APPEND: the lines of all its processes, in the order they were delivered).
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def record(transition: Transition, stream: Stream) -> None:
        os.write(fd, f"{transition.id} {transition.stream_id}\n".encode())
        time.sleep(delay)

    with Tracker(url) as tracker:
        tracker.subscribe(consumer, record, from_start=True, lease=1.0)
        tracker.run_subscriptions(idle_exit=idle_exit, poll_interval=0.1)


def _delivered(log: Path) -> list[tuple[int, str]]:
    if not log.exists():
        return []
    return [
        (int(tid), sid)
        for tid, sid in (line.split() for line in log.read_text().split("\n") if line)
    ]


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_every_transition_reaches_each_consumer_across_processes_and_a_kill(
    db_url: str, tmp_path: Path
) -> None:
    """Two writers, two processes of one consumer (one killed -9) and another consumer: each
    consumer gets every transition at least once, in feed order per stream."""
    Tracker(db_url).close()  # the schema, before processes race to create it
    context = multiprocessing.get_context("spawn")
    logs = {"a": tmp_path / "a.log", "b": tmp_path / "b.log"}
    # a1 is slow, so that it is still delivering when it is killed; a2 waits for its lease.
    # Idle exits outlast a spawned process's start-up and a standby's wait under load (with 4 s,
    # a2 once gave up standing by before the kill, at load 20, and nobody delivered the rest).
    victim = context.Process(target=_consume, args=(db_url, "a", str(logs["a"]), 0.02, 600.0))
    standby = context.Process(target=_consume, args=(db_url, "a", str(logs["a"]), 0.0, 10.0))
    other = context.Process(target=_consume, args=(db_url, "b", str(logs["b"]), 0.0, 10.0))
    consumers = [victim, standby, other]
    victim.start()
    _wait_for(lambda: _holder(db_url, "a") is not None, "the first consumer's lease")
    other.start()
    writers = [context.Process(target=_write, args=(db_url, w)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    _wait_for(lambda: len(_delivered(logs["a"])) >= 20, "deliveries before the kill")
    standby.start()
    os.kill(victim.pid or 0, signal.SIGKILL)
    for process in writers:
        process.join(DEADLINE_S)
        assert process.exitcode == 0
    for process in consumers[1:]:
        process.join(DEADLINE_S)
        assert process.exitcode == 0
    victim.join()
    assert victim.exitcode == -signal.SIGKILL

    with Tracker(db_url) as tracker:
        feed, _ = drain(tracker, None, 1000)
    assert len(feed) == WRITERS * STREAMS_PER_WRITER * PER_STREAM
    for consumer, log in logs.items():
        delivered = _delivered(log)
        assert {tid for tid, _ in delivered} == {t.id for t in feed}, consumer
        for sid in {t.stream_id for t in feed}:
            expected = [t.id for t in feed if t.stream_id == sid]
            seen = [tid for tid, s in delivered if s == sid]
            # A redelivery repeats a suffix of what was delivered; first sightings keep feed order.
            assert list(dict.fromkeys(seen)) == expected, (consumer, sid)


def _holder(url: str, consumer: str) -> str | None:
    with Tracker(url) as tracker:
        return next((s.holder for s in tracker.subscriptions() if s.consumer == consumer), None)


def _start(tracker: Tracker, sid: str, n: int = 0) -> None:
    tracker.ingest(body("started", sid, T0 + n, scope_id=sid))


def test_a_consumer_from_the_start_lags_by_the_whole_feed(tracker: Tracker) -> None:
    """Its lag counts every recorded transition (a cursor before the feed's first one)."""
    for n in range(3):
        _start(tracker, f"s{n}", n)
    tracker.consumer("everything", from_start=True)
    (status,) = tracker.subscriptions()
    assert status.lag == 3


def test_new_consumer_starts_at_the_end_of_the_feed(tracker: Tracker) -> None:
    """Without from_start, a new consumer gets only what is recorded after it subscribed."""
    _start(tracker, "before")
    got: list[str] = []
    tracker.subscribe("late", lambda t, s: got.append(t.stream_id))
    _start(tracker, "after")
    tracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert got == ["after"]


def test_consumer_resumes_where_it_stopped(tracker: Tracker, db_url: str) -> None:
    """A restarted consumer continues after the last transition its callback returned from."""
    _start(tracker, "one")
    first: list[str] = []
    tracker.subscribe("resume", lambda t, s: first.append(t.stream_id), from_start=True)
    tracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    _start(tracker, "two")
    again: list[str] = []
    with Tracker(db_url) as restarted:
        restarted.subscribe("resume", lambda t, s: again.append(t.stream_id), from_start=True)
        restarted.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert (first, again) == (["one"], ["two"])


def test_filters_pass_unwanted_transitions(tracker: Tracker) -> None:
    """A consumer's filters work as on_transition's; what it does not want moves its cursor."""
    stopped: list[str] = []
    tracker.subscribe("stops", lambda t, s: stopped.append(t.stream_id), to="stopped")
    _start(tracker, "x")
    tracker.ingest(body("stopped", "x", T0 + 10, scope_id="x"))
    tracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    (status,) = tracker.subscriptions()
    assert (stopped, status.lag, status.delivered) == (["x"], 0, 1)


def test_failing_callback_is_retried_then_succeeds(tracker: Tracker) -> None:
    """A callback that raises gets the same transition again, after a back-off, until it returns."""
    calls: list[int] = []

    def flaky(transition: Transition, stream: Stream) -> None:
        calls.append(transition.id)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    tracker.subscribe("flaky", flaky, retry_delay=0.01)
    _start(tracker, "x")
    tracker.run_subscriptions(idle_exit=0.5, poll_interval=0.05)
    (status,) = tracker.subscriptions()
    assert calls == [calls[0]] * 3
    assert (status.parked, status.delivered, status.attempts) == (0, 1, 0)
    assert status.last_error == "RuntimeError: not yet"


def test_callback_failing_max_attempts_parks_without_blocking(tracker: Tracker) -> None:
    """After max_attempts the transition is parked and the ones after it are delivered."""
    got: list[str] = []

    def picky(transition: Transition, stream: Stream) -> None:
        if transition.stream_id == "bad":
            raise ValueError("cannot bill")
        got.append(transition.stream_id)

    tracker.subscribe("picky", picky, max_attempts=2, retry_delay=0.01)
    for n, sid in enumerate(("good1", "bad", "good2")):
        _start(tracker, sid, n)
    tracker.run_subscriptions(idle_exit=0.5, poll_interval=0.05)
    (status,) = tracker.subscriptions()
    assert got == ["good1", "good2"]
    assert (status.parked, status.lag, status.last_error) == (1, 0, "ValueError: cannot bill")


def test_retry_parked_delivers_parked_transitions_again(tracker: Tracker) -> None:
    """retry_parked re-queues parked transitions; delivered, they leave the parked list."""
    broken = threading.Event()
    broken.set()
    got: list[str] = []

    def until_fixed(transition: Transition, stream: Stream) -> None:
        if broken.is_set():
            raise ConnectionError("down")
        got.append(transition.stream_id)

    tracker.subscribe("fixme", until_fixed, max_attempts=1)
    _start(tracker, "x")
    tracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert tracker.subscriptions()[0].parked == 1
    broken.clear()
    assert tracker.retry_parked("fixme") == 1
    tracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    assert got == ["x"]
    assert tracker.subscriptions()[0].parked == 0


def test_retry_parked_names_an_unknown_consumer(tracker: Tracker) -> None:
    """Re-queueing for a consumer that does not exist is an error naming it."""
    with pytest.raises(ConfigurationError, match="'nobody'"):
        tracker.retry_parked("nobody")


def test_consumer_held_elsewhere_is_not_delivered_twice(tracker: Tracker, db_url: str) -> None:
    """While one process holds a consumer's lease, another delivers nothing for it."""
    _start(tracker, "x")
    holder = Tracker(db_url)
    release = threading.Event()
    entered = threading.Event()

    def slow(transition: Transition, stream: Stream) -> None:
        entered.set()
        release.wait(10)

    holder.subscribe("one", slow, from_start=True)
    thread = threading.Thread(
        target=holder.run_subscriptions, kwargs={"idle_exit": 0.2, "poll_interval": 0.05}
    )
    thread.start()
    try:
        assert entered.wait(10)
        other: list[int] = []
        tracker.subscribe("one", lambda t, s: other.append(t.id), from_start=True)
        tracker.run_subscriptions(idle_exit=0.3, poll_interval=0.05)
        assert other == []
    finally:
        release.set()
        thread.join(10)
        holder.close()
    assert tracker.subscriptions()[0].delivered == 1


def test_lease_of_a_silent_holder_is_taken_over(tracker: Tracker, db_url: str) -> None:
    """A holder that stops renewing (a dead process) loses the consumer once its lease ends."""
    _start(tracker, "x")
    dead = tracker.consumer("twin", from_start=True, lease=0.3)
    assert dead.next() is not None  # takes the lease, then never reports back
    got: list[str] = []
    tracker.subscribe("twin", lambda t, s: got.append(t.stream_id), lease=0.3)
    tracker.run_subscriptions(idle_exit=0.8, poll_interval=0.05)
    assert got == ["x"]


def test_subscribing_one_name_twice_in_a_tracker_is_refused(tracker: Tracker) -> None:
    """One process runs a consumer once: a second subscribe under its name is an error."""
    tracker.subscribe("twice", print)
    with pytest.raises(ConfigurationError, match="already subscribed"):
        tracker.subscribe("twice", print)


@pytest.mark.parametrize("name", ["", "has space", "-dash-first", "x" * 201, "nul\x00"])
def test_bad_consumer_name_is_refused(tracker: Tracker, name: str) -> None:
    """A consumer's name is plain: letters, digits and a few separators."""
    with pytest.raises(ValueError, match="consumer"):
        tracker.subscribe(name, print)


def test_nan_seconds_between_retries_are_refused(tracker: Tracker) -> None:
    """A nan retry_delay (which passes every comparison) is a ValueError naming it."""
    with pytest.raises(ValueError, match="retry_delay"):
        tracker.subscribe("nan", print, retry_delay=float("nan"))


def test_a_nan_lease_is_refused(tracker: Tracker) -> None:
    """A nan lease is a ValueError naming it."""
    with pytest.raises(ValueError, match="lease"):
        tracker.subscribe("nan", print, lease=float("nan"))


def test_subscribe_refuses_a_coroutine_function(tracker: Tracker) -> None:
    """A Tracker cannot await an ``async def`` subscriber: refused, pointing to AsyncTracker."""

    async def coro(transition: Transition, stream: Stream) -> None:
        pass

    with pytest.raises(TypeError, match="AsyncTracker"):
        tracker.subscribe("coro", coro)


def test_plain_callback_returning_a_coroutine_is_retried_then_parked(tracker: Tracker) -> None:
    """A coroutine nobody awaits did nothing: a failed attempt, never a delivery."""

    async def later() -> None:
        pass

    tracker.subscribe("sneaky", lambda t, s: later(), from_start=True, max_attempts=1)
    _start(tracker, "x")
    tracker.run_subscriptions(idle_exit=0.2, poll_interval=0.05)
    (status,) = tracker.subscriptions()
    assert (status.delivered, status.parked) == (0, 1)
    assert "returned a coroutine" in (status.last_error or "")


def test_run_without_subscriptions_is_an_error(tracker: Tracker) -> None:
    """run_subscriptions with nothing subscribed says so instead of idling forever."""
    with pytest.raises(ConfigurationError, match="subscribe"):
        tracker.run_subscriptions(idle_exit=0.1)


def test_stop_event_ends_the_run(tracker: Tracker) -> None:
    """Setting ``stop`` ends run_subscriptions promptly and releases the lease."""
    tracker.subscribe("stoppable", print)
    stop = threading.Event()
    thread = threading.Thread(target=tracker.run_subscriptions, kwargs={"stop": stop})
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert tracker.subscriptions()[0].holder is None


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(failures=st.lists(st.integers(0, 3), min_size=1, max_size=6), attempts=st.integers(1, 3))
def test_each_transition_is_delivered_or_parked(
    db_url: str, failures: list[int], attempts: int
) -> None:
    """Whatever fails how often: a transition is delivered iff it failed fewer than max_attempts
    times, else parked; deliveries keep feed order and the cursor ends at the feed's end."""
    consumer = f"p{uuid.uuid4().hex[:12]}"
    left = {f"{consumer}-{n}": count for n, count in enumerate(failures)}
    delivered: list[str] = []

    def callback(transition: Transition, stream: Stream) -> None:
        if left[transition.stream_id]:
            left[transition.stream_id] -= 1
            raise RuntimeError("failing on purpose")
        delivered.append(transition.stream_id)

    with Tracker(db_url) as tracker:
        tracker.subscribe(consumer, callback, max_attempts=attempts, retry_delay=0)
        for n, sid in enumerate(left):
            _start(tracker, sid, n)
        tracker.run_subscriptions(idle_exit=0.1, poll_interval=0.02)
        (status,) = [s for s in tracker.subscriptions() if s.consumer == consumer]
    assert delivered == [f"{consumer}-{n}" for n, f in enumerate(failures) if f < attempts]
    assert status.parked == sum(f >= attempts for f in failures)
    assert status.lag == 0


def test_runner_outlives_dropped_connections(postgres_url: str) -> None:
    """When the server drops every connection (a restart, a failover), the runner reconnects and
    delivers what came meanwhile."""
    import psycopg
    from sqlalchemy.engine import make_url

    with Tracker(postgres_url) as tracker:
        got: list[str] = []
        tracker.subscribe("survivor", lambda t, s: got.append(t.stream_id))
        stop = threading.Event()
        thread = threading.Thread(
            target=tracker.run_subscriptions, kwargs={"stop": stop, "poll_interval": 0.05}
        )
        thread.start()
        try:
            _start(tracker, "before")
            _wait_for(lambda: got == ["before"], "the first delivery")
            url = make_url(postgres_url)
            admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (url.database,),
                )
            with Tracker(postgres_url) as writer:
                _start(writer, "after")
            # At least once: "before" comes again if the outage cut its acknowledgement.
            _wait_for(
                lambda: list(dict.fromkeys(got)) == ["before", "after"],
                "a delivery after the outage",
            )
        finally:
            stop.set()
            thread.join(10)
