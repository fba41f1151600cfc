"""Every exception the library raises derives from :class:`RTMSLifecycleError`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ClaimLost",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseURLError",
    "DatabaseUnavailable",
    "DeliveryRejected",
    "FieldError",
    "RTMSLifecycleError",
    "SchemaOutdatedError",
    "SchemaTooNewError",
    "StoreError",
    "StoreTimeout",
    "WebhookRefused",
]


class RTMSLifecycleError(Exception):
    """Root of every error raised by rtms_lifecycle."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason a delivery was rejected: the field (dotted path) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


class DeliveryRejected(RTMSLifecycleError):
    """A delivery body that cannot be understood; ``errors`` names each bad field."""

    def __init__(
        self,
        errors: Sequence[FieldError],
        event: str | None = None,
        stream_id: str | None = None,
        *,
        event_ts: int | None = None,
    ) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        self.event = event
        # The stream the body seems to be about, so that its rejections can be found with it.
        self.stream_id = stream_id
        # Its event time when that was valid: the rejection was about another field.
        self.event_ts = event_ts
        super().__init__("; ".join(str(e) for e in self.errors))


class StoreError(RTMSLifecycleError):
    """The database could not record a delivery (nothing of it was kept), or failed a read or
    another write of the store."""


class StoreTimeout(StoreError):
    """The database did not commit within the time allowed (a held lock, a slow disk); nothing
    of the delivery was kept."""


class DatabaseError(StoreError):
    """The database refused or failed a statement; the message says what it said."""


class SchemaOutdatedError(RTMSLifecycleError):
    """The database schema is older than this library; it must be upgraded first."""


class SchemaTooNewError(SchemaOutdatedError):
    """The database was migrated by a newer rtms-lifecycle: this version is too old for it."""


class ConfigurationError(RTMSLifecycleError):
    """The library or the receiver was configured in a way that cannot work."""


class DatabaseURLError(ConfigurationError):
    """A database URL that cannot work: malformed, an unsupported database, a missing driver."""


class DatabaseUnavailable(RTMSLifecycleError):
    """The database is not there or cannot be used: a SQLite file that does not exist where one
    is only read, or that SQLite cannot open (a folder, a file that is no database)."""


class WebhookRefused(RTMSLifecycleError):
    """A webhook request failed verification (signature, timestamp).

    ``reason`` is a short machine-readable code (e.g. ``signature_invalid``); neither it nor the
    message ever contains a secret or a signature, so both are safe to log and to answer.
    """

    def __init__(
        self, reason: str, message: str | None = None, *, age_seconds: float | None = None
    ) -> None:
        self.reason = reason
        #: For a genuine but stale request (``timestamp_stale``): how old its signature was.
        self.age_seconds = age_seconds
        super().__init__(message or reason)


class ClaimLost(RTMSLifecycleError):
    """A worker's claim on a stream is no longer its own.

    ``reason`` says why: ``expired`` (the lease ran out), ``taken`` (another worker holds it),
    ``released``, or ``stopped`` (the stream ended: ``stop_reason`` is Zoom's code, if any).
    """

    def __init__(
        self, reason: str, message: str | None = None, *, stop_reason: int | None = None
    ) -> None:
        super().__init__(message or f"the claim was lost: {reason}")
        self.reason = reason
        self.stop_reason = stop_reason
