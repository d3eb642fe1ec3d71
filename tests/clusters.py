"""A private Redis/Valkey Cluster for tests: N masters (and optionally one replica each) on
127.0.0.1 ports of their own (never 6379), started from the tests' server binary and joined
with CLUSTER ADDSLOTSRANGE, CLUSTER MEET and CLUSTER REPLICATE through the client (no
redis-cli needed).

    with LocalCluster(tmp_path, masters=3, replicas=1) as cluster:
        cluster.url                                   # redis+cluster://127.0.0.1:<port>
        cluster.client()                              # a RedisCluster
        master = cluster.master_of(b"nbq:{abcd}:queue:x")
        cluster.kill(master); cluster.wait_promoted(master)

Ports: free ones the kernel picks, or, with ``NBQUEUE_TEST_PORTS=7100-7199``, free ones in that
range (each node needs two: clients and the cluster bus, ``--cluster-port``: Redis 7.0+, Valkey).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from nbqueue.server import find_binary
from servers import PrivateRedis

HOST = "127.0.0.1"
SLOTS = 16384
NODE_TIMEOUT = 1000  # ms: a master unreachable this long is failed over by its replica


def _free_ports(count: int) -> Iterator[int]:
    """``count`` TCP ports free on HOST now: in ``$NBQUEUE_TEST_PORTS`` (``lo-hi``) if set, else the kernel's."""
    span = os.environ.get("NBQUEUE_TEST_PORTS")
    if not span:
        socks = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((HOST, 0))
                socks.append(sock)
            yield from (s.getsockname()[1] for s in socks)
        finally:
            for sock in socks:
                sock.close()
        return
    low, high = (int(p) for p in span.split("-"))
    given = 0
    for port in range(low, high + 1):
        if given == count:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        if port not in _TAKEN:
            _TAKEN.add(port)
            given += 1
            yield port
    raise RuntimeError(f"not {count} free ports in NBQUEUE_TEST_PORTS={span}")


_TAKEN: set = set()  # ports of NBQUEUE_TEST_PORTS handed out in this process (a node may be down)


class ClusterNode(PrivateRedis):
    """One cluster-enabled server: its client port and its bus port."""

    def __init__(self, data_dir: Path, port: int, bus_port: int, binary: Optional[str], persist: bool):
        super().__init__(data_dir, host=HOST, port=port, binary=binary)
        self.bus_port = bus_port
        self.persist = persist
        self.node_id = ""

    def command(self) -> list:
        cmd = super().command()
        if not self.persist:  # fast: the session's cluster needs no durability
            cmd[cmd.index("--appendonly") + 1] = "no"
        return cmd + ["--cluster-enabled", "yes", "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                      "--cluster-port", str(self.bus_port), "--cluster-node-timeout", str(NODE_TIMEOUT),
                      "--cluster-replica-validity-factor", "0", "--cluster-require-full-coverage", "no"]

    def info(self, section: str) -> dict:
        with self.client(timeout=2) as client:
            return client.info(section)


def require_cluster_support(binary: str) -> None:
    """Skip (with the reason) where ``binary`` can't run this harness's clusters: Redis before 7.0
    has no ``--cluster-port``. nbqueue itself has no such limit; its CI runs the cluster suites on
    Valkey 8, and the standalone suites on Redis 6.2 too."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    if found and "Valkey" not in out and (int(found.group(1)), int(found.group(2))) < (7, 0):
        pytest.skip(f"the local cluster harness needs Redis 7.0+ (--cluster-port); this server is {out.split()[2]}")


class LocalCluster:
    """``masters`` masters sharing the 16384 slots evenly (1: one owning them all, as managed
    services give), each with ``replicas`` replicas. ``persist``: append-only files (fsync always)."""

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 0, binary: Optional[str] = None,
                 persist: bool = False):
        require_cluster_support(binary or find_binary())
        ports = iter(_free_ports(2 * masters * (1 + replicas)))
        self.nodes: list[ClusterNode] = [
            ClusterNode(Path(data_dir) / f"node{i}", next(ports), next(ports), binary, persist)
            for i in range(masters * (1 + replicas))]
        self.masters_count, self.replicas_count = masters, replicas
        self._clients: list = []

    @property
    def url(self) -> str:
        """A cluster URL naming the first node (any node leads the client to the others)."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    # --- life -----------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> LocalCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            with node.client() as client:
                node.node_id = client.execute_command("CLUSTER", "MYID").decode()
        masters = self.nodes[:self.masters_count]
        size = SLOTS // len(masters)
        for i, node in enumerate(masters):
            last = SLOTS - 1 if i == len(masters) - 1 else (i + 1) * size - 1
            with node.client() as client:
                try:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * size, last)
                except redis.ResponseError:  # before Redis 7.0
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(i * size, last + 1))
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", HOST, node.port, node.bus_port)
        deadline = time.monotonic() + timeout
        for r in range(self.replicas_count):
            for i, master in enumerate(masters):
                replica = self.nodes[self.masters_count * (1 + r) + i]
                self._until(lambda master=master, replica=replica: master.node_id.encode() in self._nodes_text(replica),
                            deadline, f"{replica.url} learned of {master.url}")
                with replica.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", master.node_id)
        for node in self.nodes:
            self._until(lambda node=node: self._healthy(node), deadline, f"{node.url} sees the whole cluster")
        for node in self.nodes[self.masters_count:]:
            self._until(lambda node=node: node.info("replication").get("master_link_status") == "up", deadline,
                        f"replica {node.url} in sync")
        return self

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _healthy(self, node: ClusterNode) -> bool:
        try:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
        except (redis.RedisError, OSError):
            return False
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        alive = sum(1 for n in self.nodes if n.pid is not None)
        return fields.get("cluster_state") == "ok" and int(fields.get("cluster_known_nodes", 0)) >= alive \
            and int(fields.get("cluster_slots_ok", 0)) == SLOTS

    @staticmethod
    def _nodes_text(node: ClusterNode) -> bytes:
        with node.client() as client:
            return client.execute_command("CLUSTER", "NODES")

    @staticmethod
    def _until(predicate, deadline: float, what: str) -> None:
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"local cluster: timed out waiting until {what}")
            time.sleep(0.02)

    # --- use ------------------------------------------------------------------------------------
    def client(self, **options: object) -> RedisCluster:
        """A RedisCluster client (closed by ``stop``)."""
        client = RedisCluster(host=HOST, port=self.nodes[0].port, **options)
        self._clients.append(client)
        return client

    def masters(self) -> list[ClusterNode]:
        """The nodes that are masters now (after a failover, a former replica)."""
        return [n for n in self.nodes if n.pid is not None and n.info("replication").get("role") == "master"]

    def master_of(self, key: bytes) -> ClusterNode:
        """The master that holds ``key``'s slot now."""
        slot = key_slot(key)
        for node in self.masters():
            if self._owns(node, slot):
                return node
        raise LookupError(f"no master holds the slot of {key!r}")

    @staticmethod
    def _owns(node: ClusterNode, slot: int) -> bool:
        with node.client() as client:
            for line in client.execute_command("CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for span in fields[8:]:
                        low, _, high = span.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            return True
        return False

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        for node in self.nodes:
            if node is not master and node.pid is not None:
                if node.info("replication").get("master_port") == master.port:
                    return node
        raise LookupError(f"{master.url} has no live replica")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node`` (no goodbye to the cluster: its peers find out by timeout)."""
        node.kill()

    def wait_promoted(self, replica: ClusterNode, timeout: float = 30) -> float:
        """Wait until ``replica`` is a master and every live node sees the cluster whole; the seconds taken."""
        began = time.monotonic()
        deadline = began + timeout
        self._until(lambda: replica.info("replication").get("role") == "master", deadline,
                    f"{replica.url} promoted")
        for node in self.nodes:
            if node.pid is not None:
                self._until(lambda node=node: self._healthy(node), deadline, f"{node.url} sees the cluster ok")
        return time.monotonic() - began

    def flush(self) -> None:
        """FLUSHALL on every master."""
        for node in self.masters():
            with node.client() as client:
                client.flushall()
