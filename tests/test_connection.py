"""Which Redis nbqueue picks, and the clients it hands out (real servers, no mocks)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

from nbqueue import connection
from nbqueue.connection import ConnectionFailed, Resolved, connect, describe, get_connection, mask_url, resolve
from nbqueue.server import EmbeddedServer

USER, PASSWORD = "nbqtest", "s3cret-pw"


def free_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_config(monkeypatch):
    """Nothing configured: no NBQUEUE_URL."""
    monkeypatch.delenv("NBQUEUE_URL", raising=False)


@pytest.fixture
def embedded(monkeypatch, wait_for):
    """Private folders for the embedded server, stopped at teardown."""
    path = tempfile.mkdtemp(prefix="nbqc-")
    monkeypatch.setenv("NBQUEUE_RUNTIME_DIR", os.path.join(path, "run"))
    monkeypatch.setenv("NBQUEUE_DATA_DIR", os.path.join(path, "data"))
    server = EmbeddedServer()
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nothing_on_localhost(monkeypatch):
    """Point the localhost probe at a port where nothing listens."""
    monkeypatch.setattr(connection, "LOCAL_URL", f"redis://127.0.0.1:{free_port()}/0")


@pytest.fixture
def user_url(redis_client, redis_url):
    """``unix://user:password@/socket?db=1`` for an ACL user on the private server."""
    if os.environ.get("NBQUEUE_TEST_URL"):
        pytest.skip("creates an ACL user: only on the private test server")
    redis_client.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
                             channels=["*"], commands=["+@all"], reset=True)
    path = redis.ConnectionPool.from_url(redis_url).connection_kwargs["path"]
    yield f"unix://{USER}:{PASSWORD}@{path}?db=1"
    redis_client.acl_deluser(USER)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


# -- resolution order --------------------------------------------------------

def test_argument_beats_nbqueue_url(monkeypatch, redis_url):
    monkeypatch.setenv("NBQUEUE_URL", redis_url)
    url = "redis://example.invalid:1/2"
    assert resolve(url) == Resolved(url, "argument")
    assert resolve() == Resolved(redis_url, "NBQUEUE_URL")


def test_nbqueue_url_beats_localhost(monkeypatch, redis_url):
    monkeypatch.setattr(connection, "LOCAL_URL", redis_url)  # something answers "locally"
    monkeypatch.setenv("NBQUEUE_URL", "redis://example.invalid:1/0")
    assert resolve().source == "NBQUEUE_URL"


def test_localhost_beats_embedded(no_config, monkeypatch, redis_url):
    monkeypatch.setattr(connection, "LOCAL_URL", redis_url)
    assert resolve() == Resolved(redis_url, "localhost")


def test_real_localhost_is_found_when_running(no_config):
    # Read-only: a PING. Never writes to the machine's Redis.
    if not connection._answers(connection.LOCAL_URL):
        pytest.skip("no Redis on localhost:6379")
    assert resolve() == Resolved("redis://localhost:6379/0", "localhost")


def test_embedded_when_nothing_else(no_config, nothing_on_localhost, embedded):
    started = time.monotonic()
    first = resolve()
    assert time.monotonic() - started < 5
    assert first == Resolved(embedded.url, "embedded") and first.started
    assert first.data_dir == str(embedded.data_dir)
    again = resolve()
    assert again.url == embedded.url and not again.started
    assert connect().ping()


def test_refused_probe_is_fast(nothing_on_localhost):
    started = time.monotonic()
    assert not connection._answers(connection.LOCAL_URL)
    assert time.monotonic() - started < 0.5


def test_embedded_keyword(monkeypatch, embedded, redis_url):
    monkeypatch.setenv("NBQUEUE_URL", redis_url)
    assert resolve("embedded").source == "embedded"
    monkeypatch.setenv("NBQUEUE_URL", " embedded ")
    assert resolve() == Resolved(embedded.url, "embedded")
    assert embedded.is_running()


# -- URLs ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["localhost:6379", "http://localhost", "redis://localhost:port/0"])
def test_bad_url_is_a_clear_value_error(monkeypatch, bad):
    with pytest.raises(ValueError, match=r"redis://.*unix://"):
        resolve(bad)
    monkeypatch.setenv("NBQUEUE_URL", bad)
    with pytest.raises(ValueError, match="invalid Redis URL"):
        connect()


def test_user_password_and_db_in_a_unix_url(user_url, redis_client):
    client = connect(user_url)
    assert client.acl_whoami() in (USER, USER.encode())  # redis-py decodes this reply
    client.set("k", b"v")
    assert redis_client.get("k") is None  # db 1, not db 0
    assert describe(client).startswith(f"unix://{USER}:***@/") and describe(client).endswith("?db=1")
    assert PASSWORD not in describe(client)


def test_wrong_password_is_reported_without_the_password(user_url):
    wrong = user_url.replace(PASSWORD, "not-the-password")
    with pytest.raises(ConnectionFailed, match="credentials") as info:
        connect(wrong)
    assert "not-the-password" not in str(info.value)


@pytest.mark.parametrize("url, expected", [
    ("redis://u:pw@h:7/3", "redis://u:***@h:7/3"),
    ("redis://:pw@h", "redis://:***@h"),
    ("unix://u:pw@/tmp/r.sock?db=1", "unix://u:***@/tmp/r.sock?db=1"),
    ("redis://h/0?password=pw", "redis://h/0?password=***"),
    ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
])
def test_mask_url(url, expected):
    assert mask_url(url) == expected


def test_describe_tcp_and_tls():
    assert describe(redis.Redis.from_url("redis://u:pw@h:7/3")) == "redis://u:***@h:7/3"
    assert describe(redis.Redis.from_url("rediss://h")) == "rediss://h:6379/0"


def test_nothing_listening_is_a_clear_error(monkeypatch):
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConnectionFailed, match=f"{url}.*start Redis there"):
        connect(url)
    monkeypatch.setenv("NBQUEUE_URL", url)
    with pytest.raises(ConnectionFailed, match="unset NBQUEUE_URL"):
        connect()
    with pytest.raises(ConnectionFailed, match="no-such.sock"):
        connect("unix:///tmp/no-such.sock")


# -- clients --------------------------------------------------------------------

def test_one_client_per_url_and_get_connection(redis_url):
    client = connect(redis_url)
    assert connect(redis_url) is client and connect() is client  # NBQUEUE_URL is redis_url
    assert get_connection() is client and get_connection(redis_url) is client
    other = redis.Redis.from_url(redis_url)
    assert get_connection(other) is other
    with pytest.raises(TypeError):
        get_connection(42)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] is None and kwargs["health_check_interval"] == 30
    assert not kwargs.get("decode_responses")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_gets_its_own_client_after_fork(redis_url, redis_client):
    parent = connect(redis_url)
    parent.set("who", b"parent")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, then leave without running pytest's teardown
        try:
            child = connect(redis_url)
            ok = child is not parent and child.get("who") == b"parent" and child.set("who", b"child")
            os.write(write, b"ok" if ok else b"same client")
        except BaseException as e:
            os.write(write, repr(e).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert parent.get("who") == b"child" and connect(redis_url) is parent


# -- the announcement --------------------------------------------------------------

ANNOUNCE = "from nbqueue.connection import connect\nconnect(); connect(); connect().ping()\n"


def test_announced_once_with_password_masked(user_url):
    done = run_python(ANNOUNCE, NBQUEUE_URL=user_url)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    masked = user_url.replace(PASSWORD, "***")
    assert lines == [f"nbqueue: using Redis at {masked} (from NBQUEUE_URL)"]
    assert PASSWORD not in done.stderr + done.stdout


def test_announced_through_logging_when_configured(redis_url):
    code = "import logging, sys\nlogging.basicConfig(level=logging.INFO, stream=sys.stdout)\n" + ANNOUNCE
    done = run_python(code, NBQUEUE_URL=redis_url)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    line = f"INFO:nbqueue:nbqueue: using Redis at {redis_url} (from NBQUEUE_URL)"
    assert done.stdout.splitlines() == [line]


def test_embedded_announcement(embedded):
    first = run_python(ANNOUNCE, NBQUEUE_URL="embedded")
    second = run_python(ANNOUNCE, NBQUEUE_URL="embedded")
    assert first.stderr == (f"nbqueue: using the embedded Redis at {embedded.url} "
                            f"(started it; data in {embedded.data_dir})\n")
    assert second.stderr == f"nbqueue: using the embedded Redis at {embedded.url} (already running)\n"
    assert Path(embedded.socket_path).exists()
