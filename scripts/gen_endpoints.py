"""Write the receiver's endpoint table into docs/receiver.md from its OpenAPI schema.

The schema is the app's own (``create_app`` with a webhook secret and an API token, so that the
read API is in it). tests/test_docs.py runs the ``--check`` form, so the table cannot drift from
the code.

Usage: python scripts/gen_endpoints.py [--check]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from _docgen import DOCS, main

DOC: Final = DOCS / "receiver.md"


def openapi_schema() -> dict[str, Any]:
    """The schema of a receiver with every optional part on (read API, metrics)."""
    from rtms_lifecycle.server import create_app

    with tempfile.TemporaryDirectory() as folder:
        app = create_app(f"sqlite:///{Path(folder)}/schema.db", secrets=["s"], api_token="t" * 16)
        schema: dict[str, Any] = app.openapi()
        app.state.tracker.close()
    return schema


def _values(schema: dict[str, Any], components: dict[str, Any]) -> str:
    """What a parameter takes, in a few words: its values, its range, repeatable."""
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    words = []
    for branch in branches:
        if "$ref" in branch:
            branch = components[branch["$ref"].rsplit("/", 1)[1]]
        repeatable = branch.get("type") == "array"
        item = branch.get("items", branch) if repeatable else branch
        if "$ref" in item:
            item = components[item["$ref"].rsplit("/", 1)[1]]
        if "enum" in item:
            words.append(" \\| ".join(f"`{value}`" for value in item["enum"]))
        elif item.get("format") == "date-time":
            words.append("ISO 8601")
        elif item.get("type") == "integer" and "minimum" in item:
            words.append(f"integer ≥ {item['minimum']:,}" if item["minimum"] >= 0 else "integer")
        elif item.get("type") in ("boolean", "integer", "string"):
            words.append(item["type"])
        if repeatable:
            words[-1] += ", repeatable"
    return " or ".join(words)


def _parameters(operation: dict[str, Any], components: dict[str, Any]) -> str:
    cells = []
    for parameter in operation.get("parameters", []):
        if parameter["in"] in ("query", "path"):
            about = _values(parameter["schema"], components)
            said = parameter.get("description", "").rstrip(".")
            if said and said.lower() not in about:
                about += f"; {said[0].lower()}{said[1:]}"
            cells.append(f"`{parameter['name']}` ({about})")
    return ", ".join(cells)


def markdown_table() -> str:
    """One row per method and path: its query and path parameters, the token, what it answers."""
    schema = openapi_schema()
    components = schema.get("components", {}).get("schemas", {})
    lines = ["| endpoint | parameters | token | what |", "|---|---|---|---|"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            token = "yes" if operation.get("security") else ""
            lines.append(
                f"| `{method.upper()} {path}` | {_parameters(operation, components)} | {token} "
                f"| {operation['summary']} |"
            )
    return "\n".join(lines)


GENERATORS: Final = {"endpoints": markdown_table}

if __name__ == "__main__":
    sys.exit(main(sys.argv, DOC, GENERATORS))
