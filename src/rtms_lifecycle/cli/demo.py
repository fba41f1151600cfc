"""``rtms-lifecycle demo``: a bundled day of RTMS webhooks replayed, then what the record tells."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import IO, TYPE_CHECKING, Final

import click

from rtms_lifecycle.cli.app import App, pass_app
from rtms_lifecycle.cli.errors import BadInput
from rtms_lifecycle.cli.reading import replay
from rtms_lifecycle.cli.rendering import (
    interruptions_table,
    print_table,
    report_ingest,
    stop_reasons_table,
    streams_table,
)
from rtms_lifecycle.defaults import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from rtms_lifecycle.records import Stream, Transition
    from rtms_lifecycle.tracker import IngestSummary, Tracker

__all__ = ["DEMO_RESOURCE", "demo"]

DEMO_RESOURCE: Final = "data/demo_day.jsonl.gz"


@contextmanager
def _demo_file() -> Iterator[IO[bytes]]:
    with files("rtms_lifecycle").joinpath(DEMO_RESOURCE).open("rb") as raw:
        yield raw


def _count_transitions(tracker: Tracker) -> Callable[[], int]:
    seen = [0]

    def count(_transition: Transition, _stream: Stream) -> None:
        seen[0] += 1

    tracker.on_transition(count)
    return lambda: seen[0]


def _demo_verdict(summary: IngestSummary, transitions: int) -> str:
    from rtms_lifecycle.records import Outcome

    if transitions:
        return (
            f"Recorded a day of RTMS webhooks: {transitions:,} lifecycle transitions. Bad and "
            "unknown deliveries were stored too, with their errors: nothing is dropped."
        )
    noise = summary[Outcome.REJECTED] + summary[Outcome.UNHANDLED]
    return (
        f"The demo day was already here: all {summary[Outcome.DUPLICATE]:,} stream deliveries "
        "were duplicates and no stream changed. Concurrency alerts are recognised and not "
        f"stored twice; the {noise} malformed or unknown deliveries are recorded again, as "
        "every delivery is."
    )


def _demo_next_steps(prefix: str, example: Stream | None) -> str:
    example_id = example.stream_id if example else "STREAM_ID"
    commands = [
        ("streams --active", "every stream whose media flows now"),
        (f"stream {example_id}", "one stream and its history"),
        ("stats --by-scope", "stop reasons per product"),
        ("stats --interruptions --by-scope", "interruptions and recoveries per product"),
        ("deliveries --outcome rejected", "bad deliveries and why they were refused"),
        ("alerts", "account concurrency alerts"),
        ("streams --state stopped --limit 5 --json", "the machine-readable form"),
        ("expire --stale-after 6h", "close streams whose stopped webhook never came"),
    ]
    width = max(len(command) for command, _ in commands) + len(prefix) + 1
    lines = [f"  {prefix + ' ' + command:<{width}}  # {why}" for command, why in commands]
    return "Try next:\n" + "\n".join(lines)


def _eventfulness(stream: Stream) -> tuple[int, int]:
    # The stream worth opening first in the demo: the most happened to it.
    return (stream.interruptions + stream.failovers, stream.resumes)


@click.command()
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--force", is_flag=True, help="Replay even into a database that already holds streams."
)
@pass_app
def demo(app: App, top: int, force: bool) -> None:
    """Replay a bundled day of RTMS webhooks, then show what the record tells.

    Refuses a database that already holds streams (the fake ones could not be told apart or
    removed) unless --force.
    """
    from rtms_lifecycle.machine import ACTIVE_STATES, State

    tracker = app.tracker()
    held = len(tracker.streams(limit=1))
    if held and not force:
        raise BadInput(
            f"{app.shown_db} already holds streams: the demo would mix a day of made-up streams "
            "into them, for good. Give the demo its own database (`--db demo.db`), or '--force'"
        )
    transitions = _count_transitions(tracker)
    app.out.print(f"Replaying a day of Zoom RTMS webhooks into {app.shown_db} ...", markup=False)
    started = time.perf_counter()
    with _demo_file() as raw:
        summary, reading = replay(app.err, tracker, raw, DEFAULT_BATCH_SIZE)
    report_ingest(app.out, summary, time.perf_counter() - started)
    reading.check(summary.total)
    app.out.print(_demo_verdict(summary, transitions()), markup=False)
    active = tracker.streams(ACTIVE_STATES)
    title = f"Active streams ({len(active):,}; latest {min(top, len(active))})"
    app.out.print()
    print_table(app.out, streams_table(title, active[:top]))
    print_table(app.out, stop_reasons_table(tracker.stop_reason_stats(), by_scope=False))
    app.out.print(interruptions_table([(None, tracker.interruption_stats())]))
    example = max(tracker.streams(State.STOPPED), key=_eventfulness, default=None)
    app.out.print(_demo_next_steps(app.command_prefix(), example), markup=False)
