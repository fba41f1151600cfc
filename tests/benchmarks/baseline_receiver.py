"""The floor for the receiver: a minimal durable webhook receiver, to compare ``serve`` with.

A bare ASGI app on the same uvicorn (no framework, no access log): it reads the body, checks
Zoom's signature (HMAC-SHA256 of ``v0:{timestamp}:{body}``, the timestamp within 300 s),
stores the raw bytes in an SQLite file and answers 200 once they are committed. Commits are
durable (``journal_mode=WAL``, ``synchronous=FULL``) and grouped: one writer thread commits every
body queued while the previous commit synced, in one transaction. Nothing is parsed.

Usage (``bench_receiver --against-raw`` starts it)::

    python -m tests.benchmarks.baseline_receiver PORT DB_PATH
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SECRET_ENV = "ZOOM_WEBHOOK_SECRET_TOKEN"
REPLAY_WINDOW_S = 300
GROUP_MAX = 100
_OK = b'{"ok":true}'
_JSON = [(b"content-type", b"application/json")]


class GroupWriter:
    """One thread commits the queued bodies, at most GROUP_MAX per synced transaction."""

    def __init__(self, path: str) -> None:
        self._queue: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]]] = queue.SimpleQueue()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, received_at INTEGER, "
            "body BLOB NOT NULL)"
        )
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, body: bytes) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        self._queue.put((body, done))
        return done

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < GROUP_MAX:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            now = int(time.time() * 1000)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT INTO deliveries (received_at, body) VALUES (?, ?)",
                    [(now, body) for body, _ in group],
                )
                self._conn.execute("COMMIT")
                error: BaseException | None = None
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                error = exc
            # One wake-up of the event loop per group, not one per body (a system call each).
            waiting = [done for _, done in group]
            waiting[0].get_loop().call_soon_threadsafe(_settle, waiting, error)


def _settle(waiting: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for done in waiting:
        if done.cancelled():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


def _verified(secret: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    signature = stamp = b""
    for name, value in headers:
        if name == b"x-zm-signature":
            signature = value
        elif name == b"x-zm-request-timestamp":
            stamp = value
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > REPLAY_WINDOW_S:
        return False
    expected = hmac.new(secret, b"v0:%s:%s" % (stamp, body), hashlib.sha256).hexdigest()
    return hmac.compare_digest(b"v0=" + expected.encode(), signature)


def make_app(db_path: str, secret: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app: ``POST`` anything is a delivery; ``GET`` answers 200 (a health probe)."""
    writer = GroupWriter(db_path)
    key = secret.encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 200, _OK)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if not _verified(key, scope["headers"], body):
            await _answer(send, 401, b'{"error":"bad_signature"}')
            return
        try:
            await writer.submit(body)
        except sqlite3.Error:
            await _answer(send, 503, b'{"error":"store_unavailable"}')
            return
        await _answer(send, 200, _OK)

    return app


async def _answer(send: Send, status: int, body: bytes) -> None:
    # A length, not chunked encoding: its terminating chunk cost the sender another read.
    headers = [*_JSON, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    """Serve on 127.0.0.1:PORT into DB_PATH until interrupted."""
    port, db_path = (argv if argv is not None else sys.argv[1:])[:2]
    app = make_app(db_path, os.environ[SECRET_ENV])
    uvicorn.run(app, host="127.0.0.1", port=int(port), access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
