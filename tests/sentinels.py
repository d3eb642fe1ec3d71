"""A private Sentinel deployment for one test: one master, one replica, one sentinel, all on
127.0.0.1 ports of their own (never 6379), started and killed by the test.

    with SentinelSetup(tmp_path) as setup:       # skips the test if no binary can run a sentinel
        setup.url                                 # redis+sentinel://127.0.0.1:<port>/nbq
        setup.kill_master(); setup.wait_failover()
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest
import redis

from servers import PrivateRedis, _die_with_parent, free_port

SERVICE = "nbq"
HOST = "127.0.0.1"


def sentinel_binary() -> Optional[str]:
    """A redis/valkey-server that runs in sentinel mode: ``$NBQUEUE_SENTINEL_BINARY``, Debian's
    redis-server, or the embedded valkey-server; None if none can."""
    from nbqueue.server import find_binary

    candidates = [os.environ.get("NBQUEUE_SENTINEL_BINARY"), "/usr/bin/redis-server", shutil.which("redis-server")]
    try:
        candidates.append(find_binary())
    except Exception:
        pass
    probe = Path(tempfile.mkdtemp(prefix="nbqsp-"))
    try:  # a sentinel configured to listen nowhere logs as one, then exits
        (probe / "probe.conf").write_text(f"port 0\ndir {probe}\nsentinel monitor probe 127.0.0.1 1 1\n")
        for binary in dict.fromkeys(filter(None, candidates)):
            try:
                out = subprocess.run([binary, str(probe / "probe.conf"), "--sentinel"], capture_output=True,
                                     text=True, timeout=10)
            except (OSError, subprocess.SubprocessError):
                continue
            if re.search(r"^\d+:X ", out.stdout + out.stderr, re.M):  # "X": the log's mark of a sentinel
                return binary
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return None


class _Node(PrivateRedis):
    """A private TCP server with extra arguments (e.g. ``--replicaof``)."""

    def __init__(self, data_dir: Path, port: int, binary: str, extra: list):
        super().__init__(data_dir, host=HOST, port=port, binary=binary)
        self.extra = extra

    def command(self) -> list:
        return super().command() + self.extra


class SentinelSetup:
    def __init__(self, tmp_path: Path, down_after_ms: int = 1000):
        binary = sentinel_binary()
        if binary is None:
            pytest.skip("no redis-server/valkey-server that runs in sentinel mode was found "
                        "(set NBQUEUE_SENTINEL_BINARY)")
        self.binary = binary
        self.dir = Path(tmp_path) / "sentinel-setup"
        self.master_port, self.replica_port, self.sentinel_port = (free_port(HOST) for _ in range(3))
        self.master = _Node(self.dir / "master", self.master_port, binary, [])
        self.replica = _Node(self.dir / "replica", self.replica_port, binary,
                             ["--replicaof", HOST, str(self.master_port), "--replica-priority", "100"])
        self.down_after_ms = down_after_ms
        self.sentinel: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.sentinel_port}/{SERVICE}"

    def start(self) -> SentinelSetup:
        self.master.start()
        self.replica.start()
        sdir = self.dir / "sentinel"
        sdir.mkdir(parents=True, exist_ok=True)
        conf = sdir / "sentinel.conf"
        conf.write_text("\n".join([
            f"port {self.sentinel_port}", f"bind {HOST}", f"dir {sdir}", "protected-mode no",
            f"logfile {sdir / 'sentinel.log'}",
            f"sentinel monitor {SERVICE} {HOST} {self.master_port} 1",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} 10000",
            f"sentinel parallel-syncs {SERVICE} 1", ""]))
        self.sentinel = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        self._until(lambda: self.master_address() == (HOST, self.master_port)
                    and self._replica_synced(), 30, "the sentinel to see the master and the replica in sync")
        return self

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(HOST, self.sentinel_port, socket_timeout=1, socket_connect_timeout=1)

    def master_address(self) -> Optional[tuple]:
        try:
            with self.sentinel_client() as client:
                host, port = client.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
                return host.decode(), int(port)
        except (redis.RedisError, OSError, TypeError, ValueError):
            return None

    def _replica_synced(self) -> bool:
        try:
            with self.replica.client() as client:
                info = client.info("replication")
            with self.master.client() as client:
                slaves = client.info("replication").get("connected_slaves", 0)
            return info.get("master_link_status") == "up" and slaves >= 1
        except (redis.RedisError, OSError):
            return False

    def kill_master(self) -> None:
        self.master.kill()

    def wait_failover(self, timeout: float = 60) -> None:
        """Until the sentinel names the replica as master and the replica says it is one."""
        def promoted() -> bool:
            if self.master_address() != (HOST, self.replica_port):
                return False
            try:
                with self.replica.client() as client:
                    return client.info("replication").get("role") == "master"
            except (redis.RedisError, OSError):
                return False
        self._until(promoted, timeout, "the sentinel to promote the replica")

    @staticmethod
    def _until(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.kill()
            self.sentinel.wait(timeout=10)
        self.replica.kill()
        self.master.kill()

    def __enter__(self) -> SentinelSetup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
