"""Callbacks: what a worker enqueues when a job with ``on_success`` / ``on_failure`` ends.

The worker that records the end enqueues ``call_back(path, job_id)`` on the job's queue, signed
with its secret; the callback job imports ``path`` and calls it with the ended job's handle.
"""
from __future__ import annotations

from typing import Any

from .errors import FunctionNotFound
from .job import Job
from .serialization import resolve


def call_back(path: str, job_id: str) -> Any:
    """Run the callback ``path`` (``module:qualname``) as ``func(job)``; its return is the result."""
    try:
        func = resolve(path)
    except ImportError as exc:
        raise FunctionNotFound(
            f"the callback {path.replace(':', '.')} can't be imported on this worker: {exc}") from None
    return func(Job.fetch(job_id))
