"""The embedding API : ``Tracker`` on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from rtms_lifecycle import (
    ConfigurationError,
    IngestResult,
    Outcome,
    Scope,
    Source,
    State,
    Stream,
    Tracker,
    Transition,
    TransitionName,
    WebhookRefused,
)
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.defaults import MAX_BATCH_SIZE

from ._deliveries import body
from ._live import signed

HOUR = 3_600_000
MINUTE = 60_000
T0 = 1_700_000_000_000  # a fixed past instant (Nov 2023) for scenarios that need no "now"

# docs/stop-reasons.md, the rows these tests use: code -> (name, category).
REASONS: dict[int | None, tuple[str, str]] = {
    1: ("HOST_TRIGGERED", "normal"),
    6: ("MEETING_ENDED", "normal"),
    10: ("INTERNAL_EXCEPTION", "abnormal"),
    99: ("UNKNOWN_99", "unknown"),
    None: ("EXPIRED", "expired"),
}


# --- fixtures and helpers ---------------------------------------------------------------------


def near_limit(event_ts: int, number: int = 9) -> dict[str, Any]:
    """An ``rtms.concurrency_near_limit`` body (limit 10)."""
    return {
        "event": "rtms.concurrency_near_limit",
        "event_ts": event_ts,
        "payload": {
            "concurrency_limit": 10,
            "concurrency_number": number,
            "percentage": number * 10,
        },
    }


def limited(event_ts: int, meeting_uuid: str) -> dict[str, Any]:
    """An ``rtms.concurrency_limited`` body naming a meeting."""
    return {
        "event": "rtms.concurrency_limited",
        "event_ts": event_ts,
        "payload": {
            "operator_id": "op-1",
            "concurrency_number": 10,
            "id_field": {"meeting_uuid": meeting_uuid},
        },
    }


def lifecycle(sid: str, t: int) -> list[tuple[dict[str, Any], Outcome]]:
    """Every outcome of docs/concepts.md for one meeting stream, with the outcome each must get."""
    sc = f"mtg-{sid}"
    return [
        (body("started", sid, t, scope_id=sc, server_urls="wss://a"), Outcome.APPLIED),
        (body("started", sid, t, scope_id=sc, server_urls="wss://a"), Outcome.DUPLICATE),
        (body("interrupted", sid, t + 200, scope_id=sc), Outcome.APPLIED),
        # started while interrupted: the stream resumes, on a new server
        (body("started", sid, t + 500, scope_id=sc, server_urls="wss://b"), Outcome.APPLIED),
        (body("stopped", sid, t + 1000, scope_id=sc, stop_reason=6), Outcome.APPLIED),
        # late, but before the stop in event time: folded in as a second interruption
        (body("interrupted", sid, t + 100, scope_id=sc), Outcome.APPLIED),
        # same identity as the stop, other payload: the first stands
        (body("stopped", sid, t + 1000, scope_id=sc, stop_reason=7), Outcome.CONFLICT),
        (body("interrupted", sid, t + 2000, scope_id=sc), Outcome.IGNORED),  # after the stop
        (body("started", sid, t + 3000, scope=Scope.WEBINAR, scope_id=sc), Outcome.CONFLICT),
        (  # identifies no stream
            {"event": "meeting.rtms_stopped", "event_ts": t, "payload": {"meeting_uuid": sc}},
            Outcome.REJECTED,
        ),
        ({"event": "meeting.chat_message_sent", "event_ts": t, "payload": {}}, Outcome.UNHANDLED),
        (near_limit(t), Outcome.APPLIED),
    ]


def lifecycle_stream(sid: str, t: int) -> dict[str, Any]:
    """The stream ``lifecycle(sid, t)`` must leave behind (docs/concepts.md's derived fields)."""
    return {
        "stream_id": sid,
        "scope": "meeting",
        "scope_id": f"mtg-{sid}",
        "account_id": None,
        "session_key": None,
        "operator_id": None,
        "server_urls": "wss://b",
        "state": "stopped",
        "started_at": t,
        "stopped_at": t + 1000,
        "last_event_at": t + 1000,
        "stop_reason": 6,
        "stop_reason_name": "MEETING_ENDED",
        "stop_reason_category": "normal",
        "interruptions": 2,
        "resumes": 1,
        "failovers": 0,
    }


LIFECYCLE_TRANSITIONS = 5  # applied stream events of lifecycle(): start, 2 interrupts, resume, stop


def workload(streams: int) -> list[tuple[dict[str, Any], Outcome]]:
    """``lifecycle`` of several streams, interleaved so that a stream spans several batches."""
    per_stream = [lifecycle(f"s{i}", T0 + i * HOUR) for i in range(streams)]
    return [item for group in zip(*per_stream, strict=True) for item in group]


def all_transitions(tracker: Tracker) -> list[Transition]:
    """Every stored transition, in recorded order."""
    return sorted(
        (t for s in tracker.streams() for t in tracker.audit(s.stream_id)), key=lambda t: t.id
    )


def ids(streams: list[Stream]) -> set[str]:
    """The stream ids of a query's answer."""
    return {s.stream_id for s in streams}


# --- ingest -------------------------------------------------------------------------------------


def test_tracker_bound_to_an_engine_works_like_one_bound_to_the_url(db_url: str) -> None:
    """A Tracker on an SQLAlchemy Engine (already used by the app) records what a URL one reads."""
    engine = create_engine(db_url)
    with engine.connect() as conn:  # the application used its engine before
        conn.execute(text("SELECT 1"))
    with Tracker(engine) as on_engine:
        assert on_engine.engine is engine
        on_engine.ingest_many([body("started", "s1", T0), body("interrupted", "s1", T0 + 1)])
        assert on_engine.ingest(body("stopped", "s1", T0 + 2)).outcome is Outcome.APPLIED
    with Tracker(db_url) as on_url:
        stream = on_url.stream("s1")
        assert stream is not None
        assert (stream.state, stream.interruptions) == (State.STOPPED, 1)
        assert [t.name for t in on_url.history("s1")] == ["start", "interrupt", "stop"]


BODY_FORMS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "bytes": lambda b: json.dumps(b).encode(),
    "str": lambda b: json.dumps(b, ensure_ascii=False),
    "bytearray": lambda b: bytearray(json.dumps(b).encode()),
    "memoryview": lambda b: memoryview(json.dumps(b).encode()),
    "mapping": lambda b: b,
}


@pytest.mark.parametrize("form", BODY_FORMS)
def test_ingest_each_body_form_applies_the_first_event(tracker: Tracker, form: str) -> None:
    """A first ``started`` as bytes, str or mapping is applied from "new", stored as received."""
    payload: dict[str, Any] = {"operator_id": "opé", "account_id": "acc-1", "extra": {"k": 1}}
    delivery = body("started", "s1", T0, scope_id="m-1", server_urls="wss://x,wss://y", **payload)
    received = BODY_FORMS[form](delivery)

    before = now_ms()
    result = tracker.ingest(received)
    after = now_ms()

    assert result.outcome is Outcome.APPLIED
    assert result.errors == ()
    assert result.error is None
    assert result.stream_id == "s1"
    assert result.stream == tracker.stream("s1")
    assert result.stream is not None
    assert (result.stream.state, result.stream.scope, result.stream.scope_id) == (
        State.STARTED,
        Scope.MEETING,
        "m-1",
    )
    assert (result.stream.started_at, result.stream.last_event_at) == (T0, T0)
    assert (result.stream.operator_id, result.stream.account_id) == ("opé", "acc-1")
    assert result.stream.server_url_list == ["wss://x", "wss://y"]
    transition = result.transition
    assert transition is not None
    assert (transition.from_state, transition.to_state, transition.name) == (
        State.NEW,
        State.STARTED,
        TransitionName.START,
    )
    assert (transition.stream_id, transition.event_ts, transition.source) == (
        "s1",
        T0,
        Source.WEBHOOK,
    )
    assert transition.late is False
    assert before <= transition.recorded_at <= after
    assert transition.delivery_id == result.delivery_id
    assert tracker.audit("s1") == [transition]
    (stored,) = tracker.deliveries()
    assert (stored.id, stored.outcome, stored.error) == (result.delivery_id, Outcome.APPLIED, None)
    if form == "mapping":
        assert json.loads(stored.raw) == delivery
    else:
        assert stored.raw == (received.encode() if isinstance(received, str) else bytes(received))


def test_ingest_results_carry_each_transition(tracker: Tracker) -> None:
    """Each applied event's result names the transition, states before and after, and lateness."""
    steps = [  # event, expected (from_state, to_state, name, late)
        (body("started", "s1", T0 + 100), ("new", "started", "start", False)),
        (body("started", "s1", T0 + 200), ("started", "started", "failover", False)),
        (body("interrupted", "s1", T0 + 300), ("started", "interrupted", "interrupt", False)),
        (body("started", "s1", T0 + 400), ("interrupted", "resumed", "resume", False)),
        (body("started", "s1", T0 + 500), ("resumed", "resumed", "failover", False)),
        (body("stopped", "s1", T0 + 600), ("resumed", "stopped", "stop", False)),
        # arrives last, happened first: folded in before everything, the stored state stays
        (body("interrupted", "s1", T0), ("stopped", "stopped", "interrupt", True)),
    ]
    seen = []
    for delivery, expected in steps:
        result = tracker.ingest(delivery)
        assert result.outcome is Outcome.APPLIED
        assert result.transition is not None
        t = result.transition
        assert (t.from_state, t.to_state, t.name, t.late) == expected
        assert (t.event_ts, t.kind) == (delivery["event_ts"], delivery["event"].split("_")[-1])
        seen.append(t)
    assert tracker.audit("s1") == seen
    stream = tracker.stream("s1")
    assert stream is not None
    # the fold from T0: interrupt, resume (started while interrupted), failover, interrupt,
    # resume, failover, stop
    assert (stream.interruptions, stream.resumes, stream.failovers) == (2, 2, 2)
    assert (stream.started_at, stream.state) == (T0 + 100, State.STOPPED)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(b"\xff{not json", "body", id="not-json"),
        pytest.param(b"[1, 2]", "body", id="not-an-object"),
        pytest.param(b'{"event_ts": 1, "payload": {}}', "event", id="no-event"),
        pytest.param(
            json.dumps({"event": "meeting.rtms_started", "payload": {}}).encode(),
            "event_ts",
            id="no-event-ts",
        ),
        pytest.param(
            json.dumps({**body("started", "s1", T0), "event_ts": "soon"}).encode(),
            "event_ts",
            id="event-ts-not-int",
        ),
        pytest.param(
            json.dumps(body("stopped", "s1", T0, stop_reason="HOST_TRIGGERED")).encode(),
            "payload.stop_reason",
            id="stop-reason-not-an-integer",
        ),
        pytest.param(
            json.dumps(
                {"event": "meeting.rtms_started", "event_ts": T0, "payload": {"meeting_uuid": "m"}}
            ).encode(),
            "payload.rtms_stream_id",
            id="no-stream-id",
        ),
        pytest.param(
            json.dumps(body("interrupted", "s1", T0, scope_id=["m"])).encode(),  # type: ignore[arg-type]
            "payload.meeting_uuid",
            id="scope-id-not-a-string-or-integer",
        ),
    ],
)
def test_rejected_body_is_returned_and_stored(tracker: Tracker, raw: bytes, field: str) -> None:
    """A bad body is returned as rejected (not raised) and stored with its raw bytes and field."""
    result = tracker.ingest(raw)

    assert result.outcome is Outcome.REJECTED
    assert (result.stream, result.transition) == (None, None)
    assert field in [e.field for e in result.errors]
    assert result.error is not None
    assert field in result.error
    (stored,) = tracker.deliveries(outcome="rejected")
    assert stored.id == result.delivery_id
    assert stored.raw == raw
    assert stored.error is not None
    assert field in [e["field"] for e in stored.error]
    assert all(e["reason"] for e in stored.error)
    assert tracker.streams() == []


def test_ingest_gives_each_delivery_its_outcome(tracker: Tracker) -> None:
    """One by one, each delivery gets its docs/concepts.md outcome; only applied ones transition."""
    for delivery, expected in workload(2):
        result = tracker.ingest(delivery)
        assert result.outcome is expected, delivery
        applied_stream_event = expected is Outcome.APPLIED and ".rtms_" in delivery["event"]
        assert (result.transition is not None) is applied_stream_event
        assert (result.stream is not None) is applied_stream_event
    assert [s.as_dict() for s in tracker.streams()] == [
        lifecycle_stream("s1", T0 + HOUR),
        lifecycle_stream("s0", T0),
    ]


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_ingest_many_counts_and_streams_match_the_scenario(
    tracker: Tracker, batch_size: int
) -> None:
    """ingest_many counts each delivery's outcome once; any batch size stores the same streams."""
    # 144 deliveries: one batch of 1,000 is more than one write statement holds on PostgreSQL.
    streams = 12
    items = workload(streams)
    expected = Counter(outcome for _, outcome in items)

    summary = tracker.ingest_many((d for d, _ in items), batch_size=batch_size)

    assert summary.as_dict() == {o.value: expected[o] for o in Outcome}
    assert summary.total == len(items)
    stored = tracker.deliveries(limit=None)
    assert [d.outcome for d in reversed(stored)] == [o for _, o in items]
    got = sorted((s.as_dict() for s in tracker.streams()), key=lambda s: s["stream_id"])
    want = [lifecycle_stream(f"s{i}", T0 + i * HOUR) for i in range(streams)]
    assert got == sorted(want, key=lambda s: s["stream_id"])
    assert len(all_transitions(tracker)) == streams * LIFECYCLE_TRANSITIONS


@pytest.mark.parametrize("batch_size", [0, MAX_BATCH_SIZE + 1, 2**63])
def test_ingest_many_rejects_a_batch_size_out_of_range(tracker: Tracker, batch_size: int) -> None:
    """A batch size of 0 or past the largest is refused, naming the range; nothing is stored."""
    with pytest.raises(ValueError, match="batch_size must be from 1 to 100,000"):
        tracker.ingest_many([body("started", "s1", T0)], batch_size=batch_size)
    assert tracker.deliveries() == []


# --- app-reported resume ------------------------------------------------------------------------


def test_report_resumed_after_an_interruption_is_applied_as_app(tracker: Tracker) -> None:
    """A resume reported by the app after an interruption resumes the stream, source=app."""
    tracker.ingest(body("started", "s1", T0))
    tracker.ingest(body("interrupted", "s1", T0 + 100))

    result = tracker.report_resumed("s1", T0 + 400)

    assert result.outcome is Outcome.APPLIED
    t = result.transition
    assert t is not None
    assert (t.from_state, t.to_state, t.name, t.kind, t.source, t.event_ts) == (
        State.INTERRUPTED,
        State.RESUMED,
        TransitionName.RESUME,
        "resumed",
        Source.APP,
        T0 + 400,
    )
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.resumes, stream.last_event_at) == (State.RESUMED, 1, T0 + 400)
    (stored,) = tracker.deliveries(limit=1)
    assert (stored.source, stored.outcome, stored.stream_id) == (Source.APP, Outcome.APPLIED, "s1")
    # a retried report is a duplicate
    assert tracker.report_resumed("s1", T0 + 400).outcome is Outcome.DUPLICATE


def test_report_resumed_on_a_started_stream_is_ignored(tracker: Tracker) -> None:
    """A resume for a stream that was never interrupted is ignored: no transition, no count."""
    tracker.ingest(body("started", "s1", T0))

    result = tracker.report_resumed("s1", T0 + 100)

    assert result.outcome is Outcome.IGNORED
    assert result.transition is None
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.resumes, stream.last_event_at) == (State.STARTED, 0, T0)
    assert [t.name for t in tracker.audit("s1")] == [TransitionName.START]


def test_report_resumed_before_any_webhook_is_kept_for_the_fold(tracker: Tracker) -> None:
    """A resume for an unknown stream is ignored but kept: earlier webhooks fold it in later."""
    result = tracker.report_resumed("early", T0 + 300)

    # `new` + resumed is ignored, and an ignored event is kept (order independence)
    assert result.outcome is Outcome.IGNORED
    assert result.transition is None
    assert tracker.stream("early") is None
    assert tracker.streams() == []
    (stored,) = tracker.deliveries()
    assert (stored.id, stored.source, stored.outcome) == (
        result.delivery_id,
        Source.APP,
        Outcome.IGNORED,
    )

    tracker.ingest(body("started", "early", T0))
    late = tracker.ingest(body("interrupted", "early", T0 + 100))

    stream = tracker.stream("early")
    assert stream is not None
    assert (stream.state, stream.interruptions, stream.resumes) == (State.RESUMED, 1, 1)
    assert stream.last_event_at == T0 + 300
    assert late.transition is not None
    assert (late.transition.name, late.transition.to_state) == ("interrupt", State.RESUMED)


@pytest.mark.parametrize(
    ("stream_id", "at_ms", "field"),
    [("", T0, "rtms_stream_id"), ("s1", -5, "event_ts")],
)
def test_report_resumed_with_bad_arguments_is_rejected(
    tracker: Tracker, stream_id: str, at_ms: int, field: str
) -> None:
    """An empty stream id or a negative time is rejected and stored with the field named."""
    tracker.ingest(body("started", "s1", T0))
    tracker.ingest(body("interrupted", "s1", T0 + 100))

    result = tracker.report_resumed(stream_id, at_ms)

    assert result.outcome is Outcome.REJECTED
    (stored,) = tracker.deliveries(outcome="rejected")
    assert stored.source is Source.APP
    assert stored.error is not None
    assert field in [e["field"] for e in stored.error]
    stream = tracker.stream("s1")
    assert stream is not None
    assert stream.state is State.INTERRUPTED


# --- queries ------------------------------------------------------------------------------------


@pytest.fixture
def populated(tracker: Tracker) -> Tracker:
    """Streams of several scopes and states (times in minutes after T0; see comments)."""
    m = MINUTE
    tracker.ingest_many(
        [
            body("started", "m-started", T0 + 10 * m, scope_id="meet-A"),  # live 10-
            body("started", "m-int", T0 + 20 * m, scope_id="meet-B"),
            body("interrupted", "m-int", T0 + 25 * m, scope_id="meet-B"),  # live 20-
            body("started", "m-res", T0 + 30 * m, scope_id="meet-A"),
            body("interrupted", "m-res", T0 + 31 * m, scope_id="meet-A"),
            body("started", "m-res", T0 + 32 * m, scope_id="meet-A"),  # live 30-
            body("started", "w-live", T0 + 40 * m, scope=Scope.WEBINAR, scope_id="web-1"),
            body("started", "p-old", T0, scope=Scope.PHONE, scope_id="call-1"),
            body("stopped", "p-old", T0 + 5 * m, scope=Scope.PHONE, scope_id="call-1"),  # 0-5
            body("started", "m-done", T0 + 50 * m, scope_id="meet-C"),
            body("stopped", "m-done", T0 + 60 * m, scope_id="meet-C"),  # 50-60
        ]
    )
    return tracker


def test_stream_returns_the_stored_stream_or_none(populated: Tracker) -> None:
    """stream() answers one stream with the documented keys, and None for an unknown id."""
    stream = populated.stream("m-res")
    assert stream is not None
    assert (stream.scope, stream.scope_id, stream.state) == (Scope.MEETING, "meet-A", State.RESUMED)
    assert (stream.interruptions, stream.resumes, stream.failovers) == (1, 1, 0)
    assert (stream.started_at, stream.last_event_at) == (T0 + 30 * MINUTE, T0 + 32 * MINUTE)
    assert stream.active
    assert not stream.stopped
    assert (stream.stop_reason_name, stream.stop_reason_category) == (None, None)
    assert populated.stream("nope") is None


def test_stored_stream_ids_keeps_the_ids_stream_finds(populated: Tracker) -> None:
    """stored_stream_ids() answers which ids name a stream stream() finds: not the id of a
    rejected delivery, nor of a resume reported before any webhook; past one IN list too."""
    populated.ingest(body("stopped", "rejected-only", T0, stop_reason="six"))  # no number
    populated.report_resumed("early", T0)
    asked = ["m-res", "p-old", "rejected-only", "early", "nope", "m-res"]
    assert populated.stored_stream_ids(asked) == {"m-res", "p-old"}
    many = [f"absent-{i}" for i in range(1200)] + ["w-live"]
    assert populated.stored_stream_ids(iter(many)) == {"w-live"}
    assert populated.stored_stream_ids([]) == set()
    assert {i for i in asked if populated.stream(i)} == {"m-res", "p-old"}


@pytest.mark.parametrize(
    ("scope", "scope_id", "expected"),
    [
        (None, None, {"m-started", "m-res", "w-live"}),
        ("meeting", None, {"m-started", "m-res"}),
        (Scope.WEBINAR, None, {"w-live"}),
        ("meeting", "meet-A", {"m-started", "m-res"}),
        (None, "meet-B", set()),  # interrupted: live but not active
        ("phone", None, set()),  # stopped
    ],
)
def test_active_streams_filters(
    populated: Tracker, scope: str | None, scope_id: str | None, expected: set[str]
) -> None:
    """active_streams() answers started and resumed streams, narrowed by scope and scope id."""
    found = populated.active_streams(scope, scope_id)
    assert ids(found) == expected
    assert all(s.active for s in found)


# Filters of streams() and count_streams(), and the streams of `populated` they keep.
STREAM_FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({}, {"m-started", "m-int", "m-res", "w-live", "p-old", "m-done"}),
    ({"state": "interrupted"}, {"m-int"}),
    ({"state": ["started", State.RESUMED]}, {"m-started", "m-res", "w-live"}),
    ({"state": "stopped"}, {"p-old", "m-done"}),
    ({"state": ["stopped", "interrupted"]}, {"p-old", "m-done", "m-int"}),
    ({"scope": "phone"}, {"p-old"}),
    ({"scope": "meeting", "state": "started"}, {"m-started"}),
    ({"scope_id": "meet-A"}, {"m-started", "m-res"}),
    # alive at some time in [since, until): began before until, not stopped before since
    ({"since": T0 + 6 * MINUTE}, {"m-started", "m-int", "m-res", "w-live", "m-done"}),
    ({"until": T0 + 15 * MINUTE}, {"m-started", "p-old"}),
    ({"since": T0 + 6 * MINUTE, "until": T0 + 35 * MINUTE}, {"m-started", "m-int", "m-res"}),
    ({"since": T0 + 61 * MINUTE, "state": "stopped"}, set()),
    (
        {
            "since": datetime.fromtimestamp((T0 + 55 * MINUTE) / 1000, UTC),
            "until": datetime.fromtimestamp((T0 + 58 * MINUTE) / 1000, UTC),
        },
        {"m-started", "m-int", "m-res", "w-live", "m-done"},
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), STREAM_FILTERS)
def test_streams_filters(populated: Tracker, kwargs: dict[str, Any], expected: set[str]) -> None:
    """streams() narrows by states, scope, scope id and the [since, until) window of activity."""
    assert ids(populated.streams(**kwargs)) == expected


@pytest.mark.parametrize(("kwargs", "expected"), STREAM_FILTERS)
def test_count_streams_counts_what_streams_lists(
    populated: Tracker, kwargs: dict[str, Any], expected: set[str]
) -> None:
    """count_streams() counts, in the database, the streams streams() lists with those filters."""
    assert populated.count_streams(**kwargs) == len(expected)


def test_streams_newest_activity_first_and_limit(populated: Tracker) -> None:
    """streams() orders by latest event, newest first; limit keeps the newest."""
    everything = populated.streams()
    expected_order = ["m-done", "w-live", "m-res", "m-int", "m-started", "p-old"]
    assert [s.stream_id for s in everything] == expected_order
    assert [s.stream_id for s in populated.streams(limit=2)] == expected_order[:2]
    assert [s.stream_id for s in populated.streams("stopped", limit=1)] == ["m-done"]


def test_streams_window_counts_a_stream_from_its_first_event(tracker: Tracker) -> None:
    """A stream whose started never arrived began at its first event (here an interruption)."""
    tracker.ingest(body("interrupted", "no-start", T0 + 10 * MINUTE))
    tracker.ingest(body("stopped", "no-start", T0 + 50 * MINUTE))

    assert ids(tracker.streams(since=T0 + 20 * MINUTE, until=T0 + 30 * MINUTE)) == {"no-start"}
    assert ids(tracker.streams(until=T0 + 5 * MINUTE)) == set()
    began_early = tracker.interruption_stats(since=T0, until=T0 + 30 * MINUTE)
    assert (began_early.streams, began_early.interrupted_streams) == (1, 1)
    assert began_early.stopped_while_interrupted == 1


def test_history_is_event_order_and_audit_is_recorded_order(tracker: Tracker) -> None:
    """For events arriving out of order, history() sorts by event time, audit() by arrival."""
    arrivals = [
        body("stopped", "s1", T0 + 300),
        body("started", "s1", T0),
        body("started", "s1", T0 + 200),  # a failover, until the interruption arrives
        body("interrupted", "s1", T0 + 100),
    ]
    for delivery in arrivals:
        assert tracker.ingest(delivery).outcome is Outcome.APPLIED

    history = tracker.history("s1")
    audit = tracker.audit("s1")

    assert [(t.event_ts, t.kind) for t in history] == [
        (T0, "started"),
        (T0 + 100, "interrupted"),
        (T0 + 200, "started"),
        (T0 + 300, "stopped"),
    ]
    assert [(t.event_ts, t.kind) for t in audit] == [
        (d["event_ts"], d["event"].removeprefix("meeting.rtms_")) for d in arrivals
    ]
    assert [t.id for t in audit] == sorted(t.id for t in audit)
    assert sorted(history, key=lambda t: t.id) == audit
    # as stored when each arrived: the stop came first, everything after it was late
    assert [(t.from_state, t.to_state, t.name, t.late) for t in audit] == [
        ("new", "stopped", "stop", False),
        ("stopped", "stopped", "start", True),
        ("stopped", "stopped", "failover", True),
        ("stopped", "stopped", "interrupt", True),
    ]
    stream = tracker.stream("s1")
    assert stream is not None
    # the fold of all four: start, interrupt, resume (started while interrupted), stop
    assert (stream.state, stream.started_at, stream.stopped_at) == (State.STOPPED, T0, T0 + 300)
    assert (stream.interruptions, stream.resumes, stream.failovers) == (1, 1, 0)


def test_history_breaks_event_time_ties_by_kind(tracker: Tracker) -> None:
    """Events at one instant are ordered started, interrupted, resumed, stopped."""
    tracker.ingest(body("stopped", "s1", T0))
    tracker.ingest(body("interrupted", "s1", T0))
    tracker.ingest(body("started", "s1", T0))

    assert [t.name for t in tracker.history("s1")] == ["start", "interrupt", "stop"]
    assert [t.name for t in tracker.audit("s1")] == ["stop", "interrupt", "start"]


# --- callbacks ----------------------------------------------------------------------------------


def test_callback_runs_after_commit(db_url: str, tracker: Tracker) -> None:
    """Inside the callback another Tracker on the database already sees the transition."""
    other = Tracker(db_url)
    seen: list[tuple[Stream | None, list[int]]] = []

    @tracker.on_transition
    def look(transition: Transition, stream: Stream) -> None:
        seen.append((other.stream(stream.stream_id), [t.id for t in other.audit("s1")]))

    try:
        result = tracker.ingest(body("started", "s1", T0))
        tracker.ingest(body("stopped", "s1", T0 + 10))
    finally:
        other.close()
    assert result.transition is not None
    first_seen, first_ids = seen[0]
    assert first_seen is not None
    assert first_seen.state is State.STARTED
    assert first_ids == [result.transition.id]
    assert seen[1][0] is not None
    assert seen[1][0].state is State.STOPPED


def test_callback_once_per_applied_transition_on_every_write_path(tracker: Tracker) -> None:
    """Callbacks fire once per applied transition on every write path, and for nothing else."""
    calls: list[tuple[Transition, Stream]] = []
    tracker.on_transition(lambda t, s: calls.append((t, s)))
    now = now_ms()

    results = [tracker.ingest(d) for d, _ in workload(2)]
    tracker.ingest_many((d for d, _ in lifecycle("bulk", T0 + 9 * HOUR)), batch_size=4)
    tracker.ingest(body("started", "app", now - 3 * HOUR))
    tracker.ingest(body("interrupted", "app", now - 2 * HOUR))
    tracker.report_resumed("app", now - 2 * HOUR + 5)
    tracker.report_resumed("app", now - 2 * HOUR + 5)  # duplicate
    tracker.report_resumed("app", now - 2 * HOUR + 9)  # ignored: already resumed
    expired = tracker.expire(timedelta(hours=1))

    assert ids(expired) == {"app"}
    stored = all_transitions(tracker)
    # 3 lifecycles, plus start, interrupt, resume and expiry of "app"
    assert len(stored) == 3 * LIFECYCLE_TRANSITIONS + 4
    assert [t for t, _ in calls] == stored
    from_results = [r.transition for r in results if r.transition]
    assert [t for t, _ in calls[: len(from_results)]] == from_results
    for transition, stream in calls:
        assert stream.stream_id == transition.stream_id
        assert stream.state is transition.to_state
    assert [t.source for t, _ in calls[-2:]] == [Source.APP, Source.SYSTEM]


@pytest.mark.parametrize(
    ("filters", "wanted"),
    [
        ({"to": "stopped"}, lambda t, s: t.to_state == "stopped"),
        (
            {"to": ["interrupted", State.RESUMED]},
            lambda t, s: t.to_state in {"interrupted", "resumed"},
        ),
        ({"name": "failover"}, lambda t, s: t.name == "failover"),
        ({"name": [TransitionName.START, "stop"]}, lambda t, s: t.name in {"start", "stop"}),
        ({"scope": "webinar"}, lambda t, s: s.scope == "webinar"),
        ({"scope": ["phone", Scope.WEBINAR]}, lambda t, s: s.scope in {"webinar", "phone"}),
        (
            {"to": "started", "name": "failover", "scope": "meeting"},
            lambda t, s: (t.to_state, t.name, s.scope) == ("started", "failover", "meeting"),
        ),
    ],
)
def test_callback_filters(
    tracker: Tracker,
    filters: dict[str, Any],
    wanted: Callable[[Transition, Stream], bool],
) -> None:
    """to=, name= and scope= narrow a callback to matching transitions, and all must match."""
    everything: list[Transition] = []
    filtered: list[Transition] = []
    tracker.on_transition(lambda t, s: everything.append(t))
    tracker.on_transition(lambda t, s: filtered.append(t), **filters)
    scopes = {"m": Scope.MEETING, "w": Scope.WEBINAR, "p": Scope.PHONE}
    streams: dict[str, Stream] = {}
    for prefix, scope in scopes.items():
        sid = f"{prefix}1"
        for offset, kind in enumerate(["started", "started", "interrupted", "started", "stopped"]):
            tracker.ingest(body(kind, sid, T0 + offset, scope=scope, scope_id=sid))
        stream = tracker.stream(sid)
        assert stream is not None
        streams[sid] = stream

    expected = [t for t in everything if wanted(t, streams[t.stream_id])]
    assert len(everything) == 15
    assert expected  # the scenario exercises the filter
    assert filtered == expected


def test_callback_decorator_with_and_without_arguments(tracker: Tracker) -> None:
    """on_transition decorates a function as is, or with filters, and returns it unchanged."""
    plain: list[str] = []
    stops: list[str] = []

    @tracker.on_transition
    def every(transition: Transition, stream: Stream) -> None:
        plain.append(transition.name)

    @tracker.on_transition(to="stopped")
    def on_stop(transition: Transition, stream: Stream) -> None:
        stops.append(stream.stream_id)

    tracker.ingest(body("started", "s1", T0))
    tracker.ingest(body("stopped", "s1", T0 + 1))

    assert callable(every)
    assert every.__name__ == "every"
    assert callable(on_stop)
    assert on_stop.__name__ == "on_stop"
    assert plain == ["start", "stop"]
    assert stops == ["s1"]


def test_raising_callback_is_logged_and_blocks_nothing(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is logged; the transition stays and later callbacks still run."""
    after: list[int] = []

    def broken(transition: Transition, stream: Stream) -> None:
        raise RuntimeError("callback bug")

    tracker.on_transition(broken)
    tracker.on_transition(lambda t, s: after.append(t.id))

    with caplog.at_level(logging.ERROR):
        result = tracker.ingest(body("started", "s-boom", T0))

    assert result.outcome is Outcome.APPLIED
    assert result.transition is not None
    assert after == [result.transition.id]
    stream = tracker.stream("s-boom")
    assert stream is not None
    assert stream.state is State.STARTED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert "s-boom" in errors[0].getMessage()
    # the next delivery is recorded and notified as usual
    assert tracker.ingest(body("stopped", "s-boom", T0 + 1)).outcome is Outcome.APPLIED
    assert len(after) == 2


def test_callbacks_under_concurrent_ingest_fire_once_per_transition(db_url: str) -> None:
    """Threads racing the same deliveries into one Tracker: each transition notifies once."""
    threads, streams = 6, 12
    kinds = ["started", "interrupted", "started", "stopped"]
    deliveries = [
        body(kind, f"s{i}", T0 + step * 100, scope_id=f"m{i}")
        for i in range(streams)
        for step, kind in enumerate(kinds)
    ]
    calls: list[int] = []
    lock = threading.Lock()
    results: list[IngestResult] = []
    failures: list[BaseException] = []

    with Tracker(db_url) as tracker:

        @tracker.on_transition
        def count(transition: Transition, stream: Stream) -> None:
            with lock:
                calls.append(transition.id)

        barrier = threading.Barrier(threads)

        def work(seed: int) -> None:
            order = deliveries[:]
            random.Random(seed).shuffle(order)
            barrier.wait()
            try:
                mine = [tracker.ingest(d) for d in order]
            except BaseException as exc:  # reported below, in the test's thread
                failures.append(exc)
                return
            with lock:
                results.extend(mine)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)

        assert failures == []
        with tracker.engine.connect() as conn:
            stored = sorted(conn.execute(text("SELECT id FROM transitions")).scalars())
        final = tracker.streams()

    # whatever the arrival order, each of the 4 events of a stream is applied once
    assert len(stored) == streams * len(kinds)
    assert sorted(calls) == stored
    assert Counter(r.outcome for r in results) == {
        Outcome.APPLIED: streams * len(kinds),
        Outcome.DUPLICATE: (threads - 1) * streams * len(kinds),
    }
    assert all(s.state is State.STOPPED and s.resumes == 1 for s in final)


# --- statistics ---------------------------------------------------------------------------------


@pytest.fixture
def stopped_streams(tracker: Tracker) -> list[tuple[str, Scope, int, int, int | None]]:
    """Stopped streams ``(id, scope, started_at, stopped_at, stop_reason)``, one of them expired."""
    base = now_ms() - 10 * HOUR
    scenario: list[tuple[str, Scope, int, int, int | None]] = [
        ("m1", Scope.MEETING, base, base + 60_000, 1),
        ("m2", Scope.MEETING, base, base + 120_000, 1),
        ("m3", Scope.MEETING, base + 1_000, base + 301_000, 1),
        ("w1", Scope.WEBINAR, base, base + 50_000, 1),
        ("w2", Scope.WEBINAR, base, base + 10_000, 10),
        ("p1", Scope.PHONE, base, base + 40_000, 99),
        ("p2", Scope.PHONE, base, base + 80_000, 99),
    ]
    for sid, scope, start, stop, reason in scenario:
        tracker.ingest(body("started", sid, start, scope=scope, scope_id=sid))
        tracker.ingest(body("stopped", sid, stop, scope=scope, scope_id=sid, stop_reason=reason))
    tracker.ingest(body("started", "x1", base, scope_id="x1"))
    tracker.ingest(body("started", "live", now_ms() - 5 * MINUTE, scope_id="live"))
    (expired,) = tracker.expire(timedelta(hours=1))
    assert expired.stream_id == "x1"
    assert expired.stopped_at is not None
    scenario.append(("x1", Scope.MEETING, base, expired.stopped_at, None))
    return scenario


def expected_stats(
    scenario: list[tuple[str, Scope, int, int, int | None]],
    since: int | None,
    until: int | None,
    by_scope: bool,
) -> dict[tuple[str | None, int | None], tuple[str, str, int, float, int]]:
    """(scope, reason) -> (name, category, count, share, median duration), from the scenario."""
    kept = [
        row
        for row in scenario
        if (since is None or row[3] >= since) and (until is None or row[3] < until)
    ]
    groups: dict[tuple[str | None, int | None], list[int]] = {}
    for _, stream_scope, start, stop, reason in kept:
        key = (stream_scope.value if by_scope else None, reason)
        groups.setdefault(key, []).append(stop - start)
    totals: Counter[str | None] = Counter()
    for (scope, _), durations in groups.items():
        totals[scope] += len(durations)
    return {
        (scope, reason): (
            *REASONS[reason],
            len(durations),
            len(durations) / totals[scope],
            int(statistics.median(durations)),
        )
        for (scope, reason), durations in groups.items()
    }


@pytest.mark.parametrize(
    ("window", "by_scope"),
    [
        pytest.param(None, False, id="all"),
        pytest.param(None, True, id="by-scope"),
        pytest.param((55_000, 130_000), False, id="window"),
        # since inclusive (m1 stopped at 60_000), until exclusive (m2 stopped at 120_000)
        pytest.param((60_000, 120_000), False, id="window-edges"),
        pytest.param((45_000, 9 * HOUR), True, id="window-by-scope"),
    ],
)
def test_stop_reason_stats(
    tracker: Tracker,
    stopped_streams: list[tuple[str, Scope, int, int, int | None]],
    window: tuple[int, int] | None,
    by_scope: bool,
) -> None:
    """Per reason (and scope): name, category, count, share and median duration of the window."""
    base = stopped_streams[0][2]
    since, until = (base + window[0], base + window[1]) if window else (None, None)

    stats = tracker.stop_reason_stats(since=since, until=until, by_scope=by_scope)

    got: dict[tuple[str | None, int | None], tuple[Any, ...]] = {
        (s.scope.value if s.scope else None, s.stop_reason): (
            s.stop_reason_name,
            s.stop_reason_category.value,
            s.count,
            pytest.approx(s.share, abs=1e-6),
            s.median_duration_ms,
        )
        for s in stats
    }
    assert len(got) == len(stats)
    assert got == expected_stats(stopped_streams, since, until, by_scope)


def test_stop_reason_stats_accepts_datetimes(
    tracker: Tracker, stopped_streams: list[tuple[str, Scope, int, int, int | None]]
) -> None:
    """since/until given as datetimes select the same window as epoch milliseconds."""
    base = stopped_streams[0][2]
    since, until = base + 55_000, base + 130_000

    as_datetimes = tracker.stop_reason_stats(
        since=datetime.fromtimestamp(since / 1000, UTC),
        until=datetime.fromtimestamp(until / 1000, UTC),
    )

    assert as_datetimes == tracker.stop_reason_stats(since=since, until=until)
    assert sum(s.count for s in as_datetimes) == 3  # m1, m2, p2


# Interruptions per stream, each event (kind, offset ms); "resumed" is reported by the app.
INTERRUPTION_SCENARIO: dict[str, tuple[Scope, list[tuple[str, int]]]] = {
    # recovered by the app after 300
    "A": (
        Scope.MEETING,
        [("started", 0), ("interrupted", 100), ("resumed", 400), ("stopped", 1000)],
    ),
    # recovered by Zoom's started after 500, then interrupted again and stopped while down
    "B": (
        Scope.MEETING,
        [
            ("started", 0),
            ("interrupted", 100),
            ("started", 600),
            ("interrupted", 800),
            ("stopped", 1000),
        ],
    ),
    # stopped while interrupted
    "C": (Scope.MEETING, [("started", 0), ("interrupted", 100), ("stopped", 500)]),
    # never interrupted
    "D": (Scope.MEETING, [("started", 0), ("stopped", 100)]),
    # live, recovered by the app after 150
    "E": (Scope.MEETING, [("started", 0), ("interrupted", 100), ("resumed", 250)]),
    # a webinar stopped while interrupted
    "W": (Scope.WEBINAR, [("started", 0), ("interrupted", 100), ("stopped", 200)]),
}


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        # interrupted: A B C E W; interruptions 1+2+1+1+1; recovered A(300) B(500) E(150);
        # stopped while interrupted: B C W
        (None, {"streams": 6, "interrupted_streams": 5, "interruptions": 6, "recovered": 3,
                "median_recovery_ms": 300, "stopped_while_interrupted": 3}),
        (Scope.MEETING, {"streams": 5, "interrupted_streams": 4, "interruptions": 5,
                         "recovered": 3, "median_recovery_ms": 300,
                         "stopped_while_interrupted": 2}),
        ("webinar", {"streams": 1, "interrupted_streams": 1, "interruptions": 1, "recovered": 0,
                     "median_recovery_ms": None, "stopped_while_interrupted": 1}),
    ],
)  # fmt: skip
@pytest.mark.parametrize("arrival", ["in-order", "reversed"])
def test_interruption_stats(
    tracker: Tracker, arrival: str, scope: Scope | None, expected: dict[str, Any]
) -> None:
    """Interrupted streams, interruptions, recoveries and their median, stops while interrupted."""
    for n, (sid, (stream_scope, events)) in enumerate(INTERRUPTION_SCENARIO.items()):
        base = T0 + n * HOUR
        webhooks = [(k, o) for k, o in events if k != "resumed"]
        for kind, offset in webhooks if arrival == "in-order" else webhooks[::-1]:
            tracker.ingest(body(kind, sid, base + offset, scope=stream_scope, scope_id=sid))
        for kind, offset in events:
            if kind == "resumed":
                assert tracker.report_resumed(sid, base + offset).outcome is Outcome.APPLIED

    stats = tracker.interruption_stats(scope=scope)

    assert stats.as_dict() == expected


def test_interruption_stats_window_keeps_streams_that_began_in_it(tracker: Tracker) -> None:
    """since/until select streams by when they began, in [since, until)."""
    for n in range(3):  # streams beginning at T0, T0+1h, T0+2h; each interrupted once
        tracker.ingest(body("started", f"s{n}", T0 + n * HOUR))
        tracker.ingest(body("interrupted", f"s{n}", T0 + n * HOUR + 10))

    stats = tracker.interruption_stats(since=T0 + HOUR, until=T0 + 2 * HOUR)

    assert (stats.streams, stats.interrupted_streams, stats.interruptions) == (1, 1, 1)
    assert (stats.recovered, stats.median_recovery_ms) == (0, None)


# --- concurrency alerts -------------------------------------------------------------------------


@pytest.mark.parametrize("bulk", [False, True], ids=["one-by-one", "one-batch"])
def test_concurrency_alerts_and_latest_alert(tracker: Tracker, bulk: bool) -> None:
    """Alerts are stored once even when retried, listed newest first; latest_alert is the newest."""
    assert tracker.latest_alert() is None
    near = near_limit(T0 + 1000)
    retried = [near, limited(T0 + 2000, "m-9"), near]  # Zoom retried the first
    if bulk:
        assert tracker.ingest_many(retried).as_dict()["applied"] == 3
    else:
        for delivery in retried:
            assert tracker.ingest(json.dumps(delivery).encode()).outcome is Outcome.APPLIED

    alerts = tracker.concurrency_alerts()

    assert [a.event for a in alerts] == ["rtms.concurrency_limited", "rtms.concurrency_near_limit"]
    latest = tracker.latest_alert()
    assert latest is not None
    assert latest == alerts[0]
    assert (latest.event_ts, latest.concurrency_number, latest.operator_id) == (
        T0 + 2000,
        10,
        "op-1",
    )
    assert (latest.id_field, latest.id_value) == ("meeting_uuid", "m-9")
    assert (alerts[1].concurrency_limit, alerts[1].concurrency_number, alerts[1].percentage) == (
        10,
        9,
        90,
    )
    assert [a.event_ts for a in tracker.concurrency_alerts(since=T0 + 1500)] == [T0 + 2000]
    assert len(tracker.deliveries()) == 3  # every delivery is still recorded
    assert tracker.streams() == []


# --- expiry -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stale_after", [timedelta(hours=1), 3600.0], ids=["timedelta", "seconds"])
def test_expire_closes_only_stale_live_streams(tracker: Tracker, stale_after: Any) -> None:
    """expire() stops live streams idle longer than stale_after, as source=system without reason,
    dated when it runs."""
    now = now_ms()
    tracker.ingest_many(
        [
            body("started", "stale-started", now - 3 * HOUR),
            body("started", "stale-int", now - 4 * HOUR),
            body("interrupted", "stale-int", now - 2 * HOUR),
            body("started", "stale-res", now - 5 * HOUR),
            body("interrupted", "stale-res", now - 5 * HOUR + 1),
            body("started", "stale-res", now - 5 * HOUR + 2),
            body("started", "fresh", now - 3 * HOUR),
            body("interrupted", "fresh", now - 10 * MINUTE),  # its last event is recent
            body("started", "done", now - 6 * HOUR),
            body("stopped", "done", now - 5 * HOUR, stop_reason=6),
        ]
    )

    before = now_ms()
    closed = tracker.expire(stale_after)
    after = now_ms()

    assert ids(closed) == {"stale-started", "stale-int", "stale-res"}
    for stream in closed:
        assert stream == tracker.stream(stream.stream_id)
        assert stream.state is State.STOPPED
        assert stream.stop_reason is None
        assert (stream.stop_reason_name, stream.stop_reason_category) == ("EXPIRED", "expired")
        assert stream.stopped_at is not None
        assert before <= stream.stopped_at <= after
        last = tracker.audit(stream.stream_id)[-1]
        assert (last.name, last.kind, last.source, last.to_state) == (
            "stop",
            "stopped",
            "system",
            "stopped",
        )
    fresh, done = tracker.stream("fresh"), tracker.stream("done")
    assert fresh is not None
    assert fresh.state is State.INTERRUPTED
    assert done is not None
    assert (done.stop_reason, done.stopped_at) == (6, now - 5 * HOUR)
    assert ids(tracker.active_streams()) == set()
    assert tracker.expire(stale_after) == []  # nothing left to expire


def test_real_stop_arriving_after_expiry_replaces_it(tracker: Tracker) -> None:
    """A late real stopped (older event_ts) wins over the expiry, which is kept but ignored.

    The real stop is dated after the stream went stale (its start plus an hour) but before the
    expiry ran: Zoom's retries of a stop come up to 85 minutes late.
    """
    now = now_ms()
    tracker.ingest(body("started", "s1", now - 3 * HOUR))
    (expired,) = tracker.expire(timedelta(hours=1))
    assert expired.stop_reason_name == "EXPIRED"

    stopped_at = now - 30 * MINUTE
    result = tracker.ingest(body("stopped", "s1", stopped_at, stop_reason=6))

    assert result.outcome is Outcome.APPLIED
    assert result.transition is not None
    assert (result.transition.name, result.transition.late) == ("stop", True)
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.stop_reason, stream.stopped_at) == (State.STOPPED, 6, stopped_at)
    assert (stream.stop_reason_name, stream.stop_reason_category) == ("MEETING_ENDED", "normal")
    assert stream.last_event_at == stopped_at
    assert [t.source for t in tracker.audit("s1")] == ["webhook", "system", "webhook"]
    assert [d.source for d in tracker.deliveries(stream_id="s1")] == [
        "webhook",
        "system",
        "webhook",
    ]
    stats = tracker.stop_reason_stats()
    assert [(s.stop_reason, s.count) for s in stats] == [(6, 1)]
    assert tracker.expire(timedelta(hours=1)) == []


# --- deliveries ---------------------------------------------------------------------------------


def test_deliveries_filters_newest_first(tracker: Tracker) -> None:
    """deliveries() lists newest first, narrowed by outcome(s), stream and limit."""
    items = workload(2)
    for delivery, _ in items:
        tracker.ingest(delivery)

    everything = tracker.deliveries(limit=None)

    assert [d.id for d in everything] == sorted((d.id for d in everything), reverse=True)
    assert [json.loads(d.raw) for d in everything] == [d for d, _ in reversed(items)]
    assert tracker.deliveries(limit=3) == everything[:3]
    for outcome in Outcome:
        wanted = [d for d in everything if d.outcome is outcome]
        assert len(wanted) == sum(o is outcome for _, o in items)
        assert tracker.deliveries(outcome=outcome, limit=None) == wanted
    pair = tracker.deliveries(outcome=["duplicate", Outcome.IGNORED], limit=None)
    assert Counter(d.outcome for d in pair) == {Outcome.DUPLICATE: 2, Outcome.IGNORED: 2}
    s0 = tracker.deliveries(stream_id="s0", limit=None)
    s0_events = [d for d, _ in items if d["payload"].get("rtms_stream_id") == "s0"]
    assert [json.loads(d.raw) for d in s0] == s0_events[::-1]
    assert all(d.stream_id == "s0" for d in s0)
    conflicts = tracker.deliveries("conflict", stream_id="s1")
    assert [d.detail is not None for d in conflicts] == [True, True]
    assert [d.outcome for d in tracker.deliveries(stream_id="s1", limit=1)] == [Outcome.CONFLICT]
    assert all((d.error is None) is (d.outcome is not Outcome.REJECTED) for d in everything)


def test_deliveries_of_unknown_filters_are_empty(tracker: Tracker) -> None:
    """Filters that match nothing answer an empty list, not everything."""
    tracker.ingest(body("started", "s1", T0))
    assert tracker.deliveries(stream_id="other") == []
    assert tracker.deliveries(outcome="conflict") == []
    assert len(tracker.deliveries(outcome=Outcome.APPLIED)) == 1


def test_rejected_body_is_found_by_the_stream_it_names(tracker: Tracker) -> None:
    """A rejected body that names a stream is listed among that stream's deliveries."""
    bad = body("stopped", "named-stream", T0 + 10, stop_reason="HOST_TRIGGERED")
    assert tracker.ingest(bad).outcome is Outcome.REJECTED
    (stored,) = tracker.deliveries(stream_id="named-stream")
    assert stored.outcome is Outcome.REJECTED


def _with(base: dict[str, Any], /, **fields: Any) -> bytes:
    return json.dumps({**base, **fields}).encode()


STOP = body("stopped", "s1", T0 + 10)
NUL_ID = {**STOP, "payload": {**STOP["payload"], "rtms_stream_id": "s\x001"}}


@pytest.mark.parametrize(
    ("raw", "event_ts", "stream_id"),
    [
        pytest.param(_with(NUL_ID), T0 + 10, None, id="nul-in-stream-id"),
        pytest.param(_with(NUL_ID, event_ts=str(T0 + 10)), T0 + 10, None, id="ts-as-digits"),
        pytest.param(
            _with(STOP, payload={**STOP["payload"], "stop_reason": "HOST"}),
            T0 + 10,
            "s1",
            id="bad-stop-reason",
        ),
        pytest.param(_with(NUL_ID, event_ts="soon"), None, None, id="bad-ts-too"),
        pytest.param(
            _with({k: v for k, v in NUL_ID.items() if k != "event_ts"}), None, None, id="no-ts"
        ),
        pytest.param(_with(NUL_ID, event_ts=-5), None, None, id="ts-before-1970"),
        pytest.param(_with(NUL_ID, event_ts=now_ms() + 2 * 86_400_000), None, None, id="ts-ahead"),
    ],
)
def test_a_rejected_body_keeps_its_valid_event_time(
    tracker: Tracker, raw: bytes, event_ts: int | None, stream_id: str | None
) -> None:
    """Rejected for another field, a body is stored with its event and event time; an event
    time missing, malformed or out of bounds stays empty."""
    assert tracker.ingest(raw).outcome is Outcome.REJECTED
    (stored,) = tracker.deliveries(outcome="rejected")
    assert (stored.event, stored.event_ts, stored.stream_id) == (
        "meeting.rtms_stopped",
        event_ts,
        stream_id,
    )
    assert stored.raw == raw


def test_a_rejected_app_report_keeps_its_valid_event_time(tracker: Tracker) -> None:
    """report_resumed with a bad stream id keeps its time; with a bad time, none."""
    at = now_ms() - 1000
    assert tracker.report_resumed("", at).outcome is Outcome.REJECTED
    assert tracker.report_resumed("s1", -5).outcome is Outcome.REJECTED
    stored = sorted(tracker.deliveries(outcome="rejected"), key=lambda d: d.id)
    assert [(d.event, d.event_ts) for d in stored] == [
        ("app.rtms_resumed", at),
        ("app.rtms_resumed", None),
    ]


SECRET = "whsec-test"


def test_ingest_with_headers_verifies_the_signature(db_url: str) -> None:
    """With webhook secrets, ingest(headers=...) records a genuine delivery."""
    raw = json.dumps(body("started", "signed", T0 + 10)).encode()
    with Tracker(db_url, webhook_secrets=["old-secret", SECRET]) as tracker:
        assert tracker.ingest(raw, headers=signed(raw, SECRET)).outcome is Outcome.APPLIED


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda raw: signed(raw, "forged"), id="forged"),
        pytest.param(lambda raw: signed(raw + b" ", SECRET), id="tampered"),
        pytest.param(lambda raw: signed(raw, SECRET, ts=int(time.time()) - 3600), id="stale"),
        pytest.param(lambda raw: {}, id="unsigned"),
    ],
)
def test_ingest_with_bad_headers_is_refused_and_stores_nothing(
    db_url: str, headers: Callable[[bytes], dict[str, str]]
) -> None:
    """A refused request raises WebhookRefused and leaves the store untouched."""
    raw = json.dumps(body("started", "signed", T0 + 10)).encode()
    with Tracker(db_url, webhook_secrets=[SECRET]) as tracker:
        with pytest.raises(WebhookRefused):
            tracker.ingest(raw, headers=headers(raw))
        assert tracker.deliveries() == []


def test_ingest_with_headers_needs_secrets(tracker: Tracker) -> None:
    """Asking for verification without secrets is a configuration error, not a silent skip."""
    raw = json.dumps(body("started", "signed", T0 + 10)).encode()
    with pytest.raises(ConfigurationError, match="webhook_secrets"):
        tracker.ingest(raw, headers=signed(raw, SECRET))
    assert tracker.deliveries() == []
