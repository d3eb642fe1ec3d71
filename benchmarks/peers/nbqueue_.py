"""nbqueue: ``Queue.enqueue`` / ``enqueue_many``; ``Worker(inline=True)`` fast, fork mode, inline threads."""
from __future__ import annotations

import functools
import logging

import nbqueue
from benchmarks import tasks
from benchmarks.harness import QUEUE, connect


class System:
    name = "nbqueue"
    version = nbqueue.__version__
    modes = {"fast": "Worker(inline=True)", "fork": "Worker() (fork per job)",
             "threads": "Worker(inline=True, concurrency=N) (threads)"}
    bulk_note = "Queue.enqueue_many"

    def setup(self, url: str, results: bool = False) -> None:
        self.conn = connect(url)
        self.q = nbqueue.Queue(QUEUE, self.conn)  # results are kept by default (result_ttl)

    def enqueuer(self, task: str):
        return functools.partial(self.q.enqueue, getattr(tasks, task))

    def enqueue_many(self, task: str, args: tuple, n: int) -> None:
        func = getattr(tasks, task)
        self.q.enqueue_many([(func, args) for _ in range(n)])

    def queued(self) -> int:
        return len(self.q)

    def serve(self, mode: str, concurrency: int = 1) -> None:
        logging.getLogger("nbqueue").setLevel(logging.WARNING)  # no log line per job
        nbqueue.Worker([QUEUE], self.conn, inline=mode != "fork", concurrency=concurrency).work()
