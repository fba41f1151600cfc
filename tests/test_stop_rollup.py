"""The stop rollup (``store/rollup.py``, migration 0014) answers ``stop_reason_stats`` exactly as
the plain query over ``streams`` does, whatever happened to the stops: out of order, replaced by
an earlier stop with another reason, expired, batched, pruned."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from rtms_lifecycle import Scope, Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store import queries, rollup
from rtms_lifecycle.store.engine import create_store_engine
from tests._deliveries import body

DAY = rollup.DAY_MS
_RUNS = itertools.count()
_SCOPES = (Scope.MEETING, Scope.WEBINAR, Scope.PHONE)
_ACCOUNTS = ("acct-a", "acct-b")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    made = create_store_engine(db_url)
    yield made
    made.dispose()


def _rollup_rows(engine: Engine) -> set[tuple[Any, ...]]:
    with engine.connect() as conn:
        return {
            tuple(row)
            for row in conn.execute(
                text("SELECT day, scope, kind, stop_reason, bucket, count FROM stop_reason_rollup")
            )
        }


def _recomputed(engine: Engine) -> set[tuple[Any, ...]]:
    key = rollup.key_sql("s")
    with engine.connect() as conn:
        return {
            tuple(row)
            for row in conn.execute(
                text(
                    f"SELECT {key}, count(*) FROM streams AS s"
                    f" WHERE s.stopped_at IS NOT NULL GROUP BY {key}"
                )
            )
        }


def _same_answers(engine: Engine, windows: list[tuple[int | None, int | None]]) -> None:
    assert _rollup_rows(engine) == _recomputed(engine)
    with engine.connect() as conn:
        for since, until in windows:
            for by_scope in (False, True):
                for account in (None, *_ACCOUNTS):
                    ours = queries.stop_reason_stats(conn, since, until, by_scope, account)
                    plain = queries.stop_reason_stats(
                        conn, since, until, by_scope, account, from_rows=True
                    )
                    assert ours == plain, (since, until, by_scope, account)


# One step: (stream, kind, day, ms into the day, reason or None), or an expiry, or a prune.
_EVENT = st.tuples(
    st.integers(0, 4),
    st.sampled_from(["started", "interrupted", "stopped"]),
    st.integers(0, 9),
    st.integers(0, DAY - 1),
    st.sampled_from([None, 1, 6, 11, 20]),
)
_STEP = st.one_of(
    st.tuples(st.just("event"), _EVENT),
    st.tuples(st.just("batch"), st.lists(_EVENT, min_size=1, max_size=6)),
    st.tuples(st.just("expire"), st.integers(1, 48)),
    st.tuples(st.just("prune"), st.integers(1, 9)),
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(_STEP, min_size=1, max_size=25),
    streams=st.lists(
        st.tuples(st.sampled_from(_SCOPES), st.sampled_from(_ACCOUNTS)), min_size=5, max_size=5
    ),
    window=st.tuples(st.integers(0, 11 * DAY), st.integers(0, 11 * DAY)),
)
def test_the_rollup_answers_as_the_rows_do(
    tracker: Tracker,
    engine: Engine,
    steps: list[tuple[str, Any]],
    streams: list[tuple[Scope, str]],
    window: tuple[int, int],
) -> None:
    run = next(_RUNS)
    # Ten days back from the last midnight: stops on both sides of day boundaries, prunable.
    base = now_ms() // DAY * DAY - 10 * DAY

    def delivery(event: tuple[int, str, int, int, int | None]) -> dict[str, Any]:
        index, kind, day, at, reason = event
        scope, account = streams[index]
        return body(
            kind,
            f"r{run}-{index}",
            base + day * DAY + at,
            scope=scope,
            scope_id=f"r{run}-{index}",
            stop_reason=reason,
            account_id=account,
        )

    for step, detail in steps:
        if step == "event":
            tracker.ingest(delivery(detail))
        elif step == "batch":
            tracker.ingest_batch([delivery(event) for event in detail])
        elif step == "expire":
            tracker.expire(timedelta(hours=detail))
        else:
            tracker.prune(timedelta(days=detail))
    low, high = sorted(window)
    _same_answers(
        engine,
        [
            (None, None),
            (base + low, base + high),  # partial days at both edges, or within one day
            (base + low // DAY * DAY, base + high // DAY * DAY),  # whole days only
            (base + low, None),
            (None, base + high),
        ],
    )


def test_an_earlier_stop_moves_the_count_to_its_reason_and_day(
    tracker: Tracker, engine: Engine
) -> None:
    base = now_ms() // DAY * DAY - 5 * DAY
    tracker.ingest(body("started", "s1", base + 1000))
    tracker.ingest(body("stopped", "s1", base + 2 * DAY, stop_reason=6))
    tracker.ingest(body("stopped", "s1", base + DAY, stop_reason=11))  # earlier: it wins
    (row,) = _rollup_rows(engine)
    day = (base + DAY) // DAY
    assert row == (day, "meeting", rollup.WITH_REASON, 11, row[4], 1)
    stats = tracker.stop_reason_stats()
    assert [(s.stop_reason, s.count, s.median_duration_ms) for s in stats] == [(11, 1, DAY - 1000)]
    assert tracker.stop_reason_stats(base + 2 * DAY, base + 3 * DAY) == []
    _same_answers(engine, [(None, None), (base, base + DAY + 1)])


def test_a_prune_takes_its_stops_out_of_the_rollup(tracker: Tracker, engine: Engine) -> None:
    old = now_ms() - 5 * DAY
    tracker.ingest(body("started", "old", old))
    tracker.ingest(body("stopped", "old", old + 60_000, stop_reason=1))
    tracker.ingest(body("started", "new", now_ms() - 60_000))
    tracker.ingest(body("stopped", "new", now_ms() - 1000, stop_reason=1))
    assert sum(row[-1] for row in _rollup_rows(engine)) == 2
    tracker.prune(timedelta(days=2))
    assert sum(row[-1] for row in _rollup_rows(engine)) == 1
    assert [s.count for s in tracker.stop_reason_stats()] == [1]
    _same_answers(engine, [(None, None)])


def test_the_migration_builds_the_rollup_from_the_stored_rows(db_url: str) -> None:
    engine = create_store_engine(db_url)
    try:
        _migrate.upgrade(engine, "0012")
        insert = text(
            "INSERT INTO streams (stream_id, scope, scope_id, state, started_at, stopped_at,"
            " stop_reason, stop_source, interruptions, resumes, failovers, fold_ts, fold_rank,"
            " created_at, updated_at) VALUES (:sid, :scope, 'x', :state, :start, :stop, :reason,"
            " :source, 0, 0, 0, 5, 3, 1, 1)"
        )
        rows = [
            ("a", "meeting", "stopped", 1000, 5 * DAY + 7, 6, "webhook"),
            ("b", "meeting", "stopped", None, 5 * DAY + 9, None, "webhook"),
            ("c", "phone", "stopped", 2000, 6 * DAY, None, "system"),
            ("d", "phone", "stopped", 9 * DAY, 6 * DAY, 11, "webhook"),  # negative duration
            ("e", "webinar", "started", 3000, None, None, None),
        ]
        with engine.begin() as conn:
            for sid, scope, state, start, stop, reason, source in rows:
                conn.execute(
                    insert,
                    {
                        "sid": sid,
                        "scope": scope,
                        "state": state,
                        "start": start,
                        "stop": stop,
                        "reason": reason,
                        "source": source,
                    },
                )
        _migrate.upgrade(engine)
        assert _rollup_rows(engine) == _recomputed(engine)
        assert sum(row[-1] for row in _rollup_rows(engine)) == 4
        _same_answers(engine, [(None, None), (5 * DAY + 8, None), (0, 6 * DAY)])
    finally:
        engine.dispose()


def test_the_triggers_use_the_stores_expressions() -> None:
    """The migration keeps its own copy of the key: it must be the one the queries assume."""
    schema = _migrate.SQLITE_SCHEMA_FILE.read_text()
    assert rollup.key_sql("NEW") in schema
    assert rollup.key_sql("OLD") in schema
