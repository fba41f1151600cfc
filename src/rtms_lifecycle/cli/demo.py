"""``rtms-lifecycle demo``: a bundled day of RTMS webhooks replayed, then what the record tells."""

from __future__ import annotations

import gzip
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Final

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

__all__ = ["DEMO_RESOURCE", "DemoDay", "demo", "demo_day"]

DEMO_RESOURCE: Final = "data/demo_day.jsonl.gz"
# Every line of the bundled day has one, a plain integer (tests/test_demo.py checks it).
_EVENT_TS: Final = re.compile(rb'"event_ts":(\d+)')


@dataclass(frozen=True)
class DemoDay:
    """The bundled day as it is stored in the package."""

    lines: list[bytes]
    stream_ids: frozenset[str]
    #: The first line's stream and its event time: where an earlier replay put the day.
    anchor_id: str
    anchor_ts: int
    #: The day's last event time.
    end_ts: int

    def shifted(self, offset_ms: int) -> bytes:
        """The day's JSON Lines with every ``event_ts`` moved by ``offset_ms``, nothing else."""

        def move(match: re.Match[bytes]) -> bytes:
            return b'"event_ts":%d' % (int(match[1]) + offset_ms)

        return b"".join(_EVENT_TS.sub(move, line, count=1) for line in self.lines)


@cache
def demo_day() -> DemoDay:
    """The bundled day, read once."""
    raw = files("rtms_lifecycle").joinpath(DEMO_RESOURCE).read_bytes()
    lines = gzip.decompress(raw).splitlines(keepends=True)
    ids: set[str] = set()
    for line in lines:
        try:
            stream_id = json.loads(line)["payload"]["rtms_stream_id"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(stream_id, str):
            ids.add(stream_id)
    first = json.loads(lines[0])
    stamps = [int(found[1]) for line in lines if (found := _EVENT_TS.search(line))]
    return DemoDay(
        lines=lines,
        stream_ids=frozenset(ids),
        anchor_id=first["payload"]["rtms_stream_id"],
        anchor_ts=first["event_ts"],
        end_ts=max(stamps),
    )


def _held_by_the_demo(tracker: Tracker, day: DemoDay) -> bool | None:
    """None for an empty database; whether every stream it holds is one of the demo's."""
    held = tracker.count_streams()
    if not held:
        return None
    if held > len(day.stream_ids):
        return False
    return all(stream.stream_id in day.stream_ids for stream in tracker.streams())


def _offset(tracker: Tracker, day: DemoDay) -> int:
    """How far to move the day: where an earlier replay put it, else so that it ends now."""
    from rtms_lifecycle.clock import now_ms

    earlier = tracker.stream(day.anchor_id)
    if earlier is not None and earlier.started_at is not None:
        return earlier.started_at - day.anchor_ts
    return now_ms() - day.end_ts


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


def _demo_next_steps(prefix: str, example: Stream | None, expire: tuple[str, str]) -> str:
    example_id = example.stream_id if example else "STREAM_ID"
    commands = [
        ("streams --active", "every stream whose media flows now"),
        (f"stream {example_id}", "one stream and its history"),
        ("stats --by-scope", "stop reasons per product"),
        ("stats --interruptions --by-scope", "interruptions and recoveries per product"),
        ("deliveries --outcome rejected", "bad deliveries and why they were refused"),
        ("alerts", "account concurrency alerts"),
        ("streams --state stopped --limit 5 --json", "the machine-readable form"),
        expire,
    ]
    width = max(len(command) for command, _ in commands) + len(prefix) + 1
    lines = [f"  {prefix + ' ' + command:<{width}}  # {why}" for command, why in commands]
    return "Try next:\n" + "\n".join(lines)


# `expire --stale-after` in the suggestions: the longest of these that some live stream of the
# demo has gone without an event (a fresh demo's quietest is about 4h 40m).
_STALE_AFTER: Final = (
    ("6h", 6 * 3_600_000),
    ("2h", 2 * 3_600_000),
    ("1h", 3_600_000),
    ("30m", 1_800_000),
    ("15m", 900_000),
)


def _expire_step(live: list[Stream], now: int) -> tuple[str, str]:
    """The `expire` suggestion: one that finds streams on this data, or says it finds none."""
    for text, ms in _STALE_AFTER:
        quiet = sum(1 for s in live if s.last_event_at is not None and now - s.last_event_at > ms)
        if quiet:
            streams = "stream" if quiet == 1 else "streams"
            return (
                f"expire --stale-after {text} --dry-run",
                f"the {quiet} live {streams} silent over {text}: what expire would close",
            )
    return (
        "expire --stale-after 6h --dry-run",
        "live streams silent over 6h: what expire would close (none here yet)",
    )


def _eventfulness(stream: Stream) -> tuple[int, int]:
    # The stream worth opening first in the demo: the most happened to it.
    return (stream.interruptions + stream.failovers, stream.resumes)


@click.command()
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many of the active streams (the most recent) to list.",
)
@click.option(
    "--force", is_flag=True, help="Replay even into a database that already holds streams."
)
@pass_app
def demo(app: App, top: int, force: bool) -> None:
    """Replay a bundled day of RTMS webhooks, ending now, then show what the record tells.

    A database that holds only the demo's streams gets the same day again (nothing changes).
    Refuses a database that holds other streams (the fake ones could not be told apart or
    removed) unless --force.
    """
    from rtms_lifecycle.clock import format_time, now_ms
    from rtms_lifecycle.machine import ACTIVE_STATES, LIVE_STATES, State

    tracker = app.tracker()
    day = demo_day()
    ours = _held_by_the_demo(tracker, day)
    if ours is False and not force:
        raise BadInput(
            f"{app.shown_db} already holds streams other than the demo's: the demo would mix a "
            "day of made-up streams into them, for good. Give the demo its own database "
            "(`--db demo.db`), or '--force'"
        )
    offset = _offset(tracker, day)
    if ours:
        app.out.print(
            f"{app.shown_db} holds only the demo's streams, from an earlier run: replaying the "
            f"same day again (it ended {format_time(day.end_ts + offset)}). For a day that ends "
            "now, give the demo a new database.",
            markup=False,
        )
    transitions = _count_transitions(tracker)
    app.out.print(
        f"Replaying a day of Zoom RTMS webhooks, moved to end {format_time(day.end_ts + offset)}, "
        f"into {app.shown_db} ...",
        markup=False,
    )
    started = time.perf_counter()
    summary, reading = replay(app.err, tracker, io.BytesIO(day.shifted(offset)), DEFAULT_BATCH_SIZE)
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
    steps = _demo_next_steps(
        app.command_prefix(), example, _expire_step(tracker.streams(LIVE_STATES), now_ms())
    )
    app.out.print(steps, markup=False)
