"""Large, realistic, deterministic loads of RTMS webhook deliveries, as JSON Lines bodies.

Each stream gets ``started``, then zero or more ``interrupted``/``started`` pairs (Zoom
re-sends ``started`` when media flows again; the fold names it ``resume``), then ``stopped``.
Streams start one after another and overlap in time; the deliveries come out in event-time order
across all streams (a heap holds only the streams open at that moment), so a load of any size
streams through in constant memory.

``deliveries`` is exact: the extra events beyond ``started`` + ``stopped`` are spread over the
streams by a seeded permutation (an odd extra leaves one stream stopped while interrupted).
Duplicates (Zoom's retries: the same bytes again, a little later) come on top of that count.
``shuffle`` mixes the output within a bounded window: late events, still in constant memory.

Usage::

    python -m tests.benchmarks.generate --deliveries 64000 --streams 20000 -o load.jsonl
    python -m tests.benchmarks.generate --deliveries 1000000 --streams 312500 | wc -l
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

# scope -> (event name prefix, scope id field)
SCOPES: Final = (
    ("meeting", "meeting.rtms_", "meeting_uuid"),
    ("webinar", "webinar.rtms_", "webinar_uuid"),
    ("session", "session.rtms_", "session_id"),
    ("contact_center", "contact_center.voice_rtms_", "engagement_id"),
    ("phone", "phone.rtms_", "call_id"),
)
# Rough shares of real traffic: meetings dominate.
SCOPE_WEIGHTS: Final = (60, 10, 10, 10, 10)
# Stop reasons with weights: most streams end normally, a few break (docs/stop-reasons.md).
STOP_REASONS: Final = ((6, 50), (1, 15), (2, 10), (3, 8), (20, 5), (11, 3), (24, 3), (13, 2))
_REASONS: Final = tuple(code for code, _ in STOP_REASONS)
_REASON_WEIGHTS: Final = tuple(weight for _, weight in STOP_REASONS)
START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ACCOUNTS: Final = 200


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to generate."""

    deliveries: int = 64_000
    streams: int = 20_000
    seed: int = 7
    # Mean gap between two stream starts; with ~30 min streams it sets how many overlap.
    start_gap_ms: int = 2_000
    duplicates: float = 0.0
    shuffle: int = 0


def _plan_extras(spec: LoadSpec) -> tuple[int, int, int]:
    """(extra events, multiplier, offset) of the permutation spreading them over streams."""
    extra = spec.deliveries - 2 * spec.streams
    if extra < 0:
        raise ValueError(
            f"{spec.deliveries} deliveries cannot hold {spec.streams} started+stopped streams"
        )
    rng = random.Random(spec.seed ^ 0x5EED)
    n = spec.streams
    a = rng.randrange(1, max(n, 2))
    while math.gcd(a, n) != 1:
        a += 1
    return extra, a, rng.randrange(n)


def _extras_of(index: int, n: int, extra: int, a: int, b: int) -> int:
    # Stream ranks 0..n-1 in a seeded order; rank r gets floor((r+1)E/n) - floor(rE/n) events.
    rank = (a * index + b) % n
    return (rank + 1) * extra // n - rank * extra // n


_Event = tuple[int, bytes, bytes]


def _uuid(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _stream_events(index: int, extras: int, rng: random.Random) -> list[_Event]:
    """One stream's bodies: (offset from its start, body before ``event_ts``, body after).

    Offsets strictly increase, so the stream's events are distinct and in event-time order.
    """
    scope, prefix, id_field = rng.choices(SCOPES, SCOPE_WEIGHTS)[0]
    stream_id = f"{rng.getrandbits(64):016x}-{index:08d}"
    payload: dict[str, Any] = {
        "account_id": f"acct-{rng.randrange(ACCOUNTS):04d}",
        "rtms_stream_id": stream_id,
        id_field: _uuid(rng),
    }
    if scope == "session":
        payload["session_key"] = f"key-{index}"
    operator = f"op-{rng.randrange(5000):05d}" if scope in ("meeting", "webinar") else None
    offset = 0
    host = rng.randrange(64)
    kinds = ["started", *(("interrupted", "started")[i % 2] for i in range(extras)), "stopped"]
    events = []
    for position, kind in enumerate(kinds):
        if position:
            # Interruptions recover within seconds to minutes; meetings last up to an hour.
            gap = (1_000, 120_000) if kind == "started" else (60_000, 1_800_000)
            offset += rng.randrange(*gap)
        body_payload = dict(payload)
        if kind == "started":
            host = (host + 1) % 64
            body_payload["server_urls"] = f"wss://rtms-{host:02d}.zoom.us/rtms,wss://bak.zoom.us"
            if operator is not None:
                body_payload["operator_id"] = operator
        elif kind == "stopped":
            body_payload["stop_reason"] = rng.choices(_REASONS, _REASON_WEIGHTS)[0]
        head = b'{"event":"' + (prefix + kind).encode() + b'","event_ts":'
        tail = b',"payload":' + json.dumps(body_payload, separators=(",", ":")).encode() + b"}"
        events.append((offset, head, tail))
    return events


def generate(spec: LoadSpec) -> Iterator[bytes]:
    """The load's deliveries, one compact JSON body (bytes, no newline) at a time."""
    ordered = _in_order(spec)
    if spec.duplicates > 0:
        ordered = _with_duplicates(ordered, spec)
    if spec.shuffle > 1:
        ordered = _shuffled(ordered, spec)
    for _ts, body in ordered:
        yield body


_Open = tuple[int, int, int, int, list[_Event]]


def _in_order(spec: LoadSpec) -> Iterator[tuple[int, bytes]]:
    """(event_ts, body) of every delivery, in event-time order across all streams."""
    extra, a, b = _plan_extras(spec)
    rng = random.Random(spec.seed)
    # (event_ts, stream index, position in the stream, stream start, the stream's events)
    heap: list[_Open] = []
    started = 0
    next_start = START_MS
    while started < spec.streams or heap:
        if started < spec.streams and (not heap or next_start <= heap[0][0]):
            extras = _extras_of(started, spec.streams, extra, a, b)
            events = _stream_events(started, extras, random.Random(rng.getrandbits(64)))
            heapq.heappush(heap, (next_start, started, 0, next_start, events))
            started += 1
            next_start += rng.randrange(1, 2 * spec.start_gap_ms)
            continue
        ts, index, position, start, events = heapq.heappop(heap)
        _, head, tail = events[position]
        yield ts, head + str(ts).encode() + tail
        if position + 1 < len(events):
            heapq.heappush(
                heap, (start + events[position + 1][0], index, position + 1, start, events)
            )


def _with_duplicates(
    ordered: Iterator[tuple[int, bytes]], spec: LoadSpec
) -> Iterator[tuple[int, bytes]]:
    """Re-send a share of the deliveries as Zoom retries do: at once, or minutes later."""
    rng = random.Random(spec.seed ^ 0xD0B)
    pending: list[tuple[int, int, bytes]] = []
    count = 0
    for ts, body in ordered:
        while pending and pending[0][0] <= ts:
            due, _, again = heapq.heappop(pending)
            yield due, again
        yield ts, body
        if rng.random() < spec.duplicates:
            count += 1
            delay = rng.choice((0, 0, 300_000, 1_800_000, 5_100_000))
            heapq.heappush(pending, (ts + delay, count, body))
    while pending:
        due, _, again = heapq.heappop(pending)
        yield due, again


def _shuffled(ordered: Iterator[tuple[int, bytes]], spec: LoadSpec) -> Iterator[tuple[int, bytes]]:
    """Out of order within a window of ``spec.shuffle`` deliveries (constant memory)."""
    rng = random.Random(spec.seed ^ 0x5F1)
    window: list[tuple[int, bytes]] = []
    for item in ordered:
        if len(window) < spec.shuffle:
            window.append(item)
            continue
        slot = rng.randrange(spec.shuffle)
        yield window[slot]
        window[slot] = item
    rng.shuffle(window)
    yield from window


def main(argv: list[str] | None = None) -> int:
    """Write a load as JSON Lines to a file or stdout."""
    defaults = LoadSpec()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=defaults.deliveries)
    parser.add_argument("--streams", type=int, default=defaults.streams)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--start-gap-ms", type=int, default=defaults.start_gap_ms)
    parser.add_argument(
        "--duplicates", type=float, default=0.0, help="share of deliveries re-sent (on top)"
    )
    parser.add_argument(
        "--shuffle", type=int, default=0, help="shuffle within a window of this many deliveries"
    )
    parser.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        args.deliveries, args.streams, args.seed, args.start_gap_ms, args.duplicates, args.shuffle
    )
    if args.output:
        with args.output.open("wb") as out:
            write_jsonl(spec, out)
    else:
        write_jsonl(spec, sys.stdout.buffer)
    return 0


def write_jsonl(spec: LoadSpec, out: BinaryIO) -> int:
    """Write the load, one body per line; returns how many lines."""
    count = 0
    for body in generate(spec):
        out.write(body + b"\n")
        count += 1
    return count


if __name__ == "__main__":
    raise SystemExit(main())
