"""Dramatiq: ``RedisBroker`` (namespace "bench-dramatiq") on the private server, default middleware;
the ``Results`` middleware (Redis backend, same server) only where the finished-job row needs it.

Enqueue is ``actor.send``; its bulk API is ``group(...).run()`` (one script call per message).
Worker: ``dramatiq.Worker`` with its default 8 threads for the fast mode (with 1 thread its prefetch
of 2 messages throttles it to ~250 jobs/s here), N threads for the concurrency row.
"""
from __future__ import annotations

import logging
import signal
import threading
from importlib.metadata import version

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks import tasks
from benchmarks.harness import QUEUE, connect

TASKS = ("noop", "add", "started", "tick", "mark")
NAMESPACE = "bench-dramatiq"


class System:
    name = "dramatiq"
    version = version("dramatiq")
    modes = {"fast": "Worker, 8 threads (its default)", "threads": "Worker, N threads"}
    bulk_note = "group(...).run()"

    def setup(self, url: str, results: bool = False) -> None:
        self.conn = connect(url)
        self.broker = RedisBroker(client=self.conn, namespace=NAMESPACE)
        options = {}
        if results:
            from dramatiq.results import Results
            from dramatiq.results.backends import RedisBackend

            self.broker.add_middleware(Results(backend=RedisBackend(client=self.conn)))
            options["store_results"] = True
        dramatiq.set_broker(self.broker)
        self.actors = {name: dramatiq.actor(getattr(tasks, name), actor_name=name, queue_name=QUEUE,
                                            broker=self.broker, max_retries=0, **options)
                       for name in TASKS}

    def enqueuer(self, task: str):
        return self.actors[task].send

    def enqueue_many(self, task: str, args: tuple, n: int) -> None:
        actor = self.actors[task]
        dramatiq.group(actor.message(*args) for _ in range(n)).run()

    def queued(self) -> int:
        return self.conn.llen(f"{NAMESPACE}:{QUEUE}")

    def serve(self, mode: str, concurrency: int = 1) -> None:
        logging.getLogger("dramatiq").setLevel(logging.WARNING)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        threads = concurrency if mode == "threads" else 8
        worker = dramatiq.Worker(self.broker, queues={QUEUE}, worker_threads=threads)
        worker.start()
        stop.wait()
        worker.stop()
