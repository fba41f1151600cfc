"""The read API's lists: keyset pages, windows, unknown parameters, and the routes that read what
the command line reads, served for real over each database."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from rtms_lifecycle import Outcome, Tracker
from tests import _deliveries
from tests._live import read_api

TOKEN = "read-token-for-tests"
T0 = 1_741_651_200_000  # 2025-03-11T00:00:00Z
MINUTE = 60_000
PATHS = [
    "/streams",
    "/deliveries",
    "/alerts",
    "/stats/stop-reasons",
    "/stats/interruptions",
    "/stats/unhandled",
    "/subscriptions",
]


@pytest.fixture
def api(tracker: Tracker) -> Iterator[httpx.Client]:
    """A receiver with the read API over ``tracker`` (each database)."""
    with read_api(tracker, TOKEN) as client:
        yield client


def started(tracker: Tracker, stream_id: str, at: int, **kwargs: object) -> None:
    outcome = tracker.ingest(_deliveries.raw("started", stream_id, at, **kwargs)).outcome
    assert outcome is Outcome.APPLIED


def pages(
    api: httpx.Client, path: str, between: list[object] | None = None, key: str = "stream_id"
) -> list[str]:
    """Every item's ``key`` read page by page, following ``next``; ``between``: callables run
    after each page (inserts made while a client pages)."""
    seen: list[str] = []
    url: str | None = path
    steps = iter(between or [])
    while url is not None:
        answer = api.get(url)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen.extend(str(item[key]) for item in body["items"])
        url = body["next"]
        if url is not None:
            assert answer.headers["Link"] == f'<{url}>; rel="next"'
            step = next(steps, None)
            if callable(step):
                step()
        else:
            assert "Link" not in answer.headers
    return seen


def test_stream_pages_skip_and_repeat_nothing_while_streams_are_added(
    tracker: Tracker, api: httpx.Client
) -> None:
    """Streams added between page reads (newer, older, at a tie, events on listed streams) never
    make a stream that existed at the first page appear twice or not at all."""
    existing = [f"s-{n:02}" for n in range(23)]
    for n, sid in enumerate(existing):
        started(tracker, sid, T0 + (n // 3) * MINUTE)  # three streams per start time: ties
    counter = iter(range(1000))

    def insert() -> None:
        k = next(counter)
        started(tracker, f"new-late-{k}", T0 + 100 * MINUTE + k)
        started(tracker, f"new-early-{k}", T0 - MINUTE - k)
        started(tracker, f"new-tie-{k}", T0 + 4 * MINUTE)
        assert (
            tracker.ingest(
                _deliveries.raw("interrupted", existing[k % 23], T0 + 200 * MINUTE)
            ).outcome
            is Outcome.APPLIED
        )

    seen = pages(api, "/streams?limit=4", [insert] * 20)
    assert len(seen) == len(set(seen))
    assert set(existing) <= set(seen)
    # Newest start first, ties by stream id (descending too).
    expected = sorted(existing, key=lambda s: (int(s[2:]) // 3, s), reverse=True)
    assert [s for s in seen if s in existing] == expected


def test_delivery_pages_skip_and_repeat_nothing_while_deliveries_arrive(
    tracker: Tracker, api: httpx.Client
) -> None:
    """/deliveries pages by id: deliveries recorded between pages do not shift the pages."""
    for n in range(15):
        started(tracker, f"d-{n}", T0 + n)
    existing = {str(d.id) for d in tracker.deliveries(limit=None)}
    counter = iter(range(1000))

    def insert() -> None:
        started(tracker, f"late-{next(counter)}", T0 + 500)

    seen = pages(api, "/deliveries?limit=4", [insert] * 10, key="id")
    assert len(seen) == len(set(seen))
    assert existing <= set(seen)


def test_streams_window_is_on_the_start_time(tracker: Tracker, api: httpx.Client) -> None:
    """since/until keep the streams whose first event is in [since, until)."""
    started(tracker, "early", T0)
    started(tracker, "late", T0 + 10 * MINUTE)
    tracker.ingest(_deliveries.raw("stopped", "early", T0 + 20 * MINUTE))

    def ids(query: str) -> set[str]:
        answer = api.get("/streams" + query)
        assert answer.status_code == 200, answer.text
        return {s["stream_id"] for s in answer.json()["items"]}

    assert ids("?since=2099-01-01T00:00:00Z") == set()
    assert ids(f"?since={T0 + MINUTE}") == {"late"}
    assert ids(f"?until={T0 + 10 * MINUTE}") == {"early"}
    assert ids(f"?since={T0}&until={T0 + 10 * MINUTE + 1}") == {"early", "late"}
    refused = api.get(f"/streams?since={T0}&until={T0}")
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "until"]


@pytest.mark.parametrize("path", PATHS)
def test_an_unknown_query_parameter_is_422(api: httpx.Client, path: str) -> None:
    """A misspelt filter is refused, naming it, instead of silently matching everything."""
    answer = api.get(path, params={"sinse": "2025-01-01"})
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["query", "sinse"]
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize("path", PATHS)
def test_an_unknown_parameter_without_the_token_is_401(api: httpx.Client, path: str) -> None:
    """The token is checked first: nothing about the parameters leaks to a stranger."""
    assert (
        api.get(path, params={"x": "1"}, headers={"Authorization": "Bearer no"}).status_code == 401
    )


@pytest.mark.parametrize(
    "cursor", ["garbage", "%00", base64.urlsafe_b64encode(b'["deliveries",3]').decode()]
)
def test_a_cursor_of_another_list_is_422(tracker: Tracker, api: httpx.Client, cursor: str) -> None:
    """A cursor that is not one of this list's is a 422 naming ``cursor``, not a 500."""
    started(tracker, "s", T0)
    answer = api.get(f"/streams?cursor={cursor}")
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_the_page_size_has_a_default_and_a_maximum(tracker: Tracker, api: httpx.Client) -> None:
    """Without limit a page holds 100; more than 1000 is a 422."""
    tracker.ingest_many(_deliveries.raw("started", f"m-{n}", T0 + n) for n in range(101))
    page = api.get("/streams").json()
    assert len(page["items"]) == 100
    assert page["next"] is not None
    assert len(api.get(page["next"]).json()["items"]) == 1
    assert api.get("/streams?limit=1001").status_code == 422


def test_deliveries_filter_and_show_their_bytes(tracker: Tracker, api: httpx.Client) -> None:
    """/deliveries filters like the CLI; a UTF-8 body is text, any other base64."""
    started(tracker, "s1", T0)
    tracker.ingest(_deliveries.raw("stopped", "s1", T0 + MINUTE))
    bad = b'{"event": "meeting.rtms_started", "x": "\xff"}'
    tracker.ingest(bad)
    tracker.ingest(json.dumps({"event": "meeting.rtms_newthing", "event_ts": T0}).encode())

    def get(query: str) -> list[dict[str, object]]:
        answer = api.get("/deliveries" + query)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, object]] = answer.json()["items"]
        return items

    (rejected,) = get("?outcome=rejected")
    assert rejected["raw_encoding"] == "base64"
    assert base64.b64decode(str(rejected["raw"])) == bad
    assert [d["outcome"] for d in get("?stream_id=s1")] == ["applied", "applied"]
    assert all(d["raw_encoding"] == "utf-8" for d in get("?stream_id=s1"))
    assert [d["event"] for d in get("?event=meeting.rtms_newthing")] == ["meeting.rtms_newthing"]
    assert len(get("?outcome=unhandled&outcome=rejected")) == 2
    assert get("?since=2099-01-01T00:00:00Z") == []
    assert api.get("/deliveries?outcome=bogus").status_code == 422


def test_alerts_statistics_and_subscriptions(tracker: Tracker, api: httpx.Client) -> None:
    """/alerts (by account), /stats/interruptions, /stats/unhandled and /subscriptions answer
    what the tracker's reads give."""
    for account, number in (("acct-a", 8), ("acct-b", 9)):
        tracker.ingest(
            {
                "event": "rtms.concurrency_near_limit",
                "event_ts": T0 + number,
                "payload": {
                    "account_id": account,
                    "concurrency_limit": 10,
                    "concurrency_number": number,
                    "percentage": number * 10,
                },
            }
        )
    alerts = api.get("/alerts").json()["items"]
    assert [a["concurrency_number"] for a in alerts] == [9, 8]
    (only,) = api.get("/alerts?account_id=acct-a").json()["items"]
    assert only["account_id"] == "acct-a"

    started(tracker, "i1", T0)
    tracker.ingest(_deliveries.raw("interrupted", "i1", T0 + MINUTE))
    (whole,) = api.get("/stats/interruptions").json()
    assert (whole["scope"], whole["streams"], whole["interruptions"]) == (None, 1, 1)
    by_scope = api.get("/stats/interruptions?by_scope=true").json()
    assert {s["scope"]: s["streams"] for s in by_scope}["meeting"] == 1
    assert api.get("/stats/interruptions?by_scope=true&scope=meeting").status_code == 422

    tracker.ingest({"event": "meeting.rtms_paused", "event_ts": T0, "payload": {}})
    (unhandled,) = api.get("/stats/unhandled").json()
    assert (unhandled["event"], unhandled["count"], unhandled["rtms"]) == (
        "meeting.rtms_paused",
        1,
        True,
    )

    for name in ("c-b", "c-a", "c-c"):
        tracker.consumer(name, from_start=True)
    page = api.get("/subscriptions?limit=2").json()
    assert [s["consumer"] for s in page["items"]] == ["c-a", "c-b"]
    assert [s["consumer"] for s in api.get(page["next"]).json()["items"]] == ["c-c"]
    assert re.match(r"^/subscriptions\?limit=2&cursor=", page["next"])


def test_a_stream_whose_id_holds_a_newline_has_its_page(
    tracker: Tracker, api: httpx.Client
) -> None:
    """A signed delivery's stream id is its sender's text: one with a newline is stored, and
    its page answered 404 (a path parameter stopped at the newline)."""
    stream_id = "nl\nx"
    started(tracker, stream_id, T0)
    answer = api.get("/streams/" + quote(stream_id, safe=""))
    assert answer.status_code == 200, answer.text
    assert answer.json()["stream"]["stream_id"] == stream_id


@pytest.mark.parametrize("stream_id", ["..", ".", "../metrics", "a/../b"])
def test_next_pages_keep_a_dot_segment_stream_id(
    tracker: Tracker, api: httpx.Client, stream_id: str
) -> None:
    """``next`` (and Link) of a list filtered on an id that is, or holds, a dot segment keeps
    it in the query, encoded: following it pages that stream's deliveries, not another's."""
    started(tracker, "other", T0)
    for n in range(5):
        kind = "started" if n == 0 else "interrupted"
        tracker.ingest(_deliveries.raw(kind, stream_id, T0 + n * MINUTE))
    seen = pages(api, f"/deliveries?limit=2&stream_id={quote(stream_id, safe='')}", key="id")
    mine = {str(d.id) for d in tracker.deliveries(stream_id=stream_id, limit=None)}
    assert len(seen) == 5
    assert set(seen) == mine
