"""Untrusted text (ids and names from webhook deliveries) made safe to show on one line.

A signed delivery still carries text its sender chose: a stream id with a newline forges a log
line, an ESC sequence recolours or clears the operator's terminal, a bidi control (U+202E)
shows an id reversed. :func:`printable` escapes every character that is not printable, the
rule ``repr()`` follows, so that what is shown is what is stored, one character per glyph.
:func:`error_line` is the one line shown of an error.
"""

from __future__ import annotations

__all__ = ["error_line", "printable"]


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with its control, format and separator characters (C0, DEL, C1, bidi controls
    such as U+202E, U+2028, a lone surrogate, ...) written as ``\\x1b``, ``\\u202e`` escapes.

    A backslash is left as it is: the escapes keep a line whole and its glyphs honest, they
    are not meant to be parsed back.
    """
    if text.isprintable():  # nearly always: one pass in C
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def error_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (a database driver's spans several), or its type's
    name if it says nothing."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
