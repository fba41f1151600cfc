"""The worker of docs/workers.md ("A complete worker"), as a process for tests/test_zoom_e2e.py.

Usage: python tests/zoom_worker.py DB_URL WORKER OUT RENEW_EVERY LEASE POLL

Credentials come from ``ZOOM_CLIENT_ID`` and ``ZOOM_CLIENT_SECRET``. Each line of OUT is JSON:
``{"event": "started", "stream_id", "token"}`` when it joins a claimed stream, ``{"event":
"audio" | "transcript", "stream_id", "data", "user"}`` for each frame its media callbacks get
(audio as hex), ``{"event": "ended", "stream_id", "why", "code", "claim_lost",
"release_failed"}`` when a stream's slot is free again, ``{"event": "claim_failed", "error"}``
when a claim fails (retried after POLL s, twice as long each time, up to 30 s). SIGINT or
SIGTERM: it leaves every stream, releases every claim and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any

from rtms_lifecycle import Claim, Tracker
from rtms_lifecycle.exceptions import StoreError
from rtms_lifecycle.zoom import MediaCallback, ZoomStream


def _write(out: str, line: dict[str, Any]) -> None:
    """One whole line per write: the media thread and the main thread both write."""
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _media(out: str, stream_id: str, kind: str) -> MediaCallback:
    def on_data(data: bytes, size: int, timestamp: int, metadata: Any) -> None:
        text = data.hex() if kind == "audio" else data.decode()
        user = metadata.userName
        _write(out, {"event": kind, "stream_id": stream_id, "data": text, "user": user})

    return on_data


def main() -> None:
    url, worker, out = sys.argv[1], sys.argv[2], sys.argv[3]
    renew_every, lease, poll = (float(arg) for arg in sys.argv[4:7])
    client_id, client_secret = os.environ["ZOOM_CLIENT_ID"], os.environ["ZOOM_CLIENT_SECRET"]

    tracker = Tracker(url)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    running: list[ZoomStream[Claim]] = []
    wait = poll

    while not stopping.is_set():
        for stream in running:
            if stream.join(0):
                assert stream.ended is not None
                ended = stream.ended
                _write(out, {"event": "ended", "stream_id": stream.claim.stream_id,
                             "why": ended.why, "code": ended.code, "claim_lost": ended.claim_lost,
                             "release_failed": ended.release_failed})  # fmt: skip
        running = [s for s in running if s.ended is None]
        try:
            claim = tracker.claim(worker, lease=lease) if len(running) < 20 else None
        except StoreError as exc:
            _write(out, {"event": "claim_failed", "error": str(exc).splitlines()[0]})
            stopping.wait(wait)
            wait = min(wait * 2, 30.0)
            continue
        wait = poll
        if claim is None:
            stopping.wait(poll)
            continue
        sid = claim.stream_id
        running.append(
            ZoomStream(
                tracker, claim, client_id=client_id, client_secret=client_secret,
                on_audio_data=_media(out, sid, "audio"),
                on_transcript_data=_media(out, sid, "transcript"),
                renew_every=renew_every,
            ).start()
        )  # fmt: skip
        _write(out, {"event": "started", "stream_id": sid, "token": claim.token})
    for stream in running:
        stream.stop()  # leaves, and releases the claim
        stream.join()
    tracker.close()


if __name__ == "__main__":
    main()
