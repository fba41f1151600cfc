"""Any 64-bit stop code is stored and reported as ``UNKNOWN_<code>`` on SQLite and PostgreSQL;
a code beyond 64 bits still applies its stop, with the nearer bound
(docs/decisions/0148-stop-codes-64-bit.md)."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from rtms_lifecycle import Outcome, State, Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.models import MAX_STOP_CODE, MIN_STOP_CODE
from rtms_lifecycle.server import create_app
from rtms_lifecycle.stop_reasons import describe_stop_reason
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store import queries
from rtms_lifecycle.store.engine import create_store_engine
from tests._deliveries import body, raw
from tests._live import SECRET, serving

MINUTE = 60_000
TOKEN = "read-token-for-tests"
WIDE = [2**31, -(2**31) - 1, 2**63 - 1, -(2**63)]
_STREAMS = itertools.count()


def invoke_json(db: str, *args: str) -> Any:
    """``rtms-lifecycle --db DB ARGS... --json``, in-process; it must succeed."""
    result = CliRunner().invoke(cli, ["--db", db, *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stop(tracker: Tracker, stream_id: str, reason: object) -> int:
    """Start ``stream_id`` and stop it with ``reason`` as sent (raw JSON); returns the stop's
    time."""
    at = now_ms() - MINUTE
    assert tracker.ingest(raw("started", stream_id, at - 10 * MINUTE)).outcome is Outcome.APPLIED
    stopped = tracker.ingest(raw("stopped", stream_id, at, stop_reason=reason))
    assert stopped.outcome is Outcome.APPLIED, stopped.error
    return at


@pytest.mark.parametrize("code", WIDE)
def test_a_code_beyond_32_bits_is_stored_and_reported_everywhere(
    tracker: Tracker, db_url: str, code: int
) -> None:
    """The stream is stopped with its code, named UNKNOWN_<code> by Tracker.stream, the rollup
    behind stop_reason_stats, ``streams --json``, ``stats --json`` and the read API."""
    stop(tracker, "s1", code)
    name = f"UNKNOWN_{code}"
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.stop_reason, stream.stop_reason_name) == (
        State.STOPPED,
        code,
        name,
    )
    stats = tracker.stop_reason_stats()
    assert [(s.stop_reason, s.stop_reason_name, s.count) for s in stats] == [(code, name, 1)]
    with tracker.engine.connect() as conn:
        assert conn.execute(text("SELECT stop_reason FROM stop_reason_rollup")).all() == [(code,)]
        assert queries.stop_reason_stats(conn, None, None, False, None, from_rows=True) == stats

    (listed,) = invoke_json(db_url, "streams")
    assert (listed["stop_reason"], listed["stop_reason_name"]) == (code, name)
    (counted,) = invoke_json(db_url, "stats")
    assert (counted["stop_reason"], counted["stop_reason_name"], counted["count"]) == (
        code,
        name,
        1,
    )

    app = create_app(tracker, secrets=[SECRET], api_token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with serving(app) as url, httpx.Client(base_url=url, headers=auth) as client:
        one = client.get("/streams/s1").json()["stream"]
        (item,) = client.get("/streams").json()["items"]
        (stat,) = client.get("/stats/stop-reasons").json()
    for shown in (one, item, stat):
        assert (shown["stop_reason"], shown["stop_reason_name"]) == (code, name)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (2**63, MAX_STOP_CODE),
        (-(2**63) - 1, MIN_STOP_CODE),
        (10**30, MAX_STOP_CODE),
        (-(10**400), MIN_STOP_CODE),
        ("9" * 30, MAX_STOP_CODE),
        ("-" + "9" * 30, MIN_STOP_CODE),
    ],
)
def test_a_code_beyond_64_bits_stops_the_stream_with_the_nearer_bound(
    tracker: Tracker, sent: int | str, stored: int, caplog: pytest.LogCaptureFixture
) -> None:
    """No column holds it, and refusing it would leave the stream live: the stop applies with
    the nearer 64-bit bound, a warning names the field and the range, and the stored body keeps
    the code as sent."""
    with caplog.at_level(logging.WARNING, logger="rtms_lifecycle.models"):
        stop(tracker, "s1", sent)
    stream = tracker.stream("s1")
    assert stream is not None
    assert (stream.state, stream.stop_reason) == (State.STOPPED, stored)
    assert [s.stop_reason for s in tracker.stop_reason_stats()] == [stored]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("payload.stop_reason: ")
    assert f"outside the 64-bit range {MIN_STOP_CODE}..{MAX_STOP_CODE}" in warning
    delivery = tracker.deliveries(limit=1)[0]
    assert json.loads(delivery.raw)["payload"]["stop_reason"] == sent


def test_a_code_beyond_64_bits_in_a_batch_stops_its_stream(tracker: Tracker) -> None:
    """The batch path (``ingest_batch``) applies such a stop as ``ingest`` does."""
    at = now_ms() - MINUTE
    results = tracker.ingest_batch(
        [body("started", "s1", at - MINUTE), body("stopped", "s1", at, stop_reason=2**64)]
    )
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED]
    stream = tracker.stream("s1")
    assert stream is not None
    assert stream.stop_reason == MAX_STOP_CODE


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(code=st.integers(MIN_STOP_CODE, MAX_STOP_CODE), as_text=st.booleans())
def test_any_64_bit_code_is_stored_as_sent(tracker: Tracker, code: int, as_text: bool) -> None:
    """Any code in the 64-bit range, as a number or as its text, is the stream's stop reason
    and counted under it by the rollup exactly as by the rows."""
    stream_id = f"s{next(_STREAMS)}"
    stop(tracker, stream_id, str(code) if as_text else code)
    stream = tracker.stream(stream_id)
    assert stream is not None
    assert (stream.stop_reason, stream.stop_reason_name) == (code, describe_stop_reason(code).name)
    with tracker.engine.connect() as conn:
        ours = queries.stop_reason_stats(conn, None, None, False, None)
        plain = queries.stop_reason_stats(conn, None, None, False, None, from_rows=True)
    assert ours == plain
    assert code in {s.stop_reason for s in ours}


@pytest.mark.postgres
def test_a_tracker_open_across_the_upgrade_keeps_recording(postgres_url: str) -> None:
    """Statements a receiver prepared before 0019 changed the column's type are prepared again:
    its stops after the upgrade are recorded, none answered with an error."""
    with Tracker(postgres_url) as tracker:
        _migrate.downgrade_url(postgres_url, _migrate.head_revision(), "0018")
        at = now_ms() - 10 * MINUTE
        for i in range(8):
            tracker.ingest(raw("started", f"before{i}", at + i))
            tracker.ingest(raw("stopped", f"before{i}", at + 100 + i, stop_reason=6))
            assert tracker.stream(f"before{i}") is not None
            tracker.stop_reason_stats()
            # More than one statement writes (PG_ROWS): in a transaction, through psycopg,
            # which prepares a statement from its fifth run on.
            tracker.ingest_batch([body("started", f"b{i}-{n}", at + n) for n in range(150)])
        engine = create_store_engine(postgres_url)
        try:
            _migrate.upgrade(engine)
        finally:
            engine.dispose()
        for i in range(8):
            stop(tracker, f"after{i}", 2**40 + i)
            stream = tracker.stream(f"after{i}")
            assert stream is not None
            assert stream.stop_reason == 2**40 + i
        assert {s.stop_reason for s in tracker.stop_reason_stats()} >= {6, 2**40}
        stops = [body("stopped", f"b0-{n}", at + 1000 + n, stop_reason=2**40) for n in range(150)]
        results = tracker.ingest_batch(stops)
        assert {r.outcome for r in results} == {Outcome.APPLIED}
        assert {s.stop_reason for s in tracker.streams() if s.stream_id.startswith("b0-")} == {
            2**40
        }


@pytest.mark.postgres
def test_a_downgrade_below_0019_is_refused_while_a_wide_code_is_stored(
    postgres_url: str,
) -> None:
    """The 32-bit column of 0018 cannot hold the code: the downgrade says which stream holds
    one, and changes nothing."""
    with Tracker(postgres_url) as tracker:
        stop(tracker, "wide", 2**31)
    result = CliRunner().invoke(cli, ["--db", postgres_url, "db", "downgrade", "0018", "--yes"])
    assert result.exit_code != 0
    assert "streams.stop_reason: stream wide holds stop code 2147483648" in result.output
    assert "Traceback" not in result.output
    engine = create_store_engine(postgres_url)
    try:
        assert _migrate.current_revision(engine) == _migrate.head_revision()
    finally:
        engine.dispose()
