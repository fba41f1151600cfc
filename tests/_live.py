"""A real receiver on loopback for tests and benchmarks: in a thread, or as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from rtms_lifecycle.webhook import SECRET_ENV, sign

SECRET = "receiver-secret"
START_TIMEOUT_S = 30.0


def signed(body: bytes, secret: str = SECRET, ts: int | str | None = None) -> dict[str, str]:
    """Headers Zoom would send with ``body``, signed now (or at ``ts``) with ``secret``."""
    stamp = str(int(time.time()) if ts is None else ts)
    return {
        "x-zm-signature": sign(secret, stamp, body),
        "x-zm-request-timestamp": stamp,
        "content-type": "application/json",
    }


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # log_config=None: uvicorn leaves logging alone, so its records reach pytest's caplog.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def app_clients(timeout: float = 30) -> Iterator[Callable[..., httpx.Client]]:
    """Factory: serve ``create_app(db, **kwargs)`` (secret SECRET by default) in a thread and
    return a client of it; every app and client ends with the block."""
    # Imported here: this module must stay importable without the package's server extra.
    from rtms_lifecycle.server import create_app

    with ExitStack() as stack:

        def start(db: Any, **kwargs: Any) -> httpx.Client:
            kwargs.setdefault("secrets", [SECRET])
            url = stack.enter_context(serving(create_app(db, **kwargs)))
            return stack.enter_context(httpx.Client(base_url=url, timeout=timeout))

        yield start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving_process(
    db_url: str,
    workdir: Path,
    path: str = "/webhook",
    options: str = "",
    nofile: int | None = None,
) -> Iterator[str]:
    """:func:`receiver_process`, its base URL alone."""
    with receiver_process(db_url, workdir, path, options, nofile) as (url, _):
        yield url


@contextmanager
def receiver_process(
    db_url: str,
    workdir: Path,
    path: str = "/webhook",
    options: str = "",
    nofile: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``rtms_lifecycle.server.run`` (what ``rtms-lifecycle serve`` calls) in its own process.

    Its own process, so that senders in the test process do not share its interpreter lock.
    ``options``: more keyword arguments of ``run``, as Python source; ``nofile``: the process's
    file descriptor limit. Yields the base URL once /healthz answers; the server's output goes
    to ``server.log`` in ``workdir``; yields it with the process (a test may kill it).
    """
    port = free_port()
    code = (
        "from rtms_lifecycle.server import run; "
        f"run(host='127.0.0.1', port={port}, path={path!r}, db={db_url!r}, {options})"
    )
    if nofile is not None:
        limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile},) * 2)"
        code = f"import resource; {limit}; {code}"

    url = f"http://127.0.0.1:{port}"
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, SECRET_ENV: SECRET},
            stdout=log,
            stderr=log,
            cwd=workdir,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the receiver did not start; see {log.name}") from None
                    time.sleep(0.05)
            yield url, process
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
