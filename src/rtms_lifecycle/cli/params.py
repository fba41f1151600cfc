"""The command line's parameters: times, durations, and the options several commands share."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import click

from rtms_lifecycle.bounds import MAX_DURATION, MAX_EPOCH_MS, MIN_EPOCH_MS
from rtms_lifecycle.clock import format_time

__all__ = [
    "ACCOUNT_OPTION",
    "JSON_OPTION",
    "TEXT",
    "Duration",
    "Seconds",
    "check_window",
    "parse_duration",
    "parse_period",
    "parse_time",
    "parsed_by",
]

# Epoch milliseconds below this are before 1973: such a number is almost surely epoch seconds.
_MIN_EPOCH_MS: Final = 100_000_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART: Final = re.compile(r"(\d+)([smhd])")
# An ISO 8601 date's year, signed or longer than four digits, which Python's parser refuses.
_ISO_YEAR: Final = re.compile(r"([+-]?)(\d{4,})-\d")
# Epoch milliseconds of year 9999 have 15 digits: a longer number is out of range, unread.
_MAX_EPOCH_DIGITS: Final = 19


def parse_time(text: str) -> int:
    """Epoch milliseconds from epoch ms or an ISO 8601 date/time (UTC unless it says otherwise)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        if len(text.lstrip("0")) > _MAX_EPOCH_DIGITS:
            raise _out_of_range(text, "past year 9999")
        value = int(text)
        if value < _MIN_EPOCH_MS:
            raise ValueError(
                f"{text} looks like epoch seconds (as milliseconds it is before 1973): give "
                "epoch milliseconds, from 100000000000, or an ISO 8601 date/time"
            )
        return _in_time_range(value, text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _check_iso_year(text)
        raise ValueError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 date/time "
            "(e.g. 2025-03-11 or 2025-03-11T14:30:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic: a float timestamp can be a millisecond off.
    return _in_time_range((moment - _EPOCH) // timedelta(milliseconds=1), text)


def _in_time_range(ms: int, text: str) -> int:
    if ms > MAX_EPOCH_MS:
        raise _out_of_range(text, "past year 9999")
    if ms < MIN_EPOCH_MS:
        raise _out_of_range(text, "before year 1")
    return ms


def _check_iso_year(text: str) -> None:
    """Name the year of a date the parser refused for its year alone (``10000-01-01``)."""
    match = _ISO_YEAR.match(text)
    if match is None:
        return
    sign, digits = match.groups()
    year = int(digits[: _MAX_EPOCH_DIGITS + 1])
    if sign == "-" or year == 0:
        raise _out_of_range(text, "before year 1")
    if year > 9999:
        raise _out_of_range(text, "past year 9999")


def _out_of_range(text: str, where: str) -> ValueError:
    shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text):,} characters)"
    return ValueError(
        f"{shown} is {where}: the year is out of range, times go from year 1 to year 9999"
    )


def check_window(since: int | None, until: int | None) -> None:
    """Refuse a window that ends where or before it begins: it could only ever be empty."""
    if since is not None and until is not None and until <= since:
        raise click.UsageError(
            f"'--until' {format_time(until)} is not after '--since' {format_time(since)}: "
            "the window is empty (swap them?)"
        )


def parse_duration(text: str) -> timedelta:
    """A duration such as ``90s``, ``15m``, ``6h``, ``2d`` or ``1h30m``."""
    seconds = _duration_seconds(text)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{text!r} is out of range: at most {MAX_DURATION.days}d")
    return timedelta(seconds=seconds)


def _duration_seconds(text: str) -> int:
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 15m, 6h, 2d or 1h30m")
    return sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _period_seconds(text: str) -> float:
    """Seconds from a bare number (``0.5``, ``30``) or a duration (``30s``, ``2m``, ``1h30m``)."""
    try:
        seconds = float(text)
    except ValueError:
        return _duration_seconds(text)
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a number of seconds")
    return seconds


def parse_period(text: str) -> timedelta:
    """A duration as :func:`parse_duration` reads it, or a bare number of seconds (as the
    serve options that take seconds do)."""
    try:
        seconds = float(text)
    except ValueError:
        return parse_duration(text)
    if not 0 < seconds <= MAX_DURATION.total_seconds():  # nan fails here too
        raise ValueError(
            f"{text!r}: the duration must be longer than zero and at most {MAX_DURATION.days}d"
        )
    return timedelta(seconds=seconds)


def _short_duration(seconds: float) -> str:
    """``86400`` as ``1d``, ``300`` as ``5m``, ``0.3`` as ``0.3s``: for messages and help."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class Duration(click.ParamType[float]):
    """Seconds as a bare number (``30``, ``0.5``) or a duration (``30s``, ``2m``, ``1h30m``),
    from ``low`` to ``high``: a float number of seconds."""

    name = "duration"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    @property
    def bounds(self) -> str:
        return f"from {_short_duration(self.low)} to {_short_duration(self.high)}"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)  # a default
        else:
            try:
                seconds = _period_seconds(str(value))
            except ValueError:
                self.fail(
                    f"{str(value)!r} is neither seconds nor a duration: give {self.bounds}, "
                    "e.g. 30, 30s or 2m",
                    param,
                    ctx,
                )
        if not self.low <= seconds <= self.high:
            self.fail(f"{str(value)!r} is out of range: give {self.bounds}", param, ctx)
        return seconds


def parse_min_event_time(text: str) -> int:
    """``--min-event-time`` (and ``RTMS_LIFECYCLE_MIN_EVENT_TIME``): a time as other options read
    it, not before 1970; ``0`` for no bound but 1970 itself."""
    if text.strip() == "0":
        return 0
    ms = parse_time(text)
    if ms < 0:
        raise ValueError(f"{text} is before 1970: event times are counted from 1970 on")
    return ms


def parsed_by(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback reading the value with one of the parsers above."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


class Seconds(click.FloatRange):
    """A number of seconds in a range; ``nan``, which every comparison lets through, is refused."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value} is not a number of seconds.", param, ctx)
        return seconds


class _Text(click.types.StringParamType):
    """Text that can be stored: bytes that are not UTF-8 (which Python keeps as lone surrogates)
    would fail in the database driver."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = super().convert(value, param, ctx)
        try:
            text.encode()
        except UnicodeEncodeError:
            self.fail("the value is not valid UTF-8 text.", param, ctx)
        return text


TEXT: Final = _Text()

JSON_OPTION: Final = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (docs/cli.md) instead of a table."
)


def _account(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("give a Zoom account id, not a blank (it would match no stream)")
    return value


ACCOUNT_OPTION: Final = click.option(
    "--account",
    "account_id",
    metavar="ID",
    type=TEXT,
    callback=_account,
    help="Only streams of this Zoom account_id.",
)
