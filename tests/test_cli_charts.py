"""Pictures in the terminal: the timeline under ``stream ID`` and ``stats --chart``."""

from __future__ import annotations

import json
import re
from random import Random

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.text import Text

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.charts import timeline_bar
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.clock import format_time, now_ms
from rtms_lifecycle.timeline import timeline_marks
from tests._deliveries import body
from tests.test_cli_database import terminal_output

T0 = 1_741_651_200_000
MINUTE = 60_000


def invoke(db: str, *args: str) -> Result:
    """``rtms-lifecycle --db DB ARGS...``."""
    return CliRunner().invoke(cli, ["--db", db, *args], catch_exceptions=False)


def record(tracker: Tracker) -> None:
    """One stream: started, interrupted for ten minutes, resumed, stopped; the interruption
    reported late, after the stop. Another stopped for another reason."""
    tracker.ingest(body("started", "s1", T0))
    tracker.ingest(body("started", "s1", T0 + 30 * MINUTE))
    tracker.ingest(body("stopped", "s1", T0 + 60 * MINUTE, stop_reason=6))
    tracker.ingest(body("interrupted", "s1", T0 + 20 * MINUTE))
    for n in range(3):
        tracker.ingest(body("started", f"other-{n}", T0))
        tracker.ingest(body("stopped", f"other-{n}", T0 + MINUTE, stop_reason=11))


def test_stream_draws_its_timeline_under_the_history(sqlite_url: str) -> None:
    """The human output ends with the timeline: its span, the bar, a letter per transition."""
    with Tracker(sqlite_url) as tracker:
        record(tracker)
    result = invoke(sqlite_url, "stream", "s1")
    assert result.exit_code == 0
    after = result.output.split("History (event time)")[1]
    assert "Timeline 2025-03-11T00:00:00Z → 2025-03-11T01:00:00Z" in after
    marks = next(line for line in after.splitlines() if line.startswith("S"))
    # In event-time order, as the counts read it: the restart after the (late) interruption is
    # a resume, though it was recorded as a failover when it arrived before the interruption.
    assert re.fullmatch(r"S +I +R +X", marks.rstrip())


def test_the_timeline_colours_interruptions_and_late_events(sqlite_url: str) -> None:
    """Interrupted time is yellow, flowing time green; the late transition's letter is red."""
    with Tracker(sqlite_url) as tracker:
        record(tracker)
        stream = tracker.stream("s1")
        history = tracker.history("s1")
    assert stream is not None
    _title, bar, marks, _legend = timeline_bar(
        stream, history, T0, format_time, width=60
    ).renderables
    assert isinstance(bar, Text)
    assert isinstance(marks, Text)
    colours = [span.style for span in bar.spans for _ in range(span.end - span.start)]
    assert colours == ["green"] * 20 + ["yellow"] * 10 + ["green"] * 30
    late = [span for span in marks.spans if span.style == "bold red"]
    assert [marks.plain[s.start : s.end] for s in late] == ["I"]


def test_piped_timeline_tells_interrupted_from_flowing(sqlite_url: str) -> None:
    """Without colours (a pipe), flowing and interrupted time are two different glyphs."""
    with Tracker(sqlite_url) as tracker:
        record(tracker)
    after = invoke(sqlite_url, "stream", "s1").output.split("History (event time)")[1]
    bar = next(line for line in after.splitlines() if line.startswith("█"))
    assert re.fullmatch(r"█+▒+█+", bar.rstrip())
    assert "█ media flowing  ▒ interrupted" in after


def test_a_live_stream_s_timeline_runs_to_now_however_old(sqlite_url: str) -> None:
    """A live stream whose last event is days old is drawn to now, not as a zero-length bar."""
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "old", T0))
    result = invoke(sqlite_url, "stream", "old")
    assert result.exit_code == 0
    after = result.output.split("History (event time)")[1]
    title = next(line for line in after.splitlines() if line.startswith("Timeline"))
    assert not title.endswith(format_time(T0))
    bar = next(line for line in after.splitlines() if line.startswith("█"))
    assert bar.rstrip() == "█" * 64


def test_stats_chart_draws_a_bar_per_reason_with_the_counts(sqlite_url: str) -> None:
    """``stats --chart`` adds a bar per reason, longest for the most frequent, with its count."""
    with Tracker(sqlite_url) as tracker:
        record(tracker)
    stats = json.loads(invoke(sqlite_url, "stats", "--json").output)
    output = invoke(sqlite_url, "stats", "--chart").output
    bars = re.findall(r"(\d+) (\w+) (█+) +(\d+) \(", output)
    assert sorted((int(code), int(n)) for code, _, _, n in bars) == sorted(
        (s["stop_reason"], s["count"]) for s in stats
    )
    lengths = {name: len(blocks) for _, name, blocks, _ in bars}
    assert lengths == {"CONNECTION_TIMEOUT": 40, "MEETING_ENDED": 13}


def test_stats_chart_does_not_go_with_interruptions(sqlite_url: str) -> None:
    """``--chart --interruptions`` is a usage error naming both options."""
    Tracker(sqlite_url).close()
    result = invoke(sqlite_url, "stats", "--chart", "--interruptions")
    assert result.exit_code == 2
    assert "--chart" in result.output
    assert "--interruptions" in result.output


def test_stop_reason_bars_fit_a_narrow_terminal(sqlite_url: str) -> None:
    """On an 80-column terminal no line of `stats --chart --by-scope` is wider than 80 columns."""
    with Tracker(sqlite_url) as tracker:
        record(tracker)
        tracker.ingest(body("started", "s2", T0, scope="contact_center", scope_id="e1"))
        tracker.ingest(
            body(
                "stopped", "s2", T0 + MINUTE, scope="contact_center", scope_id="e1", stop_reason=16
            )
        )
    shown = terminal_output("--db", sqlite_url, "stats", "--chart", "--by-scope")
    bars = [line for line in shown.splitlines() if "█" in line]
    assert len(bars) == 3
    assert "16 DATA_CONNECTION_CLOSED_ABNORMALLY" in shown
    assert max(len(line) for line in shown.splitlines()) <= 80


def test_a_late_interruption_makes_the_restart_a_resume_on_the_timeline(sqlite_url: str) -> None:
    """started(t0), started(t2) with new server URLs, then interrupted(t1) delivered late: the
    counts say one resume and no failover, and so do the timeline's letters; the stored
    history still says what was known at each arrival."""
    t0 = now_ms() - 3 * MINUTE  # live: its timeline runs to now
    with Tracker(sqlite_url) as tracker:
        tracker.ingest(body("started", "late", t0))
        tracker.ingest(body("started", "late", t0 + 2 * MINUTE, server_urls="wss://rtms.zoom.us/2"))
        tracker.ingest(body("interrupted", "late", t0 + MINUTE))
        recorded = [t.name.value for t in tracker.history("late")]
    assert recorded == ["start", "interrupt", "failover"]  # never rewritten
    output = invoke(sqlite_url, "stream", "late").output
    assert "1 interruption, 1 resume, 0 failovers" in output
    after = output.split("History (event time)")[1]
    marks = next(line for line in after.splitlines() if line.startswith("S"))
    assert re.fullmatch(r"S +I +R", marks.rstrip())


_KINDS = st.sampled_from(["started", "interrupted", "stopped"])


@settings(max_examples=40, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 30), _KINDS, st.integers(1, 3)),
        min_size=1,
        max_size=7,
        unique_by=lambda e: (e[0], e[1]),
    ),
    order=st.randoms(use_true_random=False),
)
def test_the_timeline_marks_do_not_depend_on_the_order_of_arrival(
    tmp_path_factory: pytest.TempPathFactory, events: list[tuple[int, str, int]], order: Random
) -> None:
    """Whatever order a stream's started, interrupted and stopped events arrive in, its
    timeline shows the marks of their arrival in event-time order."""

    def marks(arrival: list[tuple[int, str, int]]) -> list[tuple[int, str]]:
        url = f"sqlite:///{tmp_path_factory.mktemp('order')}/db.sqlite"
        with Tracker(url) as tracker:
            for minute, kind, urls in arrival:
                at = T0 + minute * MINUTE
                tracker.ingest(body(kind, "p", at, server_urls=f"wss://rtms.zoom.us/{urls}"))
            history = tracker.history("p")
        return [(t.event_ts, name.value) for t, name in timeline_marks(history)]

    shuffled = list(events)
    order.shuffle(shuffled)
    assert marks(shuffled) == marks(sorted(events, key=lambda e: (e[0], _RANKS[e[1]])))


_RANKS = {"started": 0, "interrupted": 1, "stopped": 3}
