"""Write the table of docs/decisions/index.md from the decision files beside it.

Each decision is ``docs/decisions/NNNN-short-title.md`` (or ``new-*.md`` until it is numbered),
opening with ``# Title`` and then ``Date:``, ``Status:`` and ``Superseded by:`` lines.
tests/test_docs.py runs the ``--check`` form, so the table cannot drift from the files.

Usage: python scripts/gen_decisions_index.py [--check]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Final

from _docgen import DOCS, main

DOC: Final = DOCS / "decisions" / "index.md"
_FIELD: Final = re.compile(r"^(Date|Status|Superseded by): *(.+)$", re.M)


def _row(path: Path, number: str) -> str:
    text = path.read_text(encoding="utf-8")
    title = text.split("\n", 1)[0].removeprefix("# ").strip()
    fields = dict(_FIELD.findall(text))
    status = fields.get("Status", "")
    if "Superseded by" in fields:
        status += f" by {fields['Superseded by']}"
    return f"| {number} | [{title}]({path.name}) | {fields.get('Date', '')} | {status} |"


def markdown_table() -> str:
    """Number, title (linked), date and status of every decision, oldest first."""
    folder = DOC.parent
    lines = ["| # | decision | date | status |", "|---:|---|---|---|"]
    for path in sorted(folder.glob("[0-9][0-9][0-9][0-9]-*.md")):
        lines.append(_row(path, path.name[:4]))
    for path in sorted(folder.glob("new-*.md")):
        lines.append(_row(path, "new"))
    return "\n".join(lines)


GENERATORS: Final = {"decisions": markdown_table}

if __name__ == "__main__":
    sys.exit(main(sys.argv, DOC, GENERATORS))
