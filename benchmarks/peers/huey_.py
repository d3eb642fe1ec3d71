"""Huey: ``RedisHuey("bench")`` (its own key prefix, results stored) on the private server.

Enqueue is calling the task; bulk is ``huey.enqueue(group([...]))``, its API for many at once (one
LPUSH each: Huey has no batched enqueue). Worker: its consumer with thread workers (1, its default,
for the fast mode; N for threads).
"""
from __future__ import annotations

import logging
from importlib.metadata import version

from huey import RedisHuey, group

from benchmarks import tasks
from benchmarks.harness import connect

TASKS = ("noop", "add", "started", "tick", "mark")


class System:
    name = "huey"
    version = version("huey")
    modes = {"fast": "consumer, 1 thread worker", "threads": "consumer, N thread workers"}
    bulk_note = "huey.enqueue(group(...)) (one LPUSH a job)"

    def setup(self, url: str, results: bool = False) -> None:
        self.conn = connect(url)
        self.huey = RedisHuey("bench", connection_pool=self.conn.connection_pool, results=True, blocking=True)
        self.tasks = {name: self.huey.task(name=name)(getattr(tasks, name)) for name in TASKS}

    def enqueuer(self, task: str):
        return self.tasks[task]  # calling a Huey task enqueues it

    def enqueue_many(self, task: str, args: tuple, n: int) -> None:
        wrapper = self.tasks[task]
        self.huey.enqueue(group([wrapper.s(*args) for _ in range(n)]))

    def queued(self) -> int:
        return self.huey.pending_count()

    def serve(self, mode: str, concurrency: int = 1) -> None:
        logging.getLogger("huey").setLevel(logging.WARNING)  # no log line per task
        self.huey.create_consumer(workers=concurrency, worker_type="thread", periodic=False).run()
