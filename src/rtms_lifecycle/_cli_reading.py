"""Reading an ingest's input to its end, or to where it stops: damage, or Ctrl-C.

Either way the input simply ends there for the tracker, which commits what it was given: the
deliveries read before the stop are recorded, and the command says how many and at which line.
"""

from __future__ import annotations

import gzip
import signal
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from ._cli_errors import BadInput, interrupted

__all__ = ["Reading"]


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
    _waiting: bool = False

    def lines_of(self, source: Iterable[bytes]) -> Iterator[bytes]:
        """The source's lines until its end, the first damaged byte, or a Ctrl-C."""
        lines = iter(source)
        while not self.interrupted:
            self._waiting = True
            try:
                line = next(lines)
            except StopIteration:
                return
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

    def check(self, recorded: int) -> None:
        """Raise the right exit if the input did not reach its end; ``recorded`` deliveries did."""
        if self.damage is not None:
            raise BadInput(
                f"the input is damaged at line {self.lines + 1:,} ({self.damage}): reading "
                f"stopped there; the {recorded:,} deliveries before it are recorded"
            )
        if self.interrupted:
            raise interrupted(
                f"Interrupted after line {self.lines:,}: {recorded:,} deliveries are recorded "
                "and committed; the rest of the input was not read."
            )
