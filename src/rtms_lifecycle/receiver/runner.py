"""``rtms-lifecycle serve``: :func:`run` serves :func:`~rtms_lifecycle.receiver.app.create_app`
with uvicorn, its connection limits fitted to the process's file descriptors."""

from __future__ import annotations

import logging.config
import os
import resource
import socket
from datetime import datetime, timedelta
from typing import Final

import uvicorn

from rtms_lifecycle.defaults import (
    DEFAULT_FORWARDED_ALLOW_IPS,
    DEFAULT_MAX_EVENT_AHEAD,
    DEFAULT_MIN_EVENT_TIME,
    FORWARDED_ALLOW_IPS_ENV,
    forwarded_allow_ips_problem,
)
from rtms_lifecycle.exceptions import ConfigurationError
from rtms_lifecycle.receiver.app import create_app
from rtms_lifecycle.receiver.dashboard.auth import DEFAULT_IDLE_SECONDS
from rtms_lifecycle.receiver.http import bounded_protocol
from rtms_lifecycle.receiver.logs import LogFormat, log_config
from rtms_lifecycle.receiver.metrics import DEFAULT_LONG_LIVE
from rtms_lifecycle.receiver.settings import (
    DEFAULT_PATH,
    DEFAULT_REQUEST_TIMEOUT,
    check_positive,
    log,
)
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.webhook import DEFAULT_REPLAY_WINDOW

__all__ = ["DEFAULT_KEEP_ALIVE_TIMEOUT", "default_limits", "proxies", "run"]

#: Idle seconds after a response before a kept-alive connection is closed.
DEFAULT_KEEP_ALIVE_TIMEOUT: Final = 5
# Connections the kernel queues before the server accepts them, at most. Zoom waits 3 s for an
# answer: a long queue only makes senders wait for answers they will no longer take.
_MAX_BACKLOG: Final = 256
# Open connections at most, by default: below the process's file descriptor limit, which must
# leave room for the database, the log and the worker threads' files.
_MAX_CONNECTIONS: Final = 1000
_RESERVED_FDS: Final = 64


def _check_listenable(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on (a port in use, a host
    that is not this machine's) before the app opens the database and says it is ready."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    except UnicodeError as exc:  # a name IDNA cannot encode: a label over 63 characters, ...
        raise ConfigurationError(f"cannot listen on {host!r}: not a host name ({exc})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: SO_REUSEADDR, so a port left in TIME_WAIT is not taken for in use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc


def default_limits() -> tuple[int, int]:
    """``(limit_concurrency, backlog)`` that fit the process's file descriptor limit.

    At most 1000 connections and a backlog of 256. The server accepts up to ``backlog``
    connections at a time before it can close those over the limit, so both must fit in the
    descriptors left once the database, the log and the threads have theirs.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAX_CONNECTIONS, _MAX_BACKLOG
    backlog = max(8, min(_MAX_BACKLOG, soft // 8))
    return max(1, min(_MAX_CONNECTIONS, soft - _RESERVED_FDS - backlog)), backlog


def proxies(forwarded_allow_ips: str | None) -> str:
    """The addresses trusted to set X-Forwarded-For/-Proto: as given, else
    ``FORWARDED_ALLOW_IPS``, else uvicorn's default (this machine); checked, since uvicorn takes
    a typo for a name that no client ever has."""
    value = forwarded_allow_ips
    if value is None or not value.strip():
        value = os.environ.get(FORWARDED_ALLOW_IPS_ENV, "").strip() or DEFAULT_FORWARDED_ALLOW_IPS
    problem = forwarded_allow_ips_problem(value)
    if problem is not None:
        raise ConfigurationError(f"forwarded_allow_ips ({FORWARDED_ALLOW_IPS_ENV}): {problem}")
    return value.strip()


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = DEFAULT_PATH,
    db: str | None = None,
    *,
    log_level: str = "info",
    log_format: LogFormat = "text",
    metrics: bool = True,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    limit_concurrency: int | None = None,
    backlog: int | None = None,
    replay_window: float = DEFAULT_REPLAY_WINDOW,
    max_event_ahead: float = DEFAULT_MAX_EVENT_AHEAD,
    min_event_time: int | datetime = DEFAULT_MIN_EVENT_TIME,
    dashboard_idle: float = DEFAULT_IDLE_SECONDS,
    claims_older_than: float = 30.0,
    long_live: timedelta | float = DEFAULT_LONG_LIVE,
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve :func:`create_app` with uvicorn (``rtms-lifecycle serve``) until interrupted.

    ``log_level`` and ``log_format`` (``text`` or ``json`` lines) apply to the library's loggers
    and uvicorn's, all on stderr. Connections idle ``keep_alive_timeout`` seconds after a
    response are closed, and those whose request is not whole within ``request_timeout``; beyond
    ``limit_concurrency`` open connections new ones are closed at once and requests answered
    503; ``backlog`` connections wait in the kernel's queue (defaults: :func:`default_limits`).
    ``forwarded_allow_ips``: the proxies whose X-Forwarded-For and X-Forwarded-Proto are
    believed (addresses or networks, comma-separated, or ``*``; see :func:`proxies`).
    """
    check_positive("keep_alive_timeout", keep_alive_timeout)
    check_positive("request_timeout", request_timeout)
    default_limit, default_backlog = default_limits()
    limit = default_limit if limit_concurrency is None else limit_concurrency
    backlog = default_backlog if backlog is None else backlog
    if limit < 1 or backlog < 1:
        raise ConfigurationError("limit_concurrency and backlog must be at least 1")
    trusted = proxies(forwarded_allow_ips)
    _check_listenable(host, port)
    config = log_config(log_level, log_format)
    # Configured before the app exists, so that what creating it logs is formatted too.
    logging.config.dictConfig(config)
    # Neither format shows a record's thread or process: not gathering them makes each of the
    # two lines per delivery cheaper (the logging HOWTO's "Optimization"). The process is ours.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    log.info("X-Forwarded-For and X-Forwarded-Proto believed from: %s", trusted)
    app = create_app(
        db,
        path=path,
        metrics=metrics,
        store_timeout=store_timeout,
        request_timeout=request_timeout,
        replay_window=replay_window,
        max_event_ahead=max_event_ahead,
        min_event_time=min_event_time,
        dashboard_idle=dashboard_idle,
        claims_older_than=claims_older_than,
        long_live=long_live,
    )
    # The access log shows method, path and status only: never a header, so never a signature.
    uvicorn.run(
        app,
        host=host,
        port=port,
        server_header=False,
        log_config=config,
        log_level=log_level.lower(),
        http=bounded_protocol(request_timeout),
        # No route is a WebSocket: an upgrade request is answered as plain HTTP.
        ws="none",
        timeout_keep_alive=keep_alive_timeout,
        limit_concurrency=limit,
        backlog=backlog,
        proxy_headers=True,
        forwarded_allow_ips=trusted,
    )
