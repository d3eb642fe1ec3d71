"""Across hosts: a worker in another network namespace is cut off from Redis mid-job.

Needs root and ``ip netns`` (else skipped, saying why). The test's own hosts: a veth pair,
10.213.<n>.1/30 in the root namespace (Redis listens there, worker B runs here) and
10.213.<n>.2/30 in a fresh namespace (worker A runs there). Cutting the link (host side down)
leaves B reaching Redis on the same address (it is local to this namespace) while A can't.
Everything (processes, veth, namespace) is removed at teardown, even on failure.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import chaos_tasks
from conftest import TESTS_DIR, Events, WorkerProcess, pid_alive, wait_for
from nbqueue import Queue, keys
from servers import PrivateRedis, forked_by

DISCARDED = re.compile(r"lost the job's lease .*its outcome is discarded|not recording the outcome: "
                       r"this attempt no longer holds the job")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class Link:
    ns: str  # the namespace's name
    host_if: str  # veth end in the root namespace
    ns_if: str  # veth end in the namespace
    host_ip: str  # Redis listens here; B connects here
    ns_ip: str

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")


def _free_subnet() -> int:
    used = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
    for _ in range(50):
        n = secrets.randbelow(254) + 1
        if f"10.213.{n}." not in used:
            return n
    raise RuntimeError("no free 10.213.<n>.0/30 subnet for the test")


@pytest.fixture
def link() -> Iterator[Link]:
    """A namespace joined to the root namespace by a veth pair; skips where that can't be done."""
    if sys.platform != "linux" or not shutil.which("ip"):
        pytest.skip("needs Linux with the `ip` command (iproute2)")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (ip netns add)")
    tag = secrets.token_hex(3)
    ns = f"nbqt{tag}"
    added = _ip("netns", "add", ns, check=False)
    if added.returncode != 0:
        pytest.skip(f"`ip netns add` does not work here: {added.stderr.strip()}")
    n = _free_subnet()
    link = Link(ns, f"nbqh{tag}", f"nbqn{tag}", f"10.213.{n}.1", f"10.213.{n}.2")
    try:
        _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
        _ip("link", "set", link.ns_if, "netns", ns)
        _ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        _ip("link", "set", link.host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", link.ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield link
    finally:
        for pid in _ip("netns", "pids", ns, check=False).stdout.split():  # only ours: the namespace is new
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _ip("link", "del", link.host_if, check=False)  # deletes its peer too
        _ip("netns", "del", ns, check=False)


class NamespacedWorker(WorkerProcess):
    """``nbqueue worker`` run through ``ip netns exec`` (which execs, so the pid is the worker's)."""

    def __init__(self, ns: str, args: list, cwd: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "nbqueue.cli", "worker", *args],
            cwd=str(cwd), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid


def _runs(flag_dir: Path) -> list:
    started = sorted(flag_dir.glob("*.started"), key=lambda p: float(p.read_text() or 0))
    return [int(p.name.split(".")[0]) for p in started]


def test_a_cut_off_worker_is_replaced_and_its_late_outcome_refused(link, tmp_path):
    server = PrivateRedis.tcp(tmp_path / "redis", link.host_ip)
    workers: list = []
    with server:
        client = server.client(timeout=5)
        try:
            a = NamespacedWorker(link.ns, ["net", "--url", server.url, "--name", "net-A"], TESTS_DIR,
                                 tmp_path / "worker-A.log")
            workers.append(a)
            a.wait_ready()
            flags = tmp_path / "flags"
            flags.mkdir()
            job = Queue("net", client).enqueue_call(chaos_tasks.long_run, (str(flags), 10.0, 0.5))
            wait_for(lambda: _runs(flags), 15, message="A's run to start")
            [child_a] = _runs(flags)
            assert client.hget(keys.job(job.id), "worker") == b"net-A"
            b = WorkerProcess(["net", "--url", server.url, "--name", "net-B"], TESTS_DIR, tmp_path / "worker-B.log")
            workers.append(b)
            b.wait_ready()
            events = Events.listen(client, job.id)

            link.cut()
            cut_at = time.time()
            result = job.result(timeout=25)  # B re-runs it once A's lease lapsed, then finishes it
            job.refresh()
            rerun_delay = job.started_at.timestamp() - cut_at
            assert forked_by(result["ppid"]) == b.pid
            assert (job.status, job.attempt, job.workers) == ("finished", 2, ["net-A", "net-B"])
            written_by_b = client.hgetall(keys.job(job.id))
            a_still_running = pid_alive(child_a)
            a_log_during_cut = a.log()

            link.restore()
            restored_at = time.time()
            wait_for(lambda: DISCARDED.search(a.log()), 60, message="A to learn its outcome is discarded")
            noticed = time.time() - restored_at
            wait_for(lambda: float(client.zscore("nbq:workers", "net-A") or 0) > restored_at, 30,
                     message="A to heartbeat again after the link came back")
            ends = [e for e in events.close() if e.get("status") in ("finished", "failed", "canceled", "retrying")]
            a_log = a.log()
            print(f"\n[netns] ns {link.ns}, Redis at {server.url}; B re-ran the job {rerun_delay:.2f} s after the cut; "
                  f"A's first run was {'still running' if a_still_running else 'over'} when B finished "
                  f"({'finished its work' if (flags / f'{child_a}.done').exists() else 'never finished its work'}); "
                  f"A logged during the cut: 'lost Redis' x{a_log_during_cut.count('lost Redis')}; "
                  f"{noticed:.2f} s after the link came back A logged {DISCARDED.search(a_log).group(0)!r}; "
                  f"terminal events {[(e['status'], e['worker'], e['attempt']) for e in ends]}")
            assert rerun_delay <= 12
            assert client.hgetall(keys.job(job.id)) == written_by_b  # A's stale writes were refused
            assert [(e["status"], e["worker"], e["attempt"]) for e in ends] == [("finished", "net-B", 2)]
            assert a.proc.poll() is None, "A died instead of riding out the cut"
        finally:
            for worker in workers:
                worker.stop()


def _blocked_in_blpop(client, addr_prefix: str) -> bool:
    """A client from ``addr_prefix`` blocks in BLPOP since a second at least (its request is ACKed, so
    A has nothing to retransmit: cut right after the request, A's retransmission would get an RST)."""
    return any(c.get("cmd") == "blpop" and "b" in str(c.get("flags")) and int(c.get("idle", 0)) >= 1
               and str(c.get("addr", "")).startswith(addr_prefix) for c in client.client_list())


def test_an_idle_worker_whose_connection_died_silently_serves_again(link, tmp_path):
    if not shutil.which("ss"):
        pytest.skip("needs `ss` (iproute2) to drop the server's side of A's connections")
    server = PrivateRedis.tcp(tmp_path / "redis", link.host_ip)
    workers: list = []
    with server:
        client = server.client(timeout=5)
        try:
            a = NamespacedWorker(link.ns, ["idle", "--url", server.url, "--name", "idle-A"], TESTS_DIR,
                                 tmp_path / "worker-A.log")
            workers.append(a)
            a.wait_ready()
            wait_for(lambda: _blocked_in_blpop(client, link.ns_ip + ":"), 15, 0.1, message="A to idle in BLPOP")
            link.cut()
            # the server host forgets A's connections, and A can't hear of it (as if that host crashed)
            killed = subprocess.run(["ss", "-K", "-tn", "dst", link.ns_ip], capture_output=True, text=True, timeout=30)
            left = subprocess.run(["ss", "-Htn", "dst", link.ns_ip], capture_output=True, text=True, timeout=30)
            if killed.returncode != 0 or left.stdout.strip():
                pytest.skip(f"`ss -K` can't destroy sockets here (kernel without INET_DIAG_DESTROY?): {killed.stderr}")
            link.restore()
            restored_at = time.time()
            job = Queue("idle", client).enqueue(chaos_tasks.counted, 1, 0, str(tmp_path / "executions.log"))
            wait_for(lambda: float(client.zscore("nbq:workers", "idle-A") or 0) > restored_at, 15,
                     message="A to heartbeat after the link came back")
            try:
                assert job.result(timeout=15) == 2
            finally:
                print(f"\n[netns-idle] A alive: {a.proc.poll() is None}; job {job.status} "
                      f"{time.time() - restored_at:.1f} s after the link came back; A's log:\n{a.log()}")
        finally:
            for worker in workers:
                worker.stop()
