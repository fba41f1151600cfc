"""The embedding API: one :class:`Tracker` per database, shared by every thread of a process."""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar, overload

from rtms_lifecycle.bodies import to_raw
from rtms_lifecycle.bounds import MAX_COUNT, MAX_EPOCH_MS, arrival_time_problem
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_EVENT_AHEAD,
    DEFAULT_MIN_EVENT_TIME,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETRY_DELAY,
)
from rtms_lifecycle.events import (
    EventKind,
    Scope,
    Source,
    StreamEvent,
    UnhandledDelivery,
    UrlValidation,
)
from rtms_lifecycle.exceptions import ConfigurationError, DeliveryRejected, FieldError
from rtms_lifecycle.machine import State, TransitionName
from rtms_lifecycle.parsing import check_app_event
from rtms_lifecycle.read_ahead import read_ahead
from rtms_lifecycle.records import (
    Claim,
    ClaimEvent,
    ClaimStats,
    ConcurrencyAlertRecord,
    DatabaseCapacity,
    DeliveryRecord,
    IngestResult,
    InterruptionStats,
    Outcome,
    Page,
    ReprocessResult,
    StopReasonCount,
    StopReasonStat,
    Stream,
    Transition,
    UnhandledEventStat,
    decode_cursor,
    encode_cursor,
)
from rtms_lifecycle.store.batch import (
    Body,
    Incoming,
    UnscopedEvent,
    synthetic_delivery,
    to_incoming,
)
from rtms_lifecycle.store.core import FILE_CHECK_INTERVAL, Store
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.tracking import (
    DEFAULT_CLAIM_LEASE,
    DEFAULT_CONNECT_BUCKETS,
    MAX_CLAIM_EXCLUDE,
    as_kind,
    as_set,
    callback_failed,
    check_account,
    check_batch_size,
    check_report_time,
    check_worker,
    lease_ms,
)
from rtms_lifecycle.webhook import DEFAULT_REPLAY_WINDOW, Verification, WebhookVerifier

# The queries, pruning and subscriptions import SQLAlchemy (a quarter of a second and more): the
# methods that use them import them, so that a process that only records deliveries into an
# SQLite file never does.
if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from rtms_lifecycle import subscriptions as _subs
    from rtms_lifecycle.records import (
        AuditReport,
        PruneRecord,
        PruneResult,
        SubscriptionStatus,
    )

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Body",
    "IngestSummary",
    "Subscription",
    "TransitionCallback",
    "Tracker",
    "load_next",
    "submit_deliveries",
    "write_executor",
]


TransitionCallback = Callable[[Transition, Stream], object]
Timestamp = int | datetime

#: The rows of a page when no limit is given, and the most one page may hold.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Subscription:
    """A callback and the transitions it wants: target states, names, scopes (None: any)."""

    callback: TransitionCallback
    to: frozenset[State] | None
    name: frozenset[TransitionName] | None
    scope: frozenset[Scope] | None

    @classmethod
    def of(cls, callback: TransitionCallback, to: Any, name: Any, scope: Any) -> Subscription:
        """The filters as :meth:`Tracker.on_transition` takes them: one value or several."""
        return cls(
            callback,
            as_set(to, State, "to"),
            as_set(name, TransitionName, "name"),
            as_set(scope, Scope, "scope"),
        )

    def wants(self, transition: Transition, stream: Stream) -> bool:
        return (
            (self.to is None or transition.to_state in self.to)
            and (self.name is None or transition.name in self.name)
            and (self.scope is None or stream.scope in self.scope)
        )


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """How many deliveries of a bulk load ended in each outcome."""

    counts: Mapping[Outcome, int]

    def __getitem__(self, outcome: Outcome | str) -> int:
        return self.counts.get(Outcome(outcome), 0)

    @property
    def total(self) -> int:
        """How many deliveries were read."""
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """The documented JSON shape: every outcome, zero included."""
        return {outcome.value: self[outcome] for outcome in Outcome}


def _stream_filters(
    state: State | str | Iterable[State | str] | None,
    scope: Scope | str | None,
    scope_id: str | None,
    since: Timestamp | None,
    until: Timestamp | None,
) -> tuple[list[State] | None, Scope | None, str | None, int | None, int | None]:
    """``streams()``'s and ``count_streams()``'s filters as the queries take them."""
    states = sorted(as_set(state, State, "state") or ())
    return (
        states or None,
        as_kind(scope, Scope, "scope") if scope else None,
        scope_id,
        _epoch_ms(since),
        _epoch_ms(until),
    )


def _epoch_ms(value: Timestamp | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)


def _min_event_time(value: object) -> int:
    """``min_event_time`` in epoch ms, from 0 (1970, no bound beyond the parser's) to 9999."""
    if isinstance(value, datetime):
        value = _epoch_ms(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EPOCH_MS:
        raise ConfigurationError(
            f"min_event_time must be epoch milliseconds (at least 0) or a datetime, got {value!r}"
        )
    return value


class Tracker:
    """Records RTMS deliveries into a database and answers questions about streams.

    ``db`` is an SQLAlchemy URL (``sqlite:///file.db``, ``postgresql://...``), a SQLite file's
    path, or an ``Engine``; by default ``RTMS_LIFECYCLE_DB``, as the CLI and ``serve`` read it,
    else ``sqlite:///rtms_lifecycle.db``. A new, empty database gets the schema; one at an
    older migration is refused (:class:`SchemaOutdatedError`) until ``rtms-lifecycle db upgrade``.

    A delivery whose ``event_ts`` is more than ``max_event_ahead`` seconds (a day) ahead of this
    process's clock when it arrives, or before ``min_event_time`` (epoch ms or an aware
    datetime; 0 by default, no bound but 1970), is recorded as ``rejected``. Neither bound
    applies to Zoom's url validation challenge: it is answered whatever its ``event_ts``.
    """

    def __init__(
        self,
        db: str | Engine | None = None,
        *,
        migrate: bool = True,
        webhook_secrets: Sequence[str] | None = None,
        replay_window: float = DEFAULT_REPLAY_WINDOW,
        max_event_ahead: float = DEFAULT_MAX_EVENT_AHEAD,
        min_event_time: Timestamp = DEFAULT_MIN_EVENT_TIME,
    ) -> None:
        if not max_event_ahead >= 0:  # nan too
            raise ConfigurationError(
                f"max_event_ahead must be a number of seconds, at least 0, got {max_event_ahead!r}"
            )
        self._max_ahead_ms = int(min(max_event_ahead, 1e12) * 1000)
        self._earliest_ms = _min_event_time(min_event_time)
        self._verifier = (
            WebhookVerifier(webhook_secrets, replay_window) if webhook_secrets is not None else None
        )
        self._store = Store(db, migrate=migrate)
        self._subscriptions: tuple[Subscription, ...] = ()
        self._consumers: tuple[tuple[_subs.Consumer, TransitionCallback], ...] = ()
        self._lock = threading.Lock()
        self._running = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine underneath."""
        return self._store.engine

    def watch_files(self, interval: float = FILE_CHECK_INTERVAL) -> None:
        """Check the SQLite database's files every ``interval`` seconds until :meth:`close`,
        as every commit does: a file deleted while open is then saved and put back even when
        nothing is written (``serve`` does this). Nothing for PostgreSQL."""
        self._store.watch_files(interval)

    def close(self) -> None:
        """Release the database connections."""
        self._store.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------

    def ingest(
        self,
        body: Body,
        *,
        headers: Mapping[str, str] | None = None,
        verified: Verification | None = None,
        timeout: float | None = None,
    ) -> IngestResult:
        """Record one delivery in its own transaction; a rejected body is stored, not raised.

        ``body`` is the raw bytes (or text, or an already decoded mapping): whatever it holds,
        it is recorded, a body that cannot be understood as ``rejected`` with the reason. A
        body of any other type raises :class:`TypeError` and nothing is stored.

        With ``headers`` (the request's), the delivery is first verified with the tracker's
        ``webhook_secrets`` (Zoom's signature over the raw bytes, and the replay window): a
        refused request raises :class:`WebhookRefused` and changes nothing in the store.
        ``verified``: what your own :class:`WebhookVerifier` returned for this request; either
        way the delivery records when it was signed and the label of the secret that signed it.
        With ``timeout`` (seconds), a store that cannot commit in time (a lock held elsewhere,
        a slow disk) raises :class:`StoreTimeout` and keeps nothing of the delivery. The
        commit is durable: once this returns, a power loss cannot undo it.
        """
        verified = self._verified(body, headers, verified)
        deadline = None if timeout is None else time.monotonic() + timeout
        (result,) = self._record([self._arrived(body, verified)], deadline=deadline)
        assert result is not None
        return result

    def _verified(
        self, body: Body, headers: Mapping[str, str] | None, verified: Verification | None
    ) -> Verification | None:
        if headers is None:
            return verified
        if self._verifier is None:
            raise ConfigurationError(
                "ingest(headers=...) verifies Zoom's signature: create the Tracker with "
                "webhook_secrets=[...] (or verify yourself and leave headers out)"
            )
        if not isinstance(body, bytes | bytearray | memoryview | str):
            raise TypeError("a signature covers raw bytes: pass the body as received")
        return self._verifier.verify(headers, to_raw(body)[0])

    def _submit(
        self,
        bodies: Sequence[Body],
        verified: Sequence[Verification | None] | None,
        deadline: float | None,
        then: Callable[[list[IngestResult]], Any] | None = None,
    ) -> Future[Any]:
        # A durable write of these deliveries, queued with the writes beside it: parsed when it
        # begins, this tracker's callbacks called (in the caller's context) before the future
        # is done. One future per write: ``then`` (in the writing thread) makes its value.
        checks = _checks(bodies, verified)
        context = contextvars.copy_context()

        def after(results: list[IngestResult | None]) -> Any:
            subscriptions = self._subscriptions
            if subscriptions:  # each callback's error is its own (logged), not the write's
                context.run(self._notify_all, subscriptions, results)
            kept = [result for result in results if result is not None]
            return kept if then is None else then(kept)

        return self._store.submit(
            lambda: [self._arrived(body, v) for body, v in zip(bodies, checks, strict=True)],
            deadline=deadline,
            then=after,
        )

    def ingest_batch(
        self,
        bodies: Sequence[Body],
        *,
        verified: Sequence[Verification | None] | None = None,
        timeout: float | None = None,
    ) -> list[IngestResult]:
        """Record deliveries in one durable transaction, each with its own result, as
        :meth:`ingest` does one: a group commit, one sync to disk for all of them.

        All or nothing: :class:`StoreError` (:class:`StoreTimeout` past ``timeout``) means none
        was kept. ``verified``, when given, holds one verification (or None) per body. For a
        receiver answering concurrent senders; bulk loads use :meth:`ingest_many`.
        """
        checks = _checks(bodies, verified)
        deadline = None if timeout is None else time.monotonic() + timeout
        incoming = [self._arrived(body, v) for body, v in zip(bodies, checks, strict=True)]
        results = self._record(incoming, deadline=deadline)
        return [result for result in results if result is not None]

    def ingest_many(
        self,
        bodies: Iterable[Body],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        committed: Counter[Outcome] | None = None,
    ) -> IngestSummary:
        """Record many deliveries, ``batch_size`` per transaction, streaming the input.

        Unlike :meth:`ingest`, commits are not synced one by one (on SQLite): a power loss
        may undo the last ones, which a bulk load's input still holds.
        A body of another type than bytes, str or a mapping raises :class:`TypeError`; the
        batches before it are recorded. With batches of 64 or more, each batch is parsed in a
        helper thread while the one before is written, so a batch is written once the next
        one has been read from ``bodies`` (or ``bodies`` has ended).
        ``committed``: each batch's outcomes are added to it once it commits, so that a caller
        knows what is recorded when this raises (a database that fails, a Ctrl-C).
        """
        check_batch_size(batch_size)
        counts: Counter[Outcome] = Counter() if committed is None else committed
        for batch in read_ahead(bodies, self._arrived, batch_size):
            if self._subscriptions:
                # Callbacks need each transition and its stream.
                results = self._record(batch, with_records=False, durable=False)
                counts.update(r.outcome for r in results if r)
            else:
                counts.update(self._store.outcomes(batch, durable=False))
        # Its commits check the SQLite file now and then, not each: once more for the last ones.
        self._store.confirm()
        return IngestSummary(dict(counts))

    def report_resumed(self, stream_id: str, at_ms: int) -> IngestResult:
        """Record the app's word that an interrupted stream's media flows again (``source=app``).

        Zoom sends no webhook for a recovery; only the app's media connector knows of it.
        """
        event = "app.rtms_resumed"
        try:
            sid, ts = check_app_event(stream_id, at_ms)
            problem = arrival_time_problem(ts, now_ms(), self._max_ahead_ms, self._earliest_ms)
            if problem is not None:
                raise DeliveryRejected([FieldError("event_ts", problem)], event, sid)
        except DeliveryRejected as exc:
            valid = self._valid_ts(exc.event_ts)
            item = synthetic_delivery(
                event, stream_id, at_ms, Source.APP, None, errors=exc.errors, valid_ts=valid
            )
        else:
            item = synthetic_delivery(
                event, sid, ts, Source.APP, UnscopedEvent(sid, EventKind.RESUMED, ts)
            )
        (result,) = self._record([item])
        assert result is not None
        return result

    # --- claims -----------------------------------------------------------------------------

    def claim(
        self,
        worker: str,
        *,
        lease: timedelta | float = DEFAULT_CLAIM_LEASE,
        scope: Scope | str | Iterable[Scope | str] | None = None,
        account_id: str | None = None,
        scope_id: str | None = None,
        exclude: Iterable[str] = (),
    ) -> Claim | None:
        """Take one live stream (started, resumed or interrupted) that nobody holds with an
        unexpired lease, the oldest start first, for ``lease`` (seconds or a timedelta); None if
        there is none. ``scope``: a :class:`Scope` or its value (``meeting``...), or several.
        Streams in ``exclude`` are passed over (a worker backing off from them).

        Each new claim of a stream gets a greater ``token``. Many processes may claim at once:
        on PostgreSQL they skip the rows the others are taking instead of waiting for them.
        """
        from rtms_lifecycle.store import claims as _claims

        scopes = as_set(scope, Scope, "scope")
        where = (
            sorted(s.value for s in scopes) if scopes else None,
            scope_id,
            check_account(account_id),
        )
        skip = sorted(set(exclude))
        if len(skip) > MAX_CLAIM_EXCLUDE:
            raise ValueError(f"exclude: at most {MAX_CLAIM_EXCLUDE} stream ids, not {len(skip)}")
        return _claims.claim(
            self._store,
            check_worker(worker),
            lease_ms(lease),
            where,
            now_ms(),
            _deadline(),
            skip,
        )

    def renew(self, claim: Claim, *, lease: timedelta | float | None = None) -> Claim:
        """Extend the claim's lease (by ``lease``, seconds or a timedelta; else as long as it was
        taken for).

        Raises :class:`ClaimLost` once the claim is not the caller's: ``expired`` (its lease
        ran out and the stream was taken, then let go), ``taken`` (another worker holds it),
        ``released``, or ``stopped`` (with the stream's ``stop_reason``). A lease that ran out
        while nobody took the stream is extended, and the late renewal recorded.
        """
        from rtms_lifecycle.store import claims as _claims

        span = lease_ms(lease) if lease is not None else claim.expires_at - claim.renewed_at
        return _claims.renew(self._store, claim.stream_id, claim.token, span, now_ms(), _deadline())

    def release(self, claim: Claim, reason: str | None = None) -> bool:
        """Let the stream go (``reason`` is kept in the claim history); False if the claim had
        already ended or been replaced (nothing is written then)."""
        from rtms_lifecycle.store import claims as _claims

        return _claims.release(
            self._store, claim.stream_id, claim.token, reason, now_ms(), _deadline()
        )

    def report_connected(self, claim: Claim, at_ms: int | None = None) -> None:
        """Record the worker's word that its media connection to the stream is up
        (``source=app``, in the claim history); :class:`ClaimLost` if the claim is not held."""
        self._report(claim, True, at_ms, None)

    def report_disconnected(
        self, claim: Claim, at_ms: int | None = None, reason: int | None = None
    ) -> None:
        """Record the worker's word that its media connection is down (``reason``: the SDK's
        leave code). Accepted after a stop ended the claim; :class:`ClaimLost` if another
        claim replaced it."""
        self._report(claim, False, at_ms, reason)

    def _report(self, claim: Claim, connected: bool, at_ms: int | None, reason: int | None) -> None:
        from rtms_lifecycle.store import claims as _claims

        now = now_ms()
        at = (
            now
            if at_ms is None
            else check_report_time(at_ms, now, self._max_ahead_ms, self._earliest_ms)
        )
        if reason is not None and (isinstance(reason, bool) or not isinstance(reason, int)):
            raise ValueError(f"reason: must be an integer code, not {reason!r}")
        _claims.report(
            self._store, claim.stream_id, claim.token, connected, at, reason, now, _deadline()
        )

    def claims(self, worker: str | None = None) -> list[Claim]:
        """Claims not ended on live streams (an expired lease included until another worker
        takes the stream), of one worker or all, by worker."""
        from rtms_lifecycle.store import claims as _claims

        with self._store.read() as conn:
            return _claims.claimed(conn, worker, now_ms())

    def unclaimed_streams(self, older_than: timedelta | float = 0.0) -> list[Stream]:
        """Live streams that started at least ``older_than`` ago (seconds or a timedelta) and that
        nobody holds (no claim, or an ended or expired one), oldest first."""
        from rtms_lifecycle.store import claims as _claims

        now = now_ms()
        with self._store.read() as conn:
            return _claims.unclaimed(conn, now - lease_ms(older_than, "older_than"), now)

    def unconnected_streams(self, older_than: timedelta | float = 30.0) -> list[Stream]:
        """Live streams that started at least ``older_than`` ago (seconds or a timedelta) whose
        media no worker reports connected now (unheld, or held but not connected), oldest
        first."""
        from rtms_lifecycle.store import claims as _claims

        now = now_ms()
        with self._store.read() as conn:
            return _claims.unconnected(conn, now - lease_ms(older_than, "older_than"), now)

    def claim_stats(
        self,
        older_than: timedelta | float = 30.0,
        buckets: Sequence[float] = DEFAULT_CONNECT_BUCKETS,
    ) -> ClaimStats:
        """How many live streams started at least ``older_than`` ago (seconds or a timedelta)
        nobody holds, and how many no worker reports connected; and the seconds from start to
        first reported connection of every live stream, counted in ``buckets`` (upper bounds,
        in seconds). Two aggregate queries: cheap enough for every metrics scrape."""
        from rtms_lifecycle.store import claims as _claims

        bounds = sorted({lease_ms(b, "buckets") for b in buckets})
        now = now_ms()
        with self._store.read() as conn:
            return _claims.stats(conn, now - lease_ms(older_than, "older_than"), now, bounds)

    def connected_after_stop(self) -> list[Claim]:
        """Streams Zoom says stopped whose last worker still reports media connected."""
        from rtms_lifecycle.store import claims as _claims

        with self._store.read() as conn:
            return _claims.connected_after_stop(conn)

    def claim_history(self, stream_id: str) -> list[ClaimEvent]:
        """The stream's claim history (append-only), in the order it was recorded."""
        from rtms_lifecycle.store import claims as _claims

        with self._store.read() as conn:
            return _claims.claim_history(conn, stream_id)

    # --- dashboard sessions -----------------------------------------------------------------

    def revoke_dashboard_session(self, session_id: str, until_ms: int) -> None:
        """Record a dashboard sign-out, read by every process of this database, until
        ``until_ms`` (epoch ms; when the session would have expired anyway). Revocations already
        expired are dropped in the same transaction."""
        from rtms_lifecycle.store import revocations as _revocations

        _revocations.revoke(self._store, session_id, until_ms, now_ms(), _deadline())

    def dashboard_session_revoked(self, session_id: str) -> bool:
        """Whether a dashboard session was signed out (in any process of this database)."""
        from rtms_lifecycle.store import revocations as _revocations

        return _revocations.revoked(self._store, session_id, now_ms())

    def expire(self, stale_after: timedelta | float, *, dry_run: bool = False) -> list[Stream]:
        """Stop every live stream with no event for ``stale_after``.

        Each gets a ``source=system`` ``stopped`` event with no stop reason, dated now (one
        time for the whole run). A real ``stopped`` that arrives later carries an older
        ``event_ts``, so it is folded in first and wins over the expiry. With ``dry_run``,
        nothing is written: the streams are returned as the expiry would leave them.
        """
        from rtms_lifecycle.store import queries as _queries

        seconds = (
            stale_after.total_seconds()
            if isinstance(stale_after, timedelta)
            else float(stale_after)
        )
        at = now_ms()
        cutoff = at - int(seconds * 1000)
        with self._store.read() as conn:
            stale = _queries.stale_streams(conn, cutoff)
        if dry_run:
            return [
                replace(
                    stream,
                    state=State.STOPPED,
                    stopped_at=at,
                    last_event_at=at,
                    stop_reason=None,
                    stop_source=Source.SYSTEM.value,
                )
                for stream in stale
            ]
        closed: list[Stream] = []
        for start in range(0, len(stale), DEFAULT_BATCH_SIZE):
            items = []
            for stream in stale[start : start + DEFAULT_BATCH_SIZE]:
                items.append(
                    synthetic_delivery(
                        "system.rtms_expired",
                        stream.stream_id,
                        at,
                        Source.SYSTEM,
                        UnscopedEvent(stream.stream_id, EventKind.STOPPED, at),
                        # Only if the stream is still stale: no newer event came meanwhile.
                        stale_before=cutoff + 1,
                    )
                )
            closed.extend(
                r.stream
                for r in self._record(items)
                if r and r.outcome is Outcome.APPLIED and r.stream
            )
        return closed

    def reprocess(
        self,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        *,
        since: Timestamp | None = None,
        dry_run: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> ReprocessResult:
        """Parse the stored webhook bodies an earlier version refused (``rejected`` and
        ``unhandled``, or the ``outcome`` given; received at or after ``since``) with this
        version, and fold in those now valid, in order of arrival.

        Each one is recorded as a new delivery of source ``reprocess`` that links to the refused
        one (``reprocess_of``), which stays as it was; its transitions have source ``reprocess``.
        A refused delivery reprocessed once is never read again, and one still refused writes
        nothing: a second run changes nothing. ``dry_run`` writes nothing and counts what now
        parses as ``valid``.
        """
        from rtms_lifecycle.store import reprocess as _reprocess

        wanted = sorted(
            as_set(outcome, Outcome, "outcome") or {Outcome.REJECTED, Outcome.UNHANDLED}
        )
        if not set(wanted) <= {Outcome.REJECTED, Outcome.UNHANDLED}:
            raise ValueError("reprocess reads rejected and unhandled deliveries only")
        check_batch_size(batch_size)
        before: Counter[str] = Counter()
        after: Counter[str] = Counter()
        last = 0
        while True:
            with self._store.read() as conn:
                rows = _reprocess.refused(conn, wanted, _epoch_ms(since), last, batch_size)
            if not rows:
                break
            last = rows[-1][0]
            items = []
            for delivery_id, received_at, stored, raw in rows:
                before[stored] += 1
                item = self._reparsed(delivery_id, received_at, raw)
                if isinstance(item, Outcome):
                    after[item.value] += 1
                elif dry_run:
                    after["valid"] += 1
                else:
                    items.append(item)
            if items:
                after.update(r.outcome.value for r in self._record(items) if r is not None)
        return ReprocessResult(dict(before), dict(after), dry_run)

    def _reparsed(self, delivery_id: int, received_at: int, raw: bytes) -> Incoming | Outcome:
        """A refused delivery parsed again, ready to record; or the outcome it still has."""
        item = to_incoming(raw, Source.REPROCESS)
        parsed = item.parsed
        if item.errors or parsed is None:
            return Outcome.REJECTED
        if isinstance(parsed, UnhandledDelivery):
            return Outcome.UNHANDLED
        if isinstance(parsed, StreamEvent):
            # Arriving again: judged against the clock when it first arrived, and this tracker's
            # earliest time (which may have been relaxed to let it in).
            if arrival_time_problem(
                parsed.event_ts, received_at, self._max_ahead_ms, self._earliest_ms
            ):
                return Outcome.REJECTED
            item.parsed = replace(parsed, source=Source.REPROCESS)
        item.reprocess_of = delivery_id
        return item

    def prune(
        self, older_than: timedelta | float, *, dry_run: bool = False, vacuum: bool = False
    ) -> PruneResult:
        """Remove streams that stopped more than ``older_than`` ago (seconds or a timedelta,
        at least a day), with their deliveries and transitions, and older deliveries and
        concurrency alerts that belong to no stream. A stream not stopped is kept whole.

        ``dry_run`` counts instead. Each step is recorded (:meth:`prunes`); new rows reuse the
        freed space; ``vacuum`` then rewrites the database file (SQLite) or runs
        ``VACUUM ANALYZE`` (PostgreSQL). See docs/operations.md.
        """
        from rtms_lifecycle import retention

        if not isinstance(older_than, timedelta):
            older_than = timedelta(seconds=older_than)
        return retention.prune(self._store, older_than, now_ms, dry_run=dry_run, vacuum=vacuum)

    def prunes(self, limit: int | None = None) -> list[PruneRecord]:
        """Recorded prunes, newest first: when, with which cutoff, and what each removed."""
        from rtms_lifecycle.store import retention as _retention

        return _retention.list_prunes(self._store, limit)

    def verify_audit(self, stream_id: str | None = None, *, head: str | None = None) -> AuditReport:
        """Recompute the audit hash chains (every stream's, or ``stream_id``'s) from their rows
        and report each chain's first broken link; with ``head`` (a digest :meth:`audit_head`
        gave earlier), also whether the history as it was then is unchanged. A malformed
        ``head`` raises :class:`ValueError`. See docs/operations.md, "Audit verification".
        """
        from rtms_lifecycle.store import audit as _audit

        if stream_id is not None and head is not None:
            raise ValueError("head: a digest covers every stream; verify it without stream_id")
        return _audit.verify(self._store, stream_id, head)

    def audit_head(self) -> str:
        """The digest of every audit chain's head (and of the chains pruned): store it
        elsewhere, and later pass it to :meth:`verify_audit` as ``head``. Recomputes every chain;
        check :meth:`verify_audit` finds no break before keeping it."""
        return self.verify_audit().head

    def _arrived(self, body: Body, verified: Verification | None = None) -> Incoming:
        """A delivery as it arrives: parsed, and its event time checked against the clock now
        (only now: a stored event is never re-judged, see :func:`arrival_time_problem`)."""
        item = to_incoming(body, verified=verified)
        parsed = item.parsed
        item.event_ts = self._valid_ts(item.event_ts)  # rejected for another field
        event_ts = getattr(parsed, "event_ts", None)
        # The challenge is answered whatever its time, else Zoom's validation of the endpoint
        # fails; it changes no stream, so its time orders nothing.
        if event_ts is None or isinstance(parsed, UrlValidation):
            return item
        problem = arrival_time_problem(event_ts, now_ms(), self._max_ahead_ms, self._earliest_ms)
        if problem is None:
            return item
        return Incoming(
            item.raw,
            None,
            item.source,
            (FieldError("event_ts", problem),),
            event=item.event,
            stream_id=getattr(parsed, "stream_id", None),
            signed_at=item.signed_at,
            secret_label=item.secret_label,
        )

    def _valid_ts(self, event_ts: int | None) -> int | None:
        """``event_ts`` if it would pass as an event's time now, else None."""
        if event_ts is None:
            return None
        problem = arrival_time_problem(event_ts, now_ms(), self._max_ahead_ms, self._earliest_ms)
        return event_ts if problem is None else None

    def _record(
        self,
        items: Sequence[Incoming],
        *,
        with_records: bool = True,
        durable: bool = True,
        deadline: float | None = None,
    ) -> list[IngestResult | None]:
        subscriptions = self._subscriptions
        # Callbacks need each transition's stream; a bulk load without callbacks needs counts.
        results = self._store.record(
            items,
            with_records=with_records or bool(subscriptions),
            deadline=deadline,
            durable=durable,
        )
        if subscriptions:
            self._notify_all(subscriptions, results)
        return results

    @classmethod
    def _notify_all(
        cls, subscriptions: Sequence[Subscription], results: Sequence[IngestResult | None]
    ) -> None:
        for result in results:
            if result is not None and result.transition and result.stream:
                cls._notify(subscriptions, result.transition, result.stream)

    # --- callbacks --------------------------------------------------------------------------

    @overload
    def on_transition(
        self, callback: TransitionCallback, *, to: Any = None, name: Any = None, scope: Any = None
    ) -> TransitionCallback: ...

    @overload
    def on_transition(
        self, callback: None = None, *, to: Any = None, name: Any = None, scope: Any = None
    ) -> Callable[[TransitionCallback], TransitionCallback]: ...

    def on_transition(
        self,
        callback: TransitionCallback | None = None,
        *,
        to: State | str | Iterable[State | str] | None = None,
        name: TransitionName | str | Iterable[TransitionName | str] | None = None,
        scope: Scope | str | Iterable[Scope | str] | None = None,
    ) -> TransitionCallback | Callable[[TransitionCallback], TransitionCallback]:
        """Call ``callback(transition, stream)`` after commit, once per applied transition.

        Filters narrow it to target states, transition names or scopes. Never called for
        duplicates, conflicts or ignored events. A callback that raises is logged; it undoes
        and blocks nothing. Usable as a decorator, with or without arguments. An ``async def``
        callback is refused (:class:`TypeError`): :class:`AsyncTracker` awaits those.
        """

        def register(fn: TransitionCallback) -> TransitionCallback:
            # Called in the writing thread, it would only make a coroutine nobody awaits.
            _refuse_coroutine_function(fn)
            subscription = Subscription.of(fn, to, name, scope)
            with self._lock:
                self._subscriptions = (*self._subscriptions, subscription)
            return fn

        return register(callback) if callback is not None else register

    @staticmethod
    def _notify(
        subscriptions: Sequence[Subscription], transition: Transition, stream: Stream
    ) -> None:
        for subscription in subscriptions:
            if subscription.wants(transition, stream):
                try:
                    outcome = subscription.callback(transition, stream)
                    if inspect.iscoroutine(outcome):
                        outcome.close()  # else: "never awaited", far from the cause
                        raise TypeError("it returned a coroutine: use an AsyncTracker to await it")
                except Exception:
                    callback_failed(subscription.callback, transition)

    # --- durable subscriptions --------------------------------------------------------------

    @overload
    def subscribe(
        self,
        consumer: str,
        callback: TransitionCallback,
        *,
        to: Any = None,
        name: Any = None,
        scope: Any = None,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
    ) -> TransitionCallback: ...

    @overload
    def subscribe(
        self,
        consumer: str,
        callback: None = None,
        *,
        to: Any = None,
        name: Any = None,
        scope: Any = None,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
    ) -> Callable[[TransitionCallback], TransitionCallback]: ...

    def subscribe(
        self,
        consumer: str,
        callback: TransitionCallback | None = None,
        *,
        to: State | str | Iterable[State | str] | None = None,
        name: TransitionName | str | Iterable[TransitionName | str] | None = None,
        scope: Scope | str | Iterable[Scope | str] | None = None,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
    ) -> TransitionCallback | Callable[[TransitionCallback], TransitionCallback]:
        """Register ``callback(transition, stream)`` as the named, durable ``consumer``.

        :meth:`run_subscriptions` then delivers every transition any process records, in feed
        order, filtered as :meth:`on_transition`. The consumer's cursor lives in the database and
        moves only after the callback returned: at least once, never skipped, resumed after a
        restart. A new consumer starts at the end of the feed, or at its start with
        ``from_start``. A callback that raises is retried after ``retry_delay`` seconds, doubling,
        and after ``max_attempts`` the transition is parked for this consumer. One process at a
        time delivers for a consumer (a lease of ``lease`` seconds, renewed as it runs): a
        callback must return within it. An ``async def`` callback is refused
        (:class:`TypeError`): :class:`AsyncTracker` awaits those.
        """

        def register(fn: TransitionCallback) -> TransitionCallback:
            # Called by the runner, it would only make a coroutine nobody awaits.
            _refuse_coroutine_function(fn)
            core = self.consumer(
                consumer,
                Subscription.of(fn, to, name, scope).wants,
                from_start=from_start,
                max_attempts=max_attempts,
                retry_delay=retry_delay,
                lease=lease,
            )
            with self._lock:
                if any(c.name == consumer for c, _ in self._consumers):
                    raise ConfigurationError(f"consumer {consumer!r} is already subscribed here")
                self._consumers = (*self._consumers, (core, fn))
            return fn

        return register(callback) if callback is not None else register

    def run_subscriptions(
        self,
        *,
        stop: threading.Event | None = None,
        idle_exit: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        """Deliver to the subscribed consumers until ``stop`` is set (blocks; run it in a thread).

        With ``idle_exit``, return after that many seconds with nothing to deliver. PostgreSQL
        wakes the runner on each commit (``LISTEN``); SQLite is polled every ``poll_interval``.
        """
        self.subscription_runner(self._consumers, poll_interval).run(stop, idle_exit)

    def consumer(
        self,
        consumer: str,
        wants: _subs.Wants | None = None,
        *,
        from_start: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        lease: float = DEFAULT_LEASE,
        create: bool = True,
    ) -> _subs.Consumer:
        """The delivery core of the named consumer on this database, for a driver of one's own
        (:class:`~rtms_lifecycle.subscriptions.Consumer`); :meth:`subscribe` uses it."""
        from rtms_lifecycle import subscriptions as _subs

        return _subs.Consumer(
            self._store,
            consumer,
            wants=wants,
            from_start=from_start,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            lease=lease,
            create=create,
        )

    def subscription_runner(
        self,
        consumers: Sequence[tuple[_subs.Consumer, TransitionCallback]],
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> _subs.SubscriptionRunner:
        """A runner of these consumers on this database (:meth:`run_subscriptions` runs one)."""
        from rtms_lifecycle import subscriptions as _subs

        return _subs.SubscriptionRunner(self._store, consumers, poll_interval=poll_interval)

    def subscriptions(self) -> list[SubscriptionStatus]:
        """Every durable consumer stored in the database: cursor, lag, parked, last error."""
        from rtms_lifecycle.store import subscriptions as _rows

        return _rows.list_subscriptions(self._store)

    def retry_parked(self, consumer: str) -> int:
        """Queue the consumer's parked transitions for delivery again; how many were queued."""
        from rtms_lifecycle.store import subscriptions as _rows

        count = _rows.requeue_parked(self._store, consumer)
        if count is None:
            raise ConfigurationError(f"no consumer named {consumer!r} is stored")
        return count

    # --- reading ----------------------------------------------------------------------------

    def stream(self, stream_id: str) -> Stream | None:
        """The stream with this ``rtms_stream_id``, or None."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            found = _queries.stream(conn, stream_id)
            return _with_holders(conn, [found])[0] if found is not None else None

    def stored_stream_ids(self, stream_ids: Iterable[str]) -> set[str]:
        """Which of ``stream_ids`` name a stored stream (one that :meth:`stream` finds), in
        one read."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.stored_stream_ids(conn, stream_ids)

    def active_streams(
        self,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        *,
        account_id: str | None = None,
    ) -> list[Stream]:
        """Streams whose media flows now (started or resumed), read through a partial index.

        ``account_id`` keeps the streams of one Zoom account.
        """
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.active_streams(
                conn,
                as_kind(scope, Scope, "scope") if scope else None,
                scope_id,
                account_id,
                now_ms(),
            )

    def streams(
        self,
        state: State | str | Iterable[State | str] | None = None,
        *,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        limit: int | None = None,
        account_id: str | None = None,
        began_since: Timestamp | None = None,
        began_until: Timestamp | None = None,
    ) -> list[Stream]:
        """Stored streams, newest activity first; ``since``/``until`` keep streams alive then,
        ``began_since``/``began_until`` those whose first event is in that window,
        ``account_id`` those of one Zoom account."""
        from rtms_lifecycle.store import queries as _queries

        filters = _stream_filters(state, scope, scope_id, since, until)
        began = (_epoch_ms(began_since), _epoch_ms(began_until))
        with self._store.read() as conn:
            return _with_holders(
                conn, _queries.list_streams(conn, *filters, limit, account_id, began)
            )

    def count_streams(
        self,
        state: State | str | Iterable[State | str] | None = None,
        *,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        account_id: str | None = None,
        began_since: Timestamp | None = None,
        began_until: Timestamp | None = None,
    ) -> int:
        """How many streams :meth:`streams` would list with the same filters, counted by the
        database (a table showing the newest 50 says of how many)."""
        from rtms_lifecycle.store import queries as _queries

        filters = _stream_filters(state, scope, scope_id, since, until)
        began = (_epoch_ms(began_since), _epoch_ms(began_until))
        with self._store.read() as conn:
            return _queries.count_streams(conn, *filters, account_id, began)

    def stream_page(
        self,
        state: State | str | Iterable[State | str] | None = None,
        *,
        scope: Scope | str | None = None,
        scope_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        account_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        holders: bool = False,
    ) -> Page[Stream]:
        """Streams that began (first event) in ``[since, until)``, newest start first, a page
        of ``limit`` at a time: pass the page's ``next`` as ``cursor`` for the one after it.
        ``holders``: fill in the live ones' workers and connection states, as :meth:`streams`
        does.

        Keyset paging: streams added between two pages never make a stream that existed at the
        first page appear twice or not at all. ValueError for a cursor of another list.
        """
        from rtms_lifecycle.store import queries as _queries

        _check_page_size(limit)
        after = decode_cursor("streams", cursor, (int, str)) if cursor else None
        states, scope_, scope_id, began_since, began_until = _stream_filters(
            state, scope, scope_id, since, until
        )
        with self._store.read() as conn:
            rows = _queries.stream_page(
                conn,
                states,
                scope_,
                scope_id,
                began_since,
                began_until,
                account_id,
                after,
                limit + 1,
            )
            page = _page(rows, limit, lambda last: ("streams", [last[0], last[1].stream_id]))
            found = [stream for _, stream in page.items]
            return Page(_with_holders(conn, found) if holders else found, page.next)

    def history(self, stream_id: str) -> list[Transition]:
        """The stream's transitions in event-time order (how it went)."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.history(conn, stream_id)

    def audit(self, stream_id: str) -> list[Transition]:
        """The stream's transitions in the order they were recorded (how we learnt it)."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.audit(conn, stream_id)

    def transitions_since(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Transition], str]:
        """A durable feed: transitions after ``cursor`` and the cursor to pass next time.

        Commit order, not id order: a consumer never misses a transition and never sees one
        twice, even while several processes write. Start with ``cursor=None``.
        """
        from rtms_lifecycle.store import queries as _queries

        position = _parse_cursor(cursor)
        with self._store.read() as conn:
            rows = _queries.transitions_since(conn, position, limit)
            if rows:
                position = _queries.feed_cursor_of(conn, rows[-1].id)
        return rows, f"{position[0]}:{position[1]}"

    def deliveries(
        self,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        *,
        stream_id: str | None = None,
        limit: int | None = 100,
    ) -> list[DeliveryRecord]:
        """Stored deliveries, newest first."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.list_deliveries(
                conn, as_set(outcome, Outcome, "outcome"), stream_id, limit
            )

    def delivery_page(
        self,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        *,
        event: str | None = None,
        stream_id: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[DeliveryRecord]:
        """Stored deliveries received in ``[since, until)``, newest first, a page at a time
        (``cursor``: the ``next`` of the page before)."""
        from rtms_lifecycle.store import queries as _queries

        _check_page_size(limit)
        before = decode_cursor("deliveries", cursor, (int,))[0] if cursor else None
        with self._store.read() as conn:
            found = _queries.list_deliveries(
                conn,
                as_set(outcome, Outcome, "outcome"),
                stream_id,
                limit + 1,
                event=event,
                since=_epoch_ms(since),
                until=_epoch_ms(until),
                before=before,
            )
        return _page(found, limit, lambda last: ("deliveries", [last.id]))

    def alert_page(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        *,
        account_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ConcurrencyAlertRecord]:
        """Concurrency alerts of ``[since, until)`` (event time), newest first, a page at a
        time (``cursor``: the ``next`` of the page before)."""
        from rtms_lifecycle.store import queries as _queries

        _check_page_size(limit)
        before = decode_cursor("alerts", cursor, (int, int)) if cursor else None
        with self._store.read() as conn:
            found = _queries.alerts(
                conn,
                _epoch_ms(since),
                limit + 1,
                until=_epoch_ms(until),
                account_id=account_id,
                before=before,
            )
        return _page(found, limit, lambda last: ("alerts", [last.event_ts, last.id]))

    def stop_reason_stats(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        by_scope: bool = False,
        *,
        account_id: str | None = None,
    ) -> list[StopReasonStat]:
        """Per stop reason (and scope): count, share and median duration of streams stopped
        in ``[since, until)`` (of one Zoom account with ``account_id``)."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.stop_reason_stats(
                conn, _epoch_ms(since), _epoch_ms(until), by_scope, account_id
            )

    def unhandled_stats(
        self, since: Timestamp | None = None, until: Timestamp | None = None
    ) -> list[UnhandledEventStat]:
        """Deliveries of events this version does not handle, per event name, received in
        ``[since, until)``: count, first and last seen. RTMS-looking names come first."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.unhandled_stats(conn, _epoch_ms(since), _epoch_ms(until))

    def stop_reason_counts(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        *,
        bucket: timedelta = timedelta(hours=1),
    ) -> list[StopReasonCount]:
        """Streams stopped in ``[since, until)`` per stop reason and UTC-aligned ``bucket`` of
        stop time (an hour by default), oldest bucket first."""
        from rtms_lifecycle.store import queries as _queries

        bucket_ms = int(bucket.total_seconds() * 1000)
        if bucket_ms < 1:
            raise ValueError("bucket must be at least a millisecond")
        with self._store.read() as conn:
            return _queries.stop_reason_counts(conn, _epoch_ms(since), _epoch_ms(until), bucket_ms)

    def interruption_stats(
        self,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        scope: Scope | str | None = None,
        *,
        account_id: str | None = None,
    ) -> InterruptionStats:
        """Interruptions of streams that began in ``[since, until)`` and how they recovered
        (of one Zoom account with ``account_id``)."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.interruption_stats(
                conn,
                _epoch_ms(since),
                _epoch_ms(until),
                as_kind(scope, Scope, "scope") if scope else None,
                account_id,
            )

    def interruption_stats_by_scope(
        self, since: Timestamp | None = None, until: Timestamp | None = None
    ) -> dict[Scope, InterruptionStats]:
        """:meth:`interruption_stats` for every scope with streams that began in
        ``[since, until)``, in one pass."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.interruption_stats_by_scope(conn, _epoch_ms(since), _epoch_ms(until))

    def concurrency_alerts(
        self, since: Timestamp | None = None, limit: int | None = None
    ) -> list[ConcurrencyAlertRecord]:
        """Account-level concurrency alerts, newest first."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.alerts(conn, _epoch_ms(since), limit)

    def latest_alert(self) -> ConcurrencyAlertRecord | None:
        """The newest concurrency alert, or None."""
        found = self.concurrency_alerts(limit=1)
        return found[0] if found else None

    def check_writable(self, timeout: float = DEFAULT_STORE_TIMEOUT) -> None:
        """Raise :class:`StoreError` saying why, unless the store can begin a write and write a
        row in every table a delivery writes within ``timeout`` seconds (:class:`StoreTimeout`
        if it took longer), and the last delivery writes did not all fail (then it says since
        when; the next delivery written resets it).

        The probe's rows are rolled back. This is what the receiver's health check asks: a
        database that answers reads but refuses writes (read-only, full, damaged, its file
        deleted) would have every delivery answered 503.
        """
        self._store.check_writable(timeout)

    def ping(self) -> bool:
        """Whether the database answers."""
        return self._store.ping()

    def active_counts(self) -> dict[Scope, int]:
        """How many streams flow now (started or resumed) per scope, from the live index."""
        from rtms_lifecycle.store import queries as _queries

        with self._store.read() as conn:
            return _queries.active_counts(conn)

    def live_counts(self, long_after: timedelta | float) -> list[tuple[Scope, State, int, int]]:
        """Per scope and live state (started, interrupted, resumed): ``(scope, state, streams,
        of them started more than long_after ago)``, from the live index (cheap enough for
        every scrape)."""
        from rtms_lifecycle.store import queries as _queries

        seconds = long_after.total_seconds() if isinstance(long_after, timedelta) else long_after
        with self._store.read() as conn:
            return _queries.live_counts(conn, now_ms() - int(seconds * 1000))

    def recent_stops(self, within: timedelta | float) -> tuple[int, int]:
        """Streams stopped in the last ``within`` (by ``stopped_at``, Zoom's event time or an
        expiry's): ``(by a webhook, by an expiry)``, from the stop index (cheap enough for every
        scrape: it reads only the window's stops)."""
        from rtms_lifecycle.store import queries as _queries

        seconds = within.total_seconds() if isinstance(within, timedelta) else within
        with self._store.read() as conn:
            return _queries.recent_stops(conn, now_ms() - int(seconds * 1000))

    def capacity(self) -> DatabaseCapacity:
        """The database's size in bytes and, on SQLite, its file system's free and total bytes
        (None where not known). On SQLite ``os.stat``/``os.statvfs`` of the paths it opened:
        it answers while the database cannot be read; on PostgreSQL ``pg_database_size``."""
        return self._store.capacity()

    def schema_revision(self) -> str | None:
        """The migration the database is at (None: no schema yet)."""
        return self._store.schema_revision()


def submit_deliveries(
    tracker: Tracker,
    bodies: Sequence[Body],
    *,
    verified: Sequence[Verification | None] | None = None,
    headers: Mapping[str, str] | None = None,
    deadline: float | None = None,
    then: Callable[[list[IngestResult]], Any] | None = None,
) -> Future[Any]:
    """:meth:`Tracker.ingest_batch` as a future, for callers that must not block (AsyncTracker).

    On SQLite the write is queued with the store's other writes (a group commit with the
    deliveries queued beside it), parsed when it begins, and the tracker's callbacks run in the
    writer thread, in the caller's context, before the future is done. Elsewhere it is written
    now, in the calling thread. ``headers`` (one body): verified first, as ``ingest`` does.
    The future holds the results, or ``then(results)`` (called where the callbacks run).
    """
    if headers is not None:
        if len(bodies) != 1:
            raise ValueError("headers verify one body")
        verified = [tracker._verified(bodies[0], headers, None)]
    return tracker._submit(bodies, verified, deadline, then)


def load_next(tracker: Tracker, bodies: Iterator[Body], size: int) -> IngestSummary:
    """The next ``size`` bodies of a bulk load, in one transaction, as :meth:`Tracker.ingest_many`
    records them, for AsyncTracker's jobs (run in a worker thread, none left: a total of 0).

    The bodies are parsed a few at a time within the transaction, each few let go once decided
    (only results with their records are kept, when callbacks need them): a bulk load then
    leaves little for Python's full collection passes to be triggered by, which stop every
    thread, the event loop's too.
    """
    batch = list(islice(bodies, size))
    if not batch:
        return IngestSummary({})
    subscriptions = tracker._subscriptions
    if subscriptions:  # only the results, for the callbacks after the commit
        results = tracker._store.load_records(batch, tracker._arrived)
        outcomes = [result.outcome for result in results if result is not None]
    else:
        outcomes = tracker._store.load(batch, tracker._arrived)
    tracker._store.confirm()
    if subscriptions:
        tracker._notify_all(subscriptions, results)
    return IngestSummary(dict(Counter(outcomes)))


def write_executor(tracker: Tracker) -> Executor | None:
    """Runs jobs that write in their turn, on the store's writer thread (SQLite); None where
    writers need no queue (PostgreSQL)."""
    return tracker._store.writes


def _with_holders(conn: Connection, found: list[Stream]) -> list[Stream]:
    """The streams with their claims' workers and connection states (live ones only)."""
    from rtms_lifecycle.store import claims as _claims

    held = _claims.holders(conn, (s.stream_id for s in found if not s.stopped), now_ms())
    for stream in found:
        stream.worker, stream.connected = held.get(stream.stream_id, (None, False))
    return found


def _deadline() -> float:
    return time.monotonic() + DEFAULT_STORE_TIMEOUT


def _checks(
    bodies: Sequence[Body], verified: Sequence[Verification | None] | None
) -> Sequence[Verification | None]:
    checks = [None] * len(bodies) if verified is None else verified
    if len(checks) != len(bodies):
        raise ValueError("verified must hold one entry per body")
    return checks


def _is_coroutine_function(fn: object) -> bool:
    # A callable object counts by its __call__; functools.partial is unwrapped by inspect.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the method itself is what is inspected
    )


def _refuse_coroutine_function(fn: TransitionCallback) -> None:
    if _is_coroutine_function(fn):
        raise TypeError(
            f"{fn!r} is a coroutine function: a Tracker cannot await it; "
            "register it on an AsyncTracker instead"
        )


_T = TypeVar("_T")


def _page(
    found: list[_T], limit: int, position: Callable[[_T], tuple[str, list[int | str]]]
) -> Page[_T]:
    """``found`` (read with ``limit + 1``) as a page, the cursor of its last row if more follow."""
    if len(found) <= limit:
        return Page(found, None)
    return Page(found[:limit], encode_cursor(*position(found[limit - 1])))


def _check_page_size(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be from 1 to {MAX_PAGE_SIZE}, got {limit!r}")


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    if not cursor:
        return (-1, -1)
    try:
        tx_id, _, transition_id = cursor.partition(":")
        position = (int(tx_id), int(transition_id))
    except ValueError:
        raise ValueError(f"not a feed cursor: {cursor!r}") from None
    if not all(-1 <= each <= MAX_COUNT for each in position):
        # Past a 64-bit integer the driver raised OverflowError rather than a ValueError.
        raise ValueError(f"not a feed cursor (a number past what the database holds): {cursor!r}")
    return position
