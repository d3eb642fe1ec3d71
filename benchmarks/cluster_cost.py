"""Server CPU per job on a one-shard vs a three-shard local cluster (and a standalone server).

    python benchmarks/cluster_cost.py [--jobs 3000] [--queues 6]

For each deployment: enqueue ``--jobs`` no-op jobs spread over ``--queues`` queues, drain them with
one inline worker (``--burst``), then sum ``INFO commandstats`` over every master: microseconds of
server time per job (enqueue + take + finish + the worker's heartbeats while it ran): the servers'
own CPU (``INFO cpu``), the scripts' time (EVALSHA usec: a script's inner calls are in it), and
the scripts run per job. Ports: as the tests' clusters pick them (``NBQUEUE_TEST_PORTS=lo-hi`` to choose).
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

import nbqueue  # noqa: E402
from benchmarks import tasks  # noqa: E402
from clusters import LocalCluster  # noqa: E402
from servers import PrivateRedis  # noqa: E402


class _Volatile(PrivateRedis):
    """No append-only file, as the clusters' nodes here: the same work per command."""

    def command(self) -> list:
        cmd = super().command()
        cmd[cmd.index("--appendonly") + 1] = "no"
        return cmd


def _stats(urls: list) -> dict:
    """Summed over every server: the CPU it used (s), and per command name its calls and usec. A
    script's own calls are counted under their names too, so only top-level commands are summed."""
    totals = {"cpu": 0.0, "evalsha_calls": 0, "evalsha_usec": 0, "top_calls": 0}  # top_calls: BLPOPs
    for url in urls:
        with redis.Redis.from_url(url) as client:
            cpu = client.info("cpu")
            totals["cpu"] += cpu["used_cpu_user"] + cpu["used_cpu_sys"]
            for name, stat in client.info("commandstats").items():
                if name in ("cmdstat_evalsha", "cmdstat_eval"):
                    totals["evalsha_calls"] += stat["calls"]
                    totals["evalsha_usec"] += stat["usec"]
                elif name == "cmdstat_blpop":
                    totals["top_calls"] += stat["calls"]
    return totals


def _reset(urls: list) -> None:
    for url in urls:
        with redis.Redis.from_url(url) as client:
            client.config_resetstat()


def measure(url: str, masters: list, jobs: int, queues: int) -> dict:
    names = [f"q{i}" for i in range(queues)]
    conn = nbqueue.connect(url)
    _reset(masters)
    before = _stats(masters)
    began = time.perf_counter()
    for i in range(jobs):
        nbqueue.Queue(names[i % queues], conn).enqueue(tasks.noop)
    worker = subprocess.run([sys.executable, "-m", "nbqueue.cli", "worker", *names, "--inline", "--burst",
                             "--url", url], cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
    elapsed = time.perf_counter() - began
    after = _stats(masters)
    return {"server CPU us/job": (after["cpu"] - before["cpu"]) * 1e6 / jobs,
            "script us/job": after["evalsha_usec"] / jobs, "scripts/job": after["evalsha_calls"] / jobs,
            "BLPOPs/job": after["top_calls"] / jobs, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--queues", type=int, default=6)
    args = parser.parse_args()
    rows = []
    print(f"{args.jobs} jobs over {args.queues} queue(s), one inline worker; INFO cpu and commandstats summed "
          f"over masters (scripts: top-level EVALSHA calls and their time)", flush=True)
    with tempfile.TemporaryDirectory(prefix="nbqcost-") as tmp:
        with _Volatile.tcp(Path(tmp) / "standalone", "127.0.0.1") as server:
            rows.append(("standalone", measure(server.url, [server.url], args.jobs, args.queues)))
        for masters in (1, 3):
            with LocalCluster(Path(tmp) / f"c{masters}", masters=masters) as cluster:
                rows.append((f"cluster, {masters} shard(s)",
                             measure(cluster.url, cluster.node_urls, args.jobs, args.queues)))
    for name, row in rows:
        print(f"{name:<22} " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
