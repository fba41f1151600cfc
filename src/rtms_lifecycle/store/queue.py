"""The one writer of a process's SQLite database: every write queues here, first come first served.

SQLite admits one writer at a time, and writers left to queue inside SQLite poll its lock with
sleeps of up to 100 ms (its busy handler). So each SQLite store has one queue, and every write of
the process takes its turn in it: durable delivery writes and other jobs run on the queue's
writer thread (callers wait on a :class:`~concurrent.futures.Future`); a caller may also hold the
writer in its own thread (:meth:`WriteQueue.hold`: bulk loads, pruning, health probes), and a
synchronous delivery write that finds the queue idle is written in its caller's thread
(:meth:`WriteQueue.hold_if_idle`).

Delivery writes queued next to each other are written together, in one transaction (a group
commit: one sync to disk for many senders); each caller still gets its own results, or its own
exception, as if it had written alone. A queued write whose deadline passes before its turn
fails then with :class:`StoreTimeout`, nothing written: one watchdog alarm, set for the earliest
deadline queued, serves them all (an alarm per write cost a heap entry and a lock each).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

from rtms_lifecycle.exceptions import StoreTimeout
from rtms_lifecycle.records import IngestResult
from rtms_lifecycle.store.batch import Incoming
from rtms_lifecycle.store.deadline import Watchdog, remaining
from rtms_lifecycle.store.writers import WriteFailed

__all__ = ["DEFAULT_GROUP", "GroupWrite", "Prepare", "Then", "WriteQueue"]

P = ParamSpec("P")
T = TypeVar("T")

#: Deliveries written in one group commit at most.
DEFAULT_GROUP: Final = 100

Results = list[IngestResult | None]
#: Makes a delivery write's value from its results, in the writer thread, after the commit.
Then = Callable[[Results], Any]
#: What a queued delivery write records: its items, or how to make them (run by the writer).
Prepare = Sequence[Incoming] | Callable[[], Sequence[Incoming]]
#: Writes items in one transaction: ``(items, with_records, deadline)``; the store's.
GroupWrite = Callable[[Sequence[Incoming], bool, float | None], Results]


@dataclass(eq=False, slots=True)
class _Entry:
    # Taken by the writer, or settled before its turn (its deadline passed): not to be run.
    taken: bool = field(default=False, init=False)


@dataclass(eq=False, slots=True)
class _Deliveries(_Entry):
    prepare: Prepare
    with_records: bool
    deadline: float | None
    future: Future[Any]
    then: Then | None = None
    items: Sequence[Incoming] = ()


@dataclass(eq=False, slots=True)
class _Job(_Entry):
    run: Callable[[], Any]
    future: Future[Any]


@dataclass(eq=False, slots=True)
class _Hold(_Entry):
    thread: int
    granted: bool = False


def _late(waited: str) -> StoreTimeout:
    return StoreTimeout(f"the write {waited} for the store past its time budget")


class WriteQueue(Executor):
    """One writer at a time, in arrival order, for one SQLite database.

    ``write`` records items in one transaction (the store's); ``group`` bounds the deliveries
    written together. As an :class:`~concurrent.futures.Executor`, :meth:`submit` runs any job
    on the writer thread, alone. A thread that holds the writer (or the writer thread itself)
    writes at once, without queueing behind itself.
    """

    def __init__(self, write: GroupWrite, group: int = DEFAULT_GROUP) -> None:
        self._write_group = write
        self._group = group
        # The condition's lock, taken directly where nothing waits (a Condition's own ``with``
        # costs a Python call each way).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: deque[_Entry] = deque()
        # The thread writing now: the writer thread or a holder.
        self._owner: int | None = None
        self._thread: threading.Thread | None = None
        # Set by shutdown: the writer thread ends once nothing is queued.
        self._closing = False
        self._watchdog = Watchdog()
        # The deadline the watchdog's alarm is set for (None: no alarm): the earliest of the
        # queued delivery writes' when it was set. Writes taken before it are not its concern.
        self._alarm: float | None = None
        #: Writes taken from the queue (each delivery write, job and hold that waited its turn),
        #: and the transactions that wrote groups of deliveries.
        self.jobs = 0
        self.groups = 0
        #: How many delivery writes each group held, in order: what group commit achieved.
        self.group_sizes: deque[int] = deque(maxlen=1000)

    # --- asking for a write ---------------------------------------------------------------

    @property
    def writing(self) -> bool:
        """Whether the calling thread is the writer now (it writes at once, not queued)."""
        return self._owner == threading.get_ident()

    @property
    def waiting(self) -> int:
        """How many writes wait for their turn now."""
        with self._cond:
            return sum(1 for entry in self._pending if not entry.taken)

    def record(
        self,
        prepare: Prepare,
        *,
        deadline: float | None = None,
        then: Then | None = None,
        with_records: bool = True,
    ) -> Future[Any]:
        """Queue a durable delivery write; its future holds one result per item, or the error.

        ``prepare`` (items, or a callable making them in the writer thread) may be written in
        one transaction with the delivery writes queued next to it. ``then``: the future holds
        ``then(results)`` instead, called in the writer thread after the commit (what it raises
        is the future's error).
        """
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()  # a queued write is not undone by its caller
        entry = _Deliveries(prepare, with_records, deadline, future, then)
        with self._cond:
            self._append(entry)
            if deadline is not None and (self._alarm is None or deadline < self._alarm):
                self._arm(deadline)
        return future

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on the writer thread, alone, in its turn."""
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        self._enqueue(_Job(lambda: fn(*args, **kwargs), future))
        return future

    def hold(self, deadline: float | None = None) -> AbstractContextManager[None]:
        """The calling thread is the writer for the block, once its turn came.

        Past ``deadline`` (monotonic seconds) before its turn: :class:`WriteFailed`
        (``timed_out``). Nested holds, and holds by the writer thread, are free.
        """
        # Not a generator: a bulk load of one delivery per transaction holds once per delivery.
        return _Held(self, deadline)

    def hold_if_idle(self) -> AbstractContextManager[None] | None:
        """The calling thread is the writer for the block, if no one writes nor waits now (a
        write of one group, counted as the writer thread counts its groups); else None.

        A caller that would only wait on a future writes itself: handing a write to the writer
        thread and back cost about 60 us of CPU per ``Tracker.ingest`` (measured). Whatever
        queues meanwhile is written after it, in one group, as behind any write.
        """
        me = threading.get_ident()
        with self._lock:
            if self._owner is not None or self._pending:
                return None
            self._owner = me
            self.groups += 1
            self.group_sizes.append(1)
        return _Held(self, None, taken=True)

    def _take(self, deadline: float | None) -> bool:
        """Become the writer (True), or find the calling thread is already (False)."""
        me = threading.get_ident()
        with self._lock:
            if self._owner == me:
                return False
            if self._owner is None and not self._pending:
                self._owner = me
            else:
                self._wait_turn(me, deadline)
            return True

    def _give_back(self, taken: bool) -> None:
        if not taken:
            return  # nested: the outer hold gives the turn back
        with self._lock:
            self._owner = None
            if self._pending:
                self._cond.notify_all()

    def _wait_turn(self, me: int, deadline: float | None) -> None:
        # Called with the lock held; returns as the owner, or raises having left the queue.
        ticket = _Hold(me)
        self._append(ticket)
        while not ticket.granted:
            left = None if deadline is None else remaining(deadline)
            if left is not None and left <= 0:
                ticket.taken = True
                raise WriteFailed(
                    "other writes of this process held the store past the time budget",
                    retryable=False,
                    timed_out=True,
                )
            self._cond.wait(left)

    def _enqueue(self, entry: _Entry) -> None:
        with self._cond:
            self._append(entry)

    def _append(self, entry: _Entry) -> None:
        # With the lock held. The writer thread hands out the turns, holds' too.
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="rtms-lifecycle-writer", daemon=True
            )
            self._thread.start()
        self._pending.append(entry)
        if self._owner is None:
            self._cond.notify_all()

    def _arm(self, deadline: float) -> None:
        # With the lock held.
        self._alarm = deadline
        self._watchdog.watch(deadline, self._expire)

    def _expire(self) -> None:
        # The watchdog, at the alarm's deadline: queued delivery writes past theirs fail now;
        # the alarm is set again for the earliest one left (usually none: taken in time).
        now = time.monotonic()
        late: list[_Deliveries] = []
        with self._cond:
            if self._alarm is not None and self._alarm <= now:
                self._alarm = None
            earliest: float | None = None
            for entry in self._pending:
                if entry.taken or not isinstance(entry, _Deliveries) or entry.deadline is None:
                    continue
                if entry.deadline <= now:
                    entry.taken = True
                    late.append(entry)
                elif earliest is None or entry.deadline < earliest:
                    earliest = entry.deadline
            if earliest is not None and (self._alarm is None or earliest < self._alarm):
                self._arm(earliest)
        for entry in late:
            entry.future.set_exception(_late("waited"))

    # --- the writer thread --------------------------------------------------------------------

    def _next(self) -> list[_Entry] | None:
        # With the lock held: wait for a turn, take what it writes (None: the queue ended).
        while True:
            while self._pending and self._pending[0].taken:
                self._pending.popleft()
            if self._owner is None and self._pending:
                break
            if self._closing and not self._pending:
                self._thread = None
                return None
            self._cond.wait()
        first = self._pending.popleft()
        first.taken = True
        self.jobs += 1
        if isinstance(first, _Hold):
            first.granted = True
            self._owner = first.thread
            self._cond.notify_all()
            return []
        self._owner = threading.get_ident()
        taken = [first]
        if isinstance(first, _Deliveries):
            # Delivery writes right behind it join its transaction, in their order.
            while len(taken) < self._group and self._pending:
                entry = self._pending[0]
                if entry.taken:
                    self._pending.popleft()
                    continue
                if not isinstance(entry, _Deliveries):
                    break
                self._pending.popleft()
                entry.taken = True
                self.jobs += 1
                taken.append(entry)
        return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                taken = self._next()
                if taken is None:
                    return
                if not taken:
                    continue  # a hold: its thread writes now
            try:
                first = taken[0]
                if isinstance(first, _Job):
                    _settle(first.future, first.run)
                else:
                    self._deliver([e for e in taken if isinstance(e, _Deliveries)])
            finally:
                with self._cond:
                    self._owner = None

    def _deliver(self, group: list[_Deliveries]) -> None:
        live: list[_Deliveries] = []
        for entry in group:
            if entry.deadline is not None and remaining(entry.deadline) <= 0:
                entry.future.set_exception(_late("waited"))
                continue
            try:
                entry.items = entry.prepare() if callable(entry.prepare) else entry.prepare
            except BaseException as exc:  # this caller's bad input fails this caller alone
                entry.future.set_exception(exc)
                continue
            live.append(entry)
        while live:
            live = self._commit(live)

    def _commit(self, group: list[_Deliveries]) -> list[_Deliveries]:
        """Write the group in one transaction; what is left to write again (none: all settled)."""
        deadlines = [e.deadline for e in group if e.deadline is not None]
        deadline = min(deadlines) if deadlines else None
        items = [item for entry in group for item in entry.items]
        self.groups += 1
        self.group_sizes.append(len(group))
        try:
            results = self._write_group(items, any(e.with_records for e in group), deadline)
        except StoreTimeout as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return []
            # Ran under the earliest deadline: those past theirs fail, the others try again.
            now = time.monotonic()
            late = [e for e in group if e.deadline is not None and e.deadline <= now]
            late = late or [min(group, key=lambda e: e.deadline or now)]
            for entry in late:
                entry.future.set_exception(exc)
            return [e for e in group if e not in late]
        except BaseException as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return []
            # Whose write failed it is not known: each writes alone, and gets its own answer.
            for entry in group:
                self._commit([entry])
            return []
        start = 0
        for entry in group:
            end = start + len(entry.items)
            if entry.then is None:
                entry.future.set_result(results[start:end])
            else:
                _settle(entry.future, functools.partial(entry.then, results[start:end]))
            start = end
        return []

    # --- the end ------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run what is queued, then end the writer thread (joined with ``wait``); a later write
        starts another."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return
            self._closing = True
            self._cond.notify_all()
        if wait and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            if self._thread is None:
                self._closing = False


class _Held:
    __slots__ = ("_deadline", "_queue", "_taken")

    def __init__(self, queue: WriteQueue, deadline: float | None, *, taken: bool = False) -> None:
        self._queue = queue
        self._deadline = deadline
        # True: the turn is this thread's already (hold_if_idle), and is given back on exit.
        self._taken = taken

    def __enter__(self) -> None:
        if not self._taken:  # taken already by hold_if_idle
            self._taken = self._queue._take(self._deadline)

    def __exit__(self, *exc_info: object) -> None:
        self._queue._give_back(self._taken)


def _settle(future: Future[T], run: Callable[[], T]) -> None:
    try:
        result = run()
    except BaseException as exc:  # the caller's to handle, not the writer thread's end
        future.set_exception(exc)
    else:
        future.set_result(result)
