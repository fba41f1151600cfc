"""Reading deliveries for recording: the direct reading of stream events, and the read-ahead."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtms_lifecycle import Tracker
from rtms_lifecycle._defaults import DEFAULT_BATCH_SIZE
from rtms_lifecycle._parsing import STREAM_MODELS
from rtms_lifecycle._read_ahead import read_ahead
from rtms_lifecycle.events import ParsedDelivery, StreamEvent, parse_delivery, read_delivery
from rtms_lifecycle.exceptions import DeliveryRejected
from tests._deliveries import raw

ZOOM = Path(__file__).resolve().parent / "zoom"  # a copy of Zoom's published examples (README)
FIELDS = (
    "rtms_stream_id",
    "account_id",
    "meeting_uuid",
    "webinar_uuid",
    "session_id",
    "session_key",
    "engagement_id",
    "call_id",
    "operator_id",
    "server_urls",
    "stop_reason",
)
# Values a field may hold in real traffic or by mistake: absent, null, text of every sort
# (empty, NUL, too long), numbers as numbers and as text, lists, objects, booleans.
VALUES = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["", "\x00", "a\x00b", "x" * 300, "6", "-1", "wss://a,wss://b"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
EVENT_TS = st.one_of(
    st.integers(min_value=-5, max_value=2**64),
    st.sampled_from(["1700000000000", "17e5", "", None, 1.5, True]),
)


def _outcome(
    read: Callable[[bytes], ParsedDelivery], body: bytes
) -> ParsedDelivery | tuple[Any, ...]:
    try:
        return read(body)
    except DeliveryRejected as exc:
        return ("rejected", exc.errors, exc.event, exc.stream_id)


def _untyped(parsed: ParsedDelivery | tuple[Any, ...]) -> ParsedDelivery | tuple[Any, ...]:
    if isinstance(parsed, StreamEvent):
        return dataclasses.replace(parsed, model=None)
    return parsed


@settings(max_examples=400, deadline=None)
@given(
    event=st.sampled_from(sorted(STREAM_MODELS)),
    event_ts=EVENT_TS,
    payload=st.dictionaries(st.sampled_from(FIELDS), VALUES),
    stream_id=st.one_of(st.none(), st.just("s-1")),
    nested=st.booleans(),
)
def test_direct_reading_agrees_with_the_typed_parser(
    event: str, event_ts: Any, payload: dict[str, Any], stream_id: str | None, nested: bool
) -> None:
    """Whatever a stream event's payload holds, recording reads it as the typed parser does,
    or rejects it with the same errors."""
    if stream_id is not None:
        payload["rtms_stream_id"] = stream_id
    body = {"event": event, "event_ts": event_ts, "payload": payload}
    if nested:
        body["payload"] = {"account_id": "a-1", "object": payload}
    data = json.dumps(body).encode()
    assert _untyped(_outcome(read_delivery, data)) == _untyped(_outcome(parse_delivery, data))


@pytest.mark.parametrize("path", sorted((ZOOM / "examples").glob("*.json")), ids=lambda p: p.stem)
def test_examples_read_as_parsed(path: Path) -> None:
    """Each of Zoom's examples is read for recording exactly as it is parsed."""
    data = path.read_bytes()
    assert _untyped(read_delivery(data)) == _untyped(parse_delivery(data))


def test_stream_event_read_for_recording_has_no_model() -> None:
    """A stream event read for recording skips building its typed model."""
    parsed = read_delivery((ZOOM / "examples" / "meeting.rtms_started.json").read_bytes())
    assert isinstance(parsed, StreamEvent)
    assert parsed.model is None


# --- the read-ahead --------------------------------------------------------------------------


def _reading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rtms-lifecycle-read-ahead")]


def test_read_ahead_keeps_the_order() -> None:
    """Batches come in the input's order, each converted, the last one short."""
    batches = list(read_ahead(range(200), str, 64))
    assert [len(batch) for batch in batches] == [64, 64, 64, 8]
    assert [item for batch in batches for item in batch] == [str(n) for n in range(200)]


def test_read_ahead_of_nothing_yields_nothing() -> None:
    """An empty input gives no batch at all."""
    assert list(read_ahead([], str, 100)) == []


def test_small_batches_are_read_in_line() -> None:
    """Batches too small to be worth a thread are converted in the caller's thread."""
    batches = read_ahead(range(7), str, 3)
    assert next(batches) == ["0", "1", "2"]
    assert _reading_threads() == []
    assert list(batches) == [["3", "4", "5"], ["6"]]


def test_read_ahead_raises_after_the_batches_before_the_error() -> None:
    """An error while converting is raised once the whole batches before it were handed over."""

    def convert(n: int) -> int:
        if n == 130:
            raise TypeError("not a body")
        return n

    batches = read_ahead(range(1000), convert, 64)
    assert next(batches) == list(range(64))
    assert next(batches) == list(range(64, 128))
    with pytest.raises(TypeError, match="not a body"):
        next(batches)


def test_read_ahead_reads_in_the_callers_thread() -> None:
    """The input is read in the caller's thread (where a Ctrl-C interrupts a wait for input);
    only the converting happens in the helper thread."""
    readers: set[str] = set()
    converters: set[str] = set()

    def source() -> Iterator[int]:
        for n in range(300):
            readers.add(threading.current_thread().name)
            yield n

    def convert(n: int) -> int:
        converters.add(threading.current_thread().name)
        return n

    assert sum(len(batch) for batch in read_ahead(source(), convert, 64)) == 300
    assert readers == {threading.current_thread().name}
    assert len(converters) == 1
    assert next(iter(converters)).startswith("rtms-lifecycle-read-ahead")


def test_read_ahead_stops_reading_when_closed() -> None:
    """A consumer that stops early stops the reading: the input is not read to its end, and the
    helper thread ends."""
    read: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            read.append(n)
            yield n
            n += 1

    batches = read_ahead(endless(), int, 64)
    assert next(batches) == list(range(64))
    batches.close()
    for thread in _reading_threads():
        thread.join(timeout=10)
    assert _reading_threads() == []
    # The batch handed over and the one read ahead of it.
    assert len(read) == 2 * 64


def test_a_load_of_several_default_batches_is_recorded_whole(db_url: str) -> None:
    """A bulk load longer than two default batches, read ahead, records every delivery once."""
    streams = DEFAULT_BATCH_SIZE + DEFAULT_BATCH_SIZE // 2
    bodies = [raw("started", f"s{n}", 1_000 + n) for n in range(streams)]
    bodies += [raw("stopped", f"s{n}", 9_000_000 + n) for n in range(streams)]
    bodies.append(bodies[0])  # a retry, in the last batch
    with Tracker(db_url) as tracker:
        summary = tracker.ingest_many(iter(bodies))
        assert summary.as_dict()["applied"] == 2 * streams
        assert summary.as_dict()["duplicate"] == 1
        assert tracker.count_streams() == streams
        assert tracker.streams(limit=1)[0].state == "stopped"
