"""How the read commands write: to a reader that goes away, to a narrow terminal, page by page."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests._deliveries import body
from tests.test_cli import ENTRY_POINT, invoke, invoke_json, jsonl
from tests.test_cli_database import terminal_output

T0: Final = 1_700_000_000_000
MINUTE: Final = 60_000
# F_SETPIPE_SZ (Linux): a pipe of one page, so that a few kilobytes of output fill it.
_SET_PIPE_SIZE: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
LONG_REASON: Final = "SIGNAL_CONNECTION_CLOSED_ABNORMALLY"
UNHANDLED: Final = "meeting.rtms_new_thing"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> str:
    """1,200 stopped streams (2,400 deliveries: more than a page), one stream interrupted 200
    times, 60 concurrency alerts and 30 unhandled event names."""
    url = f"sqlite:///{tmp_path_factory.mktemp('filled')}/rtms.db"
    lines: list[dict[str, object] | str] = []
    for n in range(1200):
        lines.append(body("started", f"s-{n:04d}", T0 + n))
        lines.append(body("stopped", f"s-{n:04d}", T0 + n + MINUTE, stop_reason=15 if n % 3 else 6))
    lines.append(body("started", "long", T0))
    for i in range(200):
        lines.append(body("interrupted", "long", T0 + (2 * i + 1) * 1000))
        lines.append(body("started", "long", T0 + (2 * i + 2) * 1000))
    lines.append(body("stopped", "long", T0 + 30 * MINUTE, stop_reason=15))
    for i in range(60):
        near = {"concurrency_limit": 10, "concurrency_number": 8, "percentage": 80}
        near["operator_id"] = f"op-{i}"  # type: ignore[assignment]
        event = {"event": "rtms.concurrency_near_limit", "event_ts": T0 + i, "payload": near}
        lines.append(json.dumps(event))
        lines.append(
            json.dumps(
                {
                    "event": "rtms.concurrency_limited",
                    "event_ts": T0 + i,
                    "payload": {"concurrency_number": 11, "id_field": {"meeting_uuid": f"m{i}=="}},
                }
            )
        )
    for i in range(30):
        lines.append(json.dumps({"event": f"{UNHANDLED}_{i}", "event_ts": T0, "payload": {}}))
    result = invoke(url, "ingest", "-", stdin=jsonl(lines))
    assert result.exit_code == 0, result.output
    return url


# --- a reader that goes away ----------------------------------------------------------------------

READ_COMMANDS: Final = [
    ["streams"],
    ["streams", "--json"],
    ["streams", "--limit", "1000"],
    ["stream", "long"],
    ["stream", "long", "--json"],
    ["deliveries"],
    ["deliveries", "--limit", "0"],
    ["deliveries", "--limit", "0", "--json"],
    ["alerts"],
    ["alerts", "--json"],
    ["stats"],
    ["stats", "--chart", "--by-scope"],
    ["stats", "--unhandled"],
    ["stats", "--interruptions", "--by-scope"],
    ["claims"],
    ["prunes"],
    ["subscriptions"],
    ["db", "current"],
    ["db", "history"],
]


def into_closing_reader(db: str, args: list[str], lines: int) -> subprocess.CompletedProcess[str]:
    """Run the command, its stdout a one-page pipe whose reader reads ``lines`` lines and closes
    it (0: at once, before the command writes anything)."""
    env = {k: v for k, v in os.environ.items() if k != "RTMS_LIFECYCLE_DB"}
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, _SET_PIPE_SIZE, 4096)
        process = subprocess.Popen(
            [str(ENTRY_POINT), "--db", db, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        for _ in range(lines):
            reader.readline()
    _, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, "", err)


@pytest.mark.parametrize("lines", [1, 0], ids=["after a line", "at once"])
@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_a_closed_stdout_ends_the_command_quietly_with_0(
    filled: str, args: list[str], lines: int
) -> None:
    """`rtms-lifecycle ... | head -1` under `set -o pipefail`: exit 0 and nothing on stderr."""
    result = into_closing_reader(filled, args, lines)
    assert (result.returncode, result.stderr) == (0, "")


# --- narrow terminals -----------------------------------------------------------------------------

COLUMN_COUNTS: Final = [60, 40]


def said(shown: str) -> str:
    """The output with each run of spaces and line breaks as one space: a wrapped sentence."""
    return " ".join(shown.split())


def fits(shown: str, columns: int) -> list[str]:
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= columns, shown
    return lines


@pytest.mark.parametrize("columns", COLUMN_COUNTS)
def test_narrow_alerts_leave_out_columns_rather_than_shorten_them(
    filled: str, columns: int
) -> None:
    """alerts at 60 and 40 columns: whole times, the columns left out named under the table."""
    shown = terminal_output("--db", filled, "alerts", columns=columns)
    lines = fits(shown, columns)
    assert "…" not in shown
    assert "Left out at this width: Operator, Limit, Event" in said(shown)
    assert any("2023-11-14T22:13:20Z" in line for line in lines)


@pytest.mark.parametrize("columns", COLUMN_COUNTS)
def test_narrow_unhandled_stats_keep_the_event_names_whole(filled: str, columns: int) -> None:
    """stats --unhandled: every event name whole; the times go first."""
    shown = terminal_output("--db", filled, "stats", "--unhandled", columns=columns)
    fits(shown, columns)
    assert all(f"{UNHANDLED}_{i} " in shown for i in range(30))
    assert "…" not in shown
    assert "Left out at this width: First seen (UTC), Last seen (UTC)" in said(shown)


def test_an_unhandled_name_wider_than_the_terminal_folds_whole(sqlite_url: str) -> None:
    """A name longer than the terminal is folded onto a second line, not cut."""
    name = "meeting.rtms_" + "x" * 40
    invoke(sqlite_url, "ingest", "-", stdin=jsonl([{"event": name, "event_ts": T0}]))
    shown = terminal_output("--db", sqlite_url, "stats", "--unhandled", columns=40)
    fits(shown, 40)
    assert "…" not in shown
    cells = re.findall(r"^│ (\S+) +│$", shown, flags=re.MULTILINE)
    assert "".join(cells) == name


@pytest.mark.parametrize("by_scope", [[], ["--by-scope"]], ids=["", "by scope"])
@pytest.mark.parametrize("columns", COLUMN_COUNTS)
def test_narrow_interruption_stats_keep_their_headers_distinct(
    filled: str, columns: int, by_scope: list[str]
) -> None:
    """stats --interruptions: no header cut short, so Interrupted and Interruptions differ."""
    shown = terminal_output("--db", filled, "stats", "--interruptions", *by_scope, columns=columns)
    fits(shown, columns)
    assert "…" not in shown
    assert "Interruptions" in shown
    assert "Left out at this width: Stopped while interrupted" in said(shown)
    if by_scope:
        assert "contact_center" in shown


@pytest.mark.parametrize("columns", COLUMN_COUNTS)
def test_a_narrow_timeline_fits_the_terminal(filled: str, columns: int) -> None:
    """The timeline's bar is as wide as the terminal, the stop's X on the marks' line."""
    shown = terminal_output("--db", filled, "stream", "long", columns=columns)
    lines = fits(shown, columns)
    bar = next(n for n, line in enumerate(lines) if line.startswith(("█", "▒")))
    assert len(lines[bar]) == columns
    assert lines[bar + 1].startswith(("S", "*"))
    assert lines[bar + 1].endswith("X")


@pytest.mark.parametrize("columns", COLUMN_COUNTS)
def test_a_narrow_chart_shortens_its_labels_on_one_line(filled: str, columns: int) -> None:
    """stats --chart: a label too long is cut with an ellipsis; each bar on its label's line."""
    shown = terminal_output("--db", filled, "stats", "--chart", columns=columns)
    lines = fits(shown, columns)
    bars = [line for line in lines if "█" in line]
    assert len(bars) == 2
    assert all(re.search(r"█ +[\d,]+ \([\d.]+%\)$", line) for line in bars), bars
    assert any("15 SIGNAL_" in line and "…" in line for line in bars), bars


# --- page by page ---------------------------------------------------------------------------------


def test_all_deliveries_are_one_table_written_page_by_page(filled: str, tmp_path: Path) -> None:
    """--limit 0 over several pages: one table (one top, one bottom), every delivery once, and
    --json the same list as read at once."""
    listed = invoke_json(filled, "deliveries", "--limit", "0")
    assert [d["id"] for d in listed] == sorted((d["id"] for d in listed), reverse=True)
    assert len(listed) == len(invoke_json(filled, "deliveries", "--limit", "5000"))
    assert len(invoke_json(filled, "deliveries", "--limit", "1500")) == 1500
    table = invoke(filled, "deliveries", "--limit", "0").stdout
    assert table.count("┏") == 1
    assert table.count("└") == 1
    rows = re.findall(r"^│ +(\d+) │", table, flags=re.MULTILINE)
    assert [int(r) for r in rows] == [d["id"] for d in listed]
    none = invoke(filled, "deliveries", "--limit", "0", "--outcome", "conflict")
    assert none.stdout == "No deliveries match.\n"
    assert invoke_json(filled, "deliveries", "--limit", "0", "--outcome", "conflict") == []
