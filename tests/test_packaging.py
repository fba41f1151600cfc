"""The wheel as the package index and a user get it: metadata, links, entry points."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# One xdist worker builds the wheel once for every test here.
pytestmark = pytest.mark.xdist_group("wheel")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel, as `pip install rtms-lifecycle` would get it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return built


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return message_from_bytes(archive.read(name))


def test_readme_links_work_on_the_package_index(wheel: Path) -> None:
    """Every link of the long description is absolute: the index has no docs/ folder beside it."""
    description = _metadata(wheel).get_payload()
    assert isinstance(description, str)
    targets = re.findall(r"\]\(([^)]+)\)", description)
    assert targets
    assert [t for t in targets if not t.startswith(("https://", "http://"))] == []


def test_readme_links_point_at_files_that_exist(wheel: Path) -> None:
    """The rewritten links name files the repository has (no link rots when a page is renamed)."""
    description = _metadata(wheel).get_payload()
    assert isinstance(description, str)
    prefix = "https://github.com/rtms-lifecycle/rtms-lifecycle/blob/main/"
    paths = [
        t[len(prefix) :] for t in re.findall(r"\]\(([^)]+)\)", description) if t.startswith(prefix)
    ]
    assert paths
    assert [p for p in paths if not (ROOT / p.split("#")[0]).is_file()] == []


def test_wheel_carries_license_migrations_and_main(wheel: Path) -> None:
    """The wheel ships the licence, the migrations, a new SQLite file's schema, `python -m`."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "rtms_lifecycle/migrations/env.py" in names
    assert "rtms_lifecycle/store/sqlite_schema.sql" in names
    assert "rtms_lifecycle/__main__.py" in names
    assert "rtms_lifecycle/py.typed" in names


def test_wheel_publishes_only_the_user_extras(wheel: Path) -> None:
    """The test and dev tools are dependency groups: the index shows only the extras users pick."""
    metadata = _metadata(wheel)
    assert sorted(metadata.get_all("Provides-Extra") or []) == [
        "all",
        "forward",
        "postgres",
        "server",
        "zoom",
    ]
    required = " ".join(metadata.get_all("Requires-Dist") or [])
    assert not re.search(r"\b(pytest|hypothesis|mypy|ruff|playwright|mkdocs|websockets)", required)
