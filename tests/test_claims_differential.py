"""PostgreSQL's claim statements (``rtms_lifecycle_claim``, migration 0016;
``rtms_lifecycle_renew`` and ``rtms_lifecycle_release``, migration 0017) against the generic
claim path: any sequence of starts, claims (with scope, account and exclude filters), renewals,
releases, reports, time and stops, run on two databases, one claiming, renewing and releasing
through the statements and the other through the generic path, gives the same outcomes (claims,
tokens, ``ClaimLost`` reasons and messages) and leaves the same rows in ``stream_claims``,
``claim_history`` and ``claim_queue``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from rtms_lifecycle import ClaimLost, Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.store import claims
from rtms_lifecycle.store.core import Store
from tests._deliveries import body

LEASE_MS = 1000
WORKERS = ("w0", "w1", "w2")
ACCOUNTS = (None, "acct-a", "acct-b")
SCOPE_FILTERS = (("meeting",), ("webinar",), ("meeting", "webinar"))

pytestmark = pytest.mark.postgres

# A stop's times are the wall clock's when it is recorded (a trigger): left out.
_ROWS = {
    "stream_claims": (
        "SELECT stream_id, token, worker, claimed_at, renewed_at, expires_at,"
        " CASE WHEN end_reason = 'stopped' THEN NULL ELSE ended_at END,"
        " end_reason, connected, connected_at, disconnected_at FROM stream_claims"
        " WHERE stream_id LIKE :p ORDER BY stream_id"
    ),
    "claim_history": (
        "SELECT stream_id, token, worker, event, source,"
        " CASE WHEN event = 'stopped' THEN NULL ELSE at END,"
        " CASE WHEN event = 'stopped' THEN NULL ELSE recorded_at END, reason"
        " FROM claim_history WHERE stream_id LIKE :p ORDER BY id"
    ),
    "claim_queue": (
        "SELECT stream_id, started_at FROM claim_queue WHERE stream_id LIKE :p ORDER BY stream_id"
    ),
}


class Differential(RuleBasedStateMachine):
    #: (tracker, store, claims through the generic path)
    sides: ClassVar[tuple[tuple[Tracker, Store, bool], ...]]
    examples: ClassVar[Iterator[int]]

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"d{next(self.examples)}-"
        self.now = now_ms()
        # Event times, the same on both sides: every start at ``now - 500_000`` (+ a tie
        # breaker), every later event after them, so that a stop stops.
        self.event_at = self.now - 400_000
        self.streams: list[str] = []
        #: Each stream's scope: its stop must name it.
        self.scopes: dict[str, str] = {}
        self.stopped: set[str] = set()
        #: Claims either side returned (equal on both), by stream and token.
        self.taken: list[Any] = []

    def _both(self, call: Callable[[Tracker, Store, bool], Any]) -> Any:
        """``call`` on each side; their results (or ``ClaimLost`` reasons) must be equal."""
        outcomes = []
        for tracker, store, generic in self.sides:
            try:
                outcomes.append(("ok", call(tracker, store, generic)))
            except ClaimLost as lost:
                outcomes.append(("lost", (lost.reason, str(lost), lost.stop_reason)))
        assert outcomes[0] == outcomes[1], outcomes
        return outcomes[0]

    def _ingest(self, delivery: dict[str, Any]) -> None:
        _, outcome = self._both(lambda tracker, _store, _generic: tracker.ingest(delivery).outcome)
        assert outcome.value == "applied", (delivery, outcome)

    @initialize()
    def first_streams(self) -> None:
        for tie in (0, 0, 1):
            self.start(tie, "meeting", None)

    @rule(
        tie=st.integers(0, 3),
        scope=st.sampled_from(("meeting", "webinar")),
        account=st.sampled_from(ACCOUNTS),
    )
    def start(self, tie: int, scope: str, account: str | None) -> None:
        sid = f"{self.prefix}s{len(self.streams)}"
        extra = {} if account is None else {"account_id": account}
        # Starts that share a time (``tie``) are taken by stream id.
        self._ingest(body("started", sid, self.now - 500_000 + tie, scope=scope, **extra))
        self.streams.append(sid)
        self.scopes[sid] = scope

    @rule(worker=st.sampled_from(WORKERS), lease=st.integers(1, 2 * LEASE_MS))
    def claim_any(self, worker: str, lease: int) -> None:
        self.claim(worker, None, None, [], lease)

    @rule(
        worker=st.sampled_from(WORKERS),
        scopes=st.none() | st.sampled_from(SCOPE_FILTERS),
        account=st.none() | st.sampled_from(ACCOUNTS[1:]),
        exclude=st.lists(st.integers(0, 8), max_size=2, unique=True),
        lease=st.integers(1, 2 * LEASE_MS),
    )
    def claim(
        self,
        worker: str,
        scopes: tuple[str, ...] | None,
        account: str | None,
        exclude: list[int],
        lease: int,
    ) -> None:
        where: claims.ClaimFilter = (scopes, None, account)
        skip = sorted(f"{self.prefix}s{i}" for i in exclude)
        _, taken = self._both(
            lambda _tracker, store, generic: claims.claim(
                store, worker, lease, where, self.now, None, skip, generic=generic
            )
        )
        if taken is not None:
            assert taken.stream_id.startswith(self.prefix)  # earlier examples left none live
            assert taken.stream_id not in skip
            self.taken.append(taken)

    @precondition(lambda self: self.taken)
    @rule(data=st.data(), lease=st.integers(1, 2 * LEASE_MS))
    def renew(self, data: st.DataObject, lease: int) -> None:
        old = data.draw(st.sampled_from(self.taken))
        kind, renewed = self._both(
            lambda _tracker, store, generic: claims.renew(
                store, old.stream_id, old.token, lease, self.now, None, generic=generic
            )
        )
        if kind == "ok":
            self.taken.append(renewed)

    @precondition(lambda self: self.taken)
    @rule(data=st.data(), reason=st.sampled_from(("done", None)))
    def release(self, data: st.DataObject, reason: str | None) -> None:
        old = data.draw(st.sampled_from(self.taken))
        self._both(
            lambda _tracker, store, generic: claims.release(
                store, old.stream_id, old.token, reason, self.now, None, generic=generic
            )
        )

    @precondition(lambda self: self.taken)
    @rule(data=st.data(), connected=st.booleans())
    def report(self, data: st.DataObject, connected: bool) -> None:
        old = data.draw(st.sampled_from(self.taken))
        self._both(
            lambda _tracker, store, _generic: claims.report(
                store, old.stream_id, old.token, connected, self.now, 3, self.now, None
            )
        )

    @rule(ms=st.integers(0, 2 * LEASE_MS))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @precondition(lambda self: len(self.stopped) < len(self.streams))
    @rule(data=st.data(), interrupt=st.booleans())
    def stop(self, data: st.DataObject, interrupt: bool) -> None:
        sid = data.draw(st.sampled_from([s for s in self.streams if s not in self.stopped]))
        self.event_at += 1
        if interrupt:  # still live, still held
            self._ingest(body("interrupted", sid, self.event_at, scope=self.scopes[sid]))
            return
        self._ingest(body("stopped", sid, self.event_at, stop_reason=6, scope=self.scopes[sid]))
        self.stopped.add(sid)

    @invariant()
    def same_rows(self) -> None:
        for table, sql in _ROWS.items():
            found = []
            for _, store, _ in self.sides:
                with store.read() as conn:
                    found.append(conn.execute(text(sql), {"p": f"{self.prefix}%"}).all())
            assert found[0] == found[1], (table, found)

    def teardown(self) -> None:
        # Later examples share the databases: none of this one's streams stays live.
        for sid in self.streams:
            if sid not in self.stopped:
                self.event_at += 1
                stop = body("stopped", sid, self.event_at, stop_reason=6, scope=self.scopes[sid])
                for tracker, _, _ in self.sides:
                    assert tracker.ingest(stop).outcome.value == "applied"


def test_the_claim_statement_and_the_generic_path_agree(
    make_postgres_url: Callable[..., str], migrated_postgres_template: str
) -> None:
    urls = [make_postgres_url(template=migrated_postgres_template) for _ in range(2)]
    with Tracker(urls[0]) as fast, Tracker(urls[1]) as generic:
        stores = [Store(url) for url in urls]
        try:
            Differential.sides = ((fast, stores[0], False), (generic, stores[1], True))
            Differential.examples = itertools.count()
            run_state_machine_as_test(
                Differential,
                settings=settings(
                    max_examples=40,
                    stateful_step_count=30,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
        finally:
            for store in stores:
                store.close()
