"""What the library hands back: streams, transitions, deliveries, results and statistics."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final, Generic, TypeVar

from rtms_lifecycle.bounds import MAX_COUNT
from rtms_lifecycle.events import Scope, Source
from rtms_lifecycle.exceptions import FieldError
from rtms_lifecycle.machine import State, TransitionName
from rtms_lifecycle.stop_reasons import StopReason, StopReasonCategory, describe_stop_reason

__all__ = [
    "NOT_STREAM_KEYS",
    "Claim",
    "ClaimEvent",
    "AuditBreak",
    "AuditReport",
    "ClaimStats",
    "ConcurrencyAlertRecord",
    "DatabaseCapacity",
    "DeliveryRecord",
    "IngestResult",
    "InterruptionStats",
    "Outcome",
    "Page",
    "PruneRecord",
    "PruneResult",
    "ReprocessResult",
    "StopReasonCount",
    "StopReasonStat",
    "Stream",
    "SubscriptionStatus",
    "Transition",
    "UnhandledEventStat",
    "decode_cursor",
    "encode_cursor",
]

#: Fields of :class:`Stream` that are not keys of its documented JSON: ``stop_reason_name`` tells
#: the stop's source, and claims are records of their own (``rtms-lifecycle claims``).
NOT_STREAM_KEYS: Final = ("stop_source", "worker", "connected")

T = TypeVar("T")


class Outcome(StrEnum):
    """What became of one delivery (docs/concepts.md)."""

    APPLIED = "applied"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    UNHANDLED = "unhandled"


# Not frozen: a frozen dataclass pays object.__setattr__ per field, and the live-stream query
# builds thousands. A Stream is a snapshot; changing one changes nothing stored.
@dataclass(slots=True)
class Stream:
    """A stream as stored: the documented stream keys (docs/cli.md), and who stopped it."""

    stream_id: str
    scope: Scope
    scope_id: str | None
    account_id: str | None
    session_key: str | None
    operator_id: str | None
    server_urls: str | None
    state: State
    started_at: int | None
    stopped_at: int | None
    last_event_at: int | None
    stop_reason: int | None
    interruptions: int
    resumes: int
    failovers: int
    #: Who stopped the stream (``webhook``, or ``system`` for an expiry); None while live.
    stop_source: str | None = None
    #: The worker holding the stream's claim (an unexpired lease), or None; read with the stream
    #: by :meth:`Tracker.stream`, :meth:`Tracker.streams` and :meth:`Tracker.active_streams`.
    worker: str | None = None
    #: Whether that worker last reported media connected.
    connected: bool = False

    @property
    def stop_reason_name(self) -> str | None:
        """Zoom's name of the stop reason (``EXPIRED`` for an expiry, ``NOT_PROVIDED`` for a
        stop without a reason); None while live."""
        return self._stop_reason().name if self.stopped else None

    @property
    def stop_reason_category(self) -> StopReasonCategory | None:
        """Our category of the stop reason; None while live."""
        return self._stop_reason().category if self.stopped else None

    def _stop_reason(self) -> StopReason:
        return describe_stop_reason(
            self.stop_reason, expired=not (self.stop_source and Source(self.stop_source).from_zoom)
        )

    @property
    def stopped(self) -> bool:
        """Whether the stream has ended."""
        return self.state is State.STOPPED

    @property
    def active(self) -> bool:
        """Whether media flows: started or resumed."""
        return self.state in (State.STARTED, State.RESUMED)

    @property
    def server_url_list(self) -> list[str]:
        """``server_urls`` split on commas."""
        return [url.strip() for url in (self.server_urls or "").split(",") if url.strip()]

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON shape of a stream (docs/cli.md)."""
        data = asdict(self)
        for name in NOT_STREAM_KEYS:
            del data[name]
        data["scope"] = self.scope.value
        data["state"] = self.state.value
        data["stop_reason_name"] = self.stop_reason_name
        category = self.stop_reason_category
        data["stop_reason_category"] = category.value if category else None
        return data


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the append-only audit history."""

    id: int
    stream_id: str
    from_state: State
    to_state: State
    name: TransitionName
    kind: str
    event_ts: int
    source: Source
    late: bool
    recorded_at: int
    delivery_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: (v.value if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The outcome of one delivery; ``stream`` and ``transition`` are set when one was applied."""

    outcome: Outcome
    delivery_id: int | None = None
    event: str | None = None
    stream_id: str | None = None
    errors: tuple[FieldError, ...] = ()
    detail: str | None = None
    stream: Stream | None = None
    transition: Transition | None = None

    @property
    def error(self) -> str | None:
        """The rejection reasons as one line, or None."""
        return "; ".join(str(e) for e in self.errors) or None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A stored delivery, as received."""

    id: int
    received_at: int
    source: Source
    event: str | None
    event_ts: int | None
    stream_id: str | None
    outcome: Outcome
    error: list[dict[str, str]] | None
    detail: str | None
    raw: bytes
    #: When the request was signed (epoch ms); None unless the receiver verified it.
    signed_at: int | None = None
    #: The label of the configured secret that verified it (never the secret itself).
    secret_label: str | None = None
    #: Reprocessed (source ``reprocess``): the id of the refused delivery whose bytes these are.
    reprocess_of: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``raw`` as text (invalid UTF-8 replaced)."""
        data = asdict(self)
        data["source"] = self.source.value
        data["outcome"] = self.outcome.value
        data["raw"] = self.raw.decode("utf-8", errors="replace")
        return data


@dataclass(frozen=True, slots=True)
class ConcurrencyAlertRecord:
    """A stored account-level concurrency alert."""

    id: int
    event: str
    event_ts: int
    concurrency_number: int
    concurrency_limit: int | None
    percentage: int | None
    operator_id: str | None
    id_field: str | None
    id_value: str | None
    account_id: str | None
    received_at: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StopReasonStat:
    """How many streams stopped for one reason (in one scope, when grouped by scope)."""

    stop_reason: int | None
    stop_reason_name: str
    stop_reason_category: StopReasonCategory
    count: int
    share: float
    median_duration_ms: int | None
    scope: Scope | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``scope`` only when grouped by scope)."""
        data = asdict(self)
        data["stop_reason_category"] = self.stop_reason_category.value
        if self.scope is None:
            del data["scope"]
        else:
            data["scope"] = self.scope.value
        return data


@dataclass(frozen=True, slots=True)
class InterruptionStats:
    """How often streams were interrupted and how they fared."""

    streams: int
    interrupted_streams: int
    interruptions: int
    recovered: int
    median_recovery_ms: int | None
    stopped_while_interrupted: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class UnhandledEventStat:
    """Deliveries of one event name this version does not handle, and when they came."""

    event: str
    count: int
    first_seen: int
    last_seen: int
    #: Whether the name mentions RTMS: likely a stream event under a name not yet known.
    rtms: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StopReasonCount:
    """How many streams stopped for one reason within one time bucket (an hour, a day)."""

    bucket_start: int
    stop_reason: int | None
    count: int
    #: For a stop without a code: whether the library's expiry made it (``EXPIRED``) rather
    #: than a webhook that gave no reason (``NOT_PROVIDED``).
    expired: bool = False

    @property
    def described(self) -> StopReason:
        """The reason's name and category."""
        return describe_stop_reason(self.stop_reason, expired=self.expired)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    """Where one consumer is: for ``rtms-lifecycle subscriptions``."""

    consumer: str
    cursor: str
    #: Transitions in the feed after the cursor (whether or not the consumer's filters want them).
    lag: int
    #: Transitions set aside after ``max_attempts`` failures (re-queued ones included).
    parked: int
    #: Of those, how many ``retry`` re-queued and still wait for delivery.
    requeued: int
    delivered: int
    #: Failed attempts at the transition after the cursor, and when the next one is due.
    attempts: int
    retry_at: int | None
    last_error: str | None
    last_error_at: int | None
    #: The process delivering for it now (host:pid:id), while its lease lasts.
    holder: str | None
    lease_until: int | None
    updated_at: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune removed (with ``dry_run``: what it would remove)."""

    cutoff: int
    streams: int
    deliveries: int
    transitions: int
    alerts: int
    dry_run: bool
    #: How much smaller the database is afterwards (bytes); None for a dry run.
    reclaimed_bytes: int | None
    #: Bytes free inside the SQLite file afterwards, which new rows reuse (``vacuum`` gives them
    #: back to the file system); None on PostgreSQL and for a dry run.
    free_bytes: int | None = None

    def as_dict(self) -> dict[str, int]:
        """The counts, as ``rtms-lifecycle prune --json`` prints them."""
        return {
            "streams": self.streams,
            "deliveries": self.deliveries,
            "transitions": self.transitions,
            "alerts": self.alerts,
        }


@dataclass(frozen=True, slots=True)
class PruneRecord:
    """One prune as recorded: when it ran, with which cutoff, and what it removed."""

    run: str
    started_at: int
    finished_at: int
    cutoff: int
    streams: int
    deliveries: int
    transitions: int
    alerts: int
    #: False for a run that was interrupted (or still runs): its last step is not recorded,
    #: and streams older than its cutoff may be left.
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's hold on a live stream until ``expires_at`` (epoch ms), unless renewed.

    ``token`` is a fencing token: it grows with every new claim of the stream, so that whatever
    acts on the stream's behalf can refuse a holder that has been replaced.
    """

    stream_id: str
    worker: str
    token: int
    expires_at: int
    stream: Stream
    claimed_at: int
    renewed_at: int
    connected: bool = False
    #: When it ended (epoch ms) and why; None while held (``Tracker.claims`` lists only those).
    ended_at: int | None = None
    end_reason: str | None = None

    def expired(self, now_ms: int) -> bool:
        """Whether the lease has run out at ``now_ms``."""
        return self.expires_at <= now_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "worker": self.worker,
            "token": self.token,
            "claimed_at": self.claimed_at,
            "renewed_at": self.renewed_at,
            "expires_at": self.expires_at,
            "connected": self.connected,
            "state": self.stream.state.value,
            "scope": self.stream.scope.value,
            "scope_id": self.stream.scope_id,
        }


class ClaimEventKind(StrEnum):
    """What a row of the claim history records."""

    CLAIMED = "claimed"
    #: A renewal after the lease had run out, while nobody else had taken the stream.
    RENEWED_LATE = "renewed_late"
    RELEASED = "released"
    #: An expired lease seen by a worker that then claimed the stream.
    EXPIRED = "expired"
    STOPPED = "stopped"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class ClaimEvent:
    """One row of a stream's claim history (append-only): what happened to which token."""

    id: int
    stream_id: str
    token: int
    worker: str
    event: str
    #: ``worker`` (its own calls), ``app`` (what it saw: connected, disconnected), ``webhook`` or
    #: ``system`` (the stop that ended it)
    source: str
    at: int
    recorded_at: int
    #: a release's words, a stop reason or a disconnection's code, as text
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AuditBreak:
    """The first broken link of one audit chain: where, why, and the hashes that differ.

    ``transition_id`` is None when the break is not a row's: a stream's head, a missing chain.
    """

    stream_id: str
    transition_id: int | None
    reason: str
    expected: str | None = None
    stored: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What ``audit verify`` found: the chains recomputed, their breaks, the digest of them all.

    ``head`` is the digest of every chain now (``audit head``); ``head_matches`` says whether a
    digest given to compare still verifies (None if none was given, or if it cannot be told).
    ``unverifiable`` names the chains pruned since that digest, with rows after it: their part in
    it cannot be recomputed, so the digest is neither confirmed nor refuted (``inconclusive``).
    """

    streams: int
    transitions: int
    pruned_chains: int
    head: str
    breaks: tuple[AuditBreak, ...] = ()
    head_matches: bool | None = None
    unverifiable: tuple[str, ...] = ()

    @property
    def inconclusive(self) -> bool:
        """The digest given could not be checked: chains it covered were pruned since."""
        return bool(self.unverifiable) and self.head_matches is None

    @property
    def ok(self) -> bool:
        """No break, and the digest given (if any) verifies."""
        return not self.breaks and self.head_matches is not False and not self.inconclusive

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "streams": self.streams,
            "transitions": self.transitions,
            "pruned_chains": self.pruned_chains,
            "head": self.head,
            "head_matches": self.head_matches,
            "inconclusive": self.inconclusive,
            "unverifiable": list(self.unverifiable),
            "breaks": [b.as_dict() for b in self.breaks],
        }


@dataclass(frozen=True, slots=True)
class ClaimStats:
    """Live streams no worker takes care of, and how long the others took to be joined.

    Counted over live streams (started, resumed or interrupted) that started at least the
    asked ``older_than`` ago; the latency over every live stream a worker reported connected.
    """

    #: Nobody holds them (no claim, or an ended or expired one).
    unclaimed: int
    #: No worker reports media connected now (unheld, or held but not connected).
    unconnected: int
    #: ``(upper bound in seconds, live streams whose first connection came within it)``,
    #: cumulative as Prometheus' buckets; the last bound is infinity.
    connect_buckets: tuple[tuple[float, int], ...]
    #: Seconds from start to first reported connection, summed over those streams.
    connect_seconds: float

    @property
    def connected(self) -> int:
        """Live streams a worker reported connected at least once."""
        return self.connect_buckets[-1][1] if self.connect_buckets else 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DatabaseCapacity:
    """The room the database takes and, on SQLite, what its disk has left, in bytes.

    None where it is not known: a file not at its path (moved away), a disk that is not this
    host's (PostgreSQL's server).
    """

    #: The database: the SQLite file, or PostgreSQL's ``pg_database_size``.
    database_bytes: int | None
    #: SQLite's write-ahead log (``-wal``; 0 when there is none); None on PostgreSQL.
    wal_bytes: int | None
    #: Free on the SQLite database's file system for this process (``f_bavail``).
    disk_free_bytes: int | None
    #: That file system's size.
    disk_size_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReprocessResult:
    """What ``reprocess`` did with the refused deliveries it read again (with ``dry_run``:
    would do). ``before``: how many it read, by their stored outcome; ``after``: what they came
    to, ``rejected``/``unhandled`` for those still refused (nothing is written for them)."""

    before: dict[str, int]
    after: dict[str, int]
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"before": self.before, "after": self.after, "dry_run": self.dry_run}


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list read in keyset order; ``next`` is the cursor of the page after it
    (None: this is the last)."""

    items: list[T]
    next: str | None


def encode_cursor(kind: str, key: Sequence[int | str]) -> str:
    """An opaque cursor: the keyset position after which the next page starts."""
    text = json.dumps([kind, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, types: Sequence[type]) -> tuple[Any, ...]:
    """The position ``cursor`` holds; ValueError unless it is a cursor of this ``kind`` of list."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        found = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        found = None
    if (
        not isinstance(found, list)
        or len(found) != len(types) + 1
        or found[0] != kind
        or not all(
            type(value) is each  # bool is not an int here
            for value, each in zip(found[1:], types, strict=True)
        )
    ):
        raise ValueError(f"not a cursor of this list: {cursor[:40]!r}")
    for value in found[1:]:
        problem = _stored_value_problem(value)
        if problem is not None:
            # Only a hand-made cursor holds one: the driver answered an OverflowError (SQLite)
            # or an error read as an outage (PostgreSQL).
            raise ValueError(f"not a cursor of this list ({problem}): {cursor[:40]!r}")
    return tuple(found[1:])


def _stored_value_problem(value: int | str) -> str | None:
    """Why a database column cannot hold ``value`` (a signed 64-bit integer, or UTF-8 text
    without NUL), or None."""
    if isinstance(value, int):
        if not -MAX_COUNT - 1 <= value <= MAX_COUNT:
            return "a number past what the database holds"
        return None
    if "\x00" in value:
        return "text with a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text that is not valid Unicode"
    return None
