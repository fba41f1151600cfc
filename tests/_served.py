"""A receiver started as an operator starts it: a command line in its own process, on loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rtms_lifecycle.webhook import SECRET_ENV
from tests._live import SECRET, server_process

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
    argv: Callable[[int], list[str]],
    workdir: Path,
    env: Mapping[str, str],
    probe: str = "/healthz",
) -> Iterator[Served]:
    """``argv(port)`` in its own process on a free port, until ``probe`` answers 2xx."""
    with server_process(argv, workdir, _environment(env), "server-{port}.log", probe) as started:
        yield Served(*started[:2])


@contextmanager
def serve_command(
    db_url: str, workdir: Path, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """``rtms-lifecycle --db DB serve --port P OPTIONS``, until it answers /healthz."""

    def argv(port: int) -> list[str]:
        return [str(ENTRY_POINT), "--db", db_url, "serve", "--port", str(port), *options]

    with server_process(argv, workdir, _environment(env or {}), "server-{port}.log") as running:
        yield Served(*running[:2])


@contextmanager
def uvicorn_workers(
    db_url: str, workdir: Path, workers: int, env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """``uvicorn --factory rtms_lifecycle.server:create_app --workers N``, configured by env."""

    def argv(port: int) -> list[str]:
        return [
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

    environment = _environment({"RTMS_LIFECYCLE_DB": db_url, **(env or {})})
    with server_process(argv, workdir, environment, "server-{port}.log") as running:
        yield Served(*running[:2])
