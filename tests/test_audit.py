"""The audit history's hash chains: written with every transition, recomputed by `audit verify`,
summed up by `audit head`; every way around the append-only guard is refused or found."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, make_url, text
from sqlalchemy.exc import DBAPIError

from rtms_lifecycle import AuditReport, Tracker
from rtms_lifecycle.clock import now_ms
from rtms_lifecycle.exceptions import DatabaseError
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store.chain import HASHED_COLUMNS, chain_hash, encode
from rtms_lifecycle.store.engine import create_store_engine

from ._deliveries import raw
from ._postgres import as_role
from .test_cli import invoke
from .test_docs import DOCS, python_blocks
from .test_retention import DAY, newest, old_stopped

# Every column of a transition, in table order, with one of them replaced by an expression.
_COLUMNS = (
    "id, stream_id, from_state, to_state, name, kind, event_ts, source, late, recorded_at,"
    " tx_id, delivery_id, chain_hash"
)

_FORGED = _COLUMNS.replace("to_state", "'stopped'")


def history(tracker: Tracker) -> None:
    """Two stopped streams and one live one."""
    old_stopped(tracker, "a")
    old_stopped(tracker, "b")
    tracker.ingest(raw("started", "live", 1_700_000_100_000))


def hashes(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT id, chain_hash FROM transitions"))]


@contextmanager
def unguarded(engine: Engine) -> Iterator[Any]:
    """A connection with the history's triggers out of the way, as a superuser or the file's
    holder can have one."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE transitions DISABLE TRIGGER USER"))
        else:
            for name in ("update", "delete", "insert"):
                conn.execute(text(f"DROP TRIGGER transitions_append_only_{name}"))
        yield conn


def test_every_transition_is_chained_and_verifies(tracker: Tracker) -> None:
    history(tracker)
    report = tracker.verify_audit()
    assert report.ok
    assert report.breaks == ()
    assert (report.streams, report.transitions) == (3, 9)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for _, h in hashes(tracker.engine))
    assert tracker.verify_audit("a").transitions == 4
    assert tracker.verify_audit(head=tracker.audit_head()).head_matches is True


def test_a_digest_still_verifies_after_new_rows_and_a_prune(tracker: Tracker) -> None:
    history(tracker)
    head = tracker.audit_head()
    tracker.ingest(raw("interrupted", "live", 1_700_000_200_000))
    old_stopped(tracker, "c")
    newest(tracker)
    assert tracker.prune(DAY).streams == 3
    report = tracker.verify_audit(head=head)
    assert report.head_matches is True, report
    assert report.ok
    assert report.pruned_chains == 3
    assert report.head != head
    assert tracker.verify_audit(head=report.head).head_matches is True
    # A chain that grew after the digest, then was pruned: its part in it is gone with it.
    tracker.ingest(raw("stopped", "live", 1_700_000_300_000))
    tracker.ingest(raw("started", "newer", now_ms()))
    assert tracker.prune(DAY).streams == 1
    late = tracker.verify_audit(head=head)
    assert late.unverifiable == ("live",)
    assert (late.head_matches, late.inconclusive, late.ok) == (None, True, False)


def test_a_rewritten_row_is_named(tracker: Tracker) -> None:
    history(tracker)
    with unguarded(tracker.engine) as conn:
        conn.execute(text("UPDATE transitions SET to_state = 'stopped' WHERE id = 2"))
    report = tracker.verify_audit()
    assert not report.ok
    (found,) = report.breaks
    assert (found.stream_id, found.transition_id) == ("a", 2)
    assert found.expected != found.stored
    assert found.stored == dict(hashes(tracker.engine))[2]


def test_a_chain_rewritten_whole_is_found_by_the_digest(tracker: Tracker) -> None:
    """A superuser recomputes every hash of a forged chain: only the digest kept elsewhere
    finds it."""
    history(tracker)
    head = tracker.audit_head()
    with unguarded(tracker.engine) as conn:
        conn.execute(text("UPDATE transitions SET name = 'forged' WHERE stream_id = 'a'"))
        rows = conn.execute(
            text(
                f"SELECT {', '.join(HASHED_COLUMNS)} FROM transitions WHERE stream_id = 'a'"
                " ORDER BY id"
            )
        ).all()
        previous = None
        for row in rows:
            previous = chain_hash(previous, tuple(row))
            conn.execute(
                text("UPDATE transitions SET chain_hash = :h WHERE id = :i"),
                {"h": previous, "i": row[0]},
            )
        conn.execute(
            text("UPDATE streams SET chain_head = :h WHERE stream_id = 'a'"), {"h": previous}
        )
    assert tracker.verify_audit().ok
    assert tracker.verify_audit(head=head).head_matches is False


def test_a_stream_row_whose_head_was_moved_is_found(tracker: Tracker) -> None:
    history(tracker)
    with tracker.engine.begin() as conn:
        conn.execute(text("UPDATE streams SET chain_head = NULL WHERE stream_id = 'b'"))
    (found,) = tracker.verify_audit().breaks
    assert (found.stream_id, found.reason) == ("b", "the stream's head is not its last row's hash")


def test_a_stream_state_set_by_hand_is_found(tracker: Tracker) -> None:
    """A stopped stream set back to live (a role that records may update stream rows)."""
    history(tracker)
    with tracker.engine.begin() as conn:
        conn.execute(text("UPDATE streams SET state = 'started' WHERE stream_id = 'a'"))
    (found,) = tracker.verify_audit().breaks
    assert (found.stream_id, found.reason) == ("a", "the stream's state is not its last row's")
    assert (found.expected, found.stored) == ("stopped", "started")


@pytest.mark.parametrize(
    "statement",
    [
        f"INSERT OR REPLACE INTO transitions SELECT {_FORGED} FROM transitions WHERE id = 1",
        f"INSERT INTO transitions SELECT {_COLUMNS} FROM transitions WHERE id = 1"
        " ON CONFLICT (id) DO UPDATE SET to_state = 'stopped', name = 'forged'",
    ],
    ids=["replace", "upsert"],
)
def test_a_replace_or_an_upsert_over_history_is_refused(db_url: str, statement: str) -> None:
    with Tracker(db_url) as tracker:
        history(tracker)
        before = hashes(tracker.engine)
        if tracker.engine.dialect.name == "postgresql" and " OR REPLACE " in statement:
            pytest.skip("PostgreSQL has no INSERT OR REPLACE")
        with pytest.raises(DBAPIError, match="append-only"), tracker.engine.begin() as conn:
            conn.execute(text(statement))
        assert hashes(tracker.engine) == before
        assert tracker.verify_audit().ok


def test_sqlite_a_self_defined_pruning_function_is_found(sqlite_url: str) -> None:
    """Defining rtms_lifecycle_pruning() lets one delete a stream and its history: the digest
    finds the chain gone."""
    with Tracker(sqlite_url) as tracker:
        history(tracker)
        head = tracker.audit_head()
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    conn.create_function("rtms_lifecycle_pruning", 0, lambda: 1)
    with conn:
        conn.execute("DELETE FROM streams WHERE stream_id = 'a'")
        conn.execute("DELETE FROM transitions WHERE stream_id = 'a'")
    conn.close()
    with Tracker(sqlite_url) as tracker:
        report = tracker.verify_audit(head=head)
    assert report.breaks == ()
    assert report.head_matches is False
    assert not report.ok


def test_sqlite_dropped_triggers_and_a_deleted_row_are_found(sqlite_url: str) -> None:
    with Tracker(sqlite_url) as tracker:
        history(tracker)
        with unguarded(tracker.engine) as conn:
            conn.execute(text("DELETE FROM transitions WHERE id = 2"))
        (found,) = tracker.verify_audit().breaks
        assert (found.stream_id, found.transition_id) == ("a", 3)


# --- PostgreSQL: the owner and the receiver's role ------------------------------------------


def bypass(engine: Engine) -> None:
    """The prune's setting, used by hand: delete a stream's row, then its history."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM streams WHERE stream_id = 'a'"))
        conn.execute(text("SET LOCAL rtms_lifecycle.pruning = on"))
        conn.execute(text("DELETE FROM transitions WHERE stream_id = 'a'"))


@pytest.fixture
def two_roles(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A database owned by one role, with a receiver's role granted by `db grant`."""
    admin = create_store_engine(postgres_url)
    suffix = postgres_url.rsplit("/", 1)[1][-8:]
    owner, receiver = f"owner_{suffix}", f"receiver_{suffix}"
    with admin.begin() as conn:
        for role in (owner, receiver):
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'secret'"))
        name = conn.execute(text("SELECT current_database()")).scalar_one()
        conn.execute(text(f'ALTER DATABASE "{name}" OWNER TO {owner}'))
        conn.execute(text(f"ALTER SCHEMA public OWNER TO {owner}"))
    owner_url, receiver_url = as_role(postgres_url, owner), as_role(postgres_url, receiver)
    assert invoke(owner_url, "db", "upgrade").exit_code == 0
    granted = invoke(owner_url, "db", "grant", receiver)
    assert granted.exit_code == 0, granted.output
    yield owner_url, receiver_url
    admin.dispose()  # the roles outlive the database: the test server is thrown away


def test_postgres_the_receivers_role_records_but_cannot_delete_history(
    two_roles: tuple[str, str],
) -> None:
    owner_url, receiver_url = two_roles
    with Tracker(receiver_url) as receiver:
        history(receiver)
        assert receiver.verify_audit().ok
        with pytest.raises(DBAPIError, match="permission denied"):
            bypass(receiver.engine)
        with pytest.raises(DBAPIError, match="permission denied"), receiver.engine.begin() as c:
            c.execute(text("SELECT rtms_lifecycle_prune_streams(ARRAY['a'], 'x', 0)"))
        with (
            pytest.raises(DBAPIError, match=r"append-only|permission"),
            receiver.engine.begin() as c,
        ):
            c.execute(
                text(
                    f"INSERT INTO transitions SELECT {_COLUMNS} FROM transitions WHERE id = 1"
                    " ON CONFLICT (id) DO UPDATE SET name = 'forged'"
                )
            )
        assert len(receiver.audit("a")) == 4
        # A prune as the receiver: a database error that says to run it as the owner (exit 1).
        with pytest.raises(DatabaseError, match="a prune runs as the database's owner"):
            receiver.prune(DAY)
        assert receiver.prunes() == []
        pruned = invoke(receiver_url, "prune", "--older-than", "1d")
        assert pruned.exit_code == 1, pruned.output
        # A dashboard sign-out, from a receiver process.
        receiver.revoke_dashboard_session("a" * 32, int(time.time() * 1000) + 60_000)
        assert receiver.dashboard_session_revoked("a" * 32)
        # A worker's claim, renewal and release, one call of a function each (migrations 0016
        # and 0017), which `db grant` lets the role execute (not only through PUBLIC).
        receiver.ingest(raw("started", "claimable", now_ms() - 1_000))
        claim = receiver.claim("w")
        assert claim is not None
        assert receiver.renew(claim).token == claim.token
        assert receiver.release(claim)
        with receiver.engine.connect() as c:
            granted = c.execute(
                text(
                    "SELECT routine_name FROM information_schema.routine_privileges"
                    " WHERE grantee = current_user AND privilege_type = 'EXECUTE'"
                    " AND routine_name LIKE 'rtms_lifecycle_%' ORDER BY routine_name"
                )
            ).scalars()
            assert list(granted) == [
                "rtms_lifecycle_claim",
                "rtms_lifecycle_release",
                "rtms_lifecycle_renew",
            ]
    with Tracker(owner_url) as owner:
        newest(owner)
        assert owner.prune(DAY).streams == 2
        assert owner.verify_audit().ok


def test_postgres_db_grant_refuses_the_owner_whose_prunes_it_would_stop(
    two_roles: tuple[str, str],
) -> None:
    """The one-role setup: `db grant OWNER` would revoke the prune's function from the owner;
    `db grant public` would let every role of the server write the history."""
    owner_url, _ = two_roles
    owner = make_url(owner_url).username
    refused = invoke(owner_url, "db", "grant", str(owner))
    assert refused.exit_code == 1, refused.output
    assert f"db grant: {owner} owns the database's objects and needs no grant" in refused.output
    for everyone in ("public", "PUBLIC"):
        refused = invoke(owner_url, "db", "grant", everyone)
        assert refused.exit_code == 1, refused.output
        assert "db grant: PUBLIC is every role of the database server" in refused.output
    with Tracker(owner_url) as tracker:
        history(tracker)
        newest(tracker)
        assert tracker.prune(DAY).streams == 2


def test_postgres_even_the_owner_setting_pruning_on_is_found(postgres_url: str) -> None:
    """As the owner (the one-role setup), the setting still lets a delete through: found."""
    with Tracker(postgres_url) as tracker:
        history(tracker)
        head = tracker.audit_head()
        bypass(tracker.engine)
        assert tracker.verify_audit(head=head).head_matches is False


def test_postgres_a_role_that_is_not_the_owner_cannot_use_the_setting(
    two_roles: tuple[str, str], postgres_url: str
) -> None:
    """Even granted DELETE, a role other than the owner is refused by the trigger."""
    owner_url, receiver_url = two_roles
    with Tracker(receiver_url) as receiver:
        history(receiver)
    role = receiver_url.split("//", 1)[1].split(":", 1)[0]
    owner = create_store_engine(owner_url)
    with owner.begin() as conn:
        conn.execute(text(f"GRANT DELETE ON streams, transitions TO {role}"))
    owner.dispose()
    with Tracker(receiver_url) as receiver:
        with pytest.raises(DBAPIError, match="append-only"):
            bypass(receiver.engine)
        assert receiver.verify_audit().ok


# --- the migration, the encoding, the documented snippet, the CLI -----------------------------


def test_the_migration_computes_the_chains_of_existing_rows(db_url: str) -> None:
    engine = create_store_engine(db_url)
    with Tracker(engine) as tracker:
        history(tracker)
        written = hashes(engine)
    _migrate.upgrade(engine, "0009")
    _migrate.upgrade(engine)
    assert hashes(engine) == written
    with Tracker(engine) as tracker:
        assert tracker.verify_audit().ok
    engine.dispose()


_VALUE = st.one_of(st.integers(-(2**62), 2**62), st.text(max_size=8), st.booleans())
_ROW = st.tuples(
    st.integers(1, 2**40),
    st.text(min_size=1, max_size=12),
    *(st.text(max_size=10) for _ in range(4)),
    st.integers(-(2**50), 2**50),
    st.text(max_size=8),
    st.booleans(),
    st.integers(0, 2**50),
    st.none() | st.integers(0, 2**40),
)


@given(rows=st.lists(_ROW, min_size=1, max_size=6), data=st.data())
def test_any_single_field_change_of_any_row_breaks_the_chain_there(
    rows: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    def chained(rs: list[tuple[Any, ...]]) -> list[str]:
        out, previous = [], None
        for r in rs:
            previous = chain_hash(previous, r)
            out.append(previous)
        return out

    stored = chained(rows)
    at = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.integers(0, len(HASHED_COLUMNS) - 1))
    value = data.draw(st.none() | _VALUE)
    changed = list(rows[at])
    if encode((value,)) == encode((changed[column],)):
        return
    changed[column] = value
    forged = [*rows[:at], tuple(changed), *rows[at + 1 :]]
    recomputed = chained(forged)
    assert recomputed[:at] == stored[:at]
    assert all(a != b for a, b in zip(recomputed[at:], stored[at:], strict=True))


@given(st.lists(st.none() | _VALUE, max_size=5), st.lists(st.none() | _VALUE, max_size=5))
def test_the_encoding_is_unambiguous(a: list[Any], b: list[Any]) -> None:
    if encode(a) == encode(b):
        assert [encode((v,)) for v in a] == [encode((v,)) for v in b]


def test_the_documented_snippet_verifies_a_database_without_the_library(
    sqlite_url: str, tmp_path: Path
) -> None:
    (snippet,) = [b for b in python_blocks(DOCS / "operations.md") if "def encode" in b]
    script = tmp_path / "verify.py"
    script.write_text(snippet)
    path = sqlite_url.removeprefix("sqlite:///")
    with Tracker(sqlite_url) as tracker:
        history(tracker)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", str(script), path], capture_output=True, text=True, check=False
        )

    assert run().returncode == 0
    assert "3 chains, 0 broken" in run().stdout
    with Tracker(sqlite_url) as tracker, unguarded(tracker.engine) as conn:
        conn.execute(text("UPDATE transitions SET event_ts = event_ts + 1 WHERE id = 3"))
    done = run()
    assert done.returncode == 1
    assert "stream a, transition 3" in done.stdout


def test_the_cli_verifies_and_prints_a_digest(sqlite_url: str) -> None:
    with Tracker(sqlite_url) as tracker:
        history(tracker)
    head = invoke(sqlite_url, "audit", "head")
    assert head.exit_code == 0
    assert re.fullmatch(r"\d+\.1\.0\.[0-9a-f]{64}\n", head.output)
    verified = invoke(sqlite_url, "audit", "verify", "--head", head.output.strip(), "--json")
    assert verified.exit_code == 0
    assert json.loads(verified.output)["head_matches"] is True
    assert invoke(sqlite_url, "audit", "verify", "--head", "nonsense").exit_code == 2
    assert (
        invoke(sqlite_url, "audit", "verify", "--stream", "a", "--head", head.output).exit_code == 2
    )
    assert invoke(sqlite_url, "audit", "verify", "--stream", "a").exit_code == 0
    unknown = invoke(sqlite_url, "audit", "verify", "--stream", "nosuch")
    assert unknown.exit_code == 1
    assert "no stream with rtms_stream_id 'nosuch'" in unknown.output
    assert "db grant: only PostgreSQL" in invoke(sqlite_url, "db", "grant", "x").output
    with Tracker(sqlite_url) as tracker, unguarded(tracker.engine) as conn:
        conn.execute(text("UPDATE transitions SET late = 1 WHERE id = 5"))
    broken = invoke(sqlite_url, "audit", "verify", "--json")
    assert broken.exit_code == 1
    (found,) = json.loads(broken.output)["breaks"]
    assert (found["stream_id"], found["transition_id"]) == ("b", 5)
    shown = invoke(sqlite_url, "audit", "verify").output
    assert "stream b, transition 5" in shown
    # Our own line breaks are line breaks: only the untrusted parts are escaped.
    assert "\\x0a" not in shown
    assert re.search(r"\n  expected [0-9a-f]{64}\n  stored   [0-9a-f]{64}\n", shown)
    assert invoke(sqlite_url, "audit", "head").exit_code == 1


def test_a_digest_a_prune_made_uncheckable_is_exit_4_not_a_break(sqlite_url: str) -> None:
    """A chain that grew after the digest and was pruned before the check: the digest can be
    neither confirmed nor refuted. Exit 4, apart from a break's 1, so an alert tells them apart."""
    with Tracker(sqlite_url) as tracker:
        history(tracker)
        head = tracker.audit_head()
        tracker.ingest(raw("stopped", "live", 1_700_000_300_000))
        tracker.ingest(raw("started", "newer", now_ms()))
        assert tracker.prune(DAY).streams >= 1
    checked = invoke(sqlite_url, "audit", "verify", "--head", head, "--json")
    assert checked.exit_code == 4, checked.output
    found = json.loads(checked.output)
    assert (found["ok"], found["inconclusive"], found["head_matches"]) == (False, True, None)
    assert found["breaks"] == []
    shown = invoke(sqlite_url, "audit", "verify", "--head", head)
    assert shown.exit_code == 4
    assert "CANNOT BE CHECKED" in shown.output
    assert "DOES NOT verify" not in shown.output


def test_the_async_tracker_has_the_same(sqlite_url: str) -> None:
    asyncio.run(_async_audit(sqlite_url))


async def _async_audit(sqlite_url: str) -> None:
    from rtms_lifecycle import AsyncTracker

    async with AsyncTracker(sqlite_url) as tracker:
        await tracker.ingest(raw("started", "s", 1_700_000_000_000))
        head = await tracker.audit_head()
        report: AuditReport = await tracker.verify_audit(head=head)
        assert report.ok
        assert report.head_matches


def test_the_documented_encoding_lists_the_hashed_columns_in_order() -> None:
    text_ = (DOCS / "operations.md").read_text()
    listed = text_.split("the previous hash (NULL for a stream's first row), ", 1)[1]
    listed = listed.split(". The stream's rows", 1)[0]
    assert tuple(re.findall(r"`(\w+)`", listed)) == HASHED_COLUMNS


def test_the_report_escapes_stored_text_but_keeps_its_own_line_breaks() -> None:
    from rtms_lifecycle.cli.rendering import audit_report
    from rtms_lifecycle.records import AuditBreak

    forged = AuditBreak("x\ny\x1b[2J", 7, "the stored hash is not the row's", "e", "s\nforged")
    shown = audit_report(AuditReport(1, 1, 0, "1.1.0.ab", breaks=(forged,)))
    assert shown.splitlines() == [
        "1 chain, 1 transition and 0 pruned chains checked: BROKEN.",
        "stream x\\x0ay\\x1b[2J, transition 7: the stored hash is not the row's",
        "  expected e",
        "  stored   s\\x0aforged",
        "Digest now: 1.1.0.ab",
    ]
