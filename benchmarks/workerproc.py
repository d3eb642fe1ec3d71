"""One in-process worker (nbqueue inline ``Worker`` or RQ ``SimpleWorker``) in its own process.

    python benchmarks/workerproc.py {nbqueue|rq} URL QUEUE [--go KEY --done KEY]   (repo on PYTHONPATH)

It imports everything, then RPUSHes the path of its nbqueue to ``bench:ready``. Without ``--go``
it serves the queue until SIGTERM (an idle worker). With ``--go`` it waits for one item on that list, drains
the queue in burst mode, and RPUSHes "<end time> <pid>" to ``--done``. Logging is at WARNING
for both systems, so neither pays for a log line per job.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import redis

from benchmarks import tasks  # noqa: F401  imported up front, as a long-lived worker would have it
from benchmarks.harness import READY, connect


def run(system: str, conn: redis.Redis, queue: str, burst: bool) -> None:
    if system == "nbqueue":
        import nbqueue

        logging.getLogger("nbqueue").setLevel(logging.WARNING)
        nbqueue.Worker([queue], conn, inline=True, burst=burst).work()
    else:
        import rq

        worker = rq.SimpleWorker([rq.Queue(queue, connection=conn)], connection=conn)
        worker.work(burst=burst, logging_level="WARNING")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["nbqueue", "rq"])
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--go")
    parser.add_argument("--done")
    args = parser.parse_args()
    import rq  # noqa: F401

    import nbqueue  # both libraries are imported either way: same start-up for both

    conn = connect(args.url)
    conn.rpush(READY, nbqueue.__file__)  # the parent checks that we run the same nbqueue
    if args.go:
        conn.blpop([args.go], timeout=60)
        run(args.system, conn, args.queue, burst=True)
        conn.rpush(args.done, f"{time.time()} {os.getpid()}")
    else:
        run(args.system, conn, args.queue, burst=False)


if __name__ == "__main__":
    main()
