"""Only ``rtms_lifecycle.store`` speaks to the database: no other module imports SQLAlchemy or a
driver at run time (imports under ``if TYPE_CHECKING:`` are for annotations only)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import rtms_lifecycle

DATABASE_PACKAGES = ("sqlalchemy", "psycopg", "psycopg2", "sqlite3", "alembic")


def _modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(rtms_lifecycle.__path__, "rtms_lifecycle.")
        if info.name != "rtms_lifecycle.store" and not info.name.startswith("rtms_lifecycle.store.")
    )


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Every import the module runs (top level, in functions, in try blocks), with its line."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.extend(
                (node.lineno, arg.value)
                for arg in node.args[:1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
        for inner in ast.iter_child_nodes(node):
            visit(inner)

    visit(tree)
    return found


def test_no_module_outside_the_store_imports_a_database_library() -> None:
    """Each module's source, every import it runs, wherever it runs it."""
    offenders = []
    for name in _modules():
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        assert spec.origin is not None, name
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        for line, module in _runtime_imports(tree):
            if module.partition(".")[0] in DATABASE_PACKAGES:
                offenders.append(f"{name}:{line} imports {module}")
    assert offenders == []


def test_the_check_sees_an_import_inside_a_function_but_not_under_type_checking() -> None:
    """The scan is not vacuous: it finds what the rule forbids, and lets annotations be."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sqlalchemy import Engine\n"
        "def f():\n    from sqlalchemy.exc import SQLAlchemyError\n"
        "try:\n    import psycopg\nexcept ImportError:\n    pass\n"
    )
    found = [m for _, m in _runtime_imports(ast.parse(source))]
    assert found == ["typing", "sqlalchemy.exc", "psycopg"]
