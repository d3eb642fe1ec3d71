"""One worker of one system in its own process (the adapters in ``benchmarks/peers``).

    python benchmarks/workerproc.py SYSTEM URL [--mode fast|fork|threads] [--concurrency N]
                                    [--results] [--go KEY]            (repo on PYTHONPATH)

It imports everything and sets its system up, then RPUSHes the path of its nbqueue to
``bench:ready``. With ``--go`` it first waits for one item on that list (so a timed drain does not
count the imports). Then it serves the queue until SIGTERM; the benchmark learns that the work is
done from the jobs themselves (``benchmarks/tasks.py``: ``mark``, ``tick``, ``started``). Logging is at
WARNING for every system, so none pays for a log line per job.
"""
from __future__ import annotations

import argparse

from benchmarks import tasks  # noqa: F401  imported up front, as a long-lived worker would have it
from benchmarks.harness import READY, connect
from benchmarks.peers import SYSTEMS, load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("url")
    parser.add_argument("--mode", default="fast", choices=["fast", "fork", "threads"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--results", action="store_true")
    parser.add_argument("--go")
    args = parser.parse_args()
    import nbqueue

    system = load(args.system)
    system.setup(args.url, results=args.results)
    conn = connect(args.url)
    conn.rpush(READY, nbqueue.__file__)  # the parent checks that we run the same nbqueue
    if args.go:
        conn.blpop([args.go], timeout=120)
    system.serve(args.mode, args.concurrency)


if __name__ == "__main__":
    main()
