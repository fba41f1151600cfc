"""What the command answers when something is wrong: one line on stderr, a documented exit code."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.cli.reading import MAX_LINE_BYTES
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.store.engine import create_store_engine

from ._deliveries import body
from .test_cli import ENTRY_POINT, SCENARIO, T0, invoke, invoke_json, jsonl, run_process

BAD_INPUT, UNAVAILABLE, INTERRUPTED = 2, 3, 130
HUGE = "9" * 23


def one_clean_line(result: Result | subprocess.CompletedProcess[str]) -> str:
    """The error on stderr: exactly one line after any usage lines, and no traceback."""
    assert "Traceback" not in result.stderr
    assert "Aborted!" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def scenario(db_url: str) -> str:
    """SCENARIO recorded in each database."""
    invoke_json(db_url, "ingest", "-", stdin=jsonl(SCENARIO))
    return db_url


@pytest.fixture
def scenario_db(sqlite_url: str) -> str:
    """SCENARIO in a SQLite file."""
    invoke_json(sqlite_url, "ingest", "-", stdin=jsonl(SCENARIO))
    return sqlite_url


def stored(db: str) -> int:
    """How many deliveries the database holds."""
    return len(invoke_json(db, "deliveries", "--limit", "0"))


# --- numbers out of range -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["streams", "--limit", HUGE], "--limit"),
        (["deliveries", "--limit", HUGE], "--limit"),
        (["stats", "--since", "9" * 20], "--since"),
        (["stats", "--until", "-" + "9" * 20], "--until"),
        (["stats", "--since", "0001-01-01T00:00:00+05:00"], "--since"),
        (["alerts", "--since", "9" * 20], "--since"),
        (["expire", "--stale-after", "9" * 20 + "d"], "--stale-after"),
    ],
    ids=" ".join,
)
def test_numbers_out_of_range_are_usage_errors(scenario: str, args: list[str], option: str) -> None:
    """A number the database cannot hold is exit 2 naming the option, and changes nothing."""
    result = invoke(scenario, *args)
    assert result.exit_code == BAD_INPUT
    assert option in one_clean_line(result)
    assert len(invoke_json(scenario, "streams", "--active")) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["streams", "--limit", str(2**63 - 1)],
        ["deliveries", "--limit", str(2**63 - 1)],
        ["stats", "--since", "253402300799999"],
        ["stats", "--until", "9999-12-31T23:59:59Z"],
        ["stats", "--since", "0001-01-01"],
    ],
    ids=" ".join,
)
def test_the_largest_numbers_still_work(scenario: str, args: list[str]) -> None:
    """The bounds themselves are accepted and answered on both databases."""
    assert isinstance(invoke_json(scenario, *args), list)


TIME_OPTIONS = [
    ["streams", "--since"],
    ["streams", "--until"],
    ["stats", "--since"],
    ["stats", "--until"],
    ["alerts", "--since"],
    ["deliveries", "reprocess", "--since"],
]


@pytest.mark.parametrize("number", ["0", "00", "1741651200", "99999999999"])
@pytest.mark.parametrize("command", TIME_OPTIONS, ids=" ".join)
def test_a_time_below_1e11_is_refused_as_seconds(
    scenario_db: str, command: list[str], number: str
) -> None:
    """Every time option refuses a number that would be before 1973 as milliseconds, 0 too."""
    result = invoke(scenario_db, *command, number)
    assert result.exit_code == BAD_INPUT
    line = one_clean_line(result)
    assert f"'{command[-1]}'" in line
    assert "looks like epoch seconds" in line
    assert invoke_json(scenario_db, *command, "100000000000") is not None


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("10000-01-01", "past year 9999"),
        ("+10000-01-01T00:00:00Z", "past year 9999"),
        ("9999-12-31T23:59:59-01:00", "past year 9999"),
        ("99999999999999999", "past year 9999"),
        ("9" * 5000, "past year 9999"),
        ("0000-01-01", "before year 1"),
        ("0001-01-01T00:00:00+05:00", "before year 1"),
    ],
    ids=lambda v: v[:30],
)
@pytest.mark.parametrize("command", TIME_OPTIONS, ids=" ".join)
def test_a_year_out_of_range_is_named(
    scenario_db: str, command: list[str], value: str, where: str
) -> None:
    """A time past year 9999 (or before year 1) is exit 2 naming the option and the year."""
    result = invoke(scenario_db, *command, value)
    assert result.exit_code == BAD_INPUT
    line = one_clean_line(result)
    assert f"'{command[-1]}'" in line
    assert where in line
    assert "the year is out of range" in line
    assert len(line) < 300


# --- database URLs --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("", "the database URL is empty"),
        ("sqlite://", "in-memory database"),
        ("sqlite:///:memory:", "in-memory database"),
        ("mysql://user@localhost/rtms", "'mysql' databases are not supported"),
        ("postgresql+psycopg2://user@localhost/rtms", "driver 'psycopg2' is not installed"),
        ("postgresql://user:secret@localhost:notaport/rtms", "its port is not a number"),
        ("nosuchdb+x://host/db", "not supported"),
        ("sqlite:///x.db?timeout=abc", "a query parameter is wrong"),
        ("postgresql://user@127.0.0.1:1/rtms%00x", "NUL character"),
        ("\udcff.db", "not valid UTF-8"),  # a byte that is not UTF-8, as Python reads argv
        ("a" * 300 + ".db", "path is too long"),
    ],
    ids=lambda value: value[:40],
)
@pytest.mark.parametrize("command", [["streams"], ["ingest", "-"], ["demo"]], ids=" ".join)
def test_unusable_database_urls_are_refused(
    db: str, message: str, command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL that cannot work is exit 2 with one line saying why; no database appears anywhere."""
    if "psycopg2" in db and importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed here")
    monkeypatch.chdir(tmp_path)
    result = invoke(db, *command, stdin="")
    assert result.exit_code == BAD_INPUT
    line = one_clean_line(result)
    assert message in line
    assert "secret" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["ingest", "-"], ["demo"], ["db", "upgrade"]], ids=" ".join)
def test_an_unreachable_server_is_unavailable(command: list[str]) -> None:
    """A PostgreSQL server that does not answer is exit 3, "database unavailable", one line."""
    result = invoke(f"postgresql://rtms@127.0.0.1:{_closed_port()}/rtms", *command, stdin="")
    assert result.exit_code == UNAVAILABLE
    assert "database unavailable" in one_clean_line(result)


# --- schema revisions -----------------------------------------------------------------------------


def written_by_a_newer_version(url: str) -> str:
    """Put the database at a revision this code does not ship, as a newer version would."""
    engine = create_store_engine(url)
    try:
        _migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
    finally:
        engine.dispose()
    return "9001"


@pytest.mark.parametrize("command", [["streams"], ["ingest", "-"], ["db", "upgrade"]], ids=" ".join)
def test_a_newer_schema_is_refused_and_not_upgraded(db_url: str, command: list[str]) -> None:
    """A revision from a newer version: exit 2 saying this version is too old, even `db upgrade`."""
    written_by_a_newer_version(db_url)
    result = invoke(db_url, *command, stdin="")
    assert result.exit_code == BAD_INPUT
    line = one_clean_line(result)
    assert "revision 9001" in line
    assert "upgrade rtms-lifecycle" in line
    assert "db upgrade" not in line


def test_db_current_names_a_newer_schema(db_url: str) -> None:
    """`db current` reports the unknown revision and says the code is the older side."""
    written_by_a_newer_version(db_url)
    assert invoke_json(db_url, "db", "current")["current"] == "9001"
    human = invoke(db_url, "db", "current")
    assert human.exit_code == 0
    assert "newer than this version of rtms-lifecycle" in human.stdout


# --- damaged input --------------------------------------------------------------------------------

LINES = [body("started", f"s-{i}", T0 + i) for i in range(3000)]


@pytest.mark.parametrize("from_stdin", [False, True], ids=["file", "stdin"])
def test_a_truncated_gzip_records_what_came_before(
    db_url: str, tmp_path: Path, from_stdin: bool
) -> None:
    """A gzip cut short: the complete lines before the cut are recorded and counted, exit 2, and
    the message says at which line reading stopped and how many deliveries were recorded."""
    data = gzip.compress(jsonl(LINES).encode())
    cut = data[: len(data) // 2]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(cut)
    source = "-" if from_stdin else str(path)
    result = invoke(db_url, "ingest", source, "--json", stdin=cut if from_stdin else None)
    assert result.exit_code == BAD_INPUT
    counts = json.loads(result.stdout)
    recorded = stored(db_url)
    assert 0 < recorded < len(LINES)
    assert counts["applied"] == recorded
    line = one_clean_line(result)
    assert f"damaged at line {recorded + 1:,}" in line
    assert "truncated" in line
    assert f"the {recorded:,} deliveries before it are recorded" in line


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:2] + b"\x09" + data[3:], id="unknown-method"),
        pytest.param(lambda data: data[:-8] + bytes(8), id="bad-crc"),
    ],
)
def test_a_corrupt_gzip_is_a_clean_error(sqlite_url: str, tmp_path: Path, damage: Any) -> None:
    """A corrupt gzip (bad header, bad checksum) is one line and exit 2, never a traceback."""
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(damage(gzip.compress(jsonl(LINES[:10]).encode())))
    result = invoke(sqlite_url, "ingest", str(path))
    assert result.exit_code == BAD_INPUT
    assert "the input is damaged at line" in one_clean_line(result)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_line_longer_than_any_body_is_skipped_and_named(
    sqlite_url: str, tmp_path: Path, compressed: bool
) -> None:
    """A line over 16 MiB is read through, not recorded, and named; the other lines are
    recorded, and the exit code is 2."""
    long = b"x" * (MAX_LINE_BYTES + 1) + b"\n"
    data = jsonl(LINES[:2]).encode() + long + jsonl(LINES[2:4]).encode()
    path = tmp_path / ("long.jsonl.gz" if compressed else "long.jsonl")
    path.write_bytes(gzip.compress(data) if compressed else data)
    result = invoke(sqlite_url, "ingest", str(path), "--json")
    assert result.exit_code == BAD_INPUT
    assert sum(json.loads(result.stdout).values()) == 4
    assert stored(sqlite_url) == 4
    line = one_clean_line(result)
    assert "1 line (3) longer than 16 MiB" in line
    assert "the 4 deliveries of the other lines are recorded" in line


def test_input_without_line_ends_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """64 MiB with no line end (as /dev/zero gives) is skipped without being held in memory."""
    path = tmp_path / "zeros.jsonl"
    with path.open("wb") as out:
        for _ in range(64):
            out.write(bytes(1024 * 1024))
    # The process's own peak (VmHWM): ru_maxrss would count the forking test process's too.
    measure = (
        "import sys\n"
        "from rtms_lifecycle.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    print(status.split()[0], file=sys.stderr)\n"
    )
    argv = ["--db", f"sqlite:///{tmp_path / 'x.db'}", "ingest", str(path), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", measure, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == BAD_INPUT, done.stderr
    *message, peak_kib = done.stderr.strip().splitlines()
    assert "1 line (1) longer than 16 MiB" in message[-1]
    # The interpreter and the library take about 80 MiB; the line would add 64.
    assert int(peak_kib) < 130 * 1024


# --- Ctrl-C ---------------------------------------------------------------------------------------


def _deliveries_in(url: str) -> int:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one())
    except Exception:  # the schema is not there yet
        return 0
    finally:
        engine.dispose()


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_ctrl_c_during_ingest_commits_what_was_read(db_url: str, tmp_path: Path) -> None:
    """SIGINT mid-file: exit 130, no traceback; the reported count is what the database holds."""
    path = tmp_path / "big.jsonl"
    path.write_text(jsonl(body("started", f"s-{i}", T0 + i) for i in range(100_000)))
    env = {k: v for k, v in os.environ.items() if k != "RTMS_LIFECYCLE_DB"}
    with subprocess.Popen(
        [str(ENTRY_POINT), "--db", db_url, "ingest", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        _wait_for(lambda: _deliveries_in(db_url) >= 1000, "the first committed batch")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    assert process.returncode == INTERRUPTED, err
    assert "Traceback" not in err
    recorded = _deliveries_in(db_url)
    assert 1000 <= recorded < 100_000
    assert json.loads(out)["applied"] == recorded
    assert f"{recorded:,} deliveries are recorded and committed" in err


def test_ctrl_c_while_waiting_for_input_stops_at_once(sqlite_url: str) -> None:
    """SIGINT while `ingest -` waits on an open pipe ends the input there: exit 130, all kept."""
    with subprocess.Popen(
        [str(ENTRY_POINT), "--db", sqlite_url, "ingest", "-", "--batch-size", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None
        process.stdin.write(jsonl(SCENARIO[:2]))
        process.stdin.flush()
        _wait_for(lambda: _deliveries_in(sqlite_url) == 2, "two committed deliveries")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED, err
    assert "Interrupted after line 2: 2 deliveries are recorded" in err
    assert "Read 2 deliveries" in out


def test_ctrl_c_before_any_input_says_nothing_was_recorded(sqlite_url: str) -> None:
    """SIGINT while `ingest -` waits for its first byte says that nothing was read or recorded."""
    with subprocess.Popen(
        [str(ENTRY_POINT), "--db", sqlite_url, "ingest", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        _wait_for(lambda: _has_schema(sqlite_url), "the schema")
        time.sleep(1.0)  # from creating the schema to waiting on the pipe
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED, err
    # Before it, the warning that a new database was created (or none, if this test's own
    # look at the schema made the file first).
    said = err.splitlines()
    assert said[-1] == "Interrupted before any input came: nothing was read or recorded.", err
    assert said[:-1] in ([], [f"created a new, empty database at {sqlite_url[10:]}"]), err


def _has_schema(url: str) -> bool:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            rows: int = conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one()
            return rows == 1
    except Exception:  # not created yet
        return False
    finally:
        engine.dispose()


def test_ctrl_c_in_any_command_exits_130(scenario_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C outside ingest is "Interrupted." and exit 130, not Click's "Aborted!" and 1."""

    def interrupted(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        # What Ctrl-C raises in the main thread. Sending SIGINT here instead failed now and then
        # in the full suite: a handler that runs inside a finalizer (a garbage collection at that
        # moment) has its KeyboardInterrupt ignored by Python.
        raise KeyboardInterrupt

    monkeypatch.setattr(Tracker, "streams", interrupted)
    result = invoke(scenario_db, "streams")
    assert result.exit_code == INTERRUPTED
    assert result.stderr.strip() == "Interrupted."


# --- no traceback, whatever the values ------------------------------------------------------------

_VALUES = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.from_regex(r"-?[0-9]{1,40}[smhd]?", fullmatch=True),
    st.from_regex(
        r"[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}(T[0-9]{1,2}:[0-9]{2}([+-][0-9]{2}:[0-9]{2})?)?",
        fullmatch=True,
    ),
)
_OPTIONS = st.sampled_from(
    [
        ["streams", "--limit"],
        ["deliveries", "--limit"],
        ["deliveries", "--stream"],
        ["stream"],
        ["stats", "--since"],
        ["stats", "--until"],
        ["stats", "--interruptions", "--since"],
        ["alerts", "--since"],
        ["expire", "--stale-after"],
        ["ingest", "-", "--batch-size"],
        ["prunes", "--limit"],
        ["streams", "--db"],
        ["stats", "--db"],
        ["streams", "--account"],
        ["subscriptions", "retry"],
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(option=_OPTIONS, value=_VALUES)
@example(option=["ingest", "-", "--batch-size"], value=str(2**63))
@example(option=["prunes", "--limit"], value=str(2**63))
@example(option=["deliveries", "--stream"], value="\udcff")  # argv bytes that are not UTF-8
@example(option=["stream"], value="\udcff")
@example(option=["streams", "--account"], value="\udcff")
@example(option=["subscriptions", "retry"], value="\udcff")
@example(option=["streams", "--db"], value="\udcff.db")
@example(option=["streams", "--db"], value="a" * 300)
def test_no_option_value_brings_a_traceback(
    scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: list[str], value: str
) -> None:
    """Whatever an option's value, the command ends with a documented exit code and no traceback."""
    empty = tmp_path / "cwd"
    empty.mkdir(exist_ok=True)
    monkeypatch.chdir(empty)  # a --db path that gets through is looked for here, never created
    result = CliRunner().invoke(cli, ["--db", scenario, *option, value, "--json"], input="")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 1, 2, 3)
    assert "Traceback" not in result.output
    if result.exit_code:
        one_clean_line(result)
    assert not any(empty.iterdir())


def test_a_backlog_past_what_the_kernel_takes_is_refused(scenario: str) -> None:
    """`serve --backlog` past 65,535 is a usage error naming the option, before anything starts."""
    result = CliRunner().invoke(cli, ["--db", scenario, "serve", "--backlog", str(2**63)])
    assert result.exit_code == 2
    assert "--backlog" in one_clean_line(result)


_FORWARD = ["forward", "c", "http://127.0.0.1:9/", "--secret-env", "RTMS_TEST_SECRET"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["serve", "--store-timeout", "inf"], "--store-timeout"),
        (["serve", "--store-timeout", "1e308"], "--store-timeout"),
        (["serve", "--store-timeout", "nan"], "--store-timeout"),
        (["serve", "--request-timeout", "nan"], "--request-timeout"),
        (["serve", "--replay-window", "nan"], "--replay-window"),
        ([*_FORWARD, "--timeout", "inf"], "--timeout"),
        ([*_FORWARD, "--timeout", "nan"], "--timeout"),
        ([*_FORWARD, "--retry-delay", "nan"], "--retry-delay"),
        ([*_FORWARD, "--idle-exit", "nan"], "--idle-exit"),
        (["follow", "c", "--idle-exit", "nan"], "--idle-exit"),
    ],
    ids=" ".join,
)
def test_seconds_that_no_wait_can_take_are_refused(
    scenario_db: str, args: list[str], option: str
) -> None:
    """nan seconds, or a wait past a day where the OS cannot wait that long, is a usage error
    naming the option, before the command starts (it used to run forever, or fail each request)."""
    result = CliRunner().invoke(cli, ["--db", scenario_db, *args])
    assert result.exit_code == BAD_INPUT
    assert option in one_clean_line(result)


def test_serve_refuses_a_host_name_that_cannot_be_encoded(scenario_db: str) -> None:
    """`serve --host` with a label over 63 characters is one line naming the host, exit 1."""
    result = CliRunner().invoke(cli, ["--db", scenario_db, "serve", "--host", "a" * 64])
    assert result.exit_code == 1
    assert "cannot listen on 'aaaa" in one_clean_line(result)


def test_prune_refuses_a_cutoff_before_any_date(scenario_db: str) -> None:
    """`prune --older-than` past 1,000 years is a usage error, not a traceback drawing the
    cutoff (before year 1); the bound itself is answered."""
    result = invoke(scenario_db, "prune", "--dry-run", "--older-than", "3652425d")
    assert result.exit_code == BAD_INPUT
    assert "'--older-than': at most 365000d" in one_clean_line(result)
    assert invoke(scenario_db, "prune", "--dry-run", "--older-than", "365000d").exit_code == 0


def test_installed_command_prints_no_traceback_for_a_bad_url(tmp_path: Path) -> None:
    """As a real process: a MySQL URL is one line and exit 2."""
    result = run_process("--db", "mysql://user@localhost/rtms", "streams", cwd=tmp_path)
    assert result.returncode == BAD_INPUT
    assert "not supported" in one_clean_line(result)


# --- how messages name options --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["streams", "--limit", "0"], ["'--limit'"]),  # Click's own message
        (["streams", "--active", "--state", "stopped"], ["'--active'", "'--state"]),
        (["stats", "--chart", "--interruptions"], ["'--chart'", "'--interruptions'"]),
        (["stats", "--unhandled", "--chart"], ["'--unhandled'", "'--chart'", "'--account'"]),
        (["prune", "--older-than", "1h"], ["'--older-than'"]),
        (["follow", "bad name"], ["'CONSUMER'"]),
        (["forward", "c", "ftp://x", "--secret-env", "X"], ["'URL'"]),
        (["forward", "c", "http://x", "--secret-env", "RTMS_NOT_SET"], ["'--secret-env'"]),
    ],
)
def test_messages_quote_the_options_they_name_as_click_does(
    sqlite_url: str, args: list[str], named: list[str]
) -> None:
    """Every usage error names its options and arguments in single quotes, as Click's own do."""
    Tracker(sqlite_url).close()
    result = CliRunner().invoke(cli, ["--db", sqlite_url, *args])
    assert result.exit_code == 2, result.output
    for name in named:
        assert name in result.stderr
