"""The embedded server, run for real in private temporary folders."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from nbqueue.server import EmbeddedServer, ServerError, _pid_alive, default_runtime_dir, ensure_embedded


def _multi_part_aof(binary: str) -> bool:
    """Whether this server keeps its append-only file as a folder with a manifest (Redis 7.0+, Valkey),
    rather than the single ``appendonly.aof`` of Redis 6.2 (the oldest nbqueue supports)."""
    text = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    version = text.split("v=", 1)[1].split()[0]
    return "valkey" in text.lower() or int(version.split(".")[0]) >= 7


def _processes_on(socket_path: str) -> list[int]:
    """Pids of live server processes whose command line names ``socket_path``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if socket_path in cmdline and _pid_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def folders():
    """A short temporary folder (unix socket paths are limited)."""
    path = Path(tempfile.mkdtemp(prefix="nbqs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(folders, wait_for):
    """An EmbeddedServer in private folders; stopped (or killed) at teardown."""
    srv = EmbeddedServer(runtime_dir=folders / "run", data_dir=folders / "data")
    yield srv
    pid = srv.pid()
    try:
        srv.stop()
    finally:
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not _pid_alive(pid), message="the server to die")


def test_start_status_stop(server):
    assert not server.is_running()
    assert server.status()["running"] is False
    assert server.start() == server.url == f"unix://{server.socket_path}"
    assert server.launched and server.is_running()
    assert os.stat(server.runtime_dir).st_mode & 0o777 == 0o700
    status = server.status()
    assert status["running"] and status["aof_enabled"]
    assert status["pid"] == server.pid() and status["keys"] == 0
    assert status["data_dir"] == str(server.data_dir)
    assert status["version"] and status["used_memory_human"]

    pid = server.pid()
    assert server.start() == server.url  # idempotent
    assert not server.launched and server.pid() == pid

    assert server.stop() is True
    assert not server.is_running() and not _pid_alive(pid)
    assert not os.path.exists(server.socket_path) and not os.path.exists(server.pidfile)
    assert server.stop() is False


def test_data_survives_a_restart(server):
    server.start()
    client = server.client()
    client.rpush("nbq:test:list", b"a", b"b", b"c")
    client.close()
    old_pid = server.pid()
    server.stop()
    server.start()
    assert server.pid() != old_pid
    client = server.client()
    assert client.lrange("nbq:test:list", 0, -1) == [b"a", b"b", b"c"]
    client.close()


def test_restart_after_sigkill_with_stale_files(server, wait_for):
    server.start()
    pid = server.pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _pid_alive(pid), message="the server to die")
    assert os.path.exists(server.socket_path) and os.path.exists(server.pidfile)  # stale
    assert not server.is_running()
    server.start(timeout=5)
    assert server.launched and server.is_running() and server.pid() != pid


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts processes through /proc")
def test_two_processes_starting_at_once_share_one_server(server, folders, wait_for):
    script = (
        "import os, sys, time\n"
        "from nbqueue.server import EmbeddedServer\n"
        "s = EmbeddedServer(sys.argv[1], sys.argv[2])\n"
        "open(sys.argv[3], 'w').close()\n"
        "while not os.path.exists(sys.argv[4]): time.sleep(0.001)\n"
        "s.start()\n"
        "print(s.pid(), s.launched)\n"
    )
    go = folders / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(server.runtime_dir), str(server.data_dir),
             str(folders / f"ready{i}"), str(go)],
            stdout=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        wait_for(lambda: all((folders / f"ready{i}").exists() for i in range(2)), message="ready")
        go.touch()
        outputs = [p.communicate(timeout=30)[0].split() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert outputs[0][0] == outputs[1][0] == str(server.pid())
    assert sorted(o[1] for o in outputs) == ["False", "True"]  # exactly one launched it
    assert _processes_on(server.socket_path) == [server.pid()]


def test_failed_start_raises_with_the_log(server):
    if _multi_part_aof(server.binary):
        junk, what = server.data_dir / "appendonlydir" / "appendonly.aof.manifest", "manifest"
    else:
        junk, what = server.data_dir / "appendonly.aof", "append only file"
    junk.parent.mkdir(parents=True)
    junk.write_text("this is not an append-only file\n")
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        server.start(timeout=10)
    assert time.monotonic() - started < 5  # noticed the exit, did not wait for the timeout
    assert server.logfile in str(info.value) and what in str(info.value).lower()
    assert not server.is_running()


def test_socket_path_too_long():
    with pytest.raises(ServerError, match="NBQUEUE_RUNTIME_DIR"):
        EmbeddedServer(runtime_dir="/tmp/" + "x" * 120)


def test_bad_binary_override(monkeypatch, folders):
    monkeypatch.setenv("NBQUEUE_SERVER_BINARY", str(folders / "no-such-server"))
    with pytest.raises(ServerError, match="NBQUEUE_SERVER_BINARY"):
        EmbeddedServer(folders / "run", folders / "data").start()


def test_folders_from_environment(monkeypatch, folders):
    monkeypatch.setenv("NBQUEUE_RUNTIME_DIR", str(folders / "r"))
    monkeypatch.setenv("NBQUEUE_DATA_DIR", str(folders / "d"))
    srv = EmbeddedServer()
    assert srv.socket_path == str(folders / "r" / "redis.sock")
    assert srv.data_dir == folders / "d"
    try:
        assert ensure_embedded() == srv.url
        aof = folders / "d" / ("appendonlydir" if _multi_part_aof(srv.binary) else "appendonly.aof")
        assert srv.is_running() and aof.exists()
    finally:
        srv.stop()


def test_default_runtime_dir_warns_nothing(monkeypatch):
    monkeypatch.delenv("NBQUEUE_RUNTIME_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = default_runtime_dir()
    assert path.name == "nbqueue"
