"""Reading an ingest's input: JSON Lines from a file or a pipe, gzipped or not, with progress.

Reading goes to the input's end, or to where it stops: damage, or Ctrl-C. Either way the input
simply ends there for the tracker, which commits what it was given: the deliveries read before
the stop are recorded, and the command says how many and at which line. A database that fails,
or a Ctrl-C while a write waits for another process's lock, stops the writes instead: the
command says how many deliveries the batches committed before were.
"""

from __future__ import annotations

import gc
import gzip
import signal
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TYPE_CHECKING, Final, Protocol, TypeVar

from rtms_lifecycle.cli.errors import BadInput, failure_of, interrupted
from rtms_lifecycle.cli.rendering import plural
from rtms_lifecycle.exceptions import RTMSLifecycleError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Task
    from rich.text import Text

    from rtms_lifecycle.records import Outcome
    from rtms_lifecycle.tracker import IngestSummary, Tracker

__all__ = ["Reading", "replay"]

_T = TypeVar("_T")

# Updating the progress bar per line would cost more than parsing the line.
_PROGRESS_EVERY: Final = 500
# The longest line read as a delivery. Zoom's webhook bodies are a few KB and the receiver
# refuses bodies over 64 KiB; a longer line (a file with no line ends, /dev/zero) would be held
# in memory whole. It is read through in pieces of _SKIP_PIECE bytes, skipped and named.
MAX_LINE_BYTES: Final = 16 * 1024 * 1024
_SKIP_PIECE: Final = 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"


def _deliveries(count: int, before_it: str = "") -> str:
    # "1 delivery is", "2 deliveries before it are"
    return f"{plural(count, 'delivery', 'deliveries')}{before_it} {'is' if count == 1 else 'are'}"


def _committed(recorded: int) -> str:
    # "the first 10,000 deliveries of the input are recorded and committed"
    if recorded == 0:
        return "no delivery of the input is recorded"
    return (
        f"the first {_deliveries(recorded, ' of the input')} recorded and committed, "
        "the rest is not"
    )


class _LineSource(Protocol):
    """A file or a gzip stream: what the input's lines are read from, up to a length."""

    def readline(self, size: int = -1, /) -> bytes: ...


class _StopReading(KeyboardInterrupt):
    """Ctrl-C while waiting for input: no delivery is half-read, so the input just ends."""


def _damage(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the gzip stream is truncated"
    if isinstance(exc, zlib.error | gzip.BadGzipFile):
        return f"the gzip data is corrupt: {exc}"
    return str(exc) or type(exc).__name__


@dataclass
class Reading:
    """Where reading the input stands: the lines read, and why it stopped before the end."""

    lines: int = 0
    damage: str | None = None
    interrupted: bool = False
    #: The numbers of the lines skipped for being longer than ``MAX_LINE_BYTES``.
    overlong: list[int] = field(default_factory=list)
    #: Why the writes stopped before the input's end: the database failed.
    failure: RTMSLifecycleError | None = None
    #: The batch being written was rolled back by a Ctrl-C (``"lock"``: while it waited for
    #: another process's lock; ``"write"``: a second Ctrl-C), or None.
    unwritten: str | None = None
    _waiting: bool = False

    def lines_of(self, source: _LineSource) -> Iterator[bytes]:
        """The source's lines until its end, the first damaged byte, or a Ctrl-C; a line
        longer than ``MAX_LINE_BYTES`` is read through, skipped and noted in ``overlong``."""
        while not self.interrupted:
            self._waiting = True
            try:
                line = source.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while (piece := source.readline(_SKIP_PIECE)) and not piece.endswith(b"\n"):
                        pass
                    self.lines += 1
                    self.overlong.append(self.lines)
                    continue
            except _StopReading:
                return
            # gzip: EOFError when truncated, BadGzipFile (an OSError) or zlib.error when corrupt.
            except (EOFError, OSError, zlib.error) as exc:
                self.damage = _damage(exc)
                return
            finally:
                self._waiting = False
            self.lines += 1
            yield line

    def wait(self, read: Callable[[], _T]) -> _T | None:
        """``read()`` of input that may not have come yet; None if a Ctrl-C ended the input."""
        self._waiting = True
        try:
            return read()
        except _StopReading:
            return None
        finally:
            self._waiting = False

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """The first Ctrl-C ends the input where it is; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers belong to the main thread; elsewhere Ctrl-C is not ours
            return

        def stop(_signum: int, _frame: FrameType | None) -> None:
            self.interrupted = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self._waiting:
                raise _StopReading

        previous = signal.signal(signal.SIGINT, stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @property
    def writes_kept_up(self) -> bool:
        """Whether every delivery read was written (else the writes stopped before)."""
        return self.failure is None and self.unwritten is None

    def check(self, recorded: int) -> None:
        """Raise the right exit if the input did not reach its end; ``recorded`` deliveries did."""
        if self.failure is not None:
            raise failure_of(
                self.failure,
                f"{self.failure}; {_committed(recorded)}: running the same input again is safe "
                "(what was recorded comes back as duplicates)",
            )
        if self.unwritten is not None:
            during = (
                ", while waiting for another process's lock on the database"
                if self.unwritten == "lock"
                else ""
            )
            raise interrupted(
                f"Interrupted after line {self.lines:,}{during}: {_committed(recorded)}."
            )
        if self.damage is not None:
            raise BadInput(
                f"the input is damaged at line {self.lines + 1:,} ({self.damage}): reading "
                f"stopped there; the {_deliveries(recorded, ' before it')} recorded"
            )
        if self.interrupted and self.lines == 0:
            raise interrupted("Interrupted before any input came: nothing was read or recorded.")
        if self.interrupted:
            raise interrupted(
                f"Interrupted after line {self.lines:,}: {_deliveries(recorded)} recorded "
                "and committed; the rest of the input was not read."
            )
        if self.overlong:
            shown = ", ".join(f"{n:,}" for n in self.overlong[:3])
            more = len(self.overlong) - 3
            which = f"{shown} and {more:,} more" if more > 0 else shown
            raise BadInput(
                f"{plural(len(self.overlong), 'line', 'lines')} ({which}) longer than "
                f"{MAX_LINE_BYTES // 1024 // 1024} MiB, more than any webhook body, "
                f"{'was' if len(self.overlong) == 1 else 'were'} skipped and not recorded; "
                f"the {_deliveries(recorded, ' of the other lines')} recorded"
            )


# --- reading JSON Lines ---------------------------------------------------------------------------


def _json_lines(source: Iterable[bytes], report: Callable[[int], None]) -> Iterator[bytes]:
    """Each non-blank line, read one at a time; ``report`` hears the running count."""
    count = 0
    for line in source:
        body = line.strip()
        if not body:
            continue
        yield body
        count += 1
        if count % _PROGRESS_EVERY == 0:
            report(count)
    report(count)


@contextmanager
def _progress(
    err: Console, total: int | None, position: Callable[[], int]
) -> Iterator[Callable[[int], None]]:
    """A progress reporter: a bar with a rate when stderr is a terminal, else nothing."""
    if not err.is_terminal:
        yield lambda _count: None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        """Deliveries so far and how many per second."""

        def render(self, task: Task) -> Text:
            count = int(task.fields.get("count", 0))
            elapsed = task.elapsed or 0.0
            rate = count / elapsed if elapsed > 0 else 0.0
            return Text(f"{count:,} deliveries  {rate:,.0f}/s")

    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("reading")]
    if total:
        columns += [BarColumn(), TaskProgressColumn()]
    columns += [_RateColumn(), TimeElapsedColumn()]
    if total:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("ingest", total=total, count=0)

        def report(count: int) -> None:
            progress.update(task, completed=position() if total else None, count=count)

        yield report


def _size_and_position(raw: IO[bytes]) -> tuple[int | None, Callable[[], int]]:
    # The raw (possibly compressed) bytes consumed so far, against the file's size.
    try:
        size = raw.seek(0, 2)
        raw.seek(0)
    except (OSError, ValueError):
        return None, lambda: 0
    return size, raw.tell


def _starts_with(raw: IO[bytes], magic: bytes) -> bool:
    # peek() works on pipes too; only a plain unbuffered stream has to be rewound.
    peek = getattr(raw, "peek", None)
    if peek is not None:
        return bytes(peek(len(magic))[: len(magic)]) == magic
    head = raw.read(len(magic))
    raw.seek(0)
    return head == magic


@contextmanager
def _decompressed(raw: IO[bytes], gzipped: bool) -> Iterator[_LineSource]:
    """The bytes of a file, gunzipped when it starts with gzip's magic number."""
    if gzipped:
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield unzipped
    else:
        yield raw


def replay(
    err: Console, tracker: Tracker, raw: IO[bytes], batch_size: int
) -> tuple[IngestSummary, Reading]:
    """Ingest JSON Lines (gzipped or not) from a file or a pipe, streaming it line by line.

    Damaged input or a Ctrl-C ends the input early; what was read is recorded (``Reading.check``).
    """
    from rtms_lifecycle.store.sqlite import LockWaitInterrupted, lock_waits_interrupted_by
    from rtms_lifecycle.tracker import IngestSummary

    total, position = _size_and_position(raw)
    reading = Reading()
    committed: Counter[Outcome] = Counter()
    # A Ctrl-C (noted, not raised: what was read is committed) ends a wait for a lock.
    with reading.interruptible(), lock_waits_interrupted_by(lambda: reading.interrupted):
        # Whether it is gzip: the first bytes, which an idle pipe may not have sent yet.
        gzipped = reading.wait(lambda: _starts_with(raw, _GZIP_MAGIC))
        if gzipped is None:
            return tracker.ingest_many((), batch_size=batch_size), reading
        with _decompressed(raw, gzipped) as source, _progress(err, total, position) as report:
            lines = _json_lines(reading.lines_of(source), report)
            # Everything imported so far lives as long as the process: out of the collector's
            # full passes, which a bulk load's millions of small objects otherwise trigger
            # over and over (as docs/embedding.md advises an application to do).
            gc.freeze()
            try:
                summary = tracker.ingest_many(lines, batch_size=batch_size, committed=committed)
            except LockWaitInterrupted:
                reading.unwritten = "lock"
            except KeyboardInterrupt:
                reading.interrupted = True
                reading.unwritten = "write"
            except RTMSLifecycleError as exc:
                reading.failure = exc
            else:
                return summary, reading
    return IngestSummary(dict(committed)), reading
