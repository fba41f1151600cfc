"""Batches of a bulk load, read and parsed one batch ahead in a helper thread.

A bulk load spends about half its time in SQLite (inserting, updating the indexes, writing the
log at each commit) and, before that, most of the rest reading and parsing bodies. SQLite lets
go of the GIL while it works, so while one batch is written the next can be parsed: on a machine
with a second core the load takes the longer of the two instead of their sum.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import suppress
from queue import Empty, Queue
from typing import Final, Generic, TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")
R = TypeVar("R")

# One batch being written, one ready, one being parsed: enough to keep both cores busy, and a
# bounded memory (three batches) whatever the input's size.
_READY: Final = 1
# Below this many items per batch, handing each batch to the other thread costs more than
# parsing it there saves (a small batch's commit dominates anyway): converted in line.
_SMALLEST: Final = 64


class _End(Generic[R]):
    """The last message of the reading thread: the input is done, or reading it raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def _inline(items: Iterable[T], convert: Callable[[T], R], size: int) -> Iterator[list[R]]:
    batch: list[R] = []
    for item in items:
        batch.append(convert(item))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_ahead(
    items: Iterable[T], convert: Callable[[T], R], size: int
) -> Generator[list[R], None, None]:
    """``convert`` each item, ``size`` at a time, in a thread that runs one batch ahead (in
    line for batches too small to be worth it).

    The batches come in the input's order. An exception raised while reading or converting is
    raised here after the batches before it, as a plain loop would. Closing the iterator early
    (an error in the caller, Ctrl-C) stops the thread at its next item, without reading on.
    """
    if size < _SMALLEST:
        yield from _inline(items, convert, size)
        return
    queue: Queue[list[R] | _End[R]] = Queue(maxsize=_READY)
    stop = threading.Event()

    def produce() -> None:
        batch: list[R] = []
        try:
            for item in items:
                if stop.is_set():
                    return
                batch.append(convert(item))
                if len(batch) >= size:
                    queue.put(batch)
                    batch = []
            if batch:
                queue.put(batch)
        except BaseException as exc:  # handed to the consumer, who raises it in its own thread
            queue.put(_End(exc))
            return
        queue.put(_End(None))

    # A daemon: a consumer that stops reading (Ctrl-C) must not keep the process alive.
    thread = threading.Thread(target=produce, name="rtms-lifecycle-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            message = queue.get()
            if isinstance(message, _End):
                if message.error is not None:
                    raise message.error
                return
            yield message
    finally:
        stop.set()
        # Make room for a producer blocked on a full queue: it then sees ``stop`` and ends. It
        # is not waited for: it may be blocked reading the input (an idle pipe), and is a daemon.
        with suppress(Empty):
            queue.get_nowait()
