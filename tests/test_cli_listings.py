"""What the listing commands print around their rows: a sentence for none, a note when cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._deliveries import body
from .test_cli import SCENARIO, T0, ingest, invoke, invoke_json, run_process

# A filter that matches nothing in SCENARIO (all of it is in 2025), and the sentence said instead.
EMPTY = [
    (["streams", "--since", "2030-01-01"], "No streams match."),
    (["streams", "--state", "stopped", "--scope", "meeting"], "No streams match."),
    (["streams", "--since", "2030-01-01", "--limit", "5"], "No streams match."),
    (["deliveries", "--stream", "nope"], "No deliveries match."),
    (["deliveries", "--outcome", "rejected"], "No deliveries match."),
    (["alerts", "--since", "2030-01-01"], "No concurrency alerts at or after 2030-01-01"),
    (["stats", "--since", "2030-01-01"], "No streams stopped at or after 2030-01-01"),
    (["stats", "--since", "2030-01-01", "--chart"], "No streams stopped at or after 2030-01-01"),
    (["stats", "--unhandled"], "No deliveries of unhandled event names were received."),
    (["expire", "--stale-after", "3650d", "--dry-run"], "Would expire 0 streams: no live"),
]


@pytest.fixture
def scenario_db(sqlite_url: str) -> str:
    ingest(sqlite_url, SCENARIO)
    return sqlite_url


@pytest.mark.parametrize(("args", "said"), EMPTY, ids=lambda v: " ".join(v) if v else "")
def test_an_empty_list_is_one_sentence(scenario_db: str, args: list[str], said: str) -> None:
    """Nothing matched: one sentence on stdout, no bare table header; --json is still []."""
    result = invoke(scenario_db, *args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(said), result.stdout
    assert len(result.stdout.splitlines()) == 1
    assert not set(result.stdout) & set("┏━┃│└"), result.stdout
    assert result.stderr == ""
    if "--chart" not in args:
        assert invoke_json(scenario_db, *args) == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["streams"], "No streams are stored yet."),
        (["deliveries"], "No deliveries are stored yet."),
    ],
)
def test_an_empty_database_says_nothing_is_stored(
    sqlite_url: str, args: list[str], said: str
) -> None:
    assert invoke(sqlite_url, "db", "upgrade").exit_code == 0
    result = invoke(sqlite_url, *args)
    assert result.exit_code == 0
    assert result.stdout == said + "\n"
    assert invoke_json(sqlite_url, *args) == []


def test_deliveries_say_when_the_default_limit_cut_them(sqlite_url: str) -> None:
    """101 deliveries: the default table shows 100 and says so; --json and a --limit given
    print no note; 100 deliveries are not cut."""
    ingest(sqlite_url, [body("started", f"s-{i:03d}", T0 + i) for i in range(101)])
    result = invoke(sqlite_url, "deliveries")
    assert result.exit_code == 0
    note = "Showed the newest 100; use --limit N to see more (--limit 0 for all)."
    assert result.stdout.splitlines()[-1] == note
    assert "s-000" not in result.stdout
    assert "s-001" in result.stdout
    assert len(invoke_json(sqlite_url, "deliveries")) == 100
    for args in (["--limit", "100"], ["--limit", "0"], ["--limit", "5"]):
        assert "Showed" not in invoke(sqlite_url, "deliveries", *args).stdout
    assert "s-000" in invoke(sqlite_url, "deliveries", "--limit", "0").stdout
    assert "Showed" not in invoke(sqlite_url, "deliveries", "--stream", "s-005").stdout


def test_deliveries_exactly_at_the_default_limit_are_not_cut(sqlite_url: str) -> None:
    ingest(sqlite_url, [body("started", f"s-{i:03d}", T0 + i) for i in range(100)])
    result = invoke(sqlite_url, "deliveries")
    assert "Showed" not in result.stdout
    assert "s-000" in result.stdout


def test_alerts_since_filters_on_the_event_time_not_the_receipt(sqlite_url: str) -> None:
    """An alert of 2025 received now is before a --since of an hour ago: its event time counts,
    as docs/cli.md and --help say."""
    near = {
        "event": "rtms.concurrency_near_limit",
        "event_ts": T0,
        "payload": {"concurrency_limit": 10, "concurrency_number": 8, "percentage": 80},
    }
    ingest(sqlite_url, [near])
    [alert] = invoke_json(sqlite_url, "alerts")
    assert alert["received_at"] > T0 + 3_600_000
    received_before = str(alert["received_at"] - 3_600_000)
    assert invoke_json(sqlite_url, "alerts", "--since", received_before) == []
    assert len(invoke_json(sqlite_url, "alerts", "--since", str(T0))) == 1
    assert "event time" in invoke(sqlite_url, "alerts", "--help").stdout


UNTRUSTED = "m-\x1b[2J\x07[red]x[/red]\u202eevil\n2026"
SHOWN = "m-\\x1b[2J\\x07[red]x[/red]\\u202eevil\\x0a2026"


def test_untrusted_text_is_shown_escaped(sqlite_url: str, tmp_path: Path) -> None:
    """An id a delivery carries reaches the terminal as it is stored, escaped: no ESC or BEL
    (colour, clear-screen), no bidi control, no Rich markup read from it, no extra line."""
    ingest(
        sqlite_url,
        [
            body(
                "started",
                UNTRUSTED,
                T0,
                scope_id="uuid-\x1b]0;title\x07",
                operator_id="op-\u2066\x9b",
            )
        ],
    )
    for args in (["streams"], ["stream", UNTRUSTED], ["deliveries"]):
        result = run_process("--db", sqlite_url, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        shown = result.stdout
        assert not {"\x1b", "\x07", "\x9b", "\u202e", "\u2066"} & set(shown), (args, shown)
        assert SHOWN in shown, (args, shown)
    details = run_process("--db", sqlite_url, "stream", UNTRUSTED, cwd=tmp_path).stdout
    assert "uuid-\\x1b]0;title\\x07" in details
    assert "op-\\u2066\\x9b" in details
    assert invoke_json(sqlite_url, "stream", UNTRUSTED)["stream"]["stream_id"] == UNTRUSTED
