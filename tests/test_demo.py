"""``rtms-lifecycle demo``: its day ends now, and the demo's own database takes it again."""

from __future__ import annotations

import gzip
import re
from importlib.resources import files
from pathlib import Path

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.demo import DEMO_RESOURCE, demo_day
from rtms_lifecycle.clock import now_ms

from .test_cli import invoke, invoke_json, run_process

MINUTE = 60_000
DAY = 86_400_000


def test_every_line_of_the_bundled_day_has_one_plain_event_ts() -> None:
    """The replay moves each line's `"event_ts":N`: every line has exactly one."""
    raw = gzip.decompress(files("rtms_lifecycle").joinpath(DEMO_RESOURCE).read_bytes())
    lines = raw.splitlines()
    assert all(len(re.findall(rb'"event_ts":\d+', line)) == 1 for line in lines)
    day = demo_day()
    assert day.shifted(0) == raw
    moved = day.shifted(1000).splitlines()
    assert [re.sub(rb'"event_ts":\d+', b"", line) for line in moved] == [
        re.sub(rb'"event_ts":\d+', b"", line) for line in lines
    ]


def test_the_demo_day_ends_now(sqlite_url: str) -> None:
    """Its last event is minutes old, live streams are minutes old, and the last 24 hours hold
    stopped streams (the dashboard's default window is not empty)."""
    before = now_ms()
    result = invoke(sqlite_url, "demo")
    assert result.exit_code == 0, result.output
    streams = invoke_json(sqlite_url, "streams")
    with Tracker(sqlite_url) as tracker:
        last = max(s.last_event_at or 0 for s in tracker.streams())
    assert before - 5 * MINUTE <= last <= now_ms()
    live = [s for s in streams if s["state"] in ("started", "resumed")]
    assert live
    assert min(now_ms() - s["last_event_at"] for s in live) < 10 * MINUTE
    assert invoke_json(sqlite_url, "stats", "--since", str(now_ms() - DAY))
    assert "2025-03-11" not in result.stdout


def test_the_demo_s_own_database_takes_the_demo_again(tmp_path: Path) -> None:
    """`demo --db demo.db` twice: the second run says what it does, exits 0, changes no stream."""
    first = run_process("demo", "--db", "demo.db", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    url = f"sqlite:///{tmp_path}/demo.db"
    streams = invoke_json(url, "streams")
    second = run_process("demo", "--db", "demo.db", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "holds only the demo's streams" in second.stdout
    assert "were duplicates and no stream changed" in second.stdout
    assert invoke_json(url, "streams") == streams


def test_the_readme_s_try_it_line_runs_twice(tmp_path: Path) -> None:
    """`rtms-lifecycle demo` on the default database, twice: both exit 0."""
    assert run_process("demo", cwd=tmp_path).returncode == 0
    again = run_process("demo", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already here" in again.stdout


def test_the_demo_s_expire_suggestion_finds_what_it_says(sqlite_url: str) -> None:
    """The printed `expire` command, run as printed, lists the streams its comment counts."""
    result = invoke(sqlite_url, "demo")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if " expire --stale-after " in line]
    found = re.search(r"expire (--stale-after \S+ --dry-run)\s+# the (\d+) live stream", line)
    assert found is not None, line
    args = found.group(1).split()
    would = invoke_json(sqlite_url, "expire", *args)
    assert len(would) >= int(found.group(2)) >= 1
    assert invoke_json(sqlite_url, "streams", "--active")  # a dry run: nothing was closed
