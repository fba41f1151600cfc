"""Batches of a bulk load, each parsed in a helper thread while the one before is written.

A bulk load spends about half its time in SQLite (inserting, updating the indexes, writing the
log at each commit) and most of the rest parsing bodies. SQLite lets go of the GIL while it
works, so while one batch is written the next can be parsed: on a machine with a second core
the load takes about the longer of the two instead of their sum.

The input itself is read in the caller's thread, as without the helper: a generator that reads
a pipe, counts lines or draws progress keeps running where it always did, and a Ctrl-C that
ends its input (the command line's) interrupts the thread that waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Final, TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")
R = TypeVar("R")

# Below this many items per batch, handing each batch to the other thread costs more than
# parsing it there saves (a small batch's commit dominates anyway): converted in line.
_SMALLEST: Final = 64


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def read_ahead(
    items: Iterable[T], convert: Callable[[T], R], size: int
) -> Generator[list[R], None, None]:
    """``convert`` each item, ``size`` at a time, each batch in a helper thread while the
    caller handles the batch before it (in line for batches too small to be worth it).

    The batches come in the input's order. An exception raised while converting is raised here
    after the batches before it, as a plain loop would. At most two batches are held: the one
    handed over and the one being converted.
    """

    def convert_all(batch: list[T]) -> list[R]:
        return [convert(item) for item in batch]

    if size < _SMALLEST:
        for batch in _batches(items, size):
            yield convert_all(batch)
        return

    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtms-lifecycle-read-ahead")
    try:
        pending: Future[list[R]] | None = None
        for batch in _batches(items, size):
            converting = helper.submit(convert_all, batch)
            if pending is not None:
                yield pending.result()
            pending = converting
        if pending is not None:
            yield pending.result()
    finally:
        # A caller that stops early (an error, Ctrl-C) leaves at most one batch converting;
        # it is not waited for.
        helper.shutdown(wait=False, cancel_futures=True)
