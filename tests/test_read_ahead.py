"""The read-ahead of bulk loads: each batch parsed in a helper thread while the one before is
written, the input read in the caller's thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.defaults import DEFAULT_BATCH_SIZE
from rtms_lifecycle.read_ahead import read_ahead
from tests._deliveries import raw

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them


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
    converters: set[str] = set()

    def convert(n: int) -> str:
        converters.add(threading.current_thread().name)
        return str(n)

    assert list(read_ahead(range(7), convert, 3)) == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert converters == {threading.current_thread().name}


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
    bodies = [raw("started", f"s{n}", T0 + 1_000 + n) for n in range(streams)]
    bodies += [raw("stopped", f"s{n}", T0 + 9_000_000 + n) for n in range(streams)]
    bodies.append(bodies[0])  # a retry, in the last batch
    with Tracker(db_url) as tracker:
        summary = tracker.ingest_many(iter(bodies))
        assert summary.as_dict()["applied"] == 2 * streams
        assert summary.as_dict()["duplicate"] == 1
        assert tracker.count_streams() == streams
        assert tracker.streams(limit=1)[0].state == "stopped"
