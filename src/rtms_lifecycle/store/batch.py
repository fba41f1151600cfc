"""One batch of deliveries: parsed into what the store records, then decided in memory.

A batch reads what its deliveries touch (their streams, which of their events are stored),
decides each delivery's outcome and the streams' new states without the database, then hands
the rows to write to its write transaction (``_writers``) in one go.

Rows take an enum's text as ``member._value_``: the ``.value`` property is a Python call, and a
bulk load made eleven per delivery (a tenth of the batch's decisions in a profile).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rtms_lifecycle.bodies import same_json, to_raw
from rtms_lifecycle.events import (
    ConcurrencyAlert,
    EventKind,
    ParsedDelivery,
    Source,
    StreamEvent,
    UnhandledDelivery,
    UrlValidation,
)
from rtms_lifecycle.exceptions import DeliveryRejected, FieldError
from rtms_lifecycle.machine import LIVE_STATES, StreamState, fold, step
from rtms_lifecycle.parsing import Body, parse_delivery
from rtms_lifecycle.records import IngestResult, Outcome
from rtms_lifecycle.store.chain import chain_hash
from rtms_lifecycle.store.rows import (
    Row,
    event_from_delivery,
    state_from_row,
    state_row,
    state_to_stream,
    stored_bytes,
    transition_from_row,
    unscoped_stream_event,
)
from rtms_lifecycle.store.writers import Writes, WriteTx
from rtms_lifecycle.webhook import Verification

__all__ = ["Body", "Incoming", "UnscopedEvent", "Batch", "synthetic_delivery", "to_incoming"]

# The name a parse failure has always logged under (it was the Tracker's): operators' log
# filters match it (see docs/decisions/0071-logger-names-kept.md).
log = logging.getLogger("rtms_lifecycle.tracker")


@dataclass(frozen=True, slots=True)
class UnscopedEvent:
    """An app-reported resume or a system expiry: the stream's scope comes from the store."""

    stream_id: str
    kind: EventKind
    event_ts: int


@dataclass(slots=True)
class Incoming:
    """One delivery to record: what was received, and what parsing made of it."""

    raw: bytes
    parsed: ParsedDelivery | UnscopedEvent | None
    source: Source = Source.WEBHOOK
    errors: tuple[FieldError, ...] = ()
    event: str | None = None
    stream_id: str | None = None  # for a rejected body: the stream it seems to be about
    event_ts: int | None = None  # for a rejected body: its event time, when that was valid
    # Expiry only: record nothing unless the stream is still live with no event since then.
    stale_before: int | None = None
    # A verified webhook: when it was signed (epoch ms) and the label of the secret that did.
    signed_at: int | None = None
    secret_label: str | None = None
    # A reprocessed delivery: the id of the refused delivery whose bytes these are.
    reprocess_of: int | None = None


@dataclass(slots=True)
class _BatchStream:
    """A stream as the batch sees it, and what the batch changed."""

    state: StreamState
    # The row as stored (``_rows.STREAM_COLUMNS``); empty if there is none yet, and the batch
    # inserts it.
    stored: Row = ()
    dirty: bool = False
    # The hash of the stream's last transition: the next one's chain continues from it.
    head: str | None = None
    # The stream's stored events: read only when a late event needs a re-fold.
    stored_events: list[StreamEvent] | None = None
    new_events: list[StreamEvent] = field(default_factory=list)


@dataclass(slots=True)
class _First:
    """The delivery that brought an event first: what a later copy of the event is compared to."""

    delivery_id: int
    raw: bytes
    # None until needed: a stored event is parsed again only for a copy with other bytes.
    payload: Mapping[str, Any] | None
    # A stored event's row (``_rows.EVENT_COLUMNS``); None for an event of this batch.
    row: Row | None = None


@dataclass(slots=True)
class _Pending:
    """What one delivery came to, until the batch is written."""

    outcome: Outcome
    event: str | None
    stream_id: str | None
    errors: tuple[FieldError, ...]
    detail: str | None
    delivery_id: int
    state: StreamState | None = None
    transition: Row | None = None


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def to_incoming(
    body: Body, source: Source = Source.WEBHOOK, verified: Verification | None = None
) -> Incoming:
    """Parse a body into what the store records; a rejected body keeps its bytes and errors.

    Whatever a bytes, str or mapping body holds, the result is storable; any other type raises
    :class:`TypeError`. The bytes kept are the bytes parsed, so a re-fold reads the same event.
    """
    raw, problems = to_raw(body)
    signed = (verified.signed_at, verified.label) if verified is not None else (None, None)
    if problems:
        return Incoming(raw, None, source, problems, signed_at=signed[0], secret_label=signed[1])
    try:
        parsed = parse_delivery(raw)
    except DeliveryRejected as exc:
        return Incoming(
            raw,
            None,
            source,
            errors=exc.errors,
            event=exc.event,
            stream_id=exc.stream_id,
            event_ts=exc.event_ts,
            signed_at=signed[0],
            secret_label=signed[1],
        )
    except Exception as exc:
        # A parser bug must not lose the delivery, nor fail its batch: kept, and logged loudly.
        log.exception("could not parse a delivery; stored as rejected")
        error = FieldError("body", f"could not be parsed ({type(exc).__name__})")
        return Incoming(raw, None, source, (error,), signed_at=signed[0], secret_label=signed[1])
    return Incoming(
        raw, parsed, source, event=parsed.event, signed_at=signed[0], secret_label=signed[1]
    )


def synthetic_delivery(
    event: str,
    stream_id: str,
    event_ts: int,
    source: Source,
    parsed: UnscopedEvent | None,
    *,
    errors: tuple[FieldError, ...] = (),
    stale_before: int | None = None,
    valid_ts: int | None = None,
) -> Incoming:
    """``valid_ts``: a rejected one's event time, when that was valid."""
    # Stored like a webhook body, so that every event of a stream can be replayed from deliveries.
    body = {"event": event, "event_ts": event_ts, "payload": {"rtms_stream_id": stream_id}}
    raw = json.dumps(body, separators=(",", ":"), default=repr).encode()
    return Incoming(
        raw, parsed, source, errors, event=event, event_ts=valid_ts, stale_before=stale_before
    )


class Batch:
    """One transaction's worth of deliveries: read what they touch, decide in memory, write."""

    def __init__(self, tx: WriteTx, now: int, with_records: bool) -> None:
        self.tx = tx
        self.now = now
        # Without records (bulk loads without callbacks) no Stream or Transition is built.
        self.with_records = with_records
        self.streams: dict[str, _BatchStream] = {}
        # identity -> the stored event's delivery id, or its first delivery once read (or of
        # this batch)
        self.first_delivery: dict[tuple[str, str, int], int | _First] = {}
        self.writes = Writes(now)
        self.delivery_ids: Iterator[int] = iter(())
        self.transition_ids: Iterator[int] = iter(())
        # One per item; None for an expiry that no longer applies (it writes nothing).
        self.pending: list[_Pending | None] = []

    def run(self, items: Sequence[Incoming]) -> Batch:
        """Decide what each item comes to and write it all (the transaction is the caller's)."""
        self._load(items)
        for item in items:
            self.pending.append(self._decide(item))
        self._write_streams()
        self.tx.write(self.writes)
        return self

    def results(self) -> list[IngestResult | None]:
        """One result per item, in order; None for an expiry that no longer applies."""
        return [self._result(p) if p is not None else None for p in self.pending]

    def outcomes(self) -> list[Outcome]:
        """What each item came to, in order (an expiry that no longer applies left out): all a
        bulk load reports, without building a result per delivery."""
        return [p.outcome for p in self.pending if p is not None]

    # --- reading what the batch touches -----------------------------------------------------

    def _load(self, items: Sequence[Incoming]) -> None:
        ids: set[str] = set()
        identities: set[Row] = set()
        for item in items:
            if isinstance(item.parsed, StreamEvent | UnscopedEvent):
                parsed = item.parsed
                ids.add(parsed.stream_id)
                identities.add((parsed.stream_id, parsed.kind._value_, parsed.event_ts))
        loaded = self.tx.load(
            sorted(ids), sorted(identities), len(items), len(identities), self.now
        )
        self.delivery_ids, self.transition_ids = loaded.delivery_ids, loaded.transition_ids
        for row in loaded.streams:
            self.streams[row[0]] = _BatchStream(state_from_row(row), row, head=row[-1])
        for sid in ids - self.streams.keys():
            self.streams[sid] = _BatchStream(StreamState(sid), stored_events=[])
        for sid, kind, event_ts, delivery_id in loaded.stored_identities:
            self.first_delivery[sid, kind, event_ts] = delivery_id

    # --- deciding ---------------------------------------------------------------------------

    def _decide(self, item: Incoming) -> _Pending | None:
        parsed = item.parsed
        if item.errors or parsed is None:
            return self._delivery(
                item,
                Outcome.REJECTED,
                errors=item.errors,
                stream_id=item.stream_id,
                event_ts=item.event_ts,
            )
        if isinstance(parsed, UnhandledDelivery):
            return self._delivery(
                item, Outcome.UNHANDLED, event=parsed.event, event_ts=parsed.event_ts
            )
        if isinstance(parsed, UrlValidation):
            return self._delivery(
                item, Outcome.APPLIED, event=parsed.event, event_ts=parsed.event_ts
            )
        if isinstance(parsed, ConcurrencyAlert):
            self._alert(parsed)
            return self._delivery(
                item, Outcome.APPLIED, event=parsed.event, event_ts=parsed.event_ts
            )
        stream = self.streams[parsed.stream_id]
        if isinstance(parsed, UnscopedEvent):
            parsed = unscoped_stream_event(
                item.event or parsed.kind.value,
                parsed.kind,
                parsed.stream_id,
                parsed.event_ts,
                item.source,
                stream.state.scope,
                stream.state.scope_id,
            )
        if item.stale_before is not None and not (
            stream.state.state in LIVE_STATES
            and (stream.state.last_event_at or 0) < item.stale_before
        ):
            return None
        return self._stream_event(item, parsed, stream)

    def _stream_event(self, item: Incoming, ev: StreamEvent, stream: _BatchStream) -> _Pending:
        before = stream.state
        if before.scope is not None and ev.scope is not None and before.scope is not ev.scope:
            return self._delivery(
                item,
                Outcome.CONFLICT,
                about=ev,
                detail=(
                    f"stream {ev.stream_id} is a {before.scope.value} stream, "
                    f"this event is for a {ev.scope.value}"
                ),
            )
        identity = (ev.stream_id, ev.kind._value_, ev.event_ts)
        stored = self.first_delivery.get(identity)
        if stored is not None:
            if isinstance(stored, int):
                # Only a second delivery of a stored event reads the first one's body again.
                row = self.tx.event(stored)
                stored = self.first_delivery[identity] = _First(
                    stored, stored_bytes(row[-1]), None, row
                )
            if item.raw == stored.raw:
                # Zoom's retries repeat the body byte for byte: the copy references the first.
                if stored.row is not None:
                    self.writes.referenced.add(ev.stream_id)
                return self._delivery(
                    item,
                    Outcome.DUPLICATE,
                    about=ev,
                    detail="this event is already stored",
                    same_as=stored.delivery_id,
                )
            if stored.payload is None:
                assert stored.row is not None
                stored.payload = event_from_delivery(
                    stored.row, before.scope, before.scope_id
                ).payload
            # "Same payload": equal as parsed JSON whatever the key order or spacing (a NaN
            # equals a NaN, as its bytes do).
            if same_json(stored.payload, ev.payload):
                return self._delivery(
                    item, Outcome.DUPLICATE, about=ev, detail="this event is already stored"
                )
            return self._delivery(
                item,
                Outcome.CONFLICT,
                about=ev,
                detail=(
                    "an event with this identity but another payload is stored; the first stands"
                ),
            )
        stream.dirty = True
        before_state, before_last = before.state, before.last_event_at
        if ev.position > (before.fold_ts, before.fold_rank):
            # Results with records keep each event's state apart; a bulk load's need not (a
            # copy per event was a sixth of its decisions).
            after = before.copy() if self.with_records else before
            name = step(after, ev)
        else:
            if stream.stored_events is None:
                stream.stored_events = [
                    event_from_delivery(row, before.scope, before.scope_id)
                    for row in self.tx.events(ev.stream_id)
                ]
            after, steps = fold(ev.stream_id, [*stream.stored_events, *stream.new_events, ev])
            name = next(n for e, n in steps if e is ev)
        stream.new_events.append(ev)
        stream.state = after
        if name is None:
            pending = self._delivery(
                item,
                Outcome.IGNORED,
                about=ev,
                detail=f"a {ev.kind.value} event changes nothing in state {after.state.value}",
            )
        else:
            pending = self._delivery(item, Outcome.APPLIED, about=ev)
        self.first_delivery[identity] = _First(pending.delivery_id, item.raw, ev.payload)
        if name is None:
            return pending
        pending.state = after
        pending.transition = (
            next(self.transition_ids),
            ev.stream_id,
            before_state._value_,
            after.state._value_,
            name._value_,
            ev.kind._value_,
            ev.event_ts,
            ev.source._value_,
            before_last is not None and ev.event_ts < before_last,
            self.now,
            pending.delivery_id,
        )
        stream.head = chain_hash(stream.head, pending.transition)
        self.writes.transitions.append((*pending.transition, stream.head))
        return pending

    def _delivery(
        self,
        item: Incoming,
        outcome: Outcome,
        *,
        about: StreamEvent | None = None,
        event: str | None = None,
        event_ts: int | None = None,
        stream_id: str | None = None,
        errors: tuple[FieldError, ...] = (),
        detail: str | None = None,
        same_as: int | None = None,
    ) -> _Pending:
        kind = None
        if about is not None:
            event, event_ts, stream_id, kind = (
                about.event,
                about.event_ts,
                about.stream_id,
                about.kind._value_,
            )
        event = event or item.event
        delivery_id = next(self.delivery_ids)
        self.writes.deliveries.append(
            (
                delivery_id,
                self.now,
                item.source._value_,
                event,
                event_ts,
                stream_id,
                kind,
                outcome._value_,
                json.dumps([e.as_dict() for e in errors]) if errors else None,
                detail,
                # A duplicate that references the first delivery keeps no copy of the bytes.
                item.raw if same_as is None else b"",
                item.signed_at,
                item.secret_label,
                same_as,
                item.reprocess_of,
            )
        )
        return _Pending(outcome, event, stream_id, errors, detail, delivery_id)

    def _alert(self, alert: ConcurrencyAlert) -> None:
        payload = _canonical(alert.payload)
        fingerprint = hashlib.sha256(
            f"{alert.event}\x00{alert.event_ts}\x00{payload}".encode()
        ).hexdigest()
        self.writes.alerts.append(
            (
                alert.event,
                alert.event_ts,
                alert.concurrency_number,
                alert.concurrency_limit,
                alert.percentage,
                alert.operator_id,
                alert.id_field,
                alert.id_value,
                alert.account_id,
                payload,
                fingerprint,
                self.now,
            )
        )

    # --- writing ----------------------------------------------------------------------------

    def _write_streams(self) -> None:
        for stream in self.streams.values():
            if not stream.stored:
                self.writes.new_streams.append(
                    (*state_row(stream.state, stream.head), self.now, self.now)
                )
            elif stream.dirty:
                self.writes.changed_streams.append(
                    (stream.stored, state_row(stream.state, stream.head))
                )

    def _result(self, pending: _Pending) -> IngestResult:
        with_records = self.with_records and pending.state is not None
        return IngestResult(
            outcome=pending.outcome,
            delivery_id=pending.delivery_id,
            event=pending.event,
            stream_id=pending.stream_id,
            errors=pending.errors,
            detail=pending.detail,
            stream=state_to_stream(pending.state) if with_records and pending.state else None,
            transition=(
                transition_from_row(pending.transition)
                if with_records and pending.transition
                else None
            ),
        )
