"""nbqueue: a Redis job queue for Python that is at home in Jupyter.

>>> from nbqueue import Queue
>>> job = Queue("low").enqueue(tasks.add, 20, 40)
>>> job.result(timeout=10)
60
"""
from __future__ import annotations

from .connection import connect, use_redis
from .errors import (
    CodeMismatchError,
    CrossSlotDependency,
    EnqueueError,
    InvalidQueueName,
    InvalidTransition,
    JobCanceled,
    JobExists,
    JobFailed,
    JobQueueUnknown,
    LayoutError,
    NbqueueError,
    NoSuchGroup,
    NoSuchJob,
    PayloadError,
    ResultTimeout,
    ScheduleError,
    SignatureError,
)
from .events import progress
from .group import Group
from .job import Job, get_current_job
from .queue import Call, Options, Queue
from .schedule import Schedule, schedules
from .waiting import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, async_wait, wait
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "as_completed", "async_wait", "wait", "NoSuchGroup",
    "Call", "CodeMismatchError", "EnqueueError", "Group", "InvalidQueueName", "InvalidTransition", "Job",
    "CrossSlotDependency", "JobCanceled", "JobExists", "JobFailed", "JobQueueUnknown", "LayoutError", "NbqueueError",
    "NoSuchJob", "Options", "PayloadError", "Queue",
    "ResultTimeout", "SignatureError", "Worker", "connect", "dashboard", "get_current_job", "load_ipython_extension",
    "progress", "Schedule", "ScheduleError", "schedules", "use_redis",
]


# --- the notebook layer, imported only when asked for ---

def load_ipython_extension(ipython):
    """``%load_ext nbqueue``: the magics, and live widgets for jobs and groups."""
    from .notebook import load_ipython_extension as load

    load(ipython)


def dashboard(connection=None):
    """A live view of queues, workers and recent jobs (in a notebook)."""
    from .notebook.dashboard import Dashboard

    return Dashboard(connection)
