"""The package's structure: its layers (import-linter) and no private name crossing a module."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "rtms_lifecycle"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(module: str, tree: ast.Module, modules: set[str]) -> Iterator[tuple[str, str]]:
    """``(other module, private name)`` for each private name ``module`` takes from another.

    Both ``from other import _name`` and ``other._name`` (after ``import other`` or ``from
    package import other``) count; the package's own ``__init__`` re-exports nothing private.
    """
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    aliases[alias.asname or alias.name] = full
                elif _private(alias.name) and node.module in modules and node.module != module:
                    yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            other = aliases.get(ast.unparse(node.value))
            if other is not None and other != module:
                yield other, node.attr


def test_no_private_name_crosses_a_module() -> None:
    """No module of the package imports (or reads) another module's underscore name."""
    modules = _modules()
    found = {
        (module, other, name)
        for module, path in modules.items()
        for other, name in private_uses(module, ast.parse(path.read_text()), set(modules))
    }
    assert found == set()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from rtms_lifecycle.tracker import _as_set", {("rtms_lifecycle.tracker", "_as_set")}),
        ("from rtms_lifecycle import tracker\ntracker._log", {("rtms_lifecycle.tracker", "_log")}),
        ("import rtms_lifecycle.tracker as t\nt._log", {("rtms_lifecycle.tracker", "_log")}),
        ("from rtms_lifecycle.me import _mine", set()),
        ("from rtms_lifecycle.tracker import __all__, Tracker", set()),
    ],
)
def test_the_scan_finds_private_names(source: str, expected: set[tuple[str, str]]) -> None:
    """The scan above sees both spellings, and not a module's own names or dunders."""
    modules = {"rtms_lifecycle.me", "rtms_lifecycle.tracker"}
    assert set(private_uses("rtms_lifecycle.me", ast.parse(source), modules)) == expected


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def test_only_the_store_may_import_sql_libraries() -> None:
    """The forbidden contract names every top-level module but the store, new ones included."""
    top_level = {
        f"rtms_lifecycle.{path.stem if path.is_file() else path.name}"
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }
    sources = _contracts()["sql-in-store"]["source_modules"]
    assert isinstance(sources, list)
    assert sorted(sources) == sorted(top_level - {"rtms_lifecycle.store"})


def test_import_contracts_hold(skip_or_fail: Callable[[str], NoReturn]) -> None:
    """``lint-imports``: the layers, no cycles, SQL only in the store (pyproject.toml)."""
    lint = Path(sys.executable).with_name("lint-imports")
    command = str(lint) if lint.exists() else shutil.which("lint-imports")
    if command is None:
        skip_or_fail("lint-imports is not installed: pip install --group dev")
    result = subprocess.run(
        [command, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_zoom_adapter_sits_beside_cli_and_receiver() -> None:
    """``zoom`` shares the layer of ``cli`` and ``receiver`` and reaches no tracker directly."""
    layers = _contracts()["layers"]["layers"]
    assert isinstance(layers, list)
    assert layers[1] == "cli | receiver | zoom"
    forbidden = _contracts()["zoom-through-protocol"]["forbidden_modules"]
    assert isinstance(forbidden, list)
    assert {
        "rtms_lifecycle.tracker",
        "rtms_lifecycle.async_tracker",
        "rtms_lifecycle.store",
    } <= set(forbidden)


def test_importing_the_zoom_adapter_loads_no_sdk() -> None:
    """``rtms`` is an optional binary wheel: the module imports it only when first used."""
    code = "import sys, rtms_lifecycle.zoom; assert 'rtms' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
