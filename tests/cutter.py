"""A TCP proxy in front of a Redis that loses replies on purpose: a real connection cut at the
worst moment, after the server ran a command and before its reply reached the client.

    with ReplyCutter(redis_url) as proxy:        # proxy.url: where clients connect instead
        proxy.arm(b"some bytes")                 # the next packet holding them is cut (skip=1: the 2nd)
        ...
        wait_for(lambda: proxy.cuts == 1, 10)

Armed with a byte string, the proxy forwards the next client packet holding it; once the server's
reply to it begins to arrive it closes both sides without passing a byte of it on (``after=True``),
or it drops that packet unsent and closes both sides (``after=False``: the command never ran).
Every other byte goes through unchanged, and new connections are accepted as before.
"""
from __future__ import annotations

import socket
import threading
from typing import Callable, Optional
from urllib.parse import urlparse


class ReplyCutter:
    def __init__(self, target_url: str):
        target = urlparse(target_url)
        if target.scheme == "unix":
            self._family, self._address = socket.AF_UNIX, target.path
        else:
            self._family, self._address = socket.AF_INET, (target.hostname or "127.0.0.1", target.port or 6379)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self._lock = threading.Lock()
        self._pattern: Optional[bytes] = None
        self._after = True
        self._skip = 0
        self.cuts = 0  # connections cut so far
        self._closed = False
        self._sockets: list[socket.socket] = []

    def arm(self, pattern: bytes, after: bool = True, skip: int = 0) -> None:
        """Cut the connection of the next client packet that holds ``pattern`` (see the module), or
        with ``skip`` of the one after ``skip`` such packets passed."""
        with self._lock:
            self._pattern, self._after, self._skip = pattern, after, skip

    # --- life ---------------------------------------------------------------------------------
    def __enter__(self) -> ReplyCutter:
        threading.Thread(target=self._accept, daemon=True, name="cutter-accept").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                server.connect(self._address)
            except OSError:
                _close(client)
                continue
            link = _Link(self, client, server)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=link.upstream, daemon=True, name="cutter-up").start()
            threading.Thread(target=link.downstream, daemon=True, name="cutter-down").start()

    def _claim(self, chunk: bytes) -> Optional[bool]:
        """Whether this packet is the one to cut (and how: after it ran or before), disarming."""
        with self._lock:
            if self._pattern is None or self._pattern not in chunk:
                return None
            if self._skip:
                self._skip -= 1
                return None
            self._pattern = None
            return self._after

    def _cut(self, link: _Link) -> None:
        with self._lock:
            self.cuts += 1
        _close(link.client)
        _close(link.server)


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, proxy: ReplyCutter, client: socket.socket, server: socket.socket):
        self.proxy, self.client, self.server = proxy, client, server
        self.cut_next_reply = threading.Event()

    def upstream(self) -> None:
        self._pump(self.client, self.server, self._request_passes)

    def downstream(self) -> None:
        self._pump(self.server, self.client, self._reply_passes)

    def _pump(self, src: socket.socket, dst: socket.socket, passes: Callable[[bytes], bool]) -> None:
        """Forward what ``src`` sends to ``dst`` while ``passes(chunk)``; when either end closes, close the other."""
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk or not passes(chunk):
                _close(dst)
                return
            try:
                dst.sendall(chunk)
            except OSError:
                _close(src)
                return

    def _request_passes(self, chunk: bytes) -> bool:
        how = self.proxy._claim(chunk)
        if how is False:  # the command never reaches the server
            self.proxy._cut(self)
            return False
        if how:
            self.cut_next_reply.set()
        return True

    def _reply_passes(self, chunk: bytes) -> bool:
        if self.cut_next_reply.is_set():  # the server ran it and answered: the answer is lost
            self.proxy._cut(self)
            return False
        return True


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
