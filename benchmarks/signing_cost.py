"""What signing costs: enqueue one by one with and without a secret, alternating, on one private server.

    python benchmarks/signing_cost.py [--jobs 5000] [--repeat 9] [--unix] [--server-binary PATH]

Prints the median rate of each and the difference. Target (issue 8): under 5 % of the rate.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from time import perf_counter

sys.path.append(str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from benchmarks import tasks  # noqa: E402
from benchmarks.harness import Server  # noqa: E402
from nbqueue import Queue  # noqa: E402
from nbqueue.server import find_binary  # noqa: E402


def enqueue_rate(client: redis.Redis, secret, n: int) -> float:
    q = Queue("bench", client, secret=secret)
    for _ in range(20):
        q.enqueue(tasks.add, 1, 2)  # warm: script loaded, function checked once
    client.flushall()
    t = perf_counter()
    for _ in range(n):
        q.enqueue(tasks.add, 1, 2)
    seconds = perf_counter() - t
    assert len(q) == n
    if secret is not None:
        assert client.hget(f"nbq:job:{q.job_ids[0]}", "sig"), "signed"
    client.flushall()
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--unix", action="store_true")
    parser.add_argument("--server-binary", default=None)
    args = parser.parse_args()
    with Server(args.server_binary or find_binary(), unix=args.unix) as server:
        client = redis.Redis.from_url(server.url, socket_timeout=None)
        rates: dict = {"unsigned": [], "signed": []}
        for i in range(args.repeat):
            order = [("unsigned", None), ("signed", "bench-secret")]
            for name, secret in order if i % 2 == 0 else order[::-1]:
                rates[name].append(enqueue_rate(client, secret, args.jobs))
        plain, signed = (statistics.median(rates[k]) for k in ("unsigned", "signed"))
        ratios = [s / u for s, u in zip(rates["signed"], rates["unsigned"])]
        print(f"server {server.url}; {args.jobs} jobs x {args.repeat} repeats, alternating")
        print(f"enqueue one by one, no secret: {plain:,.0f} jobs/s (median)")
        print(f"enqueue one by one, signed:    {signed:,.0f} jobs/s (median)")
        print(f"difference of the medians: {(1 - signed / plain) * 100:+.1f} % slower; "
              f"median of per-repeat ratios: {(1 - statistics.median(ratios)) * 100:+.1f} % slower")


if __name__ == "__main__":
    main()
