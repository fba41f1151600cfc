"""The store: order-independent fold, identity rules, outcomes, audit rows, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import random
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from rtms_lifecycle import EventKind, Outcome, Scope, State, Stream, Tracker
from rtms_lifecycle.events import Source, StreamEvent
from rtms_lifecycle.machine import fold
from rtms_lifecycle.parsing import parse_delivery
from rtms_lifecycle.store.predicates import EVENT_PREDICATE
from rtms_lifecycle.store.rows import state_to_stream
from rtms_lifecycle.store.tables import deliveries, transitions

from ._deliveries import body, raw

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them

WEBHOOK_KINDS = [EventKind.STARTED, EventKind.INTERRUPTED, EventKind.STOPPED]


# --- a stream's deliveries, as Zoom and the app would send them ------------------------------


def delivery(kind: EventKind, stream_id: str, ts: int) -> bytes | tuple[str, int]:
    """A webhook body, or ``(stream_id, ts)`` for an app-reported resume."""
    if kind is EventKind.RESUMED:
        return (stream_id, ts)
    return raw(kind, stream_id, ts, stop_reason=ts % 30, server_urls=f"wss://rtms/{ts}")


def send(tracker: Tracker, item: bytes | tuple[str, int]) -> Outcome:
    """Deliver one item the way its source does."""
    if isinstance(item, tuple):
        return tracker.report_resumed(*item).outcome
    return tracker.ingest(item).outcome


def direct_fold(stream_id: str, events: list[tuple[EventKind, int]]) -> Stream | None:
    """The documented fold over the distinct events, with no database involved."""
    parsed: list[StreamEvent] = []
    for kind, ts in events:
        item = delivery(kind, stream_id, ts)
        if isinstance(item, tuple):
            parsed.append(
                StreamEvent("app.rtms_resumed", None, kind, stream_id, None, ts, Source.APP)
            )
        else:
            event = parse_delivery(item)
            assert isinstance(event, StreamEvent)
            parsed.append(event)
    state, _ = fold(stream_id, parsed)
    return None if state.state is State.NEW else state_to_stream(state)


def same_stream(a: Stream | None, b: Stream | None) -> bool:
    """Streams equal in every field but their id."""
    if a is None or b is None:
        return a is b
    return replace(a, stream_id="") == replace(b, stream_id="")


event_sets = st.lists(
    st.tuples(st.sampled_from(list(EventKind)), st.integers(min_value=T0 + 1, max_value=T0 + 30)),
    min_size=1,
    max_size=10,
    unique=True,
)


@settings(
    max_examples=40,
    deadline=None,
    # One database serves every example on purpose (a database per example would make the
    # property run for minutes); each example writes only streams with fresh ids.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    events=event_sets,
    rnd=st.randoms(use_true_random=False),
    batch_size=st.integers(min_value=1, max_value=8),
)
def test_any_order_and_duplicates_give_the_same_stream(
    db_url: str, events: list[tuple[EventKind, int]], rnd: random.Random, batch_size: int
) -> None:
    """Any permutation with duplicates stores the same stream as in-order arrival and the fold."""
    in_order, shuffled = f"in-order-{uuid.uuid4()}", f"shuffled-{uuid.uuid4()}"
    with Tracker(db_url) as tracker:
        for kind, ts in sorted(events, key=lambda e: (e[1], e[0].rank)):
            send(tracker, delivery(kind, in_order, ts))
        mixed = [delivery(kind, shuffled, ts) for kind, ts in events]
        mixed += [rnd.choice(mixed) for _ in range(rnd.randint(0, len(mixed)))]
        rnd.shuffle(mixed)
        webhooks = [item for item in mixed if not isinstance(item, tuple)]
        apps = [item for item in mixed if isinstance(item, tuple)]
        tracker.ingest_many(webhooks[: len(webhooks) // 2], batch_size=batch_size)
        for item in apps + webhooks[len(webhooks) // 2 :]:
            send(tracker, item)
        expected = direct_fold("x", events)
        assert same_stream(tracker.stream(in_order), expected)
        assert same_stream(tracker.stream(shuffled), expected)
        # Each stream's row agrees with its history: its head and its state are the last row's.
        for sid in (in_order, shuffled):
            assert tracker.verify_audit(sid).breaks == ()


# --- outcomes ----------------------------------------------------------------------------------


def test_outcome_of_each_kind_of_delivery(tracker: Tracker) -> None:
    """Each delivery gets the one outcome docs/concepts.md gives it, stored with it."""
    cases = [
        (raw("started", "s1", T0 + 10), Outcome.APPLIED),
        (raw("started", "s1", T0 + 10), Outcome.DUPLICATE),
        (raw("started", "s1", T0 + 10, server_urls="wss://elsewhere"), Outcome.CONFLICT),
        (raw("started", "s1", T0 + 11, scope=Scope.WEBINAR), Outcome.CONFLICT),
        (raw("stopped", "s1", T0 + 20), Outcome.APPLIED),
        (raw("interrupted", "s1", T0 + 30), Outcome.IGNORED),
        (b"{not json", Outcome.REJECTED),
        (b'{"event": "meeting.rtms_future_thing", "event_ts": 1700000000005}', Outcome.UNHANDLED),
        (
            b'{"event": "endpoint.url_validation", "event_ts": 1700000000005, '
            b'"payload": {"plainToken": "t"}}',
            Outcome.APPLIED,
        ),
    ]
    outcomes = [tracker.ingest(item).outcome for item, _ in cases]
    assert outcomes == [expected for _, expected in cases]
    stored = tracker.deliveries(limit=None)
    assert [d.outcome for d in reversed(stored)] == outcomes
    assert [d.raw for d in reversed(stored)] == [item for item, _ in cases]


def test_first_stored_version_stands_on_conflict(tracker: Tracker) -> None:
    """A conflicting payload changes nothing: the first version's fields stay."""
    tracker.ingest(raw("started", "s1", T0 + 10, server_urls="wss://first"))
    result = tracker.ingest(raw("started", "s1", T0 + 10, server_urls="wss://second"))
    assert result.outcome is Outcome.CONFLICT
    assert result.detail is not None
    assert "first stands" in result.detail
    stream = tracker.stream("s1")
    assert stream is not None
    assert stream.server_urls == "wss://first"


def test_rejected_delivery_keeps_raw_bytes_and_error(tracker: Tracker) -> None:
    """A rejected body is stored byte for byte with the field and reason of its rejection."""
    bad = json.dumps(body("stopped", "s1", T0 + 10, stop_reason="HOST_TRIGGERED")).encode() + b"  "
    result = tracker.ingest(bad)
    assert result.outcome is Outcome.REJECTED
    (stored,) = tracker.deliveries(outcome="rejected")
    assert stored.raw == bad
    assert stored.error == [
        {"field": "payload.stop_reason", "reason": "must be an integer, got 'HOST_TRIGGERED'"}
    ]


def test_non_utf8_body_is_kept(tracker: Tracker) -> None:
    """Bytes that are not even text are stored as received."""
    garbage = b"\xff\xfe\x00\x01"
    assert tracker.ingest(garbage).outcome is Outcome.REJECTED
    assert tracker.deliveries()[0].raw == garbage


def test_late_event_refolds_and_is_marked_late(tracker: Tracker) -> None:
    """An event older than the stream's last event re-folds it and its audit row says late."""
    tracker.ingest(raw("started", "s1", T0 + 10))
    tracker.ingest(raw("stopped", "s1", T0 + 50))
    result = tracker.ingest(raw("interrupted", "s1", T0 + 30))
    assert result.outcome is Outcome.APPLIED
    assert result.transition is not None
    assert (result.transition.late, result.transition.name) == (True, "interrupt")
    assert (result.transition.from_state, result.transition.to_state) == (
        State.STOPPED,
        State.STOPPED,
    )
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.interruptions, stream.state) == (1, State.STOPPED)


def test_event_after_stop_is_ignored_and_kept(tracker: Tracker) -> None:
    """An event after the stop is ignored, still stored, and counts nowhere."""
    tracker.ingest(raw("started", "s1", T0 + 10))
    tracker.ingest(raw("stopped", "s1", T0 + 20))
    assert tracker.ingest(raw("started", "s1", T0 + 30)).outcome is Outcome.IGNORED
    with tracker.engine.connect() as conn:
        stored = conn.execute(
            select(func.count())
            .select_from(deliveries)
            .where(deliveries.c.stream_id == "s1", text(EVENT_PREDICATE))
        ).scalar_one()
    assert stored == 3
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.failovers, stream.last_event_at) == (0, T0 + 20)


def test_a_batch_of_more_streams_than_one_lookup_holds(tracker: Tracker) -> None:
    """A batch touching 1,200 stored streams reads them all (they are looked up 500 at a time)."""
    ids = [f"s{n}" for n in range(1200)]
    tracker.ingest_many([raw("started", sid, T0 + 10) for sid in ids])
    summary = tracker.ingest_many([raw("stopped", sid, T0 + 20) for sid in ids] + [b"{}"])
    assert summary.counts == {Outcome.APPLIED: 1200, Outcome.REJECTED: 1}
    assert {s.state for s in tracker.streams(limit=None)} == {State.STOPPED}
    assert tracker.ingest_many([raw("stopped", sid, T0 + 20) for sid in ids]).counts == {
        Outcome.DUPLICATE: 1200
    }


def test_one_audit_row_per_applied_event(tracker: Tracker) -> None:
    """Each applied event appends exactly one audit row; others append none."""
    outcomes = [
        tracker.ingest(raw(kind, "s1", T0 + ts)).outcome
        for kind, ts in [
            ("started", 10),
            ("started", 10),
            ("interrupted", 20),
            ("started", 30),
            ("stopped", 40),
            ("stopped", 40),
            ("interrupted", 50),
        ]
    ]
    assert len(tracker.audit("s1")) == outcomes.count(Outcome.APPLIED) == 4


# --- concurrent writers ------------------------------------------------------------------------


def _scenario(streams: int, seed: int) -> dict[str, list[tuple[EventKind, int]]]:
    rnd = random.Random(seed)
    return {
        f"stream-{n}": [(rnd.choice(list(EventKind)), T0 + rnd.randint(1, 12)) for _ in range(6)]
        for n in range(streams)
    }


def _worker(url: str, items: list[Any], batch_size: int) -> None:
    with Tracker(url) as tracker:
        if batch_size == 1:
            for item in items:
                send(tracker, item)
            return
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            tracker.ingest_many(
                [i for i in chunk if not isinstance(i, tuple)], batch_size=batch_size
            )
            for item in (i for i in chunk if isinstance(i, tuple)):
                send(tracker, item)


def _run_writers(url: str, scenario: dict[str, list[tuple[EventKind, int]]]) -> None:
    every = [delivery(kind, sid, ts) for sid, events in scenario.items() for kind, ts in events]
    rnd = random.Random(7)
    shares = []
    for n in range(4):
        # Every delivery goes to two or more writers: retries racing each other.
        share = every + rnd.sample(every, len(every) // 2)
        rnd.shuffle(share)
        shares.append((url, share, 1 if n % 2 == 0 else 25))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=share) for share in shares]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0


@pytest.mark.parametrize(
    "url_fixture", ["sqlite_url", pytest.param("postgres_url", marks=pytest.mark.postgres)]
)
def test_concurrent_writers_apply_each_event_once(
    request: pytest.FixtureRequest, url_fixture: str
) -> None:
    """Four processes racing on shuffled shares of the same deliveries store exactly the fold."""
    url = request.getfixturevalue(url_fixture)
    scenario = _scenario(streams=40, seed=3)
    Tracker(url).close()  # create the schema before the writers race
    _run_writers(url, scenario)
    with Tracker(url) as tracker:
        for stream_id, events in scenario.items():
            assert same_stream(tracker.stream(stream_id), direct_fold(stream_id, list(set(events))))
        with tracker.engine.connect() as conn:
            applied = Counter(
                (r.stream_id, r.kind, r.event_ts)
                for r in conn.execute(
                    select(deliveries).where(deliveries.c.outcome == Outcome.APPLIED.value)
                )
            )
            audited = Counter(
                (r.stream_id, r.kind, r.event_ts) for r in conn.execute(select(transitions))
            )
            first_seen = Counter(
                (r.stream_id, r.kind, r.event_ts)
                for r in conn.execute(
                    select(deliveries).where(deliveries.c.outcome.in_(["applied", "ignored"]))
                )
            )
    assert applied == audited
    assert max(first_seen.values()) == 1
    distinct = {(sid, kind.value, ts) for sid, events in scenario.items() for kind, ts in events}
    assert set(first_seen) == distinct


# --- PostgreSQL: an optimistic first attempt, a cautious retry ---------------------------------


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _ingest_while_held(url: str, hold: str, body: bytes) -> tuple[Any, Any]:
    """Ingest ``body`` while another transaction holds rows with ``hold``, then commit that.

    Returns the ingest's result (or exception) once the other transaction has committed.
    """
    import threading
    import time

    import psycopg

    outcome: list[Any] = []
    with psycopg.connect(_psycopg_url(url)) as other, Tracker(url) as tracker:
        other.execute(hold)
        thread = threading.Thread(target=lambda: outcome.append(tracker.ingest(body)))
        thread.start()
        deadline = time.monotonic() + 10
        with psycopg.connect(_psycopg_url(url), autocommit=True) as watcher:
            # The ingest is waiting on the held rows: it read its snapshot before the commit.
            while watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchone() != (1,):
                assert time.monotonic() < deadline, "the ingest never waited on the held rows"
                time.sleep(0.01)
        other.commit()
        thread.join(timeout=30)
        return outcome[0], tracker.stream(json.loads(body)["payload"]["rtms_stream_id"])


@pytest.mark.postgres
def test_postgres_stream_changed_under_a_writer_is_retried_cautiously(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream updated by another transaction after the first attempt read it: retried, once."""
    import logging

    caplog.set_level(logging.DEBUG, "rtms_lifecycle.store")
    with Tracker(postgres_url) as tracker:
        tracker.ingest(raw("started", "s1", T0 + 10))
    result, stream = _ingest_while_held(
        postgres_url,
        "UPDATE streams SET updated_at = updated_at + 1 WHERE stream_id = 's1'",
        raw("stopped", "s1", T0 + 20, stop_reason=6),
    )
    assert result.outcome is Outcome.APPLIED
    assert stream is not None
    assert (stream.state, stream.stop_reason) == (State.STOPPED, 6)
    assert [r.message for r in caplog.records if "lost a race" in r.message]
    with Tracker(postgres_url) as tracker:
        assert [t.name.value for t in tracker.audit("s1")] == ["start", "stop"]
        assert len(tracker.deliveries(stream_id="s1")) == 2


@pytest.mark.postgres
def test_postgres_new_stream_inserted_under_a_writer_is_retried_cautiously(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two writers creating one stream: the one that loses retries, locks the row and applies."""
    import logging

    caplog.set_level(logging.DEBUG, "rtms_lifecycle.store")
    Tracker(postgres_url).close()
    # What a cautious writer of the same new stream does first: a placeholder row.
    hold = (
        "INSERT INTO streams (stream_id, state, interruptions, resumes, failovers, fold_ts,"
        " fold_rank, created_at, updated_at) VALUES ('s2', 'new', 0, 0, 0, -1, -1, 0, 0)"
    )
    result, stream = _ingest_while_held(postgres_url, hold, raw("started", "s2", T0 + 10))
    assert result.outcome is Outcome.APPLIED
    assert stream is not None
    assert stream.state is State.STARTED
    assert [r.message for r in caplog.records if "lost a race" in r.message]
