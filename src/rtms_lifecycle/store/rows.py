"""Rows to records and back: the one mapping between the store's tables and its records.

The write path and the fold read and write rows as plain tuples in the column orders below
(the driver's rows as they come, no object per row); the queries build their records here too.
The write path imports this module without SQLAlchemy: the tests check that every column named
here is one of its table's (``tests/test_rows.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from rtms_lifecycle.events import EventKind, Scope, Source, StreamEvent
from rtms_lifecycle.exceptions import DatabaseError, DeliveryRejected
from rtms_lifecycle.machine import State, StreamState, TransitionName
from rtms_lifecycle.parsing import parse_delivery
from rtms_lifecycle.records import (
    ConcurrencyAlertRecord,
    DeliveryRecord,
    Outcome,
    Stream,
    Transition,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Row as SqlRow

__all__ = [
    "ALERT_COLUMNS",
    "DELIVERY_COLUMNS",
    "EVENT_COLUMNS",
    "IN_LIST_SIZE",
    "SCOPE_OF",
    "STATE_OF",
    "STREAM_COLUMNS",
    "STREAM_RECORD_COLUMNS",
    "TRANSITION_COLUMNS",
    "TRANSITION_ROW_COLUMNS",
    "Row",
    "alert_from_row",
    "delivery_from_row",
    "event_from_delivery",
    "held_streams_from_rows",
    "in_lists",
    "new_stream_row",
    "state_from_row",
    "state_row",
    "state_to_stream",
    "stored_bytes",
    "streams_from_rows",
    "transition_from_row",
]


Row = tuple[Any, ...]
#: Values bound in one ``IN (...)`` list: well under any database's bound-parameter limit.
IN_LIST_SIZE: Final = 500
T = TypeVar("T")


def in_lists(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most :data:`IN_LIST_SIZE`, one ``IN (...)`` list each."""
    for start in range(0, len(items), IN_LIST_SIZE):
        yield items[start : start + IN_LIST_SIZE]


# Stored text to enum member, cheaper than calling the enum: rows become objects by the thousand.
SCOPE_OF: Final = {scope.value: scope for scope in Scope}
STATE_OF: Final = {state.value: state for state in State}


#: A stream row: ``stream_id``, then the fold's state, in ``StreamState``'s field order, then the
#: head of its audit chain (``store/chain.py``).
STREAM_COLUMNS: Final = (*StreamState.__dataclass_fields__, "chain_head")
#: A stored event: the delivery that brought it first, which a re-fold parses again.
EVENT_COLUMNS: Final = ("id", "stream_id", "source", "event", "kind", "event_ts", "raw")
DELIVERY_COLUMNS: Final = (
    "id",
    "received_at",
    "source",
    "event",
    "event_ts",
    "stream_id",
    "kind",
    "outcome",
    "error",
    "detail",
    "raw",
    "signed_at",
    "secret_label",
    "same_as",
    "reprocess_of",
)
#: An audit row, in ``Transition``'s field order.
TRANSITION_COLUMNS: Final = tuple(Transition.__dataclass_fields__)
#: An audit row as the write path inserts it: with its chain hash.
TRANSITION_ROW_COLUMNS: Final = (*TRANSITION_COLUMNS, "chain_hash")
ALERT_COLUMNS: Final = (
    "event",
    "event_ts",
    "concurrency_number",
    "concurrency_limit",
    "percentage",
    "operator_id",
    "id_field",
    "id_value",
    "account_id",
    "payload",
    "fingerprint",
    "received_at",
)
#: A Stream's columns in its fields' order, so that rows become Streams positionally: the live
#: and list queries build thousands of them.
#: ``worker`` and ``connected`` are not stream columns: they come from the stream's claim.
STREAM_RECORD_COLUMNS: Final = tuple(
    name for name in Stream.__dataclass_fields__ if name not in ("worker", "connected")
)


def new_stream_row(stream_id: str, now: int) -> Row:
    """The row of a stream no event has been applied to yet."""
    return (*state_row(StreamState(stream_id)), now, now)


def state_row(state: StreamState, chain_head: str | None = None) -> Row:
    """A state and its chain head in ``STREAM_COLUMNS`` order, enums as their values."""
    row = [*state.as_tuple(), chain_head]
    # _value_, not the slower .value property: a row per stream per batch of a bulk load.
    row[1] = state.scope._value_ if state.scope is not None else None
    row[7] = state.state._value_
    return tuple(row)


def state_from_row(row: Row) -> StreamState:
    """A stored stream row (``STREAM_COLUMNS``) as the fold's state."""
    sid, scope, scope_id, account, key, operator, urls, state, *rest = row
    return StreamState(
        sid,
        SCOPE_OF[scope] if scope else None,
        scope_id,
        account,
        key,
        operator,
        urls,
        STATE_OF[state],
        *rest[:-1],
    )


def state_to_stream(state: StreamState) -> Stream:
    """The public view of a folded stream."""
    assert state.scope is not None, "a stream takes its scope from its first applied event"
    return Stream(
        stream_id=state.stream_id,
        scope=state.scope,
        scope_id=state.scope_id,
        account_id=state.account_id,
        session_key=state.session_key,
        operator_id=state.operator_id,
        server_urls=state.server_urls,
        state=state.state,
        started_at=state.started_at,
        stopped_at=state.stopped_at,
        last_event_at=state.last_event_at,
        stop_reason=state.stop_reason,
        interruptions=state.interruptions,
        resumes=state.resumes,
        failovers=state.failovers,
        stop_source=state.stop_source,
    )


def streams_from_rows(rows: Iterable[Row]) -> list[Stream]:
    """Rows in ``STREAM_RECORD_COLUMNS`` order as Streams."""
    return [
        Stream(sid, SCOPE_OF[scope], scope_id, account, key, operator, urls, STATE_OF[state], *rest)
        for sid, scope, scope_id, account, key, operator, urls, state, *rest in rows
    ]


def held_streams_from_rows(rows: Iterable[Row]) -> list[Stream]:
    """Rows in ``STREAM_RECORD_COLUMNS`` order, then the claim's worker and connected flag (null
    when unheld), as Streams. Every column is named: a starred unpacking cost 40% more, at
    2,000 live streams a read."""
    found = []
    for row in rows:
        (sid, scope, scope_id, account, key, operator, urls, state, start, stop, last, reason) = (
            row[:12]
        )
        (interruptions, resumes, failovers, source, worker, connected) = row[12:]
        found.append(
            Stream(
                sid,
                SCOPE_OF[scope],
                scope_id,
                account,
                key,
                operator,
                urls,
                STATE_OF[state],
                start,
                stop,
                last,
                reason,
                interruptions,
                resumes,
                failovers,
                source,
                worker,
                bool(connected),
            )
        )
    return found


def transition_from_row(row: Row) -> Transition:
    """An audit row (``TRANSITION_COLUMNS``) as a Transition."""
    tid, sid, from_state, to_state, name, kind, event_ts, source, late, recorded_at, did = row
    return Transition(
        id=tid,
        stream_id=sid,
        from_state=STATE_OF[from_state],
        to_state=STATE_OF[to_state],
        name=TransitionName(name),
        kind=kind,
        event_ts=event_ts,
        source=Source(source),
        late=bool(late),
        recorded_at=recorded_at,
        delivery_id=did,
    )


def event_from_delivery(
    row: Row, scope: Scope | None = None, scope_id: str | None = None
) -> StreamEvent:
    """A stored event (``EVENT_COLUMNS``), from the delivery that brought it.

    A webhook's body is parsed again; an app's or the system's event is rebuilt, with the
    stream's ``scope`` and ``scope_id`` (it carries none of its own).
    """
    delivery_id, stream_id, source, event, kind, event_ts, stored = row
    if source in (Source.WEBHOOK, Source.REPROCESS):
        # It was parsed once, as a stream's event, when it was applied: if it no longer is one,
        # its body was changed since.
        try:
            parsed = parse_delivery(stored_bytes(stored))
            problem = None if isinstance(parsed, StreamEvent) else "it is no stream event"
        except DeliveryRejected as exc:
            problem = str(exc)
        if problem is not None or not isinstance(parsed, StreamEvent):
            raise DatabaseError(
                f"deliveries row {delivery_id}: the stored body of this applied event no longer "
                f"parses ({problem}); was it edited outside rtms-lifecycle?"
            )
        return parsed if source == Source.WEBHOOK else replace(parsed, source=Source.REPROCESS)
    return unscoped_stream_event(
        event, EventKind(kind), stream_id, event_ts, Source(source), scope, scope_id
    )


def unscoped_stream_event(
    event: str,
    kind: EventKind,
    stream_id: str,
    event_ts: int,
    source: Source,
    scope: Scope | None,
    scope_id: str | None,
) -> StreamEvent:
    return StreamEvent(
        event=event,
        scope=scope,
        kind=kind,
        stream_id=stream_id,
        scope_id=scope_id,
        event_ts=event_ts,
        source=source,
        payload={"rtms_stream_id": stream_id},
    )


def alert_from_row(row: SqlRow[Any]) -> ConcurrencyAlertRecord:
    """A ``concurrency_alerts`` row as its record."""
    m = row._mapping
    return ConcurrencyAlertRecord(**{k: m[k] for k in ConcurrencyAlertRecord.__dataclass_fields__})


def stored_bytes(value: object) -> bytes:
    """A stored body (a BLOB column) as bytes, whatever SQLite holds there.

    SQLite keeps a value of any type in any column: a body set by hand to text or a number
    (``UPDATE deliveries SET raw = 'text'``) reads as that text's UTF-8 bytes, or the number's
    digits, as SQLite's own ``CAST(value AS BLOB)`` gives them: what is shown is what is stored.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, int | float):
        return str(value).encode()
    return b""  # NULL: the column refuses it, but a hand-made table may not


# A delivery's columns that hold one type (or NULL where marked), checked as a row is read: SQLite
# keeps any type in any column, and a value edited by hand must not crash a listing.
_DELIVERY_TYPES: Final = (
    ("id", int, False),
    ("received_at", int, False),
    ("source", str, False),
    ("event", str, True),
    ("event_ts", int, True),
    ("stream_id", str, True),
    ("outcome", str, False),
    ("error", str, True),
    ("detail", str, True),
    ("signed_at", int, True),
    ("secret_label", str, True),
    ("reprocess_of", int, True),
)
_SOURCES: Final = frozenset(source.value for source in Source)
_OUTCOMES: Final = frozenset(outcome.value for outcome in Outcome)


def _unreadable(row_id: object, column: str, value: object, expected: str) -> DatabaseError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return DatabaseError(
        f"deliveries row {row_id!r}: its {column} holds {type(value).__name__} {shown}, not "
        f"{expected} (was it edited outside rtms-lifecycle?)"
    )


def _delivery_errors(row_id: object, stored: str | None) -> list[dict[str, str]] | None:
    if not stored:
        return None
    try:
        errors = json.loads(stored)
    except ValueError:
        errors = None
    if not isinstance(errors, list) or not all(
        isinstance(e, dict) and isinstance(e.get("field"), str) and isinstance(e.get("reason"), str)
        for e in errors
    ):
        raise _unreadable(row_id, "error", stored, 'a JSON list of {"field", "reason"}')
    return errors


def delivery_from_row(r: SqlRow[Any]) -> DeliveryRecord:
    """A ``deliveries`` row, with ``first_raw`` (the bytes of the delivery it references).

    Raises :class:`DatabaseError` naming the row and the column if a value is not of its
    column's type (set by hand: SQLite keeps it); a body of another type reads as its bytes.
    """
    for column, kind, nullable in _DELIVERY_TYPES:
        value = getattr(r, column)
        if not (isinstance(value, kind) or (value is None and nullable)):
            raise _unreadable(r.id, column, value, "an integer" if kind is int else "text")
    if r.source not in _SOURCES:
        raise _unreadable(r.id, "source", r.source, "one of " + ", ".join(sorted(_SOURCES)))
    if r.outcome not in _OUTCOMES:
        raise _unreadable(r.id, "outcome", r.outcome, "one of " + ", ".join(sorted(_OUTCOMES)))
    return DeliveryRecord(
        id=r.id,
        received_at=r.received_at,
        source=Source(r.source),
        event=r.event,
        event_ts=r.event_ts,
        stream_id=r.stream_id,
        outcome=Outcome(r.outcome),
        error=_delivery_errors(r.id, r.error),
        detail=r.detail,
        raw=stored_bytes(r.raw if r.first_raw is None else r.first_raw),
        signed_at=r.signed_at,
        secret_label=r.secret_label,
        reprocess_of=r.reprocess_of,
    )
