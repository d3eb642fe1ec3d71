"""Server CPU per job on a one-shard vs a three-shard local cluster (and a standalone server).

    python benchmarks/cluster_cost.py [--jobs 3000] [--queues 6]

For each deployment: enqueue ``--jobs`` no-op jobs spread over ``--queues`` queues, drain them with
one inline worker (``--burst``), then sum ``INFO commandstats`` over every master: microseconds of
server time per job (enqueue + take + finish + the worker's heartbeats while it ran), and the
commands per job. Ports: as the tests' clusters pick them (``NBQUEUE_TEST_PORTS=lo-hi`` to choose).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402

from clusters import LocalCluster  # noqa: E402
from servers import PrivateRedis  # noqa: E402

import nbqueue  # noqa: E402


class _Volatile(PrivateRedis):
    """No append-only file, as the clusters' nodes here: the same work per command."""

    def command(self) -> list:
        cmd = super().command()
        cmd[cmd.index("--appendonly") + 1] = "no"
        return cmd


def _stats(urls: list) -> tuple:
    """(usec, calls) summed over every command of every server."""
    usec = calls = 0
    for url in urls:
        with redis.Redis.from_url(url) as client:
            for stat in client.info("commandstats").values():
                usec += stat["usec"]
                calls += stat["calls"]
    return usec, calls


def _reset(urls: list) -> None:
    for url in urls:
        with redis.Redis.from_url(url) as client:
            client.config_resetstat()


def measure(url: str, masters: list, jobs: int, queues: int) -> dict:
    names = [f"q{i}" for i in range(queues)]
    conn = nbqueue.connect(url)
    _reset(masters)
    began = time.perf_counter()
    for i in range(jobs):
        nbqueue.Queue(names[i % queues], conn).enqueue(print)  # never run: a worker would print
    enqueued = _stats(masters)
    worker = subprocess.run([sys.executable, "-m", "nbqueue.cli", "worker", *names, "--inline", "--burst",
                             "--url", url], cwd=str(ROOT / "tests"), capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
    elapsed = time.perf_counter() - began
    usec, calls = _stats(masters)
    return {"us/job": usec / jobs, "enqueue us/job": enqueued[0] / jobs, "commands/job": calls / jobs,
            "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--queues", type=int, default=6)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nbqcost-") as tmp:
        with _Volatile.tcp(Path(tmp) / "standalone", "127.0.0.1") as server:
            rows.append(("standalone", measure(server.url, [server.url], args.jobs, args.queues)))
        for masters in (1, 3):
            with LocalCluster(Path(tmp) / f"c{masters}", masters=masters) as cluster:
                rows.append((f"cluster, {masters} shard(s)",
                             measure(cluster.url, cluster.node_urls, args.jobs, args.queues)))
    print(f"{args.jobs} jobs over {args.queues} queues, one inline worker; INFO commandstats summed over masters")
    for name, row in rows:
        print(f"{name:<22} " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
