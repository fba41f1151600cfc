"""A TCP proxy in front of a test server, to cut the network between a client and it.

``close()`` cuts every connection and refuses new ones (a partition the client is told about:
connection reset, then refused). ``drop()`` is a blackhole, a partition nobody is told about:
nothing is forwarded either way any more, no socket is closed, and new connections are accepted
(the kernel completes the TCP handshake) but never reach the server, so a client's connect hangs
in its startup. ``forward()`` heals it: what was held is delivered late, as TCP retransmits.

A proxy in user space cannot make the client's own kernel see packets vanish: what the client
sent is still acknowledged (by the proxy's kernel), so TCP keepalives and ``tcp_user_timeout``
never fire through it. It shows what waits on the server's answer: a connect, a query, a cancel.
(``test_postgres_partition`` drops its packets in the kernel with iptables for the rest.)
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Proxy"]

_POLL_S = 0.05


class Proxy:
    """A TCP proxy on 127.0.0.1 to ``port`` on 127.0.0.1 (see the module)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(_POLL_S)
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.closing = threading.Event()
        self.flowing = threading.Event()
        self.flowing.set()
        self.lock = threading.Lock()
        self._start(self._accept)

    def drop(self) -> None:
        """Blackhole: forward nothing, close nothing, accept new connections but never connect
        them."""
        self.flowing.clear()

    def forward(self) -> None:
        """Forward again, held data and held connections included."""
        self.flowing.set()

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _held(self) -> bool:
        """Wait while dropping; False once closing."""
        while not self.flowing.wait(_POLL_S):
            if self.closing.is_set():
                return False
        return not self.closing.is_set()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                if self.closing.is_set():
                    client.close()
                    return
                self.sockets.append(client)
            self._start(self._connect, client)

    def _connect(self, client: socket.socket) -> None:
        if not self._held():
            return
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            return
        with self.lock:
            self.sockets.append(server)
            if self.closing.is_set():
                return
        self._start(self._pump, client, server)
        self._start(self._pump, server, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while self._held():
                ready, _, _ = select.select([source], [], [], _POLL_S)
                # Dropped meanwhile: what arrived stays in the kernel's buffers, held.
                if not ready or not self.flowing.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Cut every connection, refuse new ones."""
        with self.lock:
            self.closing.set()
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self.threads)
        for thread in threads:
            thread.join(10)
        self.listener.close()
        for sock in self.sockets:
            sock.close()
