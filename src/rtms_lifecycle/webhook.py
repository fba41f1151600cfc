"""Zoom webhook security, framework-free.

Any backend can call these: :class:`WebhookVerifier` checks ``x-zm-signature`` and
``x-zm-request-timestamp`` over the raw body, :func:`url_validation_response` answers Zoom's
``endpoint.url_validation`` challenge, and :func:`labelled_secrets_from_env` reads the secret
tokens, each with a label that deliveries record (never the secret).

Nothing here logs, and no error message carries a secret or a signature.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from rtms_lifecycle.exceptions import ConfigurationError, WebhookRefused

__all__ = [
    "DEFAULT_REPLAY_WINDOW",
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "RefusalReason",
    "Verification",
    "WebhookVerifier",
    "labelled_secrets_from_env",
    "secrets_from_env",
    "sign",
    "url_validation_response",
]

SIGNATURE_HEADER: Final = "x-zm-signature"
TIMESTAMP_HEADER: Final = "x-zm-request-timestamp"
SECRET_ENV: Final = "ZOOM_WEBHOOK_SECRET_TOKEN"
DEFAULT_REPLAY_WINDOW: Final = 300.0
# Epoch seconds have 10 digits until the year 2286; anything much longer is not a timestamp, would
# only make int() work harder on attacker-controlled input, and as epoch ms (signed_at) must fit
# a 64-bit column whatever the replay window.
_MAX_TIMESTAMP_DIGITS: Final = 12
# A secret's label is stored with each delivery it verified: short, and safe in any log line.
_LABEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class RefusalReason(StrEnum):
    """Why a webhook request was refused: the ``reason`` of :class:`WebhookRefused`."""

    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_INVALID = "signature_invalid"
    TIMESTAMP_MISSING = "timestamp_missing"
    TIMESTAMP_INVALID = "timestamp_invalid"
    TIMESTAMP_STALE = "timestamp_stale"
    TIMESTAMP_FUTURE = "timestamp_future"
    # The receiver's, before the body is verified: over its size limit, slower than its timeout.
    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``x-zm-signature`` Zoom sends: ``v0=`` + hex HMAC-SHA256 of ``v0:{ts}:{body}``."""
    return "v0=" + _hmac_hex(secret, b"v0:%s:%s" % (str(timestamp).encode("utf-8"), body))


def url_validation_response(secret: str, plain_token: str) -> dict[str, str]:
    """The answer to ``endpoint.url_validation``: the token and its HMAC under ``secret``."""
    return {
        "plainToken": plain_token,
        "encryptedToken": _hmac_hex(secret, plain_token.encode("utf-8")),
    }


def _split_secrets(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _unlabelled(position: int) -> str:
    # The label of an entry given without one: its place in the list, 1-based.
    return f"#{position}"


def labelled_secrets_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secret tokens in ``ZOOM_WEBHOOK_SECRET_TOKEN``, by label.

    Comma-separated entries (several apps, rotation), each ``token`` or ``label=token``
    (``app1=secret1,app2=secret2``); an entry without a label is labelled by its place,
    ``#1``, ``#2``... Labels are letters, digits and ``_ . : -``, at most 64 characters, and
    unique. Whitespace around each part is stripped and empty entries dropped; none at all is a
    :class:`ConfigurationError`, since a receiver without a secret could verify nothing.
    """
    entries = _split_secrets((os.environ if environ is None else environ).get(SECRET_ENV))
    if not entries:
        raise ConfigurationError(
            f"no webhook secret token: set {SECRET_ENV} to your Zoom app's Secret Token "
            "(Marketplace > your app > Features > Access; several, comma-separated, for "
            "several apps or while rotating; label=token to name each)"
        )
    secrets: dict[str, str] = {}
    for position, entry in enumerate(entries, 1):
        label, given, secret = (part.strip() for part in entry.partition("="))
        if not given:
            label, secret = _unlabelled(position), entry
        # Errors name the entry by its place: never a secret, not even a part of one.
        if not _LABEL.fullmatch(label) and given:
            raise ConfigurationError(
                f"{SECRET_ENV} entry {position}: the label before '=' must be 1-64 letters, "
                "digits or _ . : - (starting with a letter or digit)"
            )
        if not secret:
            raise ConfigurationError(f"{SECRET_ENV} entry {position}: no token after the label")
        if label in secrets:
            raise ConfigurationError(f"{SECRET_ENV} entry {position}: label {label} is repeated")
        secrets[label] = secret
    return secrets


def secrets_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret tokens in ``ZOOM_WEBHOOK_SECRET_TOKEN``, without their labels.

    See :func:`labelled_secrets_from_env`, which keeps the labels deliveries record.
    """
    return list(labelled_secrets_from_env(environ).values())


@dataclass(frozen=True, slots=True)
class Verification:
    """A request the verifier accepted: which secret signed it (by label), and when."""

    label: str
    #: The request's ``x-zm-request-timestamp``, as epoch milliseconds.
    signed_at: int
    secret: str = field(repr=False)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # Plain dicts are case-sensitive; HTTP header names are not.
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


class WebhookVerifier:
    """Checks that a request comes from Zoom, and is fresh.

    Every configured secret is tried, always all of them and each in constant time, so neither
    a match nor its position leaks through timing. The signature covers the timestamp, so the
    replay window is checked only once the signature is known to be genuine: a stale refusal
    then means a real but old (replayed, or clock-skewed) request.
    """

    def __init__(
        self,
        secrets: Sequence[str] | Mapping[str, str],
        replay_window: float = DEFAULT_REPLAY_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(secrets, str):
            # A lone string would otherwise be taken as one secret per character.
            raise TypeError("secrets must be a sequence of strings, not a string")
        if not secrets:
            raise ConfigurationError(
                f"a webhook verifier needs at least one secret token (see {SECRET_ENV})"
            )
        # A mapping gives each secret its label; a sequence labels them by place (#1, #2...).
        labelled = (
            list(secrets.items())
            if isinstance(secrets, Mapping)
            else [(_unlabelled(i), s) for i, s in enumerate(secrets, 1)]
        )
        if any(not isinstance(s, str) or not s.strip() for _, s in labelled):
            raise ConfigurationError("webhook secret tokens must be non-empty strings")
        if any(not isinstance(label, str) or not label for label, _ in labelled):
            raise ConfigurationError("webhook secret labels must be non-empty strings")
        if not replay_window > 0:  # nan too: it would let every old request through
            raise ConfigurationError(
                f"replay_window must be a positive number of seconds, got {replay_window!r}"
            )
        self._secrets: tuple[str, ...] = tuple(s for _, s in labelled)
        self._labels: tuple[str, ...] = tuple(label for label, _ in labelled)
        self.replay_window = float(replay_window)
        self._clock = clock

    @property
    def labels(self) -> tuple[str, ...]:
        """The configured secrets' labels, in order (never the secrets)."""
        return self._labels

    def __repr__(self) -> str:
        # Never the secrets themselves: a repr ends up in logs and tracebacks.
        return (
            f"WebhookVerifier(<{len(self._secrets)} secret(s)>, "
            f"replay_window={self.replay_window:g})"
        )

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verification:
        """What signed a genuine and fresh request; else raise :class:`WebhookRefused`.

        The :class:`Verification` names the first configured secret that signed it (its
        label, and the secret to answer a url validation challenge with: the one of the app,
        or while rotating the token, Zoom used for this very request) and when it was signed.
        A genuine request outside the replay window is refused with reason
        ``timestamp_stale`` (or ``timestamp_future``) and its ``age_seconds``.
        """
        signature = _header(headers, SIGNATURE_HEADER)
        timestamp = _header(headers, TIMESTAMP_HEADER)
        if not signature:
            raise WebhookRefused(RefusalReason.SIGNATURE_MISSING, f"no {SIGNATURE_HEADER} header")
        if not timestamp:
            raise WebhookRefused(RefusalReason.TIMESTAMP_MISSING, f"no {TIMESTAMP_HEADER} header")
        seconds = self._parse_timestamp(timestamp)
        matched = self._match(signature, timestamp, bytes(body))
        if matched is None:
            raise WebhookRefused(
                RefusalReason.SIGNATURE_INVALID,
                "signature does not match the body under any configured secret token",
            )
        skew = seconds - self._clock()
        if skew < -self.replay_window:
            raise WebhookRefused(
                RefusalReason.TIMESTAMP_STALE,
                f"request timestamp is {-skew:.0f} s old, beyond the "
                f"{self.replay_window:g} s replay window",
                age_seconds=-skew,
            )
        if skew > self.replay_window:
            raise WebhookRefused(
                RefusalReason.TIMESTAMP_FUTURE,
                f"request timestamp is {skew:.0f} s in the future, beyond the "
                f"{self.replay_window:g} s replay window",
                age_seconds=-skew,
            )
        return Verification(self._labels[matched], seconds * 1000, self._secrets[matched])

    def matching_secret(self, headers: Mapping[str, str], body: bytes) -> str:
        """Verify like :meth:`verify`, and return the first configured secret that signed it."""
        return self.verify(headers, body).secret

    @staticmethod
    def _parse_timestamp(value: str) -> int:
        # Only plain ASCII digits: int() would also take "+1_700_000_000" or Arabic-Indic digits.
        if not (value.isascii() and value.isdigit() and len(value) <= _MAX_TIMESTAMP_DIGITS):
            raise WebhookRefused(
                RefusalReason.TIMESTAMP_INVALID,
                f"{TIMESTAMP_HEADER} must be whole epoch seconds",
            )
        return int(value)

    def _match(self, signature: str, timestamp: str, body: bytes) -> int | None:
        # Header values may hold any character; compare_digest wants bytes for non-ASCII text.
        given = signature.encode("utf-8", errors="surrogatepass")
        matched: int | None = None
        for position, secret in enumerate(self._secrets):
            expected = sign(secret, timestamp, body).encode("ascii")
            if hmac.compare_digest(given, expected) and matched is None:
                matched = position
        return matched
