"""Which database a command opens, and the commands that protect the data in it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.exceptions import DatabaseURLError
from rtms_lifecycle.store import urls as _dburl

from ._deliveries import body
from .test_cli import SCENARIO, T0, invoke, invoke_json, jsonl, run_process

READ_COMMANDS = [
    ["streams"],
    ["stream", "s-phone"],
    ["stats"],
    ["stats", "--interruptions"],
    ["deliveries"],
    ["alerts"],
    ["db", "current"],
    ["expire", "--stale-after", "2h", "--dry-run"],
    ["expire", "--stale-after", "2h"],  # a cron job pointed at the wrong path must say so
    ["prune", "--older-than", "30d", "--dry-run"],
    ["prune", "--older-than", "30d"],
    ["prunes"],
    ["subscriptions"],
    ["subscriptions", "retry", "billing"],
    ["follow", "billing", "--idle-exit", "1"],
]
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def _no_ambient_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's RTMS_LIFECYCLE_DB never decides a test's database."""
    monkeypatch.delenv("RTMS_LIFECYCLE_DB", raising=False)


# --- read commands never create a database --------------------------------------------------------


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_read_commands_never_create_a_database(args: list[str], tmp_path: Path) -> None:
    """A SQLite file that is not there: exit 3 naming its path, and no file is created."""
    typo = tmp_path / "rtms_lifecyle.db"
    result = invoke(f"sqlite:///{typo}", *args)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert f"no database at {typo}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not typo.exists()


def test_the_default_database_is_not_created_by_reading(tmp_path: Path) -> None:
    """`rtms-lifecycle streams` in an empty folder says rtms_lifecycle.db is missing, exit 3."""
    result = run_process("streams", cwd=tmp_path)
    assert result.returncode == 3
    assert "no database at rtms_lifecycle.db" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_write_commands_still_create_a_new_database(tmp_path: Path) -> None:
    """ingest creates the SQLite file with its schema, as before."""
    path = tmp_path / "new.db"
    assert invoke_json(str(path), "ingest", "-", stdin=jsonl(SCENARIO))["applied"] == 10
    assert path.is_file()


# --- --db: a path, and after the command ----------------------------------------------------------


def test_db_accepts_a_plain_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--db ./rtms.db is the SQLite file rtms.db in the current folder."""
    monkeypatch.chdir(tmp_path)
    invoke_json("./rtms.db", "ingest", "-", stdin=jsonl(SCENARIO))
    assert (tmp_path / "rtms.db").is_file()
    url = f"sqlite:///{tmp_path / 'rtms.db'}"
    assert len(invoke_json(url, "streams")) == 5


@pytest.mark.parametrize(
    "args",
    [
        ["streams", "--json", "--db", "{db}"],
        ["streams", "--db={db}", "--json"],
        ["db", "current", "--db", "{db}", "--json"],
        ["--db", "elsewhere.db", "streams", "--db", "{db}", "--json"],
    ],
    ids=["after", "equals", "subgroup", "later-wins"],
)
def test_global_options_after_the_command(
    sqlite_url: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rtms-lifecycle streams --db X` is `rtms-lifecycle --db X streams`."""
    invoke_json(sqlite_url, "ingest", "-", stdin=jsonl(SCENARIO))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [a.format(db=sqlite_url) for a in args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)
    assert not (tmp_path / "elsewhere.db").exists()


def test_ingest_takes_db_after_the_command(tmp_path: Path) -> None:
    """As a process: `ingest - --db PATH` writes PATH."""
    result = run_process(
        "ingest", "-", "--db", "after.db", cwd=tmp_path, stdin=jsonl(SCENARIO).encode()
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "after.db").is_file()


@pytest.mark.parametrize("url", ["sqlite:/x.db", "sqlite:x.db", "postgresql:host/db"])
def test_a_url_missing_its_slashes_is_refused_not_read_as_a_path(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:/x.db` is a URL with a slash missing, not x.db in a folder named "sqlite:": the
    tracker raises DatabaseURLError showing the forms, the CLI exits 2; no file or folder made."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseURLError, match="is not a database URL: give sqlite:///"):
        Tracker(url)
    result = CliRunner().invoke(cli, ["--db", url, "ingest", "-"], input="")
    assert result.exit_code == 2, result.output
    assert "is not a database URL" in result.output
    assert list(tmp_path.iterdir()) == []


# --- Tracker() and the environment ----------------------------------------------------------------


@pytest.mark.parametrize("form", ["url", "path"])
def test_tracker_without_a_url_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """Tracker() opens RTMS_LIFECYCLE_DB (a URL or a path), the database the CLI reads."""
    path = tmp_path / "env.db"
    monkeypatch.setenv("RTMS_LIFECYCLE_DB", f"sqlite:///{path}" if form == "url" else str(path))
    monkeypatch.chdir(tmp_path / ".." if form == "url" else tmp_path)
    with Tracker() as tracker:
        tracker.ingest(json.dumps(SCENARIO[0]))
    assert path.is_file()
    result = CliRunner().invoke(cli, ["streams", "--json"])
    assert [s["stream_id"] for s in json.loads(result.stdout)] == ["s-meeting"]


def test_tracker_without_url_or_environment_uses_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without RTMS_LIFECYCLE_DB (or with it empty), Tracker() writes ./rtms_lifecycle.db."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RTMS_LIFECYCLE_DB", "")
    with Tracker() as tracker:
        tracker.ingest(json.dumps(SCENARIO[0]))
    assert (tmp_path / "rtms_lifecycle.db").is_file()


# --- demo -----------------------------------------------------------------------------------------


def test_demo_refuses_a_database_that_holds_streams(db_url: str) -> None:
    """demo into real data: exit 2, one line suggesting its own database or --force, nothing
    written."""
    invoke_json(db_url, "ingest", "-", stdin=jsonl(SCENARIO))
    before = invoke_json(db_url, "deliveries", "--limit", "0")
    result = invoke(db_url, "demo")
    assert result.exit_code == 2
    assert "already holds streams" in result.stderr
    assert "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert invoke_json(db_url, "deliveries", "--limit", "0") == before


def test_demo_force_replays_into_a_database_with_streams(db_url: str) -> None:
    """demo --force adds the demo day to a database that already holds streams."""
    invoke_json(db_url, "ingest", "-", stdin=jsonl(SCENARIO))
    result = invoke(db_url, "demo", "--force")
    assert result.exit_code == 0, result.output
    assert len(invoke_json(db_url, "streams")) > len(SCENARIO)


def test_demo_reads_the_environment_and_refuses_it_too(sqlite_url: str, tmp_path: Path) -> None:
    """RTMS_LIFECYCLE_DB pointing at real data: the process refuses, and nothing is written."""
    invoke_json(sqlite_url, "ingest", "-", stdin=jsonl(SCENARIO))
    result = run_process("demo", cwd=tmp_path, env={"RTMS_LIFECYCLE_DB": sqlite_url})
    assert result.returncode == 2
    assert len(invoke_json(sqlite_url, "streams")) == 5


# --- tables ---------------------------------------------------------------------------------------

LONG_IDS = [f"{i:06d}4f6b5f4a559b8e6d1b2c3d4e5f" for i in range(3)]


def terminal_output(*args: str, columns: int = 80) -> str:
    """The command's stdout as an 80-column terminal would show it, without colours."""
    result = CliRunner(env={"COLUMNS": str(columns), "FORCE_COLOR": "1"}).invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return _ESCAPES.sub("", result.stdout)


@pytest.mark.parametrize(
    "command",
    [["streams"], ["deliveries"], ["expire", "--stale-after", "1s"]],
    ids=" ".join,
)
def test_stream_ids_are_never_shortened(sqlite_url: str, command: list[str]) -> None:
    """At 80 columns every stream id is shown whole, so it can be copied into `stream ID`."""
    starts = [
        body("started", sid, T0, scope="contact_center", scope_id="engagement-1")
        for sid in LONG_IDS
    ]
    invoke_json(sqlite_url, "ingest", "-", stdin=jsonl(starts))
    shown = terminal_output("--db", sqlite_url, *command)
    assert all(sid in shown for sid in LONG_IDS), shown
    assert "…" not in shown  # columns were left out rather than squeezed
    assert "Left out at this width:" in shown
    assert max(len(line) for line in shown.splitlines()) <= 80


def test_a_narrow_streams_table_keeps_the_columns_it_shows_legible(sqlite_url: str) -> None:
    """At 80 columns the streams table keeps whole states and durations, naming what it left."""
    invoke_json(sqlite_url, "ingest", "-", stdin=jsonl(SCENARIO))
    shown = terminal_output("--db", sqlite_url, "streams")
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "Left out at this width: Failovers, Interruptions" in shown
    assert any("│ s-session " in line and "│ resumed " in line for line in lines)


@pytest.fixture
def sixty_streams(sqlite_url: str) -> str:
    """A database with 60 streams, s-000 (oldest) to s-059."""
    invoke_json(
        sqlite_url,
        "ingest",
        "-",
        stdin=jsonl(body("started", f"s-{i:03d}", T0 + i) for i in range(60)),
    )
    return sqlite_url


def test_streams_table_shows_the_newest_50(sixty_streams: str) -> None:
    """Without --limit, the table shows the newest 50 and says "showing 50 of N"."""
    result = invoke(sixty_streams, "streams")
    assert "showing 50 of 60" in result.stdout
    assert "s-059" in result.stdout
    assert "s-010" in result.stdout
    assert "s-009" not in result.stdout
    more = invoke(sixty_streams, "streams", "--limit", "55")
    assert "s-005" in more.stdout
    assert "showing" not in more.stdout


def test_streams_json_still_lists_every_stream(sixty_streams: str) -> None:
    """--json without filters or --limit returns every stream, as the contract says."""
    assert len(invoke_json(sixty_streams, "streams")) == 60


def test_ingest_progress_shows_an_eta_for_files(sqlite_url: str, tmp_path: Path) -> None:
    """On a terminal, ingesting a file draws a bar with the time remaining."""
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl(body("started", f"s-{i}", T0 + i) for i in range(3000)))
    result = CliRunner(env={"COLUMNS": "120", "FORCE_COLOR": "1"}).invoke(
        cli, ["--db", sqlite_url, "ingest", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "eta" in _ESCAPES.sub("", result.stderr)


# --- why a SQLite file cannot be opened ---------------------------------------------------------


def test_a_directory_given_as_database_is_named(tmp_path: Path) -> None:
    """--db naming a directory: exit 3, the message says it is a directory."""
    result = invoke(str(tmp_path), "streams")
    assert result.exit_code == 3
    assert f"{tmp_path} is a directory, not a database file" in result.stderr


def test_a_database_in_a_missing_folder_is_named(tmp_path: Path) -> None:
    """ingest into a file whose folder does not exist: exit 3, the message names the folder."""
    lines = tmp_path / "one.jsonl"
    lines.write_text("{}\n")
    missing = tmp_path / "no-such-folder" / "x.db"
    result = invoke(str(missing), "ingest", str(lines))
    assert result.exit_code == 3
    assert f"the folder {missing.parent} of x.db does not exist" in result.stderr


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    """--db naming a text file: exit 3, the message says it is not an SQLite database."""
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    result = invoke(str(text), "streams")
    assert result.exit_code == 3
    assert f"{text} is not an SQLite database" in result.stderr
    assert text.read_text() == "not a database\n"


def test_a_read_only_sqlite_uri_is_read(tmp_path: Path) -> None:
    """A read-only SQLite URI (file:...?mode=ro&uri=true) names an existing file: it is read."""
    path = tmp_path / "rtms db.db"
    with Tracker(f"sqlite:///{path}") as tracker:
        tracker.ingest(body("started", "s1", T0))
    uri = f"sqlite:///file:{str(path).replace(' ', '%20')}?mode=ro&uri=true"

    assert [s["stream_id"] for s in invoke_json(uri, "streams")] == ["s1"]


def test_writing_through_a_read_only_uri_is_a_one_line_error(tmp_path: Path) -> None:
    """ingest through a read-only SQLite URI: exit 3, the message says the database is read-only."""
    path = tmp_path / "rtms.db"
    Tracker(f"sqlite:///{path}").close()
    lines = tmp_path / "one.jsonl"
    lines.write_text(json.dumps(body("started", "s1", T0)) + "\n")

    result = invoke(f"sqlite:///file:{path}?mode=ro&uri=true", "ingest", str(lines))

    assert result.exit_code == 3
    assert "readonly database" in result.stderr
    assert "Traceback" not in result.output


@given(
    path=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30),
    form=st.sampled_from(["{}", "sqlite:///{}", "sqlite:///{quoted}"]),
)
@example(path="a b%3D=c#d.db", form="sqlite:///{}")
@example(path=":memory:", form="{}")
@example(path="   ", form="{}")
@example(path="x\x00y", form="sqlite:///{quoted}")
@settings(max_examples=300, deadline=None)
def test_a_plain_sqlite_path_is_read_as_sqlalchemy_reads_it(path: str, form: str) -> None:
    """A plain path or ``sqlite:///path``, read without SQLAlchemy, names the file, opens it as
    SQLAlchemy would and renders the same URL; what SQLAlchemy's parser refuses is never taken."""
    text = form.format(path, quoted=quote(path, safe=" +/"))
    try:
        parsed = _dburl.parse(text)
    except DatabaseURLError:
        parsed = None
    try:
        plain = _dburl.plain_sqlite_file(text)
    except DatabaseURLError:
        assert parsed is None
        return
    if plain is None:
        return
    assert parsed is not None
    rendered, file = plain
    assert rendered == parsed.render_as_string(hide_password=False)
    assert file.path == _dburl.sqlite_file(parsed)
    connect_args = parsed.get_dialect()().create_connect_args(parsed)
    assert ([file.filename], file.options) == (list(connect_args[0]), dict(connect_args[1]))


def test_db_history_titles_are_plain_whole_sentences(sqlite_url: str) -> None:
    """Each title is its migration docstring's first paragraph as plain text: no ``literal``
    quotes, not cut at the docstring's first line end; --json gives the same titles."""
    invoke_json(sqlite_url, "db", "upgrade")
    shown = invoke(sqlite_url, "db", "history")
    assert shown.exit_code == 0
    titles = [m["title"] for m in invoke_json(sqlite_url, "db", "history")["migrations"]]
    printed = " ".join(shown.stdout.split())
    for title in titles:
        assert "``" not in title
        assert "\n" not in title
        assert title.endswith("."), title
        assert title in printed
    assert "``" not in shown.stdout
    assert any("deliveries.reprocess_of links a delivery" in t for t in titles)
