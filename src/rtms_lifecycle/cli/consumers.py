"""The durable consumers' commands: ``follow``, ``forward`` and ``subscriptions``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import click

from rtms_lifecycle.bounds import MAX_WAIT_SECONDS
from rtms_lifecycle.cli.app import App, Group, current_app, pass_app
from rtms_lifecycle.cli.errors import Failure
from rtms_lifecycle.cli.params import JSON_OPTION, TEXT, Seconds
from rtms_lifecycle.cli.rendering import emit_json, follow_line, plural, subscriptions_table
from rtms_lifecycle.defaults import (
    DEFAULT_FORWARD_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
)

if TYPE_CHECKING:
    from rtms_lifecycle.records import Stream, Transition

__all__ = ["follow", "forward", "subscriptions"]


_CONSUMER_ARGUMENT: Final = click.argument("consumer", type=TEXT)
_FROM_START_OPTION: Final = click.option(
    "--from-start",
    is_flag=True,
    help="A new consumer starts at the first transition stored (else at the end of the feed).",
)
_IDLE_EXIT_OPTION: Final = click.option(
    "--idle-exit",
    metavar="SECONDS",
    type=Seconds(min=0),
    help="Exit after this many seconds with nothing to deliver (default: run until stopped).",
)


def _run_consumer(
    app: App,
    consumer: str,
    callback: Callable[[Transition, Stream], object],
    idle_exit: float | None,
    **options: Any,
) -> None:
    # A consumer of a database that is not there follows a typo: refuse, as read commands do.
    tracker = app.tracker(create=False)
    try:
        tracker.subscribe(consumer, callback, **options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'CONSUMER'") from None
    _say_if_held(app, consumer)
    tracker.run_subscriptions(idle_exit=idle_exit)


def _say_if_held(app: App, consumer: str) -> None:
    """Say on stderr that another process holds the consumer's lease, and until when: taking
    over from a killed one waits for its lease to run out, which would look like a hang."""
    from rtms_lifecycle.clock import format_time

    held = next(
        (s for s in app.tracker(create=False).subscriptions() if s.consumer == consumer), None
    )
    if held is None or held.holder is None or held.lease_until is None:
        return
    app.err.print(
        f"Waiting for the previous holder of consumer {consumer!r} ({held.holder}): its lease "
        f"runs until about {format_time(held.lease_until)} unless it stops first or renews it.",
        markup=False,
        highlight=False,
    )


@click.command()
@_CONSUMER_ARGUMENT
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object a line (docs/cli.md) instead of a line of text.",
)
@_FROM_START_OPTION
@_IDLE_EXIT_OPTION
@pass_app
def follow(
    app: App, consumer: str, as_json: bool, from_start: bool, idle_exit: float | None
) -> None:
    """Print every transition, from any process, as the named durable CONSUMER.

    One line each (JSON with --json); the consumer's cursor moves past a transition once its line
    is written, so `follow billing --json | my-tool` is a durable pipe: a restart resumes there.
    """
    out = sys.stdout

    def write(transition: Transition, stream: Stream) -> None:
        try:
            out.write(follow_line(transition, stream, as_json) + "\n")
            out.flush()
        except BrokenPipeError:
            # Nobody reads any more: stop without moving the cursor past this transition.
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            raise _PipeClosed(transition.id) from None

    try:
        _run_consumer(app, consumer, write, idle_exit, from_start=from_start, max_attempts=1)
    except _PipeClosed as closed:
        raise Failure(
            f"the output closed; consumer {consumer!r} resumes at transition {closed.args[0]}"
        ) from None


class _PipeClosed(BaseException):
    """Ends ``follow`` from inside a callback: a BaseException, so it is not retried or parked."""


@click.command()
@_CONSUMER_ARGUMENT
@click.argument("url", type=TEXT)
@click.option(
    "--secret-env",
    metavar="VAR",
    required=True,
    help="Environment variable holding the Standard Webhooks signing secret (whsec_...).",
)
@_FROM_START_OPTION
@_IDLE_EXIT_OPTION
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=Seconds(min=0, min_open=True, max=MAX_WAIT_SECONDS),
    default=DEFAULT_FORWARD_TIMEOUT,
    show_default=True,
    help="Wait this long for the receiver's answer.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Attempts at one transition before it is parked.",
)
@click.option(
    "--retry-delay",
    metavar="SECONDS",
    type=Seconds(min=0),
    default=DEFAULT_RETRY_DELAY,
    show_default=True,
    help="Wait before the first retry; each further retry waits twice as long.",
)
@pass_app
def forward(
    app: App,
    consumer: str,
    url: str,
    secret_env: str,
    from_start: bool,
    idle_exit: float | None,
    timeout: float,
    max_attempts: int,
    retry_delay: float,
) -> None:
    """POST every transition to URL as the named durable CONSUMER, signed (Standard Webhooks).

    A non-2xx answer or a timeout is retried with back-off, then the transition is parked (see
    `subscriptions`). The webhook-id is the same on every retry, for the receiver to dedupe.
    """
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="'URL'")
    secret = os.environ.get(secret_env)
    if not secret:
        raise click.BadParameter(f"${secret_env} is not set", param_hint="'--secret-env'")
    from rtms_lifecycle.cli import forward as _forward

    forwarder = _forward.Forwarder(
        consumer, url, _forward.check_secret(secret, f"${secret_env}"), timeout=timeout
    )
    tally = _Tally(forwarder, max_attempts)
    try:
        _run_consumer(
            app,
            consumer,
            tally,
            idle_exit,
            from_start=from_start,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
        )
    finally:
        forwarder.close()
    app.out.print(tally.summary(consumer, url), markup=False)


class _Tally:
    """Counts what a callback delivered, retried and parked (after ``max_attempts`` failures)."""

    def __init__(self, callback: Callable[[Transition, Stream], object], max_attempts: int):
        self._callback, self._max_attempts = callback, max_attempts
        self.delivered = 0
        self._failures: dict[int, int] = {}

    def __call__(self, transition: Transition, stream: Stream) -> None:
        try:
            self._callback(transition, stream)
        except Exception:
            self._failures[transition.id] = self._failures.get(transition.id, 0) + 1
            raise
        self.delivered += 1

    def summary(self, consumer: str, url: str) -> str:
        parked = sum(count // self._max_attempts for count in self._failures.values())
        retried = sum(self._failures.values()) - parked
        text = (
            f"Forwarded {plural(self.delivered, 'transition')} to {url} as {consumer!r}; "
            f"{plural(retried, 'retry', 'retries')}, {parked} parked."
        )
        if parked:
            text += " `rtms-lifecycle subscriptions` lists them; `subscriptions retry` re-queues."
        return text


@click.group(cls=Group, invoke_without_command=True)
@JSON_OPTION
@click.pass_context
def subscriptions(ctx: click.Context, as_json: bool) -> None:
    """List durable consumers: cursor, lag, parked transitions, last error."""
    if ctx.invoked_subcommand is not None:
        return
    app = current_app()
    app.show(as_json, app.tracker(create=False).subscriptions(), subscriptions_table)


@subscriptions.command("retry")
@_CONSUMER_ARGUMENT
@JSON_OPTION
@pass_app
def subscriptions_retry(app: App, consumer: str, as_json: bool) -> None:
    """Queue CONSUMER's parked transitions for delivery again (by its running follow/forward)."""
    count = app.tracker(create=False).retry_parked(consumer)
    if as_json:
        emit_json({"consumer": consumer, "requeued": count})
        return
    requeued = plural(count, "parked transition")
    app.out.print(f"Re-queued {requeued} of {consumer}.", markup=False)
