"""Callbacks: what a worker enqueues when a job with ``on_success`` / ``on_failure`` ends.

The worker that records the end enqueues ``call_back(path, job_id)`` on the job's queue, signed
with its secret; the callback job imports ``path`` and calls it with the ended job's handle. A job
the recovery failed (its worker lost once too often: ``recover.lua``) gets its ``on_failure`` from
the worker that ran that recovery (``after_recovery``), its signature checked first.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import redis

from . import keys, signing
from .errors import FunctionNotFound
from .job import Job
from .schema import CALLBACK_FIELDS, FAILED, OPTION_FIELDS
from .serialization import resolve

log = logging.getLogger("nbqueue.worker")
_FIELDS = ("status", "queue", "func", "code", *OPTION_FIELDS, "data", "sig", *CALLBACK_FIELDS)


def call_back(path: str, job_id: str) -> Any:
    """Run the callback ``path`` (``module:qualname``) as ``func(job)``; its return is the result."""
    try:
        func = resolve(path)
    except ImportError as exc:
        raise FunctionNotFound(
            f"the callback {path.replace(':', '.')} can't be imported on this worker: {exc}") from None
    return func(Job.fetch(job_id))


def after_recovery(connection: Any, refs: list[str], signer: Optional[signing.Signer]) -> int:
    """Enqueue the ``on_failure`` callbacks of the jobs among ``refs`` (recovered just now) that the
    recovery failed, as a worker recording a failure does; a job whose signature ``signer`` (None:
    the connection's default) refuses gets none (nothing of it is acted on). Returns how many were
    enqueued."""
    from .queue import Queue

    signer = signer if signer is not None else signing.get(connection)  # checks with what it will sign with
    with connection.pipeline(transaction=False) as pipe:
        for ref in refs:
            pipe.hmget(keys.job(ref), _FIELDS)
        rows = pipe.execute()
    enqueued = 0
    for ref, (status, queue, func, code, *options, data, sig, on_success, on_failure) in zip(refs, rows):
        if status != FAILED.encode() or not on_failure or not queue:
            continue
        job_id = keys.split(ref)[0]
        refusal = signer and signer.job_refusal(job_id.encode(), func, code, options, data, sig,
                                                (on_success, on_failure))
        if refusal:
            log.warning("%s: no on_failure callback: %s", ref, refusal)
            continue
        path = on_failure.decode(errors="replace")
        try:
            job = Queue(queue.decode(errors="replace"), connection, secret=signer).enqueue(call_back, path, ref)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:  # junk written by hand (a queue name that is none): the sweep goes on
            log.warning("%s: could not enqueue its on_failure callback %s: %s", ref, path, exc)
            continue
        log.info("%s: callback %s enqueued as %s", ref, path.replace(":", "."), job.id)
        enqueued += 1
    return enqueued
