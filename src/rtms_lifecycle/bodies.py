"""A delivery body as the bytes the store keeps, whatever it was given as.

The store keeps every delivery's raw bytes and re-folds a stream by parsing them again, so the
bytes are what gets parsed, always: a ``str`` is encoded, a mapping serialised, then parsed like
bytes from the network. What cannot become UTF-8 JSON (a lone surrogate, a non-string key, a
cycle, nesting no parser follows, an integer too large to write) is a rejection with a reason,
and the best rendering of it that can be stored: nothing a caller passes makes the store fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from rtms_lifecycle.exceptions import FieldError

__all__ = ["MAX_DEPTH", "same_json", "to_raw"]

# The JSON parser refuses deeper nesting (about 200 levels): a mapping nested deeper could be
# stored but never parsed again.
MAX_DEPTH: Final = 200
# Python refuses to write integers of more than 4300 digits as text (about 14,000 bits).
_MAX_INT_BITS: Final = 14_000


class _Unwritable:
    """Placeholder rendering of a value JSON cannot hold, in a rejected mapping's stored form."""

    def __init__(self, what: str) -> None:
        self.what = what


def to_raw(body: Any) -> tuple[bytes, tuple[FieldError, ...]]:
    """The bytes to store and parse for ``body``, and why it cannot be parsed, if it cannot.

    Raises :class:`TypeError` for a body that is not bytes-like, a ``str`` or a mapping.
    """
    if isinstance(body, bytes):
        return body, ()
    if isinstance(body, bytearray | memoryview):
        return bytes(body), ()
    if isinstance(body, str):
        return _from_text(body)
    if isinstance(body, Mapping):
        return _from_mapping(body)
    raise TypeError(f"a delivery body is bytes, str or a mapping, not {type(body).__name__}")


def _from_text(body: str) -> tuple[bytes, tuple[FieldError, ...]]:
    try:
        return body.encode("utf-8"), ()
    except UnicodeEncodeError as exc:
        reason = f"not valid Unicode text: a lone surrogate at character {exc.start}"
    try:
        # Text decoded with surrogateescape gives back the bytes it was decoded from.
        raw = body.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = body.encode("utf-8", "surrogatepass")
    return raw, (FieldError("body", reason),)


def _from_mapping(body: Mapping[Any, Any]) -> tuple[bytes, tuple[FieldError, ...]]:
    problems: list[FieldError] = []
    plain = _plain(body, "body", 0, set(), problems)
    if problems:
        # Stored for the operator to read, never parsed again: ASCII, placeholders spelt out.
        text = json.dumps(plain, separators=(",", ":"), default=_placeholder)
        return text.encode("ascii"), tuple(problems)
    # Plain JSON types only now: json writes them all (NaN as NaN, which the parser reads).
    return json.dumps(plain, separators=(",", ":")).encode("ascii"), ()


def _placeholder(value: Any) -> str:
    assert isinstance(value, _Unwritable)
    return f"<{value.what}>"


def _plain(value: Any, path: str, depth: int, parents: set[int], problems: list[FieldError]) -> Any:
    """``value`` as plain JSON types, recording each part that JSON cannot hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            problems.append(
                FieldError(
                    path, f"not valid Unicode text: a lone surrogate at character {exc.start}"
                )
            )
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            problems.append(
                FieldError(path, f"an integer of {value.bit_length()} bits is too large")
            )
            return _Unwritable(f"{value.bit_length()}-bit integer")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if not isinstance(value, Mapping | list | tuple):
        # A value of another type (a datetime, a UUID) is kept as its text.
        try:
            return str(value)
        except Exception as exc:  # its own __str__ may fail; the delivery must still be kept
            problems.append(FieldError(path, f"cannot be written as text: {_short(exc)}"))
            return _Unwritable(type(value).__name__)
    if depth >= MAX_DEPTH:
        problems.append(FieldError(path, f"nested more than {MAX_DEPTH} levels deep"))
        return _Unwritable("nested too deep")
    if id(value) in parents:
        problems.append(FieldError(path, "contains itself (a cycle)"))
        return _Unwritable("cycle")
    parents.add(id(value))
    try:
        if isinstance(value, Mapping):
            plain: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    problems.append(
                        FieldError(path, f"has a key that is not a string: {_short(key)}")
                    )
                    key = _short(key)
                plain[key] = _plain(item, f"{path}.{key}", depth + 1, parents, problems)
            return plain
        return [
            _plain(item, f"{path}.{i}", depth + 1, parents, problems)
            for i, item in enumerate(value)
        ]
    finally:
        parents.discard(id(value))


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a key's own repr may fail; the reason must not
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def same_json(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values in which a NaN equals a NaN (as its bytes do)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
