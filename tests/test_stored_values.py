"""Stored values of a type their column does not hold, as an edit by hand leaves them (SQLite keeps
any type in any column): every read that shows them shows them, or names the row and column and
fails cleanly; never a traceback, never a 500."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from rtms_lifecycle import Outcome, Tracker

from ._deliveries import raw
from ._live import read_api
from .test_cli import invoke

T0 = 1_700_000_000_000
TOKEN = "stored-values-token-for-tests"


def _database(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _record(url: str) -> int:
    """A stream started, interrupted and stopped; the id of its stop's delivery."""
    with Tracker(url) as tracker:
        for kind, at in (("started", 0), ("interrupted", 1_000), ("stopped", 2_000)):
            result = tracker.ingest(raw(kind, "s1", T0 + at))
            assert result.outcome is Outcome.APPLIED
    assert result.delivery_id is not None
    return result.delivery_id


def _edit(url: str, statement: str, *values: Any) -> None:
    with sqlite3.connect(_database(url)) as conn:
        conn.execute(statement, values)
    conn.close()


@contextmanager
def _served(url: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """The read API's client and a dashboard client signed in, over the database at ``url``."""
    with (
        Tracker(url) as tracker,
        read_api(tracker, TOKEN) as api,
        httpx.Client(
            base_url=api.base_url, headers={"accept": "text/html"}, timeout=30
        ) as dashboard,
    ):
        assert dashboard.post("/dashboard/login", data={"token": TOKEN}).status_code == 303
        yield api, dashboard


@pytest.mark.parametrize("stored", ["some text", 42, 1.5], ids=["text", "integer", "real"])
def test_a_body_stored_as_another_type_reads_as_its_bytes(sqlite_url: str, stored: Any) -> None:
    """What SQLite's CAST(... AS BLOB) gives: the text, or the number's digits."""
    delivery = _record(sqlite_url)
    _edit(sqlite_url, "UPDATE deliveries SET raw = ? WHERE id = ?", stored, delivery)
    shown = str(stored)
    for args in (("deliveries",), ("deliveries", "--stream", "s1"), ("stream", "s1"), ("streams",)):
        result = invoke(sqlite_url, *args)
        assert result.exit_code == 0, (args, result.output)
    listed = json.loads(invoke(sqlite_url, "deliveries", "--json").stdout)
    assert [d["raw"] for d in listed if d["id"] == delivery] == [shown]
    assert invoke(sqlite_url, "stream", "s1", "--json").exit_code == 0
    with _served(sqlite_url) as (api, dashboard):
        answer = api.get("/deliveries", params={"stream_id": "s1"})
        assert answer.status_code == 200
        (item,) = [d for d in answer.json()["items"] if d["id"] == delivery]
        assert (item["raw"], item["raw_encoding"]) == (shown, "utf-8")
        assert api.get("/streams/s1").status_code == 200
        page = dashboard.get("/dashboard/streams/s1")
        assert page.status_code == 200
        # The stream's events are parsed again for its interruptions: that one's body no
        # longer parses, and the answer says which row, not a traceback nor a 500.
        assert api.get("/stats/interruptions").status_code == 503
    stats = invoke(sqlite_url, "stats", "--interruptions")
    assert stats.exit_code == 1
    assert f"deliveries row {delivery}: the stored body of this applied event no longer parses" in (
        stats.output
    )


def test_a_body_edited_to_another_event_is_named_too(sqlite_url: str) -> None:
    delivery = _record(sqlite_url)
    alert = {"event": "account.rtms_concurrency_near_limit", "payload": {}}
    _edit(sqlite_url, "UPDATE deliveries SET raw = ? WHERE id = ?", json.dumps(alert), delivery)
    stats = invoke(sqlite_url, "stats", "--interruptions")
    assert stats.exit_code == 1
    assert f"deliveries row {delivery}: the stored body" in stats.output


def test_a_refused_body_stored_as_text_is_reprocessed_as_its_bytes(sqlite_url: str) -> None:
    with Tracker(sqlite_url) as tracker:
        refused = tracker.ingest(b"not json")
    assert refused.outcome is Outcome.REJECTED
    body = raw("started", "s2", T0).decode()
    _edit(sqlite_url, "UPDATE deliveries SET raw = ? WHERE id = ?", body, refused.delivery_id)
    result = invoke(sqlite_url, "deliveries", "reprocess")
    assert result.exit_code == 0, result.output
    assert invoke(sqlite_url, "stream", "s2").exit_code == 0


@pytest.mark.parametrize(
    ("column", "stored", "says"),
    [
        ("received_at", "yesterday", "its received_at holds str 'yesterday', not an integer"),
        # A text column's affinity stores a number as text; a BLOB it keeps.
        ("event", b"\xff", "its event holds bytes b'\\xff', not text"),
        ("stream_id", b"s1", "its stream_id holds bytes b's1', not text"),
        ("outcome", "weird", "its outcome holds str 'weird', not one of applied, "),
        ("source", 3, "its source holds str '3', not one of "),
        ("error", "[1, 2]", "its error holds str '[1, 2]', not a JSON list"),
        ("event_ts", "\x1b[2J", "its event_ts holds str '\\x1b[2J', not an integer"),
    ],
)
def test_another_column_of_another_type_is_named_with_its_row(
    sqlite_url: str, column: str, stored: Any, says: str
) -> None:
    delivery = _record(sqlite_url)
    _edit(sqlite_url, f"UPDATE deliveries SET {column} = ? WHERE id = ?", stored, delivery)
    # A stream_id that is no longer text is no longer the stream's: only the whole list has it.
    of_stream = column != "stream_id"
    listings = [("deliveries",), ("deliveries", "--json")]
    for args in [*listings, ("deliveries", "--stream", "s1")] if of_stream else listings:
        result = invoke(sqlite_url, *args)
        assert result.exit_code == 1, (args, result.output)
        assert f"Error: deliveries row {delivery}: {says}" in result.output
        assert "Traceback" not in result.output
    with _served(sqlite_url) as (api, dashboard):
        assert api.get("/deliveries").status_code == 503
        if of_stream:
            assert dashboard.get("/dashboard/streams/s1").status_code == 503
