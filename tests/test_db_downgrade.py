"""`db downgrade`: back to an older version's revision, keeping what was recorded since."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from rtms_lifecycle import Tracker
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store.engine import create_store_engine

from ._deliveries import raw
from ._postgres import as_role
from .test_cli import invoke, invoke_json

# The revision rtms-lifecycle 0.2.0 needs (its `db current` says `head: 0009`).
RELEASE_0_2_0 = "0009"
HOUR = 3_600_000
# The tables 0.2.0 has and a downgrade keeps whole.
KEPT = ("streams", "deliveries", "transitions", "concurrency_alerts", "prunes")


def every_kind(url: str) -> None:
    """Streams in every stored state, deliveries of every outcome, claims (held, released),
    alerts, a prune that removed a chain, and an expired stream."""
    now = int(time.time() * 1000)
    old = now - 3 * 24 * HOUR
    with Tracker(url) as tracker:
        for kind, ts in (("started", old), ("interrupted", old + 10), ("started", old + 20)):
            tracker.ingest(raw(kind, "pruned", ts))
        tracker.ingest(raw("stopped", "pruned", old + 30))
        tracker.ingest(raw("started", "stale", now - 10 * HOUR))
        for stream in ("live", "held", "let-go", "cut", "back", "done"):
            tracker.ingest(raw("started", stream, now - HOUR))
        tracker.ingest(raw("started", "live", now - HOUR))  # duplicate
        tracker.ingest(raw("started", "live", now - HOUR, scope="webinar"))  # conflict
        tracker.ingest(raw("interrupted", "cut", now - HOUR + 10))
        tracker.ingest(raw("interrupted", "back", now - HOUR + 10))
        tracker.ingest(raw("started", "back", now - HOUR + 20))
        tracker.ingest(raw("stopped", "done", now - HOUR + 30, stop_reason=6))
        tracker.ingest(raw("interrupted", "done", now - HOUR + 40))  # ignored
        tracker.ingest(json.dumps({"event": "meeting.rtms_started", "payload": {}}).encode())
        tracker.ingest(json.dumps({"event": "rtms.something_new", "event_ts": now}).encode())
        near = {"concurrency_limit": 10, "concurrency_number": 8, "percentage": 80}
        tracker.ingest(
            json.dumps(
                {"event": "rtms.concurrency_near_limit", "event_ts": now, "payload": near}
            ).encode()
        )
        assert tracker.prune(timedelta(days=1)).streams == 1
        assert [s.stream_id for s in tracker.expire(timedelta(hours=6))] == ["stale"]
        claims = {c.stream_id: c for c in (tracker.claim("w1") for _ in range(3)) if c}
        assert tracker.release(claims["held"] if "held" in claims else next(iter(claims.values())))


def counts(url: str) -> dict[str, Any]:
    """What a downgrade must keep: rows of the tables 0.2.0 has, and streams by state."""
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            found: dict[str, Any] = {
                table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in (
                    "streams",
                    "deliveries",
                    "transitions",
                    "concurrency_alerts",
                    "prunes",
                )
            }
            states = conn.execute(text("SELECT state FROM streams")).scalars()
            found["states"] = Counter(states)
            outcomes = conn.execute(text("SELECT outcome FROM deliveries")).scalars()
            found["outcomes"] = Counter(outcomes)
    finally:
        engine.dispose()
    return found


def test_a_round_trip_to_0_2_0_keeps_everything_recorded(db_url: str) -> None:
    """Downgraded to 0.2.0's revision and upgraded again: every stream, delivery, transition,
    alert and prune record is still there, and the audit history verifies."""
    every_kind(db_url)
    before = counts(db_url)
    assert set(before["states"]) == {"started", "interrupted", "resumed", "stopped"}
    assert set(before["outcomes"]) == {
        "applied",
        "ignored",
        "duplicate",
        "conflict",
        "rejected",
        "unhandled",
    }
    assert before["concurrency_alerts"]
    assert before["prunes"]
    assert invoke_json(db_url, "claims")

    done = invoke_json(db_url, "db", "downgrade", RELEASE_0_2_0, "--yes")
    head = _migrate.head_revision()
    assert done["from"] == head
    assert done["to"] == RELEASE_0_2_0
    assert done["undone"][0] == head
    assert done["undone"][-1] == "0010"
    assert invoke_json(db_url, "db", "current")["current"] == RELEASE_0_2_0
    assert counts(db_url) == before

    assert invoke_json(db_url, "db", "upgrade") == {"from": RELEASE_0_2_0, "to": head}
    assert counts(db_url) == before
    verified = invoke_json(db_url, "audit", "verify")
    assert verified["ok"] is True, verified
    assert invoke_json(db_url, "claims") == []  # 0010's downgrade dropped them


def test_without_yes_it_says_what_it_would_drop_and_does_nothing(sqlite_url: str) -> None:
    every_kind(sqlite_url)
    refused = invoke(sqlite_url, "db", "downgrade", RELEASE_0_2_0)
    assert refused.exit_code == 2
    for revision, title in _migrate.migrations()[int(RELEASE_0_2_0) :]:
        assert f"  {revision}  {title}\n" in refused.stderr
        assert f"drops: {_migrate.DOWNGRADE_DROPS[revision]}" in refused.stderr
    assert "every claim and the claim history" in refused.stderr
    assert refused.stderr.rstrip().endswith("run again with --yes to downgrade to 0009")
    assert invoke_json(sqlite_url, "db", "current")["up_to_date"] is True


@pytest.mark.parametrize(
    ("revision", "said"),
    [
        ("9", "unknown revision '9'"),
        ("base", "unknown revision 'base'"),
        ("9999", "unknown revision '9999'"),
        ("head", "unknown revision 'head'"),
    ],
)
def test_an_unknown_revision_is_refused(sqlite_url: str, revision: str, said: str) -> None:
    Tracker(sqlite_url).close()
    refused = invoke(sqlite_url, "db", "downgrade", revision, "--yes")
    assert refused.exit_code == 2
    assert said in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_revision_not_older_is_refused(sqlite_url: str) -> None:
    Tracker(sqlite_url).close()
    head = _migrate.head_revision()
    refused = invoke(sqlite_url, "db", "downgrade", head, "--yes")
    assert refused.exit_code == 2
    assert f"revision {head} is not older than the database's revision {head}" in refused.stderr
    assert invoke_json(sqlite_url, "db", "downgrade", "0012", "--yes")["undone"][-1] == "0013"
    again = invoke(sqlite_url, "db", "downgrade", "0015", "--yes")
    assert again.exit_code == 2
    assert "revision 0015 is not older than the database's revision 0012" in again.stderr


def test_a_missing_database_is_not_created(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    refused = invoke(url, "db", "downgrade", RELEASE_0_2_0, "--yes")
    assert refused.exit_code == 3
    assert not (tmp_path / "none.db").exists()


def test_every_migration_says_what_its_downgrade_drops() -> None:
    shipped = [revision for revision, _ in _migrate.migrations()]
    assert sorted(_migrate.DOWNGRADE_DROPS) == shipped[1:]


@pytest.mark.postgres
def test_postgres_a_receivers_role_may_not_downgrade(postgres_url: str) -> None:
    """Only the owner changes the schema: a receiver's role is told so, exit 1, nothing done."""
    suffix = postgres_url.rsplit("/", 1)[1][-8:]
    role = f"receiver_dg_{suffix}"
    admin = create_store_engine(postgres_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'secret'"))
    finally:
        admin.dispose()
    assert invoke(postgres_url, "db", "upgrade").exit_code == 0
    assert invoke(postgres_url, "db", "grant", role).exit_code == 0
    refused = invoke(as_role(postgres_url, role), "db", "downgrade", RELEASE_0_2_0, "--yes")
    assert refused.exit_code == 1, refused.output
    assert "run it as the database's owner" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert invoke_json(postgres_url, "db", "current")["up_to_date"] is True
