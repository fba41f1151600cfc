"""Claims as a state machine: any interleaving of claims, renewals, time, stops, releases and
dead workers keeps at most one unexpired holder per stream, and tokens strictly increasing.

The claims are taken on a real database (a SQLite file, PostgreSQL) through the store's claim
functions with a clock the test moves; stops are real deliveries.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from typing import ClassVar

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

from rtms_lifecycle import Claim, ClaimLost, Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.store import claims
from rtms_lifecycle.store.core import Store
from tests._deliveries import body

LEASE_MS = 1000
WORKERS = ("w0", "w1", "w2")
NO_FILTER: claims.ClaimFilter = (None, None, None)


class ClaimsMachine(RuleBasedStateMachine):
    tracker: ClassVar[Tracker]
    store: ClassVar[Store]
    examples: ClassVar[Iterator[int]]
    #: PostgreSQL: claim, renew and release through the generic path, not the statements.
    generic: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"e{next(self.examples)}-"
        self.now = now_ms()
        self.streams: list[str] = []
        self.stopped: set[str] = set()
        self.dead: set[str] = set()
        #: What each worker holds, as the database last told it.
        self.held: dict[str, dict[str, Claim]] = {w: {} for w in WORKERS}
        #: Every grant: stream -> token -> [first granted at, last lease end].
        self.grants: dict[str, dict[int, list[int]]] = defaultdict(dict)

    @initialize()
    def first_streams(self) -> None:
        for _ in range(3):
            self.start()

    def _grant(self, claim: Claim, at: int) -> None:
        span = self.grants[claim.stream_id].setdefault(claim.token, [at, claim.expires_at])
        span[1] = max(span[1], claim.expires_at)

    def _alive(self) -> list[str]:
        return [w for w in WORKERS if w not in self.dead]

    # --- rules ------------------------------------------------------------------------------

    @rule()
    def start(self) -> None:
        sid = f"{self.prefix}s{len(self.streams)}"
        self.tracker.ingest(body("started", sid, now_ms() - 60_000))
        self.streams.append(sid)

    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        alive = self._alive()
        if not alive:
            return
        worker = data.draw(st.sampled_from(alive))
        claim = claims.claim(
            self.store, worker, LEASE_MS, NO_FILTER, self.now, None, generic=self.generic
        )
        if claim is None:
            return
        assert claim.stream_id in self.streams
        assert claim.stream_id not in self.stopped
        self.held[worker][claim.stream_id] = claim
        self._grant(claim, self.now)

    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        mine = [(w, sid) for w in self._alive() for sid in self.held[w]]
        if not mine:
            return
        worker, sid = data.draw(st.sampled_from(mine))
        old = self.held[worker][sid]
        why: str | None = None
        try:
            renewed = claims.renew(
                self.store, sid, old.token, LEASE_MS, self.now, None, generic=self.generic
            )
        except ClaimLost as lost:
            del self.held[worker][sid]
            why = lost.reason
        if why is not None:
            # Lost only to a stop, or once the lease had run out (and another took it).
            ok = sid in self.stopped if why == "stopped" else old.expires_at <= self.now
            assert ok, (why, old, self.now)
            return
        assert renewed.token == old.token
        assert sid not in self.stopped
        self.held[worker][sid] = renewed
        self._grant(renewed, self.now)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        mine = [(w, sid) for w in self._alive() for sid in self.held[w]]
        if not mine:
            return
        worker, sid = data.draw(st.sampled_from(mine))
        claim = self.held[worker].pop(sid)
        released = claims.release(
            self.store, sid, claim.token, "done", self.now, None, generic=self.generic
        )
        if claim.expires_at > self.now and sid not in self.stopped:
            assert released  # an unexpired claim of a live stream is still its holder's
        if released:
            # From now on it holds nothing: its grant ends here.
            self.grants[sid][claim.token][1] = self.now

    @rule(ms=st.integers(0, 2 * LEASE_MS))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @precondition(lambda self: len(self.stopped) < len(self.streams))
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from([s for s in self.streams if s not in self.stopped]))
        self.tracker.ingest(body("stopped", sid, now_ms(), stop_reason=6))
        self.stopped.add(sid)

    @precondition(lambda self: len(self.dead) < len(WORKERS) - 1)
    @rule(worker=st.sampled_from(WORKERS))
    def kill(self, worker: str) -> None:
        self.dead.add(worker)  # it never calls again: its leases run out

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def one_unexpired_holder_per_stream(self) -> None:
        holders: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for worker, mine in self.held.items():
            for sid, claim in mine.items():
                if claim.expires_at > self.now and sid not in self.stopped:
                    holders[sid].append((worker, claim.token))
        for sid, who in holders.items():
            assert len(who) <= 1, (sid, who)
        with self.store.read() as conn:
            rows = conn.execute(
                text(
                    "SELECT stream_id, worker, token FROM stream_claims"
                    " WHERE ended_at IS NULL AND expires_at > :now AND stream_id LIKE :p"
                ),
                {"now": self.now, "p": f"{self.prefix}%"},
            ).all()
        for sid, worker, token in rows:
            assert sid not in self.stopped  # a stop ends the claim
            # The database's holder is one the model knows, dead or alive.
            assert holders.get(sid, [(worker, int(token))]) == [(worker, int(token))], (sid, rows)

    @invariant()
    def tokens_strictly_increase(self) -> None:
        with self.store.read() as conn:
            history = conn.execute(
                text(
                    "SELECT stream_id, token FROM claim_history WHERE event = 'claimed'"
                    " AND stream_id LIKE :p ORDER BY id"
                ),
                {"p": f"{self.prefix}%"},
            ).all()
            newest: dict[str, int] = dict(
                conn.execute(
                    text("SELECT stream_id, token FROM stream_claims WHERE stream_id LIKE :p"),
                    {"p": f"{self.prefix}%"},
                ).all()
            )
        tokens: dict[str, list[int]] = defaultdict(list)
        for sid, token in history:
            tokens[sid].append(int(token))
        for sid, seen in tokens.items():
            assert all(a < b for a, b in itertools.pairwise(seen)), (sid, seen)
            assert int(newest[sid]) == seen[-1]

    @invariant()
    def no_two_tokens_held_at_once(self) -> None:
        for sid, spans in self.grants.items():
            ordered = sorted(spans.items())
            for (_, (_, until)), (token, (begin, _)) in itertools.pairwise(ordered):
                assert until <= begin, (sid, token, ordered)

    def teardown(self) -> None:
        # Later examples share the database: none of this one's streams stays live.
        for sid in self.streams:
            if sid not in self.stopped:
                self.tracker.ingest(body("stopped", sid, now_ms(), stop_reason=6))


@pytest.mark.parametrize(
    ("db", "generic"), [("sqlite", True), ("postgres", False), ("postgres", True)]
)
def test_claims_state_machine(db: str, generic: bool, request: pytest.FixtureRequest) -> None:
    url: str = request.getfixturevalue(f"{db}_url")
    with Tracker(url) as tracker:
        store = Store(url)
        try:
            ClaimsMachine.tracker, ClaimsMachine.store = tracker, store
            ClaimsMachine.generic = generic
            ClaimsMachine.examples = itertools.count()
            run_state_machine_as_test(
                ClaimsMachine,
                settings=settings(
                    max_examples=25 if db == "sqlite" else 15,
                    stateful_step_count=25,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
        finally:
            store.close()
