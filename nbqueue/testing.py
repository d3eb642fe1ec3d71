"""Running jobs without workers, for tests and quick checks in a notebook.

``Queue("low", is_async=False)`` (or any queue inside ``with nbqueue.testing.sync():``) runs
each job at enqueue, in the calling process and thread, as an inline worker would: the same
guard, the same pickling round trip through Redis, the same signatures, the same outcome
recorded in Redis, so ``job.result()``, ``job.logs()`` and the widgets read it as usual. A
failure is recorded, not raised: ``job.result()`` raises it. A delay or retry delay is not waited
for: the job runs at once. If a worker serving the same queue takes the job first, enqueue returns
once that worker ended it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

from .errors import NbqueueError
from .job import Job
from .schema import QUEUED, SCHEDULED, STARTED

if TYPE_CHECKING:
    from .queue import Queue

_sync: ContextVar[bool] = ContextVar("nbqueue_sync", default=False)
ROUNDS = 1000  # jobs a queue's runner may run to reach the one just enqueued (others put first)


def sync_by_default() -> bool:
    """Whether queues made without ``is_async=`` run their jobs at enqueue here (``sync()``)."""
    return _sync.get()


@contextlib.contextmanager
def sync() -> Iterator[None]:
    """Within this block, every queue runs its jobs at enqueue (as ``is_async=False``)."""
    token = _sync.set(True)
    try:
        yield
    finally:
        _sync.reset(token)


def run_now(queue: Queue, jobs: list[Job]) -> None:
    """Run ``jobs`` (just enqueued on ``queue``) here and now, as an inline worker would."""
    from .heartbeat import Heartbeat
    from .worker import Worker

    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())
    worker = Worker([queue.name], queue.connection, name=f"sync.{host}.{os.getpid()}.{secrets.token_hex(2)}",
                    inline=True, allow_eviction=True)
    worker.signer = queue.signer
    worker.callbacks_here = True
    heartbeat = Heartbeat(worker)  # renews the leases of jobs that run longer than one
    heartbeat.beat()
    heartbeat.start()
    try:
        for job in jobs:
            for _ in range(ROUNDS):
                status = job.status
                if status == SCHEDULED:  # delayed, or a retry after a failure: due now
                    _promote(queue, job)
                elif status != QUEUED:
                    break
                if worker.run_one() is None:
                    break
            if job.status == STARTED:  # a worker serving this queue took it first: enqueue still returns
                try:                   # once it ended
                    job.result()
                except NbqueueError:
                    pass
    finally:
        heartbeat.stop()
        worker._unregister()


def _promote(queue: Queue, job: Job) -> None:
    """Make a scheduled job due now and move it (with any other due job) to its queue."""
    from . import keys, sweep

    queue.connection.zadd(keys.scheduled(queue.name), {job.id: 0}, xx=True)
    sweep.promote(queue.connection, queue.name, [job.id])
