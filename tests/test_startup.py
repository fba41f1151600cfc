"""Starting fast: the package, `--help` and the read commands import only what they need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

import rtms_lifecycle
from rtms_lifecycle import Outcome, Scope, State
from rtms_lifecycle import defaults as _defaults
from rtms_lifecycle.cli.commands import cli
from rtms_lifecycle.exceptions import SchemaOutdatedError
from rtms_lifecycle.store import migrate as _migrate
from rtms_lifecycle.subscriptions import (
    DEFAULT_FORWARD_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
)
from rtms_lifecycle.tracker import DEFAULT_BATCH_SIZE

EXAMPLES = Path(__file__).parent / "zoom" / "examples"
HEAVY = ("sqlalchemy", "pydantic", "alembic", "rich", "transitions", "fastapi")

# Runs code in a new interpreter, then prints which heavy top-level packages it imported.
_IMPORTED = """
import sys
{code}
heavy = {heavy!r}
print(sorted({{name.partition(".")[0] for name in sys.modules}} & set(heavy)))
"""
_RUN_CLI = """
from rtms_lifecycle.cli.commands import cli
try:
    cli.main({argv!r}, prog_name="rtms-lifecycle")
except SystemExit as exc:
    assert not exc.code, exc.code
"""


def _heavy_imports(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED.format(code=code, heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(out.stdout.splitlines()[-1].replace("'", '"')))


def test_every_public_name_resolves() -> None:
    """Every name in ``__all__`` is an attribute of the package and listed by ``dir()``."""
    for name in rtms_lifecycle.__all__:
        assert getattr(rtms_lifecycle, name) is not None, name
    assert set(rtms_lifecycle.__all__) <= set(dir(rtms_lifecycle))


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A name the package does not have raises AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = rtms_lifecycle.no_such_name


def test_importing_the_package_imports_nothing_heavy() -> None:
    """``import rtms_lifecycle`` imports none of SQLAlchemy, pydantic, Alembic or Rich."""
    assert _heavy_imports("import rtms_lifecycle") == []


def test_help_imports_only_click() -> None:
    """``rtms-lifecycle --help`` imports none of SQLAlchemy, pydantic, Alembic or Rich."""
    assert _heavy_imports(_RUN_CLI.format(argv=["--help"])) == []


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    # Every command and subcommand, as typed: ("db", "current"), ("subscriptions", "retry"), ...
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
    return paths


@pytest.mark.parametrize("command", _command_paths(cli), ids=" ".join)
def test_every_command_s_help_imports_only_click(command: tuple[str, ...]) -> None:
    """``rtms-lifecycle COMMAND --help`` imports none of SQLAlchemy, pydantic, Alembic or Rich."""
    assert _heavy_imports(_RUN_CLI.format(argv=[*command, "--help"])) == []


def test_reading_a_stream_imports_neither_alembic_nor_pydantic(tmp_path: Path) -> None:
    """``stream ID`` on an existing database needs no Alembic (upgrades) nor pydantic (parsing)."""
    db = f"sqlite:///{tmp_path / 'x.db'}"
    started = json.loads((EXAMPLES / "meeting.rtms_started.json").read_text())
    stream_id = started["payload"]["rtms_stream_id"]
    lines = tmp_path / "one.jsonl"
    lines.write_text(json.dumps(started) + "\n")
    ingest = _RUN_CLI.format(argv=["--db", db, "ingest", str(lines)])
    imported = set(_heavy_imports(ingest))
    assert "pydantic" in imported  # parsed
    assert "alembic" not in imported  # a new SQLite file is created from the packaged schema
    read = _RUN_CLI.format(argv=["--db", db, "stream", stream_id])
    assert {"alembic", "pydantic"}.isdisjoint(_heavy_imports(read))


@pytest.mark.parametrize("form", ["{path}", "sqlite:///{path}"])
def test_recording_into_an_sqlite_file_imports_no_sqlalchemy(tmp_path: Path, form: str) -> None:
    """``ingest`` into a new SQLite file, then into it again, imports neither SQLAlchemy nor
    Alembic: the writer speaks to ``sqlite3`` and the schema is the packaged one."""
    db = form.format(path=tmp_path / "x.db")
    lines = tmp_path / "one.jsonl"
    lines.write_text((EXAMPLES / "meeting.rtms_started.json").read_text().replace("\n", "") + "\n")
    for _ in range(2):
        imported = _heavy_imports(_RUN_CLI.format(argv=["--db", db, "ingest", str(lines)]))
        assert {"sqlalchemy", "alembic"}.isdisjoint(imported), imported


def test_choice_lists_are_the_enums_values() -> None:
    """The CLI's choice lists name the members of Scope, State and Outcome, in order."""
    assert tuple(Scope) == _defaults.SCOPES
    assert tuple(State) == _defaults.STATES
    assert tuple(Outcome) == _defaults.OUTCOMES


def test_defaults_are_the_library_s() -> None:
    """The CLI's defaults are the ones the library uses."""
    assert _defaults.DEFAULT_BATCH_SIZE == DEFAULT_BATCH_SIZE
    assert (_defaults.DEFAULT_MAX_ATTEMPTS, _defaults.DEFAULT_RETRY_DELAY) == (
        DEFAULT_MAX_ATTEMPTS,
        DEFAULT_RETRY_DELAY,
    )
    assert _defaults.DEFAULT_FORWARD_TIMEOUT == DEFAULT_FORWARD_TIMEOUT


def test_revisions_read_from_the_files_are_alembic_s() -> None:
    """The revisions and head read from the migration files' text are the ones Alembic finds."""
    scripts = ScriptDirectory.from_config(_migrate.alembic_config())
    assert _migrate.head_revision() == scripts.get_current_head()
    assert set(_migrate._revisions()) == {script.revision for script in scripts.walk_revisions()}


def test_two_recorded_revisions_are_refused(tmp_path: Path) -> None:
    """A database recording two schema revisions is refused, naming them."""
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32))")
            conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('0001'), ('0002')")
        with pytest.raises(SchemaOutdatedError, match=r"2 schema revisions \(0001, 0002\)"):
            _migrate.current_revision(engine)
    finally:
        engine.dispose()


_FIRST_DELIVERY = """
import hashlib, hmac, json, sys, time
from fastapi.testclient import TestClient
from rtms_lifecycle.server import create_app

with TestClient(create_app({db!r}, secrets=["s"])) as client:
    before = set(sys.modules)
    body = json.dumps({{"event": "meeting.rtms_started", "event_ts": int(time.time() * 1000),
                       "payload": {{"rtms_stream_id": "a", "meeting_uuid": "m"}}}}).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(b"s", f"v0:{{ts}}:".encode() + body, hashlib.sha256).hexdigest()
    answer = client.post("/webhook", content=body,
                         headers={{"x-zm-request-timestamp": ts, "x-zm-signature": sig}})
    assert answer.status_code == 200, answer.text
    print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_receiver_s_first_delivery_imports_nothing(tmp_path: Path) -> None:
    """A started receiver has imported what a delivery needs: the first one's time budget goes
    to the database, not to imports."""
    code = _FIRST_DELIVERY.format(db=f"sqlite:///{tmp_path / 'x.db'}")
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.splitlines()[-1]) == []
