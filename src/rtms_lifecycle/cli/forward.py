"""``rtms-lifecycle forward``: each transition POSTed to a URL, signed per Standard Webhooks.

The signature is Standard Webhooks' (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``:
``v1,`` and a base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with the base64-decoded
``whsec_`` secret), made by the ``standardwebhooks`` library. The id names the consumer and the
transition, so it is the same on every retry and the receiver can drop what it already has.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Final

import httpx
from standardwebhooks.webhooks import Webhook

from rtms_lifecycle.exceptions import ConfigurationError, RTMSLifecycleError
from rtms_lifecycle.records import Stream, Transition
from rtms_lifecycle.subscriptions import DEFAULT_FORWARD_TIMEOUT, transition_message

__all__ = ["ForwardFailed", "Forwarder", "check_secret"]

_PREFIX: Final = "whsec_"
_TYPE: Final = "rtms_lifecycle.transition"


class ForwardFailed(RTMSLifecycleError):
    """The receiver did not take a transition: no 2xx answer in time."""


def check_secret(secret: str, origin: str) -> str:
    """The secret, if it is a ``whsec_`` base64 key; else a ConfigurationError naming ``origin``."""
    key = secret.strip().removeprefix(_PREFIX)
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise ConfigurationError(
            f"{origin}: not a Standard Webhooks secret: expected 'whsec_' followed by base64 "
            "(e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw)"
        )
    return _PREFIX + key


class Forwarder:
    """A subscription callback that POSTs each transition to ``url``, signed; raises if refused."""

    def __init__(
        self, consumer: str, url: str, secret: str, *, timeout: float = DEFAULT_FORWARD_TIMEOUT
    ) -> None:
        self.consumer = consumer
        self.url = url
        self._webhook = Webhook(secret)
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def message_id(self, transition: Transition) -> str:
        """The ``webhook-id`` of a transition: the same for every attempt."""
        return f"{self.consumer}:{transition.id}"

    def __call__(self, transition: Transition, stream: Stream) -> None:
        sent_at = datetime.now(UTC)
        body = json.dumps(
            {
                "type": _TYPE,
                "timestamp": sent_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "data": transition_message(transition, stream),
            },
            separators=(",", ":"),
        )
        msg_id = self.message_id(transition)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._webhook.sign(msg_id, sent_at, body),
        }
        try:
            response = self._client.post(self.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            raise ForwardFailed(f"POST {self.url}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise ForwardFailed(f"POST {self.url}: HTTP {response.status_code}")
