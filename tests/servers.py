"""Private Redis servers for one test: AOF on (fsync always), a unix socket or a TCP address.

A test that restarts or cuts off Redis must not do it to the session's shared server, so it
starts its own here. Nothing here touches 127.0.0.1:6379: a TCP server needs an explicit host
(the tests use their own addresses, e.g. a veth pair in a network namespace).

    server = PrivateRedis.unix(tmp_path)          # or PrivateRedis.tcp(tmp_path, "10.213.7.1", port)
    server.start()
    ... server.url ...
    server.restart()                              # graceful SHUTDOWN, same data dir, wait for PING
    server.stop()
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nbqueue.server import find_binary

T = TypeVar("T")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The server gets SIGKILL if pytest dies, so no private server outlives the test run."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class PrivateRedis:
    """One private redis/valkey-server process with an append-only file in ``data_dir``."""

    def __init__(self, data_dir: Path, *, unix_socket: Optional[str] = None,
                 host: Optional[str] = None, port: Optional[int] = None, binary: Optional[str] = None):
        if (unix_socket is None) == (host is None):
            raise ValueError("give either unix_socket or host (and port)")
        if host is not None and (port is None or (host in ("127.0.0.1", "localhost", "::1") and port == 6379)):
            raise ValueError("a TCP private server needs its own port (never the machine's 6379)")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.unix_socket, self.host, self.port = unix_socket, host, port
        self.binary = binary or find_binary()
        self.logfile = str(self.data_dir / "server.log")
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def unix(cls, data_dir: Path) -> PrivateRedis:
        """A server on a unix socket in a short temporary folder (socket paths are limited)."""
        sock_dir = tempfile.mkdtemp(prefix="nbqs-")
        return cls(data_dir, unix_socket=os.path.join(sock_dir, "redis.sock"))

    @classmethod
    def tcp(cls, data_dir: Path, host: str, port: Optional[int] = None) -> PrivateRedis:
        """A server on ``host:port`` (a free port of ``host`` if not given)."""
        return cls(data_dir, host=host, port=port or free_port(host))

    # --- where ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        return f"redis://{self.host}:{self.port}/0"

    def client(self, timeout: float = 1.0) -> redis.Redis:
        """A client that fails fast (no retries, short timeouts): for checks and polling."""
        return redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                    retry=Retry(NoBackoff(), 0))

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    # --- life -----------------------------------------------------------------------------------
    def command(self) -> list:
        cmd = [self.binary, "--daemonize", "no", "--dir", str(self.data_dir), "--logfile", self.logfile,
               "--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        if self.unix_socket:
            cmd += ["--port", "0", "--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        else:
            cmd += ["--port", str(self.port), "--bind", self.host, "--protected-mode", "no"]
        return cmd

    def start(self, timeout: float = 15) -> str:
        """Start the server (on the same data dir as before, if restarted); wait for PING."""
        if self.pid is not None:
            raise RuntimeError(f"private Redis {self.url} already runs (pid {self.pid})")
        if self.unix_socket and os.path.exists(self.unix_socket):
            os.unlink(self.unix_socket)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.pings():
            if self.proc.poll() is not None:
                raise RuntimeError(f"private Redis {self.url} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"private Redis {self.url} did not answer PING within {timeout} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 15) -> None:
        """Graceful: SHUTDOWN (the AOF is flushed), wait for the process to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            with self.client(timeout=2) as client:
                client.shutdown()  # redis-py returns once the server has closed the connection
        except redis.RedisError:
            self.proc.send_signal(signal.SIGTERM)  # also a graceful shutdown
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise RuntimeError(f"private Redis {self.url} did not shut down within {timeout} s; killed it") from None

    def restart(self, timeout: float = 15, while_down: Optional[Callable[[], object]] = None) -> float:
        """Graceful stop, then start on the same data dir; returns the seconds Redis was away.

        ``while_down`` runs between the two (e.g. wait until a worker noticed: a restart takes
        a few milliseconds, so a busy client may otherwise never see Redis gone).
        """
        began = time.monotonic()
        self.stop(timeout)
        if while_down is not None:
            while_down()
        self.start(timeout)
        return time.monotonic() - began

    def kill(self) -> None:
        """Stop it hard (teardown): SIGKILL, no questions asked."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pings(self) -> bool:
        try:
            with self.client(timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):  # refused, timeout, still loading the AOF
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.logfile).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        if self.unix_socket:
            shutil.rmtree(os.path.dirname(self.unix_socket), ignore_errors=True)


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tolerant(call: Callable[[], T], deadline: float, what: str = "Redis call") -> T:
    """Run ``call``, retrying on connection errors (Redis away) until the monotonic ``deadline``."""
    while True:
        try:
            return call()
        except TRANSIENT as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: Redis still unreachable at the deadline ({exc})") from exc
            time.sleep(0.05)


def forked_by(pid: int) -> int:
    """The worker that forked a job's process of parent ``pid``: ``pid`` itself, or the worker above
    the fork server (``nbqueue-forks``) and its keeper (``nbqueue-keeper``) that forked it."""
    while Path(f"/proc/{pid}/comm").read_text().strip() in ("nbqueue-forks", "nbqueue-keeper"):
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return pid
