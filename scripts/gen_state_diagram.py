"""Write the lifecycle's state diagram and transition table into docs/concepts.md.

Both are read from the machine's definition (``rtms_lifecycle.machine.transition_table``), so the
docs cannot drift from the code: tests/test_docs.py runs the ``--check`` form.

Usage: python scripts/gen_state_diagram.py [--check]
"""

from __future__ import annotations

import sys
from typing import Final

from _docgen import DOCS, main

from rtms_lifecycle.events import EventKind
from rtms_lifecycle.machine import State, transition_table

DOC: Final = DOCS / "concepts.md"


def _cells() -> list[tuple[State, EventKind, State, str]]:
    table = transition_table()
    return [
        (state, kind, *table[state, kind])
        for state in State
        for kind in EventKind
        if (state, kind) in table
    ]


def mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` of every applied cell: ``event / transition`` on each edge."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {State.NEW.value}"]
    lines += [
        f"    {state.value} --> {dest.value}: {kind.value} / {name}"
        for state, kind, dest, name in _cells()
    ]
    lines += [f"    {State.STOPPED.value} --> [*]", "```"]
    return "\n".join(lines)


def markdown_table() -> str:
    """The transition table: a row per state, a column per event, ``ignored`` if none fires."""
    table = transition_table()
    lines = [
        "| state \\ event | " + " | ".join(kind.value for kind in EventKind) + " |",
        "|---" * (len(EventKind) + 1) + "|",
    ]
    for state in State:
        cells = []
        for kind in EventKind:
            cell = table.get((state, kind))
            cells.append(f"{cell[0].value} / `{cell[1]}`" if cell else "ignored")
        lines.append(f"| {state.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


GENERATORS: Final = {"state-diagram": mermaid, "transition-table": markdown_table}

if __name__ == "__main__":
    sys.exit(main(sys.argv, DOC, GENERATORS))
