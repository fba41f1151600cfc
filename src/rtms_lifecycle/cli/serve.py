"""``rtms-lifecycle serve``: the webhook receiver, with its server's options."""

from __future__ import annotations

import os
from datetime import timedelta

import click

from rtms_lifecycle.bounds import MAX_WAIT_SECONDS
from rtms_lifecycle.cli.app import App, pass_app
from rtms_lifecycle.cli.errors import BadInput, Failure
from rtms_lifecycle.cli.params import Seconds, parse_min_event_time, parse_period, parsed_by
from rtms_lifecycle.defaults import (
    API_TOKEN_ENV,
    DEFAULT_MAX_EVENT_AHEAD,
    DEFAULT_MIN_EVENT_TIME_TEXT,
    FORWARDED_ALLOW_IPS_ENV,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_EVENT_AHEAD_ENV,
    MIN_EVENT_TIME_ENV,
    api_token_problem,
    forwarded_allow_ips_problem,
)
from rtms_lifecycle.store.deadline import DEFAULT_STORE_TIMEOUT

__all__ = ["serve"]


def _proxies(text: str) -> str:
    """``--forwarded-allow-ips``: checked here, since uvicorn takes a typo for a host name."""
    problem = forwarded_allow_ips_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text.strip()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="TCP port to listen on.",
)
@click.option("--path", default="/webhook", show_default=True, help="The webhook's URL path.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="The receiver's and uvicorn's log level.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log lines on stderr as text, or as JSON objects (docs/operations.md).",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Serve GET /metrics (Prometheus; behind the API token when one is set).",
)
@click.option(
    "--store-timeout",
    type=Seconds(0, min_open=True, max=MAX_WAIT_SECONDS),
    default=DEFAULT_STORE_TIMEOUT,
    show_default=True,
    help="Seconds a delivery may take to commit; past it the answer is 503 (Zoom retries).",
)
@click.option(
    "--keep-alive-timeout",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Seconds an idle connection stays open after a response.",
)
@click.option(
    "--request-timeout",
    type=Seconds(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds a request has to arrive whole; slower connections are closed.",
)
@click.option(
    "--limit-concurrency",
    type=click.IntRange(1),
    default=None,
    help="Open connections at most [default: 1000, less under a low file descriptor limit].",
)
@click.option(
    "--backlog",
    # The kernel caps it (net.core.somaxconn, at most 65,535); past a C int it cannot be passed.
    type=click.IntRange(1, 65_535),
    default=None,
    help="Connections the kernel queues before they are accepted [default: 256, less under a "
    "low file descriptor limit].",
)
@click.option(
    "--replay-window",
    type=Seconds(min=0, min_open=True),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Refuse requests signed longer ago than this (docs/receiver.md weighs a longer one).",
)
@click.option(
    "--max-event-ahead",
    type=Seconds(min=0),
    default=DEFAULT_MAX_EVENT_AHEAD,
    show_default=True,
    envvar=MAX_EVENT_AHEAD_ENV,
    show_envvar=True,
    metavar="SECONDS",
    help="Reject a delivery whose event_ts is further ahead of this clock (docs/receiver.md).",
)
@click.option(
    "--min-event-time",
    default=DEFAULT_MIN_EVENT_TIME_TEXT,
    show_default=True,
    envvar=MIN_EVENT_TIME_ENV,
    show_envvar=True,
    metavar="T",
    callback=parsed_by(parse_min_event_time),
    help="Reject a delivery whose event_ts is before T (epoch ms or ISO 8601; 0: no bound but "
    "1970). In production 2000-01-01T00:00:00Z refuses times sent in seconds (docs/deploying.md).",
)
@click.option(
    "--dashboard-idle",
    type=Seconds(min=1, max=7 * 24 * 3600),
    default=1800.0,
    show_default=True,
    metavar="SECONDS",
    help="A dashboard session unused this long ends (docs/dashboard.md).",
)
@click.option(
    "--claims-older-than",
    type=Seconds(min=0, max=86_400),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="/metrics counts a live stream unclaimed or unconnected once it started this long ago.",
)
@click.option(
    "--long-live",
    default="12h",
    show_default=True,
    metavar="DURATION",
    callback=parsed_by(parse_period),
    help="/metrics counts a live stream in rtms_lifecycle_long_live_streams once it started "
    "this long ago (e.g. 90m, 12h, 2d, or seconds).",
)
@click.option(
    "--forwarded-allow-ips",
    envvar=FORWARDED_ALLOW_IPS_ENV,
    show_envvar=True,
    default=None,
    metavar="ADDRESSES",
    callback=parsed_by(_proxies),
    help="The proxies whose X-Forwarded-For/-Proto are believed: addresses or networks, "
    "comma-separated, or * [default: 127.0.0.1,::1] (docs/receiver.md).",
)
@pass_app
def serve(
    app: App,
    host: str,
    port: int,
    path: str,
    store_timeout: float,
    keep_alive_timeout: int,
    request_timeout: float,
    limit_concurrency: int | None,
    backlog: int | None,
    log_level: str,
    log_format: str,
    metrics: bool,
    replay_window: float,
    max_event_ahead: float,
    min_event_time: int,
    dashboard_idle: float,
    claims_older_than: float,
    long_live: timedelta,
    forwarded_allow_ips: str | None,
) -> None:
    """Receive Zoom's webhooks over HTTP (needs ZOOM_WEBHOOK_SECRET_TOKEN; extra 'server')."""
    token = os.environ.get(API_TOKEN_ENV, "").strip()
    problem = api_token_problem(token) if token else None
    if problem is not None:
        raise BadInput(f"{API_TOKEN_ENV} {problem}")
    try:
        # The one import of the receiver by the CLI: the 'server' extra, only when asked for.
        from rtms_lifecycle.receiver import runner as receiver
    except ImportError as exc:
        raise Failure(str(exc)) from exc
    receiver.run(
        host=host,
        port=port,
        path=path,
        db=app.db,
        log_level=log_level,
        log_format="json" if log_format == "json" else "text",
        metrics=metrics,
        store_timeout=store_timeout,
        keep_alive_timeout=keep_alive_timeout,
        request_timeout=request_timeout,
        limit_concurrency=limit_concurrency,
        backlog=backlog,
        replay_window=replay_window,
        max_event_ahead=max_event_ahead,
        min_event_time=min_event_time,
        dashboard_idle=dashboard_idle,
        claims_older_than=claims_older_than,
        long_live=long_live,
        forwarded_allow_ips=forwarded_allow_ips,
    )
