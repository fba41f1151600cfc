"""How ``rtms-lifecycle serve`` logs: the library's loggers and uvicorn's, as text or JSON lines.

The library itself never configures logging (an embedding application does); only the command
does, through the configuration this module builds for uvicorn.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Final, Literal

from rtms_lifecycle.defaults import LOG_FORMATS
from rtms_lifecycle.display import printable

__all__ = ["LOG_FIELDS", "JsonFormatter", "LogFormat", "log_config"]

LogFormat = Literal["text", "json"]
#: Attributes a record may carry (``extra=``) that a JSON line includes when present.
LOG_FIELDS: Final = (
    "event",
    "stream_id",
    "delivery_id",
    "outcome",
    "reason",
    "duration_ms",
    "client",
)


class _TextFormatter(logging.Formatter):
    """``2026-03-11T14:30:00Z INFO rtms_lifecycle.server: message``: times in UTC.

    The message is one line, its control characters escaped (:func:`printable`): it carries
    ids from deliveries and paths from any client, which must not forge a line or reach a
    terminal as escape sequences. A traceback follows on lines of its own, as it is.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)sZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return printable(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message and the known fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # default=str: a field of an unexpected type must not cost the line.
        return json.dumps(line, default=str)


def log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn: its loggers and ours, to stderr."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    formatter = {"()": JsonFormatter if log_format == "json" else _TextFormatter}
    logger = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        # Loggers created at import time (the library's) must keep working.
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "rtms_lifecycle": logger,
            "uvicorn": logger,
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": logger,
        },
    }
