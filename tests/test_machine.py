"""The lifecycle machine and the pure fold (docs/concepts.md)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtms_lifecycle.events import EventKind, Scope, StreamEvent
from rtms_lifecycle.machine import MACHINE, State, TransitionName, fold, transition_table

S, K, T = State, EventKind, TransitionName

# The documented table, cell by cell: (state, event) -> (next state, transition), None = ignored.
SPEC_TABLE: dict[tuple[State, EventKind], tuple[State, TransitionName] | None] = {
    (S.NEW, K.STARTED): (S.STARTED, T.START),
    (S.NEW, K.INTERRUPTED): (S.INTERRUPTED, T.INTERRUPT),
    (S.NEW, K.RESUMED): None,
    (S.NEW, K.STOPPED): (S.STOPPED, T.STOP),
    (S.STARTED, K.STARTED): (S.STARTED, T.FAILOVER),
    (S.STARTED, K.INTERRUPTED): (S.INTERRUPTED, T.INTERRUPT),
    (S.STARTED, K.RESUMED): None,
    (S.STARTED, K.STOPPED): (S.STOPPED, T.STOP),
    (S.INTERRUPTED, K.STARTED): (S.RESUMED, T.RESUME),
    (S.INTERRUPTED, K.INTERRUPTED): (S.INTERRUPTED, T.INTERRUPT),
    (S.INTERRUPTED, K.RESUMED): (S.RESUMED, T.RESUME),
    (S.INTERRUPTED, K.STOPPED): (S.STOPPED, T.STOP),
    (S.RESUMED, K.STARTED): (S.RESUMED, T.FAILOVER),
    (S.RESUMED, K.INTERRUPTED): (S.INTERRUPTED, T.INTERRUPT),
    (S.RESUMED, K.RESUMED): None,
    (S.RESUMED, K.STOPPED): (S.STOPPED, T.STOP),
    **{(S.STOPPED, kind): None for kind in EventKind},
}

# Events that lead from `new` to each state, so that any cell can be reached by a fold.
REACH: dict[State, list[EventKind]] = {
    S.NEW: [],
    S.STARTED: [K.STARTED],
    S.INTERRUPTED: [K.STARTED, K.INTERRUPTED],
    S.RESUMED: [K.STARTED, K.INTERRUPTED, K.RESUMED],
    S.STOPPED: [K.STARTED, K.STOPPED],
}


def event(kind: EventKind, ts: int, stream_id: str = "s1", **fields: object) -> StreamEvent:
    """A meeting stream event for the pure fold."""
    return StreamEvent(
        event=f"meeting.rtms_{kind.value}",
        scope=Scope.MEETING,
        kind=kind,
        stream_id=stream_id,
        scope_id="m1",
        event_ts=ts,
        **fields,  # type: ignore[arg-type]
    )


def test_machine_definition_is_the_spec_table() -> None:
    """The machine's applied cells are exactly the documented non-ignored cells."""
    expected = {cell: result for cell, result in SPEC_TABLE.items() if result is not None}
    assert transition_table() == expected


@pytest.mark.parametrize(("cell", "expected"), list(SPEC_TABLE.items()), ids=str)
def test_fold_applies_each_cell(
    cell: tuple[State, EventKind], expected: tuple[State, TransitionName] | None
) -> None:
    """Folding an event in each state gives the documented next state and transition name."""
    state, kind = cell
    history = [event(k, 10 * (i + 1)) for i, k in enumerate(REACH[state])]
    last = event(kind, 1000)
    folded, steps = fold("s1", [*history, last])
    assert steps[-1][0] is last
    if expected is None:
        assert steps[-1][1] is None
        assert folded.state is state
    else:
        assert (folded.state, steps[-1][1]) == expected


class _Model:
    """A bare object the machine can move, as the machine's own users would bind."""

    def __init__(self, state: State) -> None:
        self.state = state.value


@pytest.mark.parametrize(("cell", "expected"), list(SPEC_TABLE.items()), ids=str)
def test_compiled_table_agrees_with_firing_the_machine(
    cell: tuple[State, EventKind], expected: tuple[State, TransitionName] | None
) -> None:
    """Firing the transitions machine's trigger moves a model as the compiled fold table says."""
    state, kind = cell
    model = _Model(state)
    fired = MACHINE.events[kind.value].trigger(model)
    assert fired is (expected is not None)
    assert model.state == (expected[0] if expected else state).value


def test_machine_binds_no_model() -> None:
    """Folding streams never binds a model to the module-level machine."""
    fold("s1", [event(K.STARTED, 1), event(K.STOPPED, 2)])
    assert MACHINE.models == []


def test_derived_fields() -> None:
    """Derived fields follow docs/concepts.md: urls from the latest start, counters, times."""
    events = [
        event(K.STARTED, 10, server_urls="wss://a", account_id=None, operator_id="op1"),
        event(K.INTERRUPTED, 20, account_id="acc1"),
        event(K.STARTED, 30, server_urls="wss://b", account_id="acc2"),
        event(K.STARTED, 40, server_urls="wss://c"),
        event(K.STOPPED, 50, stop_reason=6),
        event(K.INTERRUPTED, 60),
    ]
    folded, steps = fold("s1", events)
    assert [name for _, name in steps] == [
        T.START,
        T.INTERRUPT,
        T.RESUME,
        T.FAILOVER,
        T.STOP,
        None,
    ]
    assert (folded.state, folded.server_urls) == (S.STOPPED, "wss://c")
    assert (folded.started_at, folded.stopped_at, folded.stop_reason) == (10, 50, 6)
    assert folded.last_event_at == 50
    assert (folded.interruptions, folded.resumes, folded.failovers) == (1, 1, 1)
    assert (folded.account_id, folded.operator_id) == ("acc1", "op1")


def test_ignored_event_counts_nowhere() -> None:
    """An ignored event changes no derived field, only the fold position."""
    started = event(K.STARTED, 10, server_urls="wss://a")
    ignored = event(K.RESUMED, 20, account_id="acc-from-ignored")
    with_it, _ = fold("s1", [started, ignored])
    without, _ = fold("s1", [started])
    assert with_it.account_id is None
    assert (with_it.fold_ts, with_it.fold_rank) == (20, EventKind.RESUMED.rank)
    with_it.fold_ts, with_it.fold_rank = without.fold_ts, without.fold_rank
    assert with_it.same_as(without)


def test_same_timestamp_orders_by_rank() -> None:
    """Events with one event_ts fold as started, interrupted, resumed, stopped."""
    kinds = [K.STOPPED, K.RESUMED, K.INTERRUPTED, K.STARTED]
    _, steps = fold("s1", [event(k, 5) for k in kinds])
    assert [e.kind for e, _ in steps] == [K.STARTED, K.INTERRUPTED, K.RESUMED, K.STOPPED]


event_sets = st.lists(
    st.tuples(st.sampled_from(list(EventKind)), st.integers(min_value=0, max_value=40)),
    min_size=1,
    max_size=12,
    unique=True,
)


@given(event_sets, st.randoms(use_true_random=False))
def test_fold_is_order_independent(pairs: list[tuple[EventKind, int]], rnd: random.Random) -> None:
    """Any permutation of a stream's distinct events folds to the same state."""
    events = [event(kind, ts, stop_reason=ts % 27) for kind, ts in pairs]
    shuffled = events[:]
    rnd.shuffle(shuffled)
    first, _ = fold("s1", events)
    second, _ = fold("s1", shuffled)
    assert first.same_as(second)
