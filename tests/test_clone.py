"""The project stands on its own: a copy of its tracked files, with nothing beside it, collects
every test module. A test reading a file outside the repository fails here, and in CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_files() -> list[str]:
    """The repository's tracked files as they are now in the working tree."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to tell tracked files from others")
    # safe.directory: CI runs as root in a clone another user may own.
    command = ["git", "-c", "safe.directory=*", "ls-files", "-z"]
    listed = subprocess.run(command, cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_a_copy_of_the_tracked_files_collects_every_test_module(tmp_path: Path) -> None:
    """`pytest --collect-only` in a copy of the tracked files, alone in a folder, finds tests
    in every test module and no collection error."""
    clone = tmp_path / "alone" / "rtms-lifecycle"
    for name in tracked_files():
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    # The copy's own sources, not the installed (editable) package of this working tree.
    env = {**os.environ, "PYTHONPATH": str(clone / "src")}
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    modules = {line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line}
    expected = {path.relative_to(clone).as_posix() for path in (clone / "tests").glob("test_*.py")}
    assert modules == expected


# Built from parts, so that this file does not match itself (nor any other checker's pattern).
_BESIDE = "sha" + "red"
OUTSIDE_REFERENCES = re.compile(
    "|".join(
        [
            r"\.\./" + _BESIDE,
            r"/work/" + _BESIDE,
            _BESIDE + " folder",
            r"\b[Ss]pec" + r" sections? \d",
            r"\b[Ii]ssue" + r" \d+\b",
        ]
    )
)


def test_no_tracked_file_refers_outside_the_repository() -> None:
    """Docs, code and tests speak of the project alone: no folder beside it, no issue numbers."""
    found = []
    for name in tracked_files():
        if not name.endswith((".py", ".md", ".toml", ".cfg", ".ini", ".txt")) and name != ".ci/run":
            continue
        text = (ROOT / name).read_text(errors="replace")
        found += [f"{name}: {m.group(0)}" for m in OUTSIDE_REFERENCES.finditer(text)]
    assert found == []
