"""What the command line answers when something goes wrong: one line on stderr and an exit code.

The exit codes are documented in docs/cli.md; scripts and cron jobs branch on them:

- 1: the command ran and failed (an unknown stream, a database error while working);
- 2: bad input, nothing done: an option value, the database URL, a database that needs
  ``db upgrade`` (or a newer rtms-lifecycle), ``demo`` into real data, damaged input;
- 3: the database is unavailable: a missing SQLite file, a server that cannot be reached, a
  SQLite file another process held locked for all of the wait;
- 130: interrupted (Ctrl-C), as a shell reports a command killed by SIGINT.

A reader that stops reading (``| head``, ``less`` quit early) is no failure: the command ends
quietly with 0, whatever it was writing.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Final

import click

from rtms_lifecycle.exceptions import (
    DatabaseError,
    DatabaseUnavailable,
    DatabaseURLError,
    RTMSLifecycleError,
    SchemaOutdatedError,
    StoreError,
)

__all__ = [
    "BAD_INPUT",
    "FAILURE",
    "INTERRUPTED",
    "UNAVAILABLE",
    "BadInput",
    "Failure",
    "Unavailable",
    "cli_errors",
    "failure_of",
    "interrupted",
    "output_closed",
]

FAILURE: Final = 1
BAD_INPUT: Final = 2
UNAVAILABLE: Final = 3
INTERRUPTED: Final = 130
_OPTIONAL_EXTRAS: Final = {
    "psycopg": "postgres",
    "fastapi": "server",
    "uvicorn": "server",
    "httpx": "forward",
    "standardwebhooks": "forward",
}


class Failure(click.ClickException):
    """A clean one-line error on stderr and a non-zero exit, never a traceback."""

    exit_code = FAILURE


class BadInput(Failure):
    """Nothing ran: what was given cannot work (2, like Click's own usage errors)."""

    exit_code = BAD_INPUT


class Unavailable(Failure):
    """The database is not there or cannot be reached; the same command may work later."""

    exit_code = UNAVAILABLE


def interrupted(message: str) -> click.exceptions.Exit:
    """Say why on stderr; the exit to raise for Ctrl-C (Click's own would print "Aborted!")."""
    click.echo(message, err=True)
    return click.exceptions.Exit(INTERRUPTED)


def output_closed() -> click.exceptions.Exit:
    """The exit to raise once stdout's reader has gone: later writes (and the flush at exit) go
    to /dev/null, so that nothing more is said; 0, as for a command that said all it had to."""
    with suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return click.exceptions.Exit(0)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (a broken pipe may also be a socket's)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _missing_extra(exc: ModuleNotFoundError) -> Failure | None:
    extra = _OPTIONAL_EXTRAS.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    return Failure(
        f"{exc.name} is not installed: install the '{extra}' extra, "
        f"e.g. pip install 'rtms-lifecycle[{extra}]'"
    )


def failure_of(exc: RTMSLifecycleError, message: str | None = None) -> Failure:
    """The exit for a library error, with its message or ``message``."""
    said = str(exc) if message is None else message
    if isinstance(exc, SchemaOutdatedError | DatabaseURLError):
        return BadInput(said)
    if isinstance(exc, DatabaseError):
        # A statement the database failed: the command ran, and the same run fails again.
        return Failure(said)
    if isinstance(exc, DatabaseUnavailable | StoreError):
        # Also a database another process held locked for all of the wait: later, it may work.
        return Unavailable(said)
    return Failure(said)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn every library error into a message: operators read these, not tracebacks."""
    try:
        yield
    except RTMSLifecycleError as exc:
        raise failure_of(exc) from exc
    except ModuleNotFoundError as exc:
        failure = _missing_extra(exc)
        if failure is None:
            raise
        raise failure from exc
    except KeyboardInterrupt:
        raise interrupted("Interrupted.") from None
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        raise output_closed() from None
