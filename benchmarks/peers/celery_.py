"""Celery: ``Celery("bench")`` with its Redis broker (kombu's transport, redis-py underneath) on the
private server, its own queue ``bench-celery``; the Redis result backend (same server) only where
the finished-job row needs stored results (Celery keeps none without a backend, its default).

Enqueue is ``task.delay``; Celery has no batched enqueue, its API for many is
``group(...).apply_async()`` (one message published each). Worker: ``worker_main`` in this process,
gossip, mingle and heartbeats off (no traffic but the jobs'), the ``solo`` pool for the fast mode,
``threads`` with N for concurrency. Its defaults otherwise: acks on receipt, a prefetch of 4. No
fork-per-job mode: its prefork pool keeps its processes (``--max-tasks-per-child=1`` replaces one
after each job, but at about 4 jobs/s here, a pool's upkeep rather than a way to run jobs).
"""
from __future__ import annotations

import logging
from importlib.metadata import version

from celery import Celery, group

from benchmarks import tasks
from benchmarks.harness import connect

TASKS = ("noop", "add", "started", "tick", "mark")
QUEUE = "bench-celery"
POOLS = {"fast": ["--pool=solo"], "threads": ["--pool=threads"]}


class System:
    name = "celery"
    version = version("celery")
    modes = {"fast": "worker, solo pool", "threads": "worker, threads pool of N"}
    bulk_note = "group(...).apply_async() (one message published a job)"

    def setup(self, url: str, results: bool = False) -> None:
        self.conn = connect(url)
        self.app = Celery("bench", broker=url, backend=url if results else None)
        self.app.conf.update(task_default_queue=QUEUE, task_ignore_result=not results,
                             broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                             worker_redirect_stdouts=False)
        self.tasks = {name: self.app.task(name=name)(getattr(tasks, name)) for name in TASKS}

    def enqueuer(self, task: str):
        return self.tasks[task].delay

    def enqueue_many(self, task: str, args: tuple, n: int) -> None:
        wrapper = self.tasks[task]
        group(wrapper.s(*args) for _ in range(n)).apply_async()

    def queued(self) -> int:
        return self.conn.llen(QUEUE)

    def serve(self, mode: str, concurrency: int = 1) -> None:
        logging.getLogger("celery").setLevel(logging.WARNING)
        self.app.worker_main(["--quiet", "worker", *POOLS[mode], f"--concurrency={concurrency}", "-Q", QUEUE,
                              "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"])
