"""Fork-per-job drain against a bare fork+waitpid, in one run, on one private server.

    python benchmarks/fork_drain.py [--jobs 300] [--repeat 3] [--unix] [--rq] [--against /work/main]
    PYTHONPATH=/path/to/older/nbqueue python benchmarks/fork_drain.py   # the same for another nbqueue

Each repeat: N bare ``fork(); _exit(0)`` + ``waitpid`` in this process; then N ``stamp`` jobs
drained by a real ``nbqueue worker --burst`` process (what users run, and what the benchmark's fork
row measures: its fork server forks the jobs), the rate taken from the first job's start to the
last's (so neither its start-up nor its shutdown counts); with ``--against``, the same by the
``nbqueue worker`` of that source tree; with ``--rq``, by ``rq worker --burst``, timed the same way.
Then N ``noop`` jobs drained by a fork-mode ``Worker(burst=True)`` in the main thread of a fresh
process (it gets a fork server too: it runs one thread when ``work()`` starts), and with this
nbqueue's fork server turned off (the worker forks each job itself, as from a process with threads,
the fallback). Prints medians in jobs/s, and the CPU time per job of each drain (the worker and every
process under it, its start-up included: a figure the machine's load disturbs less than the rates).
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

import nbqueue
from benchmarks import tasks
from benchmarks.harness import ROOT, Server, connect

try:
    from nbqueue import forkserver
    if Path(forkserver.__file__).parent != Path(nbqueue.__file__).parent:  # an editable install's, not this one's
        forkserver = None  # type: ignore[assignment]
except ImportError:  # an nbqueue from before the fork server (PYTHONPATH=/some/snapshot)
    forkserver = None  # type: ignore[assignment]

QUEUE = "forkbench"


def bare(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return n / (time.perf_counter() - t)


def drain(conn, n: int, served: bool = True) -> float:
    """``served=False``: as if this process ran threads already, so the worker forks each job itself."""
    conn.flushall()
    nbqueue.Queue(QUEUE, conn).enqueue_many([(tasks.noop, ()) for _ in range(n)])
    worker = nbqueue.Worker([QUEUE], conn, burst=True)
    usable = forkserver.usable if forkserver else None
    if forkserver and not served:
        forkserver.usable = lambda: False
    try:
        t = time.perf_counter()
        ran = worker.work()
        seconds = time.perf_counter() - t
    finally:
        if forkserver:
            forkserver.usable = usable
    assert ran == n, f"ran {ran} of {n}"
    return n / seconds


def drain_cli(conn, url: str, n: int, tree: str = "") -> float:
    """``nbqueue worker --burst`` (of the nbqueue in ``tree``, if given): jobs/s from the first start to the last."""
    conn.flushall()
    jobs = nbqueue.Queue(QUEUE, conn).enqueue_many([(tasks.stamp, ()) for _ in range(n)])
    env = dict(os.environ, PYTHONPATH=tree) if tree else None
    before = _cpu()
    proc = subprocess.run([sys.executable, "-m", "nbqueue.cli", "worker", QUEUE, "--burst", "--url", url, "-q"],
                          cwd=tree or str(ROOT), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
                          env=env)
    CPU.setdefault("nbqueue worker" + (f" ({tree})" if tree else ""), []).append((_cpu() - before) / n * 1e3)
    assert proc.returncode == 0, proc.stderr
    return _steady([job.result(timeout=10) for job in jobs])


def drain_rq(conn, url: str, n: int) -> float:
    """``rq worker --burst`` (fork per job), timed as ``drain_cli``."""
    import rq

    conn.flushall()
    q = rq.Queue(QUEUE, connection=conn)
    jobs = q.enqueue_many([rq.Queue.prepare_data(tasks.stamp) for _ in range(n)])
    before = _cpu()
    proc = subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", url, "-q", QUEUE],
                          cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    CPU.setdefault("rq worker", []).append((_cpu() - before) / n * 1e3)
    assert proc.returncode == 0, proc.stderr
    return _steady([job.latest_result(timeout=10).return_value for job in jobs])


def _steady(starts: list) -> float:
    starts = sorted(starts)
    return (len(starts) - 1) / (starts[-1] - starts[0]) if starts[-1] > starts[0] else float("nan")


def drain_fresh(url: str, n: int, served: bool = True, tree: str = "") -> float:
    """``drain`` in a new process (only ``work()`` is timed there), of the nbqueue in ``tree`` if given."""
    env = dict(os.environ, PYTHONPATH=tree) if tree else None
    out = subprocess.run([sys.executable, __file__, "--one", url, "--jobs", str(n)] + ([] if served else ["--direct"]),
                         cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stderr
    cpu, rate = map(float, out.stdout.split()[-2:])
    CPU.setdefault(("fork server" if served else "forks itself") + (f" ({tree})" if tree else ""), []).append(cpu)
    return rate


CPU: dict = {}  # CPU ms per job, of the worker and every process under it (its start-up too), per kind of drain


def _cpu() -> float:
    """CPU seconds of this process and of its reaped descendants (the fork server's, reaped with it)."""
    mine, theirs = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + theirs.ru_utime + theirs.ru_stime


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", help=argparse.SUPPRESS)  # URL: one drain here, print its rate
    p.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--unix", action="store_true")
    p.add_argument("--rq", action="store_true", help="also drain with rq worker --burst, in the same rounds")
    p.add_argument("--against", help="also drain with the nbqueue of this source tree (e.g. /work/main), "
                                     "in the same rounds")
    args = p.parse_args()
    logging.getLogger("nbqueue").setLevel(logging.WARNING)
    if args.one:
        before = _cpu()
        rate = drain(connect(args.one), args.jobs, served=not args.direct)
        print((_cpu() - before) / args.jobs * 1e3, rate)  # CPU ms per job (every process), jobs/s
        return
    results: dict = {"bare fork+waitpid": [], "nbqueue worker --burst": []}
    if args.against:
        results[f"nbqueue worker of {args.against}"] = []
    if args.rq:
        results["rq worker --burst"] = []
    results["fresh Worker().work()"] = []
    if forkserver:
        results["drain, worker forks itself"] = []
    with Server(nbqueue.server.find_binary(), unix=args.unix) as server:
        conn = connect(server.url)
        for _ in range(args.repeat):
            results["bare fork+waitpid"].append(bare(args.jobs))
            results["nbqueue worker --burst"].append(drain_cli(conn, server.url, args.jobs))
            if args.against:
                results[f"nbqueue worker of {args.against}"].append(
                    drain_cli(conn, server.url, args.jobs, args.against))
            if args.rq:
                results["rq worker --burst"].append(drain_rq(conn, server.url, args.jobs))
            results["fresh Worker().work()"].append(drain_fresh(server.url, args.jobs))
            if forkserver:
                results["drain, worker forks itself"].append(drain_fresh(server.url, args.jobs, served=False))
    floor = statistics.median(results["bare fork+waitpid"])
    for name, rates in results.items():
        med = statistics.median(rates)
        print(f"{name:28s} {med:8.1f}/s  ({', '.join(f'{r:.0f}' for r in rates)})  {med / floor:5.0%} of bare")
    for name, cpus in CPU.items():
        print(f"CPU per job, {name}: {statistics.median(cpus):.2f} ms ({', '.join(f'{c:.2f}' for c in cpus)})")


if __name__ == "__main__":
    main()
