"""Generated regions of the Markdown docs: found between markers, rewritten or checked.

A region is ``<!-- BEGIN GENERATED: name -->`` ... ``<!-- END GENERATED: name -->``; everything
between the markers belongs to the generator. ``--check`` (used by the tests) rewrites nothing and
fails when a region differs from what the code generates now.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

DOCS: Final = Path(__file__).resolve().parents[1] / "docs"

Generators = Mapping[str, Callable[[], str]]


def markers(name: str) -> tuple[str, str]:
    """The comment lines that open and close region ``name``."""
    return f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"


def _bounds(text: str, name: str) -> tuple[int, int]:
    begin, end = markers(name)
    start = text.find(begin)
    stop = text.find(end, start + 1)
    if start < 0 or stop < 0:
        raise ValueError(f"markers of the generated region {name!r} are missing")
    return start + len(begin), stop


def extract(text: str, name: str) -> str:
    """What region ``name`` holds now (without the markers and the surrounding newlines)."""
    start, stop = _bounds(text, name)
    return text[start:stop].strip("\n")


def embed(text: str, name: str, content: str) -> str:
    """``text`` with region ``name`` holding ``content``."""
    start, stop = _bounds(text, name)
    return f"{text[:start]}\n{content.strip()}\n{text[stop:]}"


def stale_regions(doc: Path, generators: Generators) -> list[str]:
    """The regions of ``doc`` that differ from what their generator gives."""
    text = doc.read_text(encoding="utf-8")
    return [name for name, make in generators.items() if extract(text, name) != make().strip()]


def main(argv: list[str], doc: Path, generators: Generators) -> int:
    """Rewrite the regions of ``doc``, or with ``--check`` report the stale ones (exit 1)."""
    if "--check" in argv[1:]:
        stale = stale_regions(doc, generators)
        for name in stale:
            print(f"{doc}: region {name!r} is stale: run {Path(argv[0]).name}", file=sys.stderr)
        return 1 if stale else 0
    text = doc.read_text(encoding="utf-8")
    for name, make in generators.items():
        text = embed(text, name, make())
    doc.write_text(text, encoding="utf-8")
    print(f"updated {doc}")
    return 0
