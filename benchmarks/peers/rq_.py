"""RQ: ``Queue.enqueue`` / ``enqueue_many``; ``SimpleWorker`` (in-process) fast, ``Worker`` forks per job."""
from __future__ import annotations

import functools
import logging

import rq

from benchmarks import tasks
from benchmarks.harness import QUEUE, connect


class System:
    name = "rq"
    version = rq.__version__
    modes = {"fast": "SimpleWorker", "fork": "Worker (fork per job)"}  # no concurrency in one worker
    bulk_note = "Queue.enqueue_many"

    def setup(self, url: str, results: bool = False) -> None:
        self.conn = connect(url)
        self.q = rq.Queue(QUEUE, connection=self.conn)  # results kept by default (result_ttl 500 s)

    def enqueuer(self, task: str):
        return functools.partial(self.q.enqueue, getattr(tasks, task))

    def enqueue_many(self, task: str, args: tuple, n: int) -> None:
        func = getattr(tasks, task)
        self.q.enqueue_many([rq.Queue.prepare_data(func, args) for _ in range(n)])

    def queued(self) -> int:
        return self.q.count

    def serve(self, mode: str, concurrency: int = 1) -> None:
        logging.getLogger("rq").setLevel(logging.WARNING)
        kind = rq.SimpleWorker if mode == "fast" else rq.Worker
        kind([self.q], connection=self.conn).work(logging_level="WARNING")
