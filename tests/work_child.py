"""A child for ``rtms-lifecycle work`` tests: records its environment and signals to a file.

Each line of ``$WORK_CHILD_LOG`` is JSON: ``{"pid", "event": "start", "env", "t"}`` when it
starts, ``{"pid", "event": "signal", "signal", "t"}`` for each SIGTERM or SIGINT (then it
exits 0). With ``WORK_CHILD_EXIT`` set to ``SECONDS:CODE`` it exits by itself after that long,
with that code (only the first child of each stream, when ``WORK_CHILD_EXIT_ONCE`` is set);
``WORK_CHILD_SLOW_FROM`` set to ``TOKEN:SECONDS`` makes the children of claim tokens from TOKEN
on run that long instead. ``WORK_CHILD_TERM_DELAY`` set to SECONDS makes SIGTERM take that
long to end it, meanwhile writing ``{"event": "alive"}`` every 50 ms (then ``exit``): a child
slow to stop, and when it last acted. ``WORK_CHILD_CHATTY`` set makes it write lines to stdout
without end, from a thread of its own (its signals are handled even while stdout is full).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from types import FrameType


def _write(line: dict[str, object]) -> None:
    fd = os.open(os.environ["WORK_CHILD_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"pid": os.getpid(), "t": time.time(), **line}) + "\n").encode())
    finally:
        os.close(fd)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    _write({"event": "signal", "signal": signal.Signals(signum).name})
    delay = float(os.environ.get("WORK_CHILD_TERM_DELAY") or 0)
    if delay and signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        end = time.monotonic() + delay
        while time.monotonic() < end:
            _write({"event": "alive"})
            time.sleep(0.05)
        _write({"event": "exit", "code": 0})
    sys.exit(0)


def _chatter() -> None:
    line = f"chatty {os.getpid()} " + "x" * 100 + "\n"
    while True:
        os.write(1, line.encode())


def main() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    env = {k: v for k, v in os.environ.items() if k.startswith("RTMS_")}
    _write({"event": "start", "env": env})
    if os.environ.get("WORK_CHILD_CHATTY"):
        threading.Thread(target=_chatter, daemon=True).start()
    exit_after = os.environ.get("WORK_CHILD_EXIT")
    once = os.environ.get("WORK_CHILD_EXIT_ONCE")
    if exit_after and (not once or env.get("RTMS_CLAIM_TOKEN") == "1"):
        seconds, code = exit_after.split(":")
        slow = os.environ.get("WORK_CHILD_SLOW_FROM")
        if slow:
            token, longer = slow.split(":")
            if int(env["RTMS_CLAIM_TOKEN"]) >= int(token):
                seconds = longer
        time.sleep(float(seconds))
        _write({"event": "exit", "code": int(code)})
        sys.exit(int(code))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
