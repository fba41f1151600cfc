"""A real receiver on loopback for tests and benchmarks: in a thread, or as its own process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from rtms_lifecycle.defaults import API_TOKEN_ENV, DB_ENV, FORWARDED_ALLOW_IPS_ENV
from rtms_lifecycle.webhook import SECRET_ENV, sign

SECRET = "receiver-secret"
#: What a receiver reads from the environment: no test inherits it from the developer's shell.
RECEIVER_ENV: Final = (SECRET_ENV, API_TOKEN_ENV, DB_ENV, FORWARDED_ALLOW_IPS_ENV)


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset :data:`RECEIVER_ENV` for the test."""
    for name in RECEIVER_ENV:
        monkeypatch.delenv(name, raising=False)


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


@contextmanager
def read_api(db: Any, token: str) -> Iterator[httpx.Client]:
    """Serve ``create_app(db, api_token=token)``; a client of it that sends ``token``."""
    with app_clients() as start:
        client = start(db, api_token=token)
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def free_port() -> int:
    """A 127.0.0.1 port that was free a moment ago. Another process (another xdist worker's
    server) may take it before the server it is meant for binds: see :func:`server_process`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


PORT_ATTEMPTS = 3
"""Starts of a server process, each on a new port, when the port was taken before it bound."""


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port`` (Linux's /proc;
    True where it cannot be told)."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True
    owned = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            owned.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    for line in table:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
            return f"socket:[{fields[9]}]" in owned
    return False


def _answering(process: subprocess.Popen[bytes], url: str, log: Path, probe: str) -> bool:
    """Whether the process came to answer ``url`` + ``probe`` (False: it exited, its port taken)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        # The process first: a server that lost its port must not pass for the one that took it.
        if process.poll() is not None:
            said = log.read_text(encoding="utf-8", errors="replace")
            if "address already in use" in said.lower():
                return False
            raise RuntimeError(f"the receiver did not start ({log}):\n{said}")
        try:
            httpx.get(f"{url}{probe}", timeout=1).raise_for_status()
            if _listens(process.pid, int(url.rsplit(":", 1)[1])):
                return True
            # Another process took the port between free_port() and this one's bind, and
            # answered: this one is about to exit with "address already in use".
            time.sleep(0.05)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver did not answer; see {log}") from None
            time.sleep(0.05)


@contextmanager
def server_process(
    argv: Callable[[int], list[str]],
    workdir: Path,
    env: dict[str, str],
    log_name: str,
    probe: str = "/healthz",
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """Run ``argv(port)`` in ``workdir`` on a free port until ``probe`` answers; yield its
    base URL, its log (``log_name``, formatted with ``port``) and the process (a test may kill
    it). A new port when it was taken."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        url, log = f"http://127.0.0.1:{port}", workdir / log_name.format(port=port)
        with log.open("wb") as sink:
            process = subprocess.Popen(argv(port), env=env, stdout=sink, stderr=sink, cwd=workdir)
        try:
            if _answering(process, url, log, probe):
                break
        except BaseException:
            process.kill()
            process.wait(timeout=30)
            raise
        if attempt == PORT_ATTEMPTS:
            raise RuntimeError(f"the receiver's port was taken {PORT_ATTEMPTS} times; see {log}")
    try:
        yield url, log, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


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
    prefix: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``rtms_lifecycle.server.run`` (what ``rtms-lifecycle serve`` calls) in its own process.

    Its own process, so that senders in the test process do not share its interpreter lock.
    ``options``: more keyword arguments of ``run``, as Python source; ``nofile``: the process's
    file descriptor limit; ``prefix``: what runs it (e.g. ``setpriv ... --``). Yields the base
    URL once /healthz answers; the server's output goes to ``server.log`` in ``workdir``;
    yields it with the process (a test may kill it).
    """

    def argv(port: int) -> list[str]:
        code = (
            "from rtms_lifecycle.server import run; "
            f"run(host='127.0.0.1', port={port}, path={path!r}, db={db_url!r}, {options})"
        )
        if nofile is not None:
            limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile},) * 2)"
            code = f"import resource; {limit}; {code}"
        return [*prefix, sys.executable, "-c", code]

    env = {**os.environ, SECRET_ENV: SECRET}
    with server_process(argv, workdir, env, "server.log") as (url, _, process):
        yield url, process
