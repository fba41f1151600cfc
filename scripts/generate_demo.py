"""Generate the bundled demo: one realistic UTC day of Zoom RTMS webhook deliveries.

Deterministic (seeded): running it twice writes the same bytes. Writes JSON Lines, gzipped, to
``src/rtms_lifecycle/data/demo_day.jsonl.gz`` (or the path given), one delivery per line, in the
order the receiver would have seen them.

What the day holds, so that every part of the lifecycle shows up in ``rtms-lifecycle demo``:
all five scopes, Zoom's retries (exact duplicate bodies, minutes apart), server failovers (a second
``started`` with new ``server_urls``), interruptions that recover (Zoom's next ``started``) or end
the stream, deliveries that arrive late and out of order, a spread of stop reasons (mostly normal,
some abnormal, a few codes no SDK names), account concurrency alerts, unknown events, malformed
deliveries, and streams still live at midnight. It holds no conflicts on purpose: replaying the
file a second time then yields only duplicates, which is what the demo shows.

Usage: python scripts/generate_demo.py [OUTPUT]
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

SEED: Final = 20250311
DAY_START_MS: Final = int(datetime(2025, 3, 11, tzinfo=UTC).timestamp() * 1000)
DAY_MS: Final = 24 * 3600 * 1000
STREAMS: Final = 900
DEFAULT_OUTPUT: Final = (
    Path(__file__).resolve().parents[1] / "src" / "rtms_lifecycle" / "data" / "demo_day.jsonl.gz"
)

_SECOND: Final = 1000
_MINUTE: Final = 60 * _SECOND

# scope: (share of streams, event name prefix, scope id field, median minutes, normal stop reasons)
_SCOPES: Final[dict[str, tuple[float, str, str, float, tuple[int, ...]]]] = {
    "meeting": (0.46, "meeting.rtms_", "meeting_uuid", 38.0, (6, 6, 6, 6, 1, 1, 2, 3)),
    "webinar": (0.10, "webinar.rtms_", "webinar_uuid", 55.0, (6, 6, 6, 1, 2)),
    "session": (0.12, "session.rtms_", "session_id", 24.0, (6, 6, 3, 3, 2)),
    "contact_center": (
        0.18,
        "contact_center.voice_rtms_",
        "engagement_id",
        7.0,
        (21, 21, 22, 22, 22, 3),
    ),
    "phone": (0.14, "phone.rtms_", "call_id", 4.5, (21, 22, 22, 3, 2)),
}
# Reasons that are not "the call just ended", with rough weights.
_ABNORMAL: Final = (10, 11, 12, 13, 14, 15, 16, 17, 19, 24)
_OTHER: Final = ((5, 3), (8, 2), (9, 1), (18, 2), (20, 3), (23, 1), (25, 2), (0, 1), (99, 2))
_ACCOUNTS: Final = ("Xq3vTz8kR0eBq1mW9sA2lg", "pB7nQ2cW5yLk0dJ4fH8tZa", "Lm4rT9aK2xN6vQ1wE7uYcB")
_REGIONS: Final = ("sjc", "iad", "dfw", "ams", "fra", "nrt", "syd")


@dataclass(order=True)
class _Delivery:
    arrives_at: int
    order: int
    body: bytes = field(compare=False)


class _Day:
    """Builds the day's deliveries; ``deliveries`` is kept sorted by arrival when written."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.deliveries: list[_Delivery] = []
        self.operators = [self._token(16) for _ in range(40)]

    # --- identifiers ---------------------------------------------------------------------------

    def _token(self, size: int) -> str:
        raw = self.rng.getrandbits(size * 8).to_bytes(size, "big")
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _uuid(self) -> str:
        raw = self.rng.getrandbits(128).to_bytes(16, "big")
        return base64.b64encode(raw).decode()

    def _server_urls(self) -> str:
        def one() -> str:
            region = self.rng.choice(_REGIONS)
            host = ".".join(str(self.rng.randint(10, 250)) for _ in range(4))
            return f"wss://rtms-{region}{self.rng.randint(1, 40)}-{host.replace('.', '-')}.zoom.us"

        return ",".join(one() for _ in range(self.rng.choice((1, 1, 1, 2))))

    # --- emitting --------------------------------------------------------------------------------

    def emit(self, body: dict[str, Any] | bytes, arrives_at: int) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        self.deliveries.append(_Delivery(arrives_at, len(self.deliveries), raw))

    def deliver(self, body: dict[str, Any]) -> None:
        """One webhook: usually on time, sometimes late, sometimes retried by Zoom."""
        event_ts: int = body["event_ts"]
        roll = self.rng.random()
        if roll < 0.04:
            # Late: a receiver outage or a slow Zoom queue; arrives after later events.
            delay = self.rng.randint(2 * _MINUTE, 40 * _MINUTE)
        else:
            delay = self.rng.randint(80, 2500)
        self.emit(body, event_ts + delay)
        if self.rng.random() < 0.05:
            # Zoom retried (our answer was lost or slow): the exact same body, minutes later.
            for retry in (5, 30, 85)[: self.rng.randint(1, 3)]:
                self.emit(body, event_ts + delay + retry * _MINUTE + self.rng.randint(0, 9999))

    # --- streams ---------------------------------------------------------------------------------

    def stream(self) -> None:
        scope = self.rng.choices(list(_SCOPES), weights=[s[0] for s in _SCOPES.values()])[0]
        _, prefix, id_field, median_minutes, normal = _SCOPES[scope]
        base: dict[str, Any] = {
            "rtms_stream_id": self.rng.getrandbits(128).to_bytes(16, "big").hex(),
            id_field: self._uuid(),
            "account_id": self.rng.choice(_ACCOUNTS),
        }
        if scope == "session":
            base["session_key"] = f"demo-{self.rng.randint(1000, 9999)}"
        if scope == "meeting" and self.rng.random() < 0.3:
            base["meeting_id"] = self.rng.randint(80_000_000_000, 99_999_999_999)
        start = self._start_time()
        end = start + int(self.rng.lognormvariate(0, 0.7) * median_minutes * _MINUTE)
        started: dict[str, Any] = {**base, "server_urls": self._server_urls()}
        if scope in ("meeting", "webinar"):
            started["operator_id"] = self.rng.choice(self.operators)
            started["is_original_host"] = self.rng.random() < 0.9
        self._event(prefix + "started", start, started)
        at = self._middle(prefix, base, start, end)
        if at is None:
            return  # the stream died while interrupted; its stopped is already out
        if end < DAY_START_MS + DAY_MS:
            self._event(prefix + "stopped", end, {**base, "stop_reason": self._reason(normal)})
        if self.rng.random() < 0.01:
            # Zoom's interrupted racing the stop: the fold ignores it, the store keeps it.
            self._event(prefix + "interrupted", end + self.rng.randint(1, 900), base)

    def _middle(self, prefix: str, base: dict[str, Any], start: int, end: int) -> int | None:
        """Failovers and interruptions between start and end; None if the stream stopped."""
        at = start
        if self.rng.random() < 0.06 and end - start > 2 * _SECOND:
            # Never at ``start``: a second started at the same time would be a conflict.
            at = self.rng.randint(start + _SECOND, end - _SECOND)
            self._event(prefix + "started", at, {**base, "server_urls": self._server_urls()})
        for _ in range(self._interruption_count()):
            at = self.rng.randint(at + _SECOND, max(at + _SECOND, end - 10 * _SECOND))
            if at >= end:
                break
            self._event(prefix + "interrupted", at, base)
            if self.rng.random() < 0.18:
                gave_up = at + self.rng.randint(20 * _SECOND, 90 * _SECOND)
                reason = self.rng.choice((19, 19, 11, 13, 14, 24))
                self._event(prefix + "stopped", gave_up, {**base, "stop_reason": reason})
                return None
            at += self.rng.randint(2 * _SECOND, 45 * _SECOND)
            if at >= end:
                break
            self._event(prefix + "started", at, {**base, "server_urls": self._server_urls()})
        return at

    def _interruption_count(self) -> int:
        roll = self.rng.random()
        return 0 if roll < 0.84 else 1 if roll < 0.95 else self.rng.randint(2, 4)

    def _event(self, event: str, event_ts: int, payload: dict[str, Any]) -> None:
        if event_ts >= DAY_START_MS + DAY_MS:
            return  # tomorrow's news: the stream stays live in the demo
        self.deliver({"event": event, "event_ts": event_ts, "payload": payload})

    def _start_time(self) -> int:
        # Working days of the Americas (morning and afternoon), Europe and Asia-Pacific overlap on
        # one UTC day; the late American afternoon leaves streams running past midnight.
        peak_hour = self.rng.choice((15.0, 15.0, 15.0, 9.5, 9.5, 2.0, 21.0, 21.0))
        hour = min(max(self.rng.gauss(peak_hour, 3.0), 0.0), 23.95)
        return DAY_START_MS + int(hour * 3600 * _SECOND) + self.rng.randint(0, 59_999)

    def _reason(self, normal: tuple[int, ...]) -> int:
        roll = self.rng.random()
        if roll < 0.86:
            return self.rng.choice(normal)
        if roll < 0.94:
            return self.rng.choice(_ABNORMAL)
        codes = [code for code, _ in _OTHER]
        return self.rng.choices(codes, weights=[weight for _, weight in _OTHER])[0]

    # --- account events and noise ----------------------------------------------------------------

    def alerts(self) -> None:
        for hour, number in ((14.6, 1603), (15.1, 1722), (15.4, 1811), (16.0, 1650)):
            at = DAY_START_MS + int(hour * 3600 * _SECOND)
            payload = {
                "concurrency_limit": 2000,
                "concurrency_number": number,
                "percentage": number * 100 // 2000,
                "account_id": _ACCOUNTS[0],
            }
            self.deliver(
                {"event": "rtms.concurrency_near_limit", "event_ts": at, "payload": payload}
            )
        for minutes in (0, 4, 11):
            at = DAY_START_MS + int(15.5 * 3600 * _SECOND) + minutes * _MINUTE
            payload = {
                "operator_id": self.rng.choice(self.operators),
                "concurrency_number": 2001,
                "id_field": {"meeting_uuid": self._uuid()},
                "account_id": _ACCOUNTS[0],
            }
            self.deliver({"event": "rtms.concurrency_limited", "event_ts": at, "payload": payload})

    def noise(self) -> None:
        """Unknown events and malformed bodies: stored, never allowed to stop a replay."""
        for event in ("meeting.started", "meeting.ended", "meeting.participant_joined") * 2:
            at = self._start_time()
            payload = {"account_id": self.rng.choice(_ACCOUNTS), "object": {"uuid": self._uuid()}}
            self.emit({"event": event, "event_ts": at, "payload": payload}, at + 500)
        for _ in range(4):
            at = self._start_time()
            # A body cut short by a proxy: not JSON at all.
            self.emit(b'{"event":"meeting.rtms_started","event_ts":' + str(at).encode(), at)
        for _ in range(3):
            at = self._start_time()
            payload = {"meeting_uuid": self._uuid(), "server_urls": self._server_urls()}
            self.emit({"event": "meeting.rtms_started", "event_ts": at, "payload": payload}, at)
        for _ in range(3):
            at = self._start_time()
            # A Zoom Phone stop without stop_reason (its samples allow it): applied, NOT_PROVIDED.
            payload = {"rtms_stream_id": self.rng.getrandbits(128).to_bytes(16, "big").hex()}
            payload["call_id"] = self._uuid()
            self.emit({"event": "phone.rtms_stopped", "event_ts": at, "payload": payload}, at)

    def lines(self) -> Iterator[bytes]:
        for delivery in sorted(self.deliveries):
            yield delivery.body + b"\n"


def generate() -> bytes:
    """The demo day as gzipped JSON Lines (byte-for-byte reproducible)."""
    day = _Day(random.Random(SEED))
    for _ in range(STREAMS):
        day.stream()
    day.alerts()
    day.noise()
    text = b"".join(day.lines())
    # mtime=0 and no file name in the header: the same input gives the same bytes.
    return gzip.compress(text, compresslevel=9, mtime=0)


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    data = generate()
    output.write_bytes(data)
    print(f"wrote {output} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
