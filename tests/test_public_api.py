"""The public surface: every name of ``rtms_lifecycle.__all__``, the server module, the command."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

import rtms_lifecycle

INIT = Path(rtms_lifecycle.__file__)


def _init_tree() -> ast.Module:
    return ast.parse(INIT.read_text())


def _table() -> dict[str, str]:
    """The package's one list of public names: name -> the submodule defining it."""
    for node in _init_tree().body:
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "_SOURCES":
            assert node.value is not None
            table: dict[str, str] = ast.literal_eval(node.value)
            return table
    raise AssertionError("no _SOURCES table in rtms_lifecycle/__init__.py")


def test_all_is_the_table() -> None:
    """``__all__`` is the table's names, each once."""
    assert rtms_lifecycle.__all__ == sorted(_table())


def test_every_public_name_imports_from_its_module() -> None:
    """``from rtms_lifecycle import *`` gives every name, the very object its module defines."""
    namespace: dict[str, Any] = {}
    exec("from rtms_lifecycle import *", namespace)
    for name, module in _table().items():
        assert namespace[name] is getattr(import_module(f"rtms_lifecycle.{module}"), name), name


def test_type_checkers_see_the_same_names() -> None:
    """The TYPE_CHECKING imports (for mypy and IDEs) are the table, name for name."""
    (block,) = [
        node
        for node in _init_tree().body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    seen: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        assert node.module, ast.unparse(node)
        for alias in node.names:
            # `name as name`: what a type checker counts as re-exported.
            assert alias.asname == alias.name, ast.unparse(node)
            seen[alias.name] = node.module.removeprefix("rtms_lifecycle.")
    assert seen == _table()


def test_the_server_module_exports_the_app() -> None:
    """``rtms_lifecycle.server`` is the receiver's public import path."""
    from rtms_lifecycle.server import create_app, create_router

    assert callable(create_app)
    assert callable(create_router)


def _script() -> list[str]:
    (script,) = entry_points(group="console_scripts", name="rtms-lifecycle")
    assert script.value == "rtms_lifecycle.cli:main"
    path = Path(sys.executable).with_name("rtms-lifecycle")
    assert path.exists(), f"{path}: pip install -e . installs the command"
    return [str(path)]


def _python_m() -> list[str]:
    return [sys.executable, "-m", "rtms_lifecycle"]


@pytest.mark.parametrize("command", [_python_m, _script], ids=["python -m", "rtms-lifecycle"])
def test_the_command_line_starts(command: Callable[[], list[str]]) -> None:
    """``python -m rtms_lifecycle --help`` and the installed ``rtms-lifecycle --help`` print the
    command line's help, named as the script."""
    result = subprocess.run([*command(), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: rtms-lifecycle ")
