"""The batch decisions, in memory: a fake write transaction stands in for the database."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import count

from rtms_lifecycle import EventKind, Outcome, Scope, State
from rtms_lifecycle.events import Source, StreamEvent
from rtms_lifecycle.machine import StreamState, fold
from rtms_lifecycle.parsing import parse_delivery
from rtms_lifecycle.records import IngestResult
from rtms_lifecycle.store.batch import (
    Batch,
    Incoming,
    UnscopedEvent,
    synthetic_delivery,
    to_incoming,
)
from rtms_lifecycle.store.rows import Row, event_from_delivery, state_row
from rtms_lifecycle.store.writers import Loaded, Writes

from ._deliveries import raw

NOW = 1_700_000_000_000


class FakeTx:
    """A write transaction over plain dicts; it keeps what the batch read and decided to write."""

    def __init__(self, *stored: bytes) -> None:
        # Stored events as the deliveries table holds them (``EVENT_COLUMNS``), ids from 1.
        self.stored: dict[int, Row] = {}
        self.reads: list[tuple[str, object]] = []
        self.written: Writes | None = None
        for delivery_id, body in enumerate(stored, 1):
            ev = parse_delivery(body)
            assert isinstance(ev, StreamEvent)
            self.stored[delivery_id] = (
                delivery_id,
                ev.stream_id,
                ev.source.value,
                ev.event,
                ev.kind.value,
                ev.event_ts,
                body,
            )
        self.states: dict[str, StreamState] = {}
        for sid in {row[1] for row in self.stored.values()}:
            self.states[sid], _ = fold(sid, [event_from_delivery(r) for r in self.events(sid)])
        self.reads.clear()

    def load(
        self,
        stream_ids: Sequence[str],
        identities: Sequence[Row],
        deliveries: int,
        transitions: int,
        now: int,
    ) -> Loaded:
        ids = {(row[1], row[4], row[5]): row[0] for row in self.stored.values()}
        return Loaded(
            [state_row(self.states[sid]) for sid in stream_ids if sid in self.states],
            [(*identity, ids[identity]) for identity in identities if identity in ids],
            count(len(self.stored) + 1),
            count(1),
        )

    def events(self, stream_id: str) -> list[Row]:
        self.reads.append(("events", stream_id))
        return [row for row in self.stored.values() if row[1] == stream_id]

    def event(self, delivery_id: int) -> Row:
        self.reads.append(("event", delivery_id))
        return self.stored[delivery_id]

    def write(self, writes: Writes) -> None:
        self.written = writes

    @property
    def writes(self) -> Writes:
        """What the batch handed to ``write``."""
        assert self.written is not None, "the batch wrote nothing"
        return self.written


def run(tx: FakeTx, *items: Incoming, with_records: bool = True) -> list[IngestResult | None]:
    """The batch's results for ``items``, decided against ``tx``."""
    return Batch(tx, NOW, with_records).run(items).results()


def one(tx: FakeTx, item: Incoming, *, with_records: bool = True) -> IngestResult:
    """The result of a batch of one delivery that records something."""
    (result,) = run(tx, item, with_records=with_records)
    assert result is not None
    return result


def test_first_event_inserts_its_stream_and_one_transition() -> None:
    """A new stream's first event inserts the stream's row, its delivery and one transition."""
    tx = FakeTx()
    result = one(tx, to_incoming(raw(EventKind.STARTED, "s1", 1000)))
    assert result.outcome is Outcome.APPLIED
    assert result.stream is not None
    assert result.stream.state is State.STARTED
    assert [row[0] for row in tx.writes.new_streams] == ["s1"]
    assert (len(tx.writes.deliveries), len(tx.writes.transitions)) == (1, 1)
    assert tx.writes.changed_streams == []


def test_copy_in_the_same_batch_references_the_first_delivery() -> None:
    """A byte-identical copy in the same batch is a duplicate that keeps no bytes: it references."""
    tx = FakeTx()
    body = raw(EventKind.STARTED, "s1", 1000)
    first, copy = run(tx, to_incoming(body), to_incoming(body))
    assert first is not None
    assert copy is not None
    assert copy.outcome is Outcome.DUPLICATE
    *_, copy_raw, _, _, same_as, _ = tx.writes.deliveries[1]
    assert (copy_raw, same_as) == (b"", first.delivery_id)
    assert tx.reads == []


def test_copy_of_a_stored_event_reads_it_once_and_marks_its_stream() -> None:
    """A copy of a stored event reads the first delivery once; its stream must still exist."""
    body = raw(EventKind.STARTED, "s1", 1000)
    tx = FakeTx(body)
    results = run(tx, to_incoming(body), to_incoming(body))
    assert [r.outcome for r in results if r] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert tx.reads == [("event", 1)]
    assert tx.writes.referenced == {"s1"}


def test_same_identity_with_another_payload_is_a_conflict() -> None:
    """An event with a stored event's identity but another payload conflicts; the stream stays."""
    tx = FakeTx(raw(EventKind.STARTED, "s1", 1000, server_urls="wss://a"))
    result = one(tx, to_incoming(raw(EventKind.STARTED, "s1", 1000, server_urls="wss://b")))
    assert result.outcome is Outcome.CONFLICT
    assert (tx.writes.transitions, tx.writes.changed_streams) == ([], [])


def test_event_for_another_scope_is_a_conflict() -> None:
    """An event naming another scope than the stream's conflicts, and changes nothing."""
    tx = FakeTx(raw(EventKind.STARTED, "s1", 1000))
    result = one(tx, to_incoming(raw(EventKind.STOPPED, "s1", 2000, scope=Scope.WEBINAR)))
    assert result.outcome is Outcome.CONFLICT
    assert tx.writes.changed_streams == []


def test_late_event_refolds_the_stored_events() -> None:
    """An event older than the stream's last one reads the stored events and re-folds them."""
    tx = FakeTx(raw(EventKind.STARTED, "s1", 1000), raw(EventKind.STOPPED, "s1", 3000))
    result = one(tx, to_incoming(raw(EventKind.INTERRUPTED, "s1", 2000)))
    assert result.outcome is Outcome.APPLIED
    assert result.transition is not None
    assert result.transition.late
    assert result.stream is not None
    assert result.stream.state is State.STOPPED
    assert tx.reads == [("events", "s1")]
    assert len(tx.writes.changed_streams) == 1


def test_expiry_after_a_newer_event_writes_nothing() -> None:
    """An expiry of a stream that had an event since it was found stale records nothing."""
    tx = FakeTx(raw(EventKind.STARTED, "s1", 1000))
    expiry = synthetic_delivery(
        "system.rtms_expired",
        "s1",
        900,
        Source.SYSTEM,
        UnscopedEvent("s1", EventKind.STOPPED, 900),
        stale_before=1000,
    )
    assert run(tx, expiry) == [None]
    assert tx.writes.deliveries == []


def test_unscoped_event_takes_the_stream_s_scope() -> None:
    """An app-reported resume carries no scope: it is applied with the stored stream's."""
    tx = FakeTx(raw(EventKind.STARTED, "s1", 1000), raw(EventKind.INTERRUPTED, "s1", 2000))
    resume = synthetic_delivery(
        "app.rtms_resumed", "s1", 3000, Source.APP, UnscopedEvent("s1", EventKind.RESUMED, 3000)
    )
    result = one(tx, resume)
    assert result.outcome is Outcome.APPLIED
    assert result.stream is not None
    assert (result.stream.scope, result.stream.state) == (Scope.MEETING, State.RESUMED)


def test_rejected_body_is_kept_and_touches_no_stream() -> None:
    """A body that cannot be parsed is recorded as rejected, with its bytes and no stream row."""
    tx = FakeTx()
    result = one(tx, to_incoming(b"{not json"))
    assert result.outcome is Outcome.REJECTED
    assert result.errors
    assert tx.writes.deliveries[0][10] == b"{not json"
    assert tx.writes.new_streams == []


def test_without_records_results_carry_outcomes_only() -> None:
    """Without records (a bulk load) a result has its outcome and id, no Stream or Transition."""
    tx = FakeTx()
    result = one(tx, to_incoming(raw(EventKind.STARTED, "s1", 1000)), with_records=False)
    assert result.outcome is Outcome.APPLIED
    assert (result.stream, result.transition) == (None, None)


def test_a_bulk_loads_outcomes_are_the_results_outcomes() -> None:
    """A batch's outcomes (what a bulk load counts) are those of its results, one per item."""
    items = [
        to_incoming(raw(EventKind.STARTED, "s1", 1000)),
        to_incoming(raw(EventKind.STARTED, "s1", 1000)),
        to_incoming(raw(EventKind.STOPPED, "s1", 900)),
        to_incoming(b"{not json"),
    ]
    batch = Batch(FakeTx(), NOW, with_records=False).run(items)
    assert batch.outcomes() == [r.outcome for r in batch.results() if r is not None]
    assert len(batch.outcomes()) == len(items)
