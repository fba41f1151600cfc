"""A receiver started as an operator starts it: a command line in its own process, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from rtms_lifecycle.webhook import SECRET_ENV
from tests._live import SECRET, START_TIMEOUT_S, free_port

ENTRY_POINT = Path(sys.executable).with_name("rtms-lifecycle")
# Settings a developer's shell could carry into the server under test.
_AMBIENT = ("RTMS_LIFECYCLE_DB", "RTMS_LIFECYCLE_API_TOKEN", SECRET_ENV, "PROMETHEUS_MULTIPROC_DIR")


@dataclass(frozen=True)
class Served:
    """A running receiver: its base URL and the file its stderr goes to."""

    url: str
    log: Path

    def lines(self) -> list[str]:
        """What it has logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    environ[SECRET_ENV] = SECRET
    environ.update(env)
    return environ


@contextmanager
def running(
    argv: Sequence[str], port: int, workdir: Path, env: Mapping[str, str], probe: str = "/healthz"
) -> Iterator[Served]:
    """``argv`` in its own process (stdout and stderr to a log), until ``probe`` answers 2xx on
    127.0.0.1:``port``; terminated afterwards."""
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(argv), env=_environment(env), stdout=sink, stderr=sink, cwd=workdir
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    httpx.get(f"{url}{probe}", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the receiver did not start:\n{log.read_text()}"
                        ) from None
                    time.sleep(0.05)
            yield Served(url, log)
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def serve_command(
    db_url: str, workdir: Path, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """``rtms-lifecycle --db DB serve --port P OPTIONS``, until it answers /healthz."""
    port = free_port()
    argv = [str(ENTRY_POINT), "--db", db_url, "serve", "--port", str(port), *options]
    with running(argv, port, workdir, env or {}) as served:
        yield served


@contextmanager
def uvicorn_workers(
    db_url: str, workdir: Path, workers: int, env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """``uvicorn --factory rtms_lifecycle.server:create_app --workers N``, configured by env."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "rtms_lifecycle.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with running(argv, port, workdir, {"RTMS_LIFECYCLE_DB": db_url, **(env or {})}) as served:
        yield served
