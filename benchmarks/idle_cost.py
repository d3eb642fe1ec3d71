"""What idle workers cost the server: commands/s and server CPU per idle worker (issue 11).

    python benchmarks/idle_cost.py [--workers 1,20] [--window 20] [--code DIR] [--unix] [--server-binary PATH]

Starts a private server, then for each count N: N ``nbqueue worker`` processes on one queue with
nothing to do, waits until all are registered and settled, and counts over ``--window`` seconds
the server's ``INFO commandstats`` (calls and usec: commands sent by clients and those run inside
scripts alike) and ``used_cpu_sys + used_cpu_user``. The server's own idle CPU (no workers) is
measured first and subtracted. ``--code DIR``: run the workers from another checkout (e.g. the
previous commit, exported with ``git archive``) to compare before and after.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

import redis

from benchmarks.harness import ROOT, Server
from nbqueue.server import find_binary

OURS = ("info", "config", "ping", "zcard", "flushall")  # the measurement's own commands


def counters(client: redis.Redis) -> tuple:
    """(calls per command, total usec, server CPU seconds), the measurement's own commands left out."""
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    calls = {name[len("cmdstat_"):]: v["calls"] for name, v in stats.items()}
    usec = sum(v["usec"] for name, v in stats.items() if name[len("cmdstat_"):] not in OURS)
    return calls, usec, cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def measure(client: redis.Redis, window: float) -> dict:
    calls0, usec0, cpu0 = counters(client)
    start = time.monotonic()
    time.sleep(window)  # counting over a measured window, not waiting for a state
    calls1, usec1, cpu1 = counters(client)
    seconds = time.monotonic() - start
    per = {k: (v - calls0.get(k, 0)) / seconds for k, v in calls1.items() if k not in OURS}
    return {"rate": sum(per.values()), "per": {k: v for k, v in per.items() if v > 0},
            "usec": (usec1 - usec0) / seconds, "cpu": (cpu1 - cpu0) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,20")
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--code", default=str(ROOT), help="checkout whose nbqueue the workers run")
    parser.add_argument("--unix", action="store_true")
    parser.add_argument("--server-binary", default=None)
    args = parser.parse_args()
    code = Path(args.code).resolve()
    env = dict(os.environ, PYTHONPATH=str(code))
    env.pop("NBQUEUE_SECRET", None)
    with Server(args.server_binary or find_binary(), unix=args.unix) as server:
        client = redis.Redis.from_url(server.url)
        base = measure(client, args.window)
        print(f"server alone: {base['rate']:.2f} commands/s, {base['cpu'] * 1e6:.0f} usec CPU/s")
        for count in [int(n) for n in args.workers.split(",")]:
            client.flushall()
            logs = tempfile.mkdtemp(prefix="nbq-idle-")
            procs = [subprocess.Popen([sys.executable, "-m", "nbqueue.cli", "worker", "--url", server.url, "idle"],
                                      cwd=str(code), env=env, stdin=subprocess.DEVNULL,
                                      stdout=open(f"{logs}/{i}.log", "w"), stderr=subprocess.STDOUT)
                     for i in range(count)]
            try:
                deadline = time.monotonic() + 120
                while client.zcard("nbq:workers") < count:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                        raise SystemExit(f"workers did not start; see {logs}")
                    time.sleep(0.1)
                time.sleep(args.settle)  # past the start-up beats (a measured window follows)
                got = measure(client, args.window)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
            cpu = got["cpu"] - base["cpu"]
            top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(got["per"].items(), key=lambda kv: -kv[1]))
            print(f"{count:3d} idle worker(s): {got['rate']:.1f} commands/s in all, {got['rate'] / count:.2f} per "
                  f"worker; commandstats {got['usec'] / count:.0f} usec/s and server CPU "
                  f"{cpu * 1e6 / count:.0f} usec/s per worker\n      ({top})")


if __name__ == "__main__":
    main()
