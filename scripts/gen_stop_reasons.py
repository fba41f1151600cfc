"""Write the stop-reason table into docs/stop-reasons.md from ``rtms_lifecycle.stop_reasons``.

tests/test_docs.py runs the ``--check`` form, so the table cannot drift from the code.

Usage: python scripts/gen_stop_reasons.py [--check]
"""

from __future__ import annotations

import sys
from typing import Final

from _docgen import DOCS, main

from rtms_lifecycle.stop_reasons import StopReason, describe_stop_reason

DOC: Final = DOCS / "stop-reasons.md"
# Zoom's SDK numbers its reasons from 0 upwards; far past the last one, every code is unknown.
_SCAN: Final = range(256)
_UNKNOWN_EXAMPLE: Final = 9999


def known_reasons() -> list[StopReason]:
    """Every code the library names (anything else is ``UNKNOWN_<code>``)."""
    reasons = [describe_stop_reason(code) for code in _SCAN]
    return [r for r in reasons if r.name != f"UNKNOWN_{r.code}"]


def _row(code: str, name: str, reason: StopReason) -> str:
    restart = "yes" if reason.restart_connection else ""
    return f"| {code} | `{name}` | {reason.category.value} | {restart} |"


def markdown_table() -> str:
    """Code, name, category, and whether Zoom says to restart the whole RTMS connection."""
    lines = [
        "| code | name | category | restart the connection |",
        "|---:|---|---|---|",
    ]
    lines += [_row(str(reason.code), reason.name, reason) for reason in known_reasons()]
    lines.append(_row("any other", "UNKNOWN_<code>", describe_stop_reason(_UNKNOWN_EXAMPLE)))
    expired = describe_stop_reason(None)
    lines.append(_row("null (expiry)", expired.name, expired))
    return "\n".join(lines)


GENERATORS: Final = {"stop-reasons": markdown_table}

if __name__ == "__main__":
    sys.exit(main(sys.argv, DOC, GENERATORS))
