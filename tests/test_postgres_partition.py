"""PostgreSQL out of reach without a word (a failover, a dropped route): nothing waits unbounded.

The proxy (tests/_proxy.py) blackholes the connections for real: it forwards nothing and
closes nothing, and new connections are accepted but never reach the server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url

from rtms_lifecycle import Tracker
from rtms_lifecycle.exceptions import DatabaseUnavailable, StoreError, StoreTimeout
from rtms_lifecycle.store.deadline import ABORT_AFTER_S, CANCEL_TIMEOUT_S, DEFAULT_STORE_TIMEOUT
from rtms_lifecycle.store.engine import create_store_engine
from tests._deliveries import raw
from tests._live import signed
from tests._proxy import Proxy
from tests._served import serve_command

T0 = 1_700_000_000_000
# What a loaded test machine may add to a bound (a thread's turn, a process's start).
SLACK_S = 1.5


@pytest.fixture
def proxied(
    make_postgres_url: Callable[..., str], migrated_postgres_template: str
) -> Iterator[tuple[Proxy, str]]:
    """A proxy in front of a fresh migrated database, and the database's URL through it."""
    url = make_url(make_postgres_url(template=migrated_postgres_template))
    proxy = Proxy(url.port or 5432)
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    finally:
        proxy.close()


def _deliver(base: str, body: bytes) -> tuple[int, float]:
    began = time.monotonic()
    answer = httpx.post(f"{base}/webhook", content=body, headers=signed(body), timeout=30)
    return answer.status_code, time.monotonic() - began


def _poll(what: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_the_receiver_answers_503_within_its_budget_while_postgresql_is_blackholed(
    proxied: tuple[Proxy, str], tmp_path: Path
) -> None:
    """Deliveries and /healthz are answered 503 within the budget, and 200 again once the
    network heals."""
    proxy, url = proxied
    bound = DEFAULT_STORE_TIMEOUT + SLACK_S
    with serve_command(url, tmp_path) as served:
        assert _deliver(served.url, raw("started", "s0", T0))[0] == 200
        proxy.drop()
        for n in range(1, 4):  # a held connection, then new ones (connects that hang)
            status, took = _deliver(served.url, raw("started", f"s{n}", T0))
            assert (status, took < bound) == (503, True), took
        began = time.monotonic()
        health = httpx.get(f"{served.url}/healthz", timeout=30)
        assert (health.status_code, time.monotonic() - began < bound) == (503, True)
        proxy.forward()
        # Broken connections were discarded: the next deliveries get live ones.
        _poll(lambda: _deliver(served.url, raw("started", "s9", T0))[0] == 200, timeout=10)
        assert httpx.get(f"{served.url}/healthz", timeout=30).status_code == 200
    assert any("store busy" in line for line in served.lines())


def test_a_budgeted_write_on_a_blackholed_connection_gives_up_and_discards_it(
    proxied: tuple[Proxy, str],
) -> None:
    """The cancel cannot reach the server: the statement's socket is shut down past the
    deadline, the write fails as timed out, and the connection is not used again."""
    proxy, url = proxied
    with Tracker(url) as tracker:
        tracker.ingest(raw("started", "s0", T0))
        proxy.drop()
        began = time.monotonic()
        with pytest.raises(StoreTimeout):
            tracker.ingest(raw("started", "s1", T0), timeout=1.0)
        took = time.monotonic() - began
        assert took < 1.0 + max(ABORT_AFTER_S, CANCEL_TIMEOUT_S) + SLACK_S, took
        proxy.forward()
        began = time.monotonic()
        assert tracker.ingest(raw("started", "s2", T0), timeout=5.0).delivery_id
        assert time.monotonic() - began < 5.0


def test_a_tracker_without_a_budget_fails_within_the_urls_connect_timeout(
    proxied: tuple[Proxy, str],
) -> None:
    """No budget: a connect the server never answers ends at connect_timeout (the URL's own,
    2 s here, over the default 10 s), as DatabaseUnavailable."""
    proxy, url = proxied
    proxy.drop()
    began = time.monotonic()
    with (
        pytest.raises(DatabaseUnavailable, match="timeout"),
        Tracker(f"{url}?connect_timeout=2") as tracker,
    ):
        tracker.ingest(raw("started", "s1", T0))
    took = time.monotonic() - began
    assert 2.0 <= took < 2.0 + SLACK_S, took


def _socket_options(url: str) -> dict[str, int]:
    engine = create_store_engine(url)
    try:
        held = engine.raw_connection()
        try:
            conn: Any = held.driver_connection
            with closing(socket.socket(fileno=conn.pgconn.socket)) as sock:
                try:
                    return {
                        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                        "user_timeout": sock.getsockopt(
                            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT
                        ),
                    }
                finally:
                    sock.detach()  # the descriptor is libpq's
        finally:
            held.close()
    finally:
        engine.dispose()


def test_libpq_timeouts_reach_the_socket_and_the_url_wins(postgres_url: str) -> None:
    """Keepalives and tcp_user_timeout are set on the connection's socket, each replaced by the
    URL's own parameter."""
    assert _socket_options(postgres_url) == {
        "keepalive": 1, "idle": 10, "interval": 5, "count": 3, "user_timeout": 20_000,
    }  # fmt: skip
    own = "?keepalives_idle=7&keepalives_count=2&tcp_user_timeout=3000"
    assert _socket_options(postgres_url + own) == {
        "keepalive": 1, "idle": 7, "interval": 5, "count": 2, "user_timeout": 3000,
    }  # fmt: skip


@contextmanager
def _vanishing(port: int) -> Iterator[None]:
    """Drop every packet to and from ``port`` on loopback in the kernel (iptables): the client's
    own TCP then waits for acknowledgements that never come, as in a real partition."""
    rules = [["INPUT", "-i", "lo", "-p", "tcp", flag, str(port), "-j", "DROP"]
             for flag in ("--dport", "--sport")]  # fmt: skip
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("needs root and iptables to drop packets in the kernel")
    added = []
    try:
        for rule in rules:
            done = subprocess.run(["iptables", "-I", *rule], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"iptables refused a rule: {done.stderr.strip()}")
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-D", *rule], check=True)


def test_a_held_connection_whose_packets_vanish_fails_within_tcp_user_timeout(
    proxied: tuple[Proxy, str],
) -> None:
    """No budget, an open connection, packets lost in the kernel: the write fails once
    tcp_user_timeout (the URL's 3 s here) and a reconnect's connect_timeout (2 s) have run out,
    nothing of it is kept, and the tracker works again once the network heals."""
    proxy, url = proxied
    with Tracker(f"{url}?tcp_user_timeout=3000&connect_timeout=2") as tracker:
        tracker.ingest(raw("started", "s0", T0))
        with _vanishing(proxy.port):
            began = time.monotonic()
            with pytest.raises((StoreError, DatabaseUnavailable), match="timeout"):
                tracker.ingest(raw("started", "s1", T0))
            took = time.monotonic() - began
        assert 3.0 <= took < 3.0 + 2.0 + SLACK_S, took
        assert [s.stream_id for s in tracker.streams()] == ["s0"]
        assert tracker.ingest(raw("started", "s2", T0)).delivery_id
