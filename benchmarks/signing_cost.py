"""What signing costs: enqueue one by one with and without a secret, alternating, on one private server.

    python benchmarks/signing_cost.py [--jobs 5000] [--repeat 9] [--unix] [--server-binary PATH]

Prints the median rate of each and the difference. Target (issue 8): under 5 % of the rate.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from time import perf_counter

sys.path.append(str(Path(__file__).resolve().parent.parent))

import redis

from benchmarks import tasks
from benchmarks.harness import Server
from nbqueue import Queue, keys
from nbqueue.server import find_binary


def flush(client: redis.Redis) -> None:
    """FLUSHALL, then wait until Valkey's background freeing is done (it would skew the next run)."""
    client.flushall(asynchronous=False)
    while client.info("memory").get("lazyfree_pending_objects", 0):
        time.sleep(0.005)


def server_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def enqueue_rate(q: Queue, n: int) -> tuple:
    """Jobs/s (wall clock), and CPU µs per job of this process and of the server (steadier on a
    shared machine: other work adds wall time, not CPU time)."""
    flush(q.connection)
    server = server_cpu(q.connection)
    t, cpu = perf_counter(), time.process_time()
    for _ in range(n):
        q.enqueue(tasks.add, 1, 2)
    seconds, cpu = perf_counter() - t, time.process_time() - cpu
    server = server_cpu(q.connection) - server
    assert len(q) == n
    assert bool(q.connection.hget(keys.job(q.job_ids[0], q.name), "sig")) == (q.signer is not None)
    return n / seconds, cpu / n * 1e6, server / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--unix", action="store_true")
    parser.add_argument("--server-binary", default=None)
    args = parser.parse_args()
    with Server(args.server_binary or find_binary(), unix=args.unix) as server:
        client = redis.Redis.from_url(server.url, socket_timeout=None)
        queues = {"unsigned": Queue("bench", client), "signed": Queue("bench", client, secret="bench")}
        queues["unsigned"]._signer = None  # not the environment's default: no secret at all
        for q in queues.values():
            for _ in range(200):
                q.enqueue(tasks.add, 1, 2)  # warm: script loaded, function checked once
        rates: dict = {"unsigned": [], "signed": []}
        for i in range(args.repeat):
            for name in ("unsigned", "signed") if i % 2 == 0 else ("signed", "unsigned"):
                rates[name].append(enqueue_rate(queues[name], args.jobs))
        print(f"server {server.url}; {args.jobs} jobs x {args.repeat} repeats, alternating")
        median = {k: [statistics.median(run[i] for run in v) for i in range(3)] for k, v in rates.items()}
        for name, (rate, cpu, srv) in median.items():
            print(f"enqueue one by one, {name:>8}: {rate:,.0f} jobs/s; CPU per job {cpu:.1f} µs client "
                  f"+ {srv:.1f} µs server = {cpu + srv:.1f} µs (medians)")
        ratios = [s[0] / u[0] for s, u in zip(rates["signed"], rates["unsigned"])]
        (rate_u, cpu_u, srv_u), (rate_s, cpu_s, srv_s) = median["unsigned"], median["signed"]
        print(f"signing costs: rate {(1 - rate_s / rate_u) * 100:+.1f} % (medians), "
              f"{(1 - statistics.median(ratios)) * 100:+.1f} % (median of per-repeat ratios); "
              f"CPU {(cpu_s + srv_s) / (cpu_u + srv_u) * 100 - 100:+.1f} % "
              f"({cpu_s + srv_s - cpu_u - srv_u:+.1f} µs a job)")


if __name__ == "__main__":
    main()
