"""The ``rtms-lifecycle`` command (docs/cli.md), through Click's runner and as a real process."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from types import GeneratorType
from typing import Any

import click
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result
from rich.console import Console

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.commands import cli, parse_duration, parse_time
from rtms_lifecycle.cli.rendering import _quick_table, deliveries_table, print_table
from rtms_lifecycle.clock import format_duration, format_time
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store.engine import create_store_engine

from ._deliveries import SPEC_STREAM_KEYS, body

EXAMPLES = sorted((Path(__file__).resolve().parent / "zoom" / "examples").glob("*.json"))
ENTRY_POINT = Path(sys.executable).with_name("rtms-lifecycle")

OUTCOMES = ["applied", "ignored", "duplicate", "conflict", "rejected", "unhandled"]
STAT_KEYS = {
    "stop_reason",
    "stop_reason_name",
    "stop_reason_category",
    "count",
    "share",
    "median_duration_ms",
}
DELIVERY_KEYS = {"id", "received_at", "source", "event", "outcome", "error", "raw"}
INTERRUPTION_KEYS = {
    "streams",
    "interrupted_streams",
    "interruptions",
    "recovered",
    "median_recovery_ms",
    "stopped_while_interrupted",
}
# Settings the developer's shell may hold that would change what the command does.
_AMBIENT = ("RTMS_LIFECYCLE_DB", "FORCE_COLOR", "ZOOM_WEBHOOK_SECRET_TOKEN")
HOUR = 3_600_000
T0 = 1_741_651_200_000  # 2025-03-11T00:00:00Z

# Five streams, one per scope, ending in every live state and stopped.
SCENARIO = [
    body("started", "s-meeting", T0 + HOUR, scope_id="m1"),
    body("started", "s-webinar", T0 + 2 * HOUR, scope="webinar", scope_id="w1"),
    body("interrupted", "s-webinar", T0 + 2 * HOUR + 5000, scope="webinar", scope_id="w1"),
    body("started", "s-session", T0 + 3 * HOUR, scope="session", scope_id="v1"),
    body("interrupted", "s-session", T0 + 3 * HOUR + 5000, scope="session", scope_id="v1"),
    body("started", "s-session", T0 + 3 * HOUR + 9000, scope="session", scope_id="v1"),
    body("started", "s-phone", T0 + 4 * HOUR, scope="phone", scope_id="c1"),
    body("stopped", "s-phone", T0 + 5 * HOUR, scope="phone", scope_id="c1", stop_reason=21),
    body("started", "s-cc", T0 + 6 * HOUR, scope="contact_center", scope_id="e1"),
    body("stopped", "s-cc", T0 + 6 * HOUR + 60_000, scope="contact_center", scope_id="e1"),
]


def invoke(db: str, *args: str, stdin: str | bytes | None = None) -> Result:
    """Run the command in-process against ``db``."""
    return CliRunner().invoke(cli, ["--db", db, *args], input=stdin, catch_exceptions=False)


def invoke_json(db: str, *args: str, stdin: str | bytes | None = None) -> Any:
    """Run with ``--json``: it must succeed and print exactly one JSON document."""
    result = invoke(db, *args, "--json", stdin=stdin)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_process(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, its output piped (not a terminal), no ambient config."""
    environ = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    environ.update(env or {})
    return subprocess.run(
        [str(ENTRY_POINT), *args],
        cwd=cwd,
        env=environ,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def jsonl(bodies: Iterable[dict[str, Any] | str]) -> str:
    """JSON Lines: a dict as compact JSON, a string as given."""
    return "".join((b if isinstance(b, str) else json.dumps(b)) + "\n" for b in bodies)


def ingest(db: str, bodies: Iterable[dict[str, Any] | str]) -> dict[str, int]:
    """Feed deliveries through ``ingest -`` and return its counts."""
    counts: dict[str, int] = invoke_json(db, "ingest", "-", stdin=jsonl(bodies))
    return counts


@pytest.fixture
def scenario_db(sqlite_url: str) -> str:
    """A database holding SCENARIO."""
    ingest(sqlite_url, SCENARIO)
    return sqlite_url


def ids(streams: list[dict[str, Any]]) -> set[str]:
    """The stream ids of a ``streams --json`` answer."""
    return {s["stream_id"] for s in streams}


def downgrade_one_revision(url: str) -> str:
    """Put a database at the migration before the newest; returns that revision."""
    config = _migrate.alembic_config()
    previous = ScriptDirectory.from_config(config).get_revision(_migrate.head_revision())
    if previous is None or previous.down_revision is None:
        pytest.skip("only one migration exists: no older revision to be refused")
    engine = create_store_engine(url)
    try:
        _migrate.upgrade(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, str(previous.down_revision))
    finally:
        engine.dispose()
    return str(previous.down_revision)


# --- ingest ---------------------------------------------------------------------------------------


def test_ingest_counts_zoom_published_examples(db_url: str, tmp_path: Path) -> None:
    """Zoom's 11 examples share one stream id: the meeting's 3 events and 2 alerts apply, the
    webinar's and session's 6 events conflict (another scope)."""
    assert len(EXAMPLES) == 11
    path = tmp_path / "examples.jsonl"
    path.write_text(jsonl(json.loads(p.read_text()) for p in EXAMPLES))
    counts = invoke_json(db_url, "ingest", str(path))
    assert counts == {
        "applied": 5,
        "ignored": 0,
        "duplicate": 0,
        "conflict": 6,
        "rejected": 0,
        "unhandled": 0,
    }
    assert list(counts) == OUTCOMES
    again = invoke_json(db_url, "ingest", str(path))
    assert again["duplicate"] == 3
    assert again["conflict"] == 6


BAD_LINES = [
    "not json at all",
    "[1, 2, 3]",
    json.dumps({"event": "meeting.rtms_started", "event_ts": T0, "payload": {"meeting_uuid": "m"}}),
    # A NUL no database column can keep as text (PostgreSQL refuses it in any).
    '{"event": "meeting.rtms\\u0000_stopped", "event_ts": 1, "payload": {}}',
]


def test_bad_lines_are_rejected_and_the_run_goes_on(db_url: str) -> None:
    """Each bad line becomes one rejected delivery; blank lines are skipped; exit code 0."""
    lines: list[dict[str, Any] | str] = [
        *BAD_LINES[:2],
        "",
        "   ",
        body("started", "s-1", T0),
        *BAD_LINES[2:],
        json.dumps({"event": "meeting.participant_joined", "event_ts": T0, "payload": {}}),
    ]
    result = invoke(db_url, "ingest", "-", "--json", stdin=jsonl(lines))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "applied": 1,
        "ignored": 0,
        "duplicate": 0,
        "conflict": 0,
        "rejected": 4,
        "unhandled": 1,
    }
    rejected = invoke_json(db_url, "deliveries", "--outcome", "rejected")
    assert sorted(d["raw"] for d in rejected) == sorted(BAD_LINES)
    assert all(d["error"] for d in rejected)


@pytest.mark.parametrize("batch_size", ["1", "3", "1000"])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("from_stdin", [False, True], ids=["file", "stdin"])
def test_ingest_reads_files_gzip_and_stdin_in_any_batch_size(
    sqlite_url: str, tmp_path: Path, from_stdin: bool, compressed: bool, batch_size: str
) -> None:
    """Every input form and batch size records the same outcomes and the same streams."""
    data = jsonl([*SCENARIO, SCENARIO[0], "oops"]).encode()
    if compressed:
        data = gzip.compress(data)
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    source = "-" if from_stdin else str(path)
    stdin = data if from_stdin else None
    counts = invoke_json(sqlite_url, "ingest", source, "--batch-size", batch_size, stdin=stdin)
    assert counts == {**dict.fromkeys(OUTCOMES, 0), "applied": 10, "duplicate": 1, "rejected": 1}
    assert ids(invoke_json(sqlite_url, "streams")) == {
        "s-meeting",
        "s-webinar",
        "s-session",
        "s-phone",
        "s-cc",
    }


def test_ingest_streams_its_input_to_the_tracker(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracker gets a lazy iterator of lines, never the whole file in a list."""
    seen: list[type] = []
    original = Tracker.ingest_many

    def spy(self: Tracker, bodies: Iterable[Any], *, batch_size: int = 1000, **kw: Any) -> Any:
        seen.append(type(bodies))
        assert iter(bodies) is bodies
        return original(self, bodies, batch_size=batch_size, **kw)

    monkeypatch.setattr(Tracker, "ingest_many", spy)
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl(SCENARIO))
    assert invoke_json(sqlite_url, "ingest", str(path))["applied"] == 10
    assert seen == [GeneratorType]


def test_ingest_rejects_a_batch_size_below_one(sqlite_url: str) -> None:
    """--batch-size 0 is a usage error (exit 2)."""
    result = invoke(sqlite_url, "ingest", "-", "--batch-size", "0", stdin="")
    assert result.exit_code == 2
    assert "--batch-size" in result.stderr


def test_ingest_human_output_counts_every_outcome(sqlite_url: str) -> None:
    """Without --json, a table names every outcome and its count, free of escape codes."""
    result = invoke(sqlite_url, "ingest", "-", stdin=jsonl([*SCENARIO, "bad"]))
    assert result.exit_code == 0
    assert "Read 11 deliveries" in result.stdout
    for outcome in OUTCOMES:
        assert outcome in result.stdout
    assert "\x1b[" not in result.stdout


# --- streams --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], {"s-meeting", "s-webinar", "s-session", "s-phone", "s-cc"}),
        (["--state", "stopped"], {"s-phone", "s-cc"}),
        (["--state", "interrupted", "--state", "resumed"], {"s-webinar", "s-session"}),
        (["--active"], {"s-meeting", "s-session"}),
        (["--scope", "phone"], {"s-phone"}),
        (["--scope", "webinar", "--state", "interrupted"], {"s-webinar"}),
        (["--scope", "meeting", "--state", "stopped"], set()),
        (["--limit", "2"], {"s-cc", "s-phone"}),
        # The window is on the start time, as for the read API and stats --interruptions.
        (["--since", "2099-01-01T00:00:00Z"], set()),
        (["--since", "2025-03-11T03:00:00Z"], {"s-session", "s-phone", "s-cc"}),
        (["--until", "2025-03-11T03:00:00Z"], {"s-meeting", "s-webinar"}),
        (
            ["--since", "2025-03-11T02:00:00Z", "--until", "2025-03-11T04:00:00Z"],
            {"s-webinar", "s-session"},
        ),
        (["--since", "2025-03-11T04:00:00Z", "--state", "stopped"], {"s-phone", "s-cc"}),
    ],
)
def test_streams_filters(scenario_db: str, options: list[str], expected: set[str]) -> None:
    """Filters select by state, scope and activity; --limit keeps the most recent activity."""
    found = invoke_json(scenario_db, "streams", *options)
    assert ids(found) == expected
    assert all(set(stream) == SPEC_STREAM_KEYS for stream in found)


def test_streams_json_has_the_spec_fields(scenario_db: str) -> None:
    """Each stream carries exactly the documented keys, times as epoch-ms integers."""
    (phone,) = invoke_json(scenario_db, "streams", "--scope", "phone")
    assert phone == {
        "stream_id": "s-phone",
        "scope": "phone",
        "scope_id": "c1",
        "account_id": None,
        "session_key": None,
        "operator_id": None,
        "server_urls": "wss://rtms.zoom.us/1",
        "state": "stopped",
        "started_at": T0 + 4 * HOUR,
        "stopped_at": T0 + 5 * HOUR,
        "last_event_at": T0 + 5 * HOUR,
        "stop_reason": 21,
        "stop_reason_name": "CUSTOMER_DISCONNECTED",
        "stop_reason_category": "normal",
        "interruptions": 0,
        "resumes": 0,
        "failovers": 0,
    }


def test_streams_window_until_not_after_since_is_exit_2(scenario_db: str) -> None:
    """streams --until not after --since is refused like stats' (exit 2), and the table counts
    only the window."""
    result = invoke(scenario_db, "streams", "--since", "2025-03-12", "--until", "2025-03-11")
    assert result.exit_code == 2
    assert "'--until'" in result.stderr
    table = invoke(scenario_db, "streams", "--since", "2025-03-11T05:00:00Z")
    assert table.exit_code == 0
    assert "1 stream" in table.stdout


def test_streams_active_with_state_is_a_usage_error(scenario_db: str) -> None:
    """--active already names the states: combining it with --state is refused (exit 2)."""
    result = invoke(scenario_db, "streams", "--active", "--state", "stopped")
    assert result.exit_code == 2
    assert "--active" in result.stderr


def test_streams_table_lists_streams_readably(scenario_db: str) -> None:
    """The table shows ids, states, UTC ISO times, durations and stop reasons, no escape codes."""
    result = invoke(scenario_db, "streams")
    assert result.exit_code == 0
    for text in (
        "s-phone",
        "resumed",
        "2025-03-11T04:00:00Z",
        "1h 00m",
        "21 CUSTOMER_DISCONNECTED",
    ):
        assert text in result.stdout
    assert "\x1b[" not in result.stdout


def test_a_live_stream_s_duration_is_its_time_so_far(sqlite_url: str) -> None:
    """A live stream's duration is the time since it started, as on the dashboard; not a dash."""
    started = int(time.time() * 1000) - 125_000
    ingest(sqlite_url, [body("started", "s-live", started, scope_id="m1")])
    (row,) = [
        line for line in invoke(sqlite_url, "streams").stdout.splitlines() if "s-live" in line
    ]
    assert re.search(r"│\s+2m 0[5-9]s │", row), row
    assert "—" in row  # the stop reason of a live stream


def test_counts_of_one_are_singular(scenario_db: str) -> None:
    """A count of one names one thing: "1 stream", "1 interruption", "Read 1 delivery"."""
    assert invoke(scenario_db, "streams", "--scope", "phone").stdout.splitlines()[0].strip() == (
        "1 stream"
    )
    details = invoke(scenario_db, "stream", "s-session").stdout
    assert "1 interruption, 1 resume, 0 failovers" in details
    more = body("started", "s-more", T0 + 7 * HOUR, scope_id="m9")
    assert invoke(scenario_db, "ingest", "-", stdin=jsonl([more])).stdout.startswith(
        "Read 1 delivery in"
    )


def test_a_long_table_is_drawn_as_rich_draws_it(scenario_db: str) -> None:
    """`deliveries --limit 0` draws its thousands of rows itself: the same text Rich would draw."""
    more = [body("started", f"s-{n}", T0 + 8 * HOUR + n, scope_id=f"m{n}") for n in range(250)]
    ingest(scenario_db, [*more, "not json"])
    with Tracker(scenario_db) as tracker:
        found = tracker.deliveries(limit=None)
    drawn, by_rich = io.StringIO(), io.StringIO()
    assert _quick_table(Console(width=240), deliveries_table(found)) is not None  # not Rich's
    print_table(Console(file=drawn, width=240), deliveries_table(found))
    Console(file=by_rich, width=240).print(deliveries_table(found))
    assert drawn.getvalue() == by_rich.getvalue()
    assert len(drawn.getvalue().splitlines()) == len(found) + 5  # title, rules, header


# --- stream ---------------------------------------------------------------------------------------


def test_stream_shows_one_stream_and_its_history(scenario_db: str) -> None:
    """stream ID --json gives the stream (documented keys), transitions in event-time order."""
    shown = invoke_json(scenario_db, "stream", "s-session")
    assert set(shown) == {"stream", "history", "claims"}
    assert set(shown["stream"]) == SPEC_STREAM_KEYS
    assert shown["stream"]["state"] == "resumed"
    assert [t["name"] for t in shown["history"]] == ["start", "interrupt", "resume"]
    assert [(t["from_state"], t["to_state"]) for t in shown["history"]] == [
        ("new", "started"),
        ("started", "interrupted"),
        ("interrupted", "resumed"),
    ]
    human = invoke(scenario_db, "stream", "s-session")
    assert "interrupted → resumed" in human.stdout


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_unknown_stream_exits_1_with_a_clear_message(scenario_db: str, as_json: list[str]) -> None:
    """An unknown stream id is one line on stderr naming it, exit code 1, nothing on stdout."""
    result = invoke(scenario_db, "stream", "nope", *as_json)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "no stream with rtms_stream_id 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


# --- stats ----------------------------------------------------------------------------------------


def test_stats_json_counts_stop_reasons(scenario_db: str) -> None:
    """One object per reason with the documented keys (and median duration); shares sum to 1."""
    found = invoke_json(scenario_db, "stats")
    assert all(set(stat) == STAT_KEYS for stat in found)
    by_reason = {s["stop_reason"]: s for s in found}
    assert set(by_reason) == {1, 21}
    assert by_reason[21]["stop_reason_name"] == "CUSTOMER_DISCONNECTED"
    assert by_reason[1]["median_duration_ms"] == 60_000
    assert sum(s["share"] for s in found) == pytest.approx(1.0)


def test_stats_by_scope_adds_the_scope(scenario_db: str) -> None:
    """--by-scope gives one object per scope and reason, each with ``scope``."""
    found = invoke_json(scenario_db, "stats", "--by-scope")
    assert all(set(stat) == STAT_KEYS | {"scope"} for stat in found)
    assert {(s["scope"], s["stop_reason"], s["share"]) for s in found} == {
        ("phone", 21, 1.0),
        ("contact_center", 1, 1.0),
    }


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ([], {1, 21}),
        (["--since", "2025-03-11T05:30:00Z"], {1}),
        (["--until", "2025-03-11T05:30"], {21}),
        (["--since", str(T0 + 5 * HOUR), "--until", str(T0 + 5 * HOUR + 1)], {21}),
        (["--since", "2025-03-12"], set()),
    ],
)
def test_stats_window_accepts_iso_and_epoch_ms(
    scenario_db: str, window: list[str], expected: set[int]
) -> None:
    """--since (inclusive) and --until (exclusive) take ISO 8601 or epoch milliseconds."""
    found = invoke_json(scenario_db, "stats", *window)
    assert {s["stop_reason"] for s in found} == expected


@pytest.mark.parametrize("by_scope", [False, True])
def test_stats_interruptions(scenario_db: str, by_scope: bool) -> None:
    """--interruptions reports interruptions and recoveries: one object, or one per scope."""
    found = invoke_json(scenario_db, "stats", "--interruptions", *(["--by-scope"] * by_scope))
    if by_scope:
        assert all(set(row) == INTERRUPTION_KEYS | {"scope"} for row in found)
        found = next(row for row in found if row["scope"] == "session")
        del found["scope"]
    assert set(found) == INTERRUPTION_KEYS
    assert found["interruptions"] >= 1
    assert found["recovered"] == 1
    assert found["median_recovery_ms"] == 4000


# --- deliveries and alerts ------------------------------------------------------------------------


def test_deliveries_json_newest_first_with_filters(scenario_db: str) -> None:
    """deliveries --json: the documented keys, newest first, filtered by stream and outcome."""
    ingest(scenario_db, [SCENARIO[0], "garbage"])
    every = invoke_json(scenario_db, "deliveries", "--limit", "0")
    assert len(every) == len(SCENARIO) + 2
    assert all(set(d) >= DELIVERY_KEYS for d in every)
    assert [d["id"] for d in every] == sorted((d["id"] for d in every), reverse=True)
    assert all((d["error"] is None) == (d["outcome"] != "rejected") for d in every)
    assert every[0]["raw"] == "garbage"
    assert every[1]["outcome"] == "duplicate"
    assert every[1]["raw"] == json.dumps(SCENARIO[0])
    for_stream = invoke_json(scenario_db, "deliveries", "--stream", "s-session")
    assert [d["event"] for d in for_stream] == [
        "session.rtms_started",
        "session.rtms_interrupted",
        "session.rtms_started",
    ]
    assert len(invoke_json(scenario_db, "deliveries", "--limit", "2")) == 2
    duplicates = invoke_json(scenario_db, "deliveries", "--outcome", "duplicate")
    assert [d["outcome"] for d in duplicates] == ["duplicate"]


def test_alerts_json_and_since(sqlite_url: str) -> None:
    """alerts --json lists concurrency alerts newest first; --since drops older ones."""
    near = {
        "event": "rtms.concurrency_near_limit",
        "event_ts": T0,
        "payload": {"concurrency_limit": 10, "concurrency_number": 8, "percentage": 80},
    }
    limited = {
        "event": "rtms.concurrency_limited",
        "event_ts": T0 + HOUR,
        "payload": {"concurrency_number": 11, "id_field": {"meeting_uuid": "m1"}},
    }
    ingest(sqlite_url, [near, limited])
    found = invoke_json(sqlite_url, "alerts")
    assert [a["event"] for a in found] == [
        "rtms.concurrency_limited",
        "rtms.concurrency_near_limit",
    ]
    assert found[0]["id_field"] == "meeting_uuid"
    assert found[0]["id_value"] == "m1"
    later = invoke_json(sqlite_url, "alerts", "--since", "2025-03-11T00:30:00Z")
    assert [a["event"] for a in later] == ["rtms.concurrency_limited"]


# --- expire ---------------------------------------------------------------------------------------


def test_expire_closes_stale_streams_once(scenario_db: str) -> None:
    """expire --stale-after closes every live stream older than that, as EXPIRED, only once."""
    closed = invoke_json(scenario_db, "expire", "--stale-after", "6h")
    assert ids(closed) == {"s-meeting", "s-webinar", "s-session"}
    assert all(set(s) == SPEC_STREAM_KEYS for s in closed)
    assert {(s["state"], s["stop_reason"], s["stop_reason_name"]) for s in closed} == {
        ("stopped", None, "EXPIRED")
    }
    assert invoke_json(scenario_db, "expire", "--stale-after", "90s") == []
    assert invoke_json(scenario_db, "streams", "--active") == []


@pytest.mark.parametrize("duration", ["6", "6x", "h", "0s", "-5m", "1.5h", ""])
def test_expire_refuses_a_bad_duration(scenario_db: str, duration: str) -> None:
    """A duration without a unit, zero or malformed is a usage error that expires nothing."""
    result = invoke(scenario_db, "expire", "--stale-after", duration)
    assert result.exit_code == 2
    assert "--stale-after" in result.stderr
    assert len(invoke_json(scenario_db, "streams", "--active")) == 2


# --- parsing and formatting -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(minutes=90)),
        (" 2D ", timedelta(days=2)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    """Durations are numbers with s, m, h or d units, possibly chained."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1741651200000", T0),
        ("100000000000", 100_000_000_000),
        ("2025-03-11", T0),
        ("2025-03-11T01:00", T0 + HOUR),
        ("2025-03-11 01:00:00Z", T0 + HOUR),
        ("2025-03-11T02:00:00+01:00", T0 + HOUR),
        ("2025-03-11T00:00:00.250Z", T0 + 250),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    """Times are epoch ms or ISO 8601; without an offset they are UTC."""
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["1741651200", "0", "yesterday", "2025-13-01", "12:00"])
def test_parse_time_refuses_seconds_and_nonsense(text: str) -> None:
    """Epoch seconds (a number before 1973 as ms) and unreadable text are refused, not guessed."""
    with pytest.raises(ValueError, match="epoch"):
        parse_time(text)


@pytest.mark.parametrize(
    ("ms", "expected"),
    [(None, "—"), (0, "0s"), (45_000, "45s"), (187_000, "3m 07s"), (7_500_000, "2h 05m")],
)
def test_format_duration(ms: int | None, expected: str) -> None:
    """Durations print in their two largest units."""
    assert format_duration(ms) == expected


def test_format_time_is_utc_iso() -> None:
    """Times print as UTC ISO 8601 to the second."""
    assert format_time(T0 + HOUR + 1999) == "2025-03-11T01:00:01Z"


# --- every command: --json, human output, errors --------------------------------------------------

READ_COMMANDS = [
    ["streams"],
    ["stream", "s-phone"],
    ["stats"],
    ["stats", "--by-scope"],
    ["stats", "--interruptions"],
    ["deliveries"],
    ["alerts"],
    ["expire", "--stale-after", "1d"],
    ["db", "current"],
    ["db", "upgrade"],
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_every_command_prints_json_and_tables(scenario_db: str, args: list[str]) -> None:
    """Each command prints one JSON document with --json, and escape-free text without it."""
    assert isinstance(invoke_json(scenario_db, *args), list | dict)
    human = invoke(scenario_db, *args)
    assert human.exit_code == 0
    assert human.stdout.strip()
    assert "\x1b[" not in human.stdout


def test_db_option_falls_back_to_the_environment(sqlite_url: str, tmp_path: Path) -> None:
    """Without --db, RTMS_LIFECYCLE_DB names the database."""
    ingest(sqlite_url, SCENARIO[:1])
    result = CliRunner(env={"RTMS_LIFECYCLE_DB": sqlite_url}).invoke(cli, ["streams", "--json"])
    assert result.exit_code == 0
    assert ids(json.loads(result.stdout)) == {"s-meeting"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["streams"], "no database at /nonexistent-dir/x/y.db"),
        (
            ["ingest", "-"],
            "database unavailable: the folder /nonexistent-dir/x of y.db does not exist",
        ),
    ],
)
def test_database_errors_are_one_clean_line(args: list[str], message: str) -> None:
    """A database that cannot be opened is one line on stderr and exit code 3, no traceback."""
    result = invoke("sqlite:////nonexistent-dir/x/y.db", *args, stdin="")
    assert result.exit_code == 3
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


# --- migrations -----------------------------------------------------------------------------------


def test_db_current_and_upgrade_on_a_new_database(sqlite_url: str, tmp_path: Path) -> None:
    """db current never creates the schema; db upgrade does, and a second upgrade is a no-op."""
    head = _migrate.head_revision()
    (tmp_path / "rtms.db").touch()  # an empty file: db current never creates one
    assert invoke_json(sqlite_url, "db", "current") == {
        "current": None,
        "head": head,
        "up_to_date": False,
    }
    assert invoke_json(sqlite_url, "db", "upgrade") == {"from": None, "to": head}
    assert invoke_json(sqlite_url, "db", "upgrade") == {"from": head, "to": head}
    assert invoke_json(sqlite_url, "db", "current")["up_to_date"] is True


def test_outdated_schema_is_refused_until_db_upgrade(db_url: str) -> None:
    """An older migration: commands exit 2 naming `rtms-lifecycle db upgrade`, which fixes it."""
    old = downgrade_one_revision(db_url)
    for args in (["streams"], ["ingest", "-"], ["demo"]):
        result = invoke(db_url, *args, stdin="")
        assert result.exit_code == 2, args
        assert "rtms-lifecycle db upgrade" in result.stderr
        assert "Traceback" not in result.stderr
    assert invoke_json(db_url, "db", "current")["current"] == old
    assert invoke_json(db_url, "db", "upgrade") == {"from": old, "to": _migrate.head_revision()}
    assert invoke_json(db_url, "streams") == []


# --- demo -----------------------------------------------------------------------------------------


def test_demo_is_idempotent(sqlite_url: str) -> None:
    """Running demo twice leaves the same streams; the second run says it was all duplicates."""
    first = invoke(sqlite_url, "demo")
    assert first.exit_code == 0, first.output
    streams = invoke_json(sqlite_url, "streams")
    assert 300 <= len(streams) <= 2000
    assert {s["scope"] for s in streams} == {
        "meeting",
        "webinar",
        "session",
        "contact_center",
        "phone",
    }
    assert {"started", "stopped"} <= {s["state"] for s in streams}
    second = invoke(sqlite_url, "demo", "--force")
    assert second.exit_code == 0
    assert "already here" in second.stdout
    assert "were duplicates and no stream changed" in second.stdout
    assert invoke_json(sqlite_url, "streams") == streams
    for heading in ("Active streams", "Why streams stopped", "Interruptions", "Try next"):
        assert heading in first.stdout


def test_demo_data_shows_every_kind_of_delivery(sqlite_url: str) -> None:
    """The bundled day holds retries, ignored late events, bad and unknown deliveries, alerts."""
    invoke(sqlite_url, "demo")
    outcomes = {d["outcome"] for d in invoke_json(sqlite_url, "deliveries", "--limit", "0")}
    assert outcomes == {"applied", "ignored", "duplicate", "rejected", "unhandled"}
    streams = invoke_json(sqlite_url, "streams")
    assert any(s["failovers"] for s in streams)
    assert any(s["resumes"] for s in streams)
    categories = {s["stop_reason_category"] for s in streams}
    assert {"normal", "abnormal", "unknown"} <= categories
    assert invoke_json(sqlite_url, "alerts")


# --- the installed entry point --------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder to run the installed command in."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_installed_demo_uses_the_default_database_in_the_current_folder(workdir: Path) -> None:
    """`rtms-lifecycle demo` as a process writes rtms_lifecycle.db here, and prints plain text."""
    assert ENTRY_POINT.is_file(), f"console script not installed next to {sys.executable}"
    result = run_process("demo", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "rtms_lifecycle.db").is_file()
    assert "Try next" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr
    listed = run_process("streams", "--active", "--json", cwd=workdir)
    assert listed.returncode == 0
    assert all(s["state"] in ("started", "resumed") for s in json.loads(listed.stdout))


def test_installed_ingest_from_a_pipe(workdir: Path) -> None:
    """A real pipe into `ingest -` prints only the counts, with no progress bar; stderr says
    only that the database file was new."""
    result = run_process(
        "ingest", "-", "--json", cwd=workdir, stdin=jsonl([*SCENARIO, "bad"]).encode()
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        **dict.fromkeys(OUTCOMES, 0),
        "applied": 10,
        "rejected": 1,
    }
    assert result.stderr == "created a new, empty database at rtms_lifecycle.db\n"


def test_installed_command_refuses_an_outdated_database(workdir: Path) -> None:
    """As a process: exit 2, the upgrade hint on stderr, no traceback; `db upgrade` then works."""
    url = f"sqlite:///{workdir / 'old.db'}"
    downgrade_one_revision(url)
    refused = run_process("--db", url, "streams", cwd=workdir)
    assert refused.returncode == 2
    assert "rtms-lifecycle db upgrade" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert run_process("--db", url, "db", "upgrade", cwd=workdir).returncode == 0
    assert run_process("--db", url, "streams", "--json", cwd=workdir).stdout.strip() == "[]"


def test_installed_serve_refuses_to_start_without_a_secret(workdir: Path) -> None:
    """`serve` without ZOOM_WEBHOOK_SECRET_TOKEN exits 1 naming it, and creates no database."""
    pytest.importorskip("fastapi", reason="serve needs the 'server' extra")
    result = run_process("serve", "--port", "1", cwd=workdir)
    assert result.returncode == 1
    assert "ZOOM_WEBHOOK_SECRET_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "rtms_lifecycle.db").exists()


def test_installed_serve_refuses_a_port_in_use(workdir: Path) -> None:
    """`serve` on a port another process listens on: one line naming it, exit 1, no database."""
    pytest.importorskip("fastapi", reason="serve needs the 'server' extra")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_process(
            "serve", "--port", str(port), cwd=workdir, env={"ZOOM_WEBHOOK_SECRET_TOKEN": "s"}
        )
    assert result.returncode == 1
    assert result.stderr == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not (workdir / "rtms_lifecycle.db").exists()


def test_stats_unhandled_lists_unknown_event_names(db_url: str) -> None:
    """stats --unhandled --json: each unhandled event name with its count, first and last seen."""
    lines = [
        json.dumps({"event": name, "event_ts": T0, "payload": {}})
        for name in ("contactcenter.rtms_started", "meeting.rtms.started", "meeting.rtms.started")
    ]
    invoke(db_url, "ingest", "-", stdin=jsonl(lines))
    found = invoke_json(db_url, "stats", "--unhandled")
    assert [(s["event"], s["count"], s["rtms"]) for s in found] == [
        ("meeting.rtms.started", 2, True),
        ("contactcenter.rtms_started", 1, True),
    ]
    assert all(s["first_seen"] <= s["last_seen"] for s in found)
    table = invoke(db_url, "stats", "--unhandled")
    assert "meeting.rtms.started" in table.stdout
    assert invoke(db_url, "stats", "--unhandled", "--by-scope").exit_code == 2


# --- what an operator meets in the first week -----------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ["--since", "2025-03-12", "--until", "2025-03-10"],
        ["--since", "2025-03-12", "--until", "2025-03-12"],
        ["--interruptions", "--since", "2025-03-12", "--until", "2025-03-10"],
        ["--unhandled", "--since", "2025-03-12", "--until", "2025-03-10"],
    ],
    ids=" ".join,
)
def test_a_backwards_window_is_refused(scenario_db: str, options: list[str]) -> None:
    """`stats --since` after `--until`: exit 2, saying why, rather than an empty table."""
    result = invoke(scenario_db, "stats", *options)
    assert result.exit_code == 2
    assert "'--until' 2025-03-1" in result.stderr
    assert "is not after '--since' 2025-03-12T00:00:00Z: the window is empty" in result.stderr
    assert result.stdout == ""


def test_prunes_without_any_says_how_to_start_one(scenario_db: str) -> None:
    """`prunes` on a database never pruned explains, as `subscriptions` does; --json is []."""
    result = invoke(scenario_db, "prunes")
    assert result.exit_code == 0
    assert "No prunes yet: `rtms-lifecycle prune --older-than 90d`" in result.stdout
    assert invoke_json(scenario_db, "prunes") == []


@pytest.mark.parametrize(
    ("command", "option", "help_text"),
    [
        (["follow"], "--json", "instead of a line of text"),
        (["demo"], "--top", "How many of the active streams"),
        (["serve"], "--port", "TCP port to listen on"),
    ],
)
def test_every_option_has_help(command: list[str], option: str, help_text: str) -> None:
    """`--help` explains each option, in words that match what it does."""
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith(option))
    assert help_text in line
    assert "instead of a table" not in line


def test_every_command_s_options_have_help() -> None:
    """No option of any command is left without a help text."""

    def commands(group: Any) -> Iterable[Any]:
        for each in group.commands.values():
            yield each
            if hasattr(each, "commands"):
                yield from commands(each)

    bare = [
        f"{each.name} {param.opts[0]}"
        for each in commands(cli)
        for param in each.params
        if isinstance(param, click.Option) and not param.help and not param.hidden
    ]
    assert bare == []


def test_db_history_lists_applied_and_pending_migrations(db_url: str) -> None:
    """`db history` after `db current`'s revisions: every migration shipped, applied or not."""
    shipped = _migrate.migrations()
    assert [revision for revision, _ in shipped][-1] == _migrate.head_revision()
    old = downgrade_one_revision(db_url)
    found = invoke_json(db_url, "db", "history")
    assert found["current"] == old
    assert [m["revision"] for m in found["migrations"]] == [r for r, _ in shipped]
    assert [m["applied"] for m in found["migrations"]] == [True] * (len(shipped) - 1) + [False]
    assert all(m["title"] for m in found["migrations"])
    shown = invoke(db_url, "db", "history")
    assert shown.exit_code == 0
    assert f"→ {old}  applied" in shown.stdout
    assert "1 migration pending: run `rtms-lifecycle db upgrade`." in shown.stdout
    invoke_json(db_url, "db", "upgrade")
    assert invoke(db_url, "db", "history").stdout.rstrip().endswith("Up to date.")


def test_db_history_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    """Like `db current`, reading the history never creates a database."""
    result = invoke(f"sqlite:///{tmp_path}/missing.db", "db", "history")
    assert result.exit_code == 3  # unavailable, as `db current` says (docs/cli.md)
    assert "no database at" in result.stderr
    assert not (tmp_path / "missing.db").exists()


def test_shell_completion_script_is_printed() -> None:
    """docs/cli.md's completion line prints a bash completion script."""
    result = subprocess.run(
        [str(ENTRY_POINT)],
        env={**os.environ, "_RTMS_LIFECYCLE_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "complete -o nosort -F _rtms_lifecycle_completion rtms-lifecycle" in result.stdout
