"""Every error nbqueue raises on purpose: each says what went wrong and how to fix it."""
from __future__ import annotations


class NbqueueError(Exception):
    """Base class of nbqueue's errors."""


class EnqueueError(NbqueueError, ValueError):
    """The call can't be enqueued (the guard, an unpicklable argument, a bad option). Nothing was written."""


class InvalidQueueName(EnqueueError):
    """A queue name nbqueue does not accept."""


class JobExists(EnqueueError):
    """A job with the requested ``job_id`` already exists."""


class WorkerError(NbqueueError, ValueError):
    """A worker can't start as asked (a bad name or concurrency)."""


class NoSuchJob(NbqueueError, LookupError):
    """No job with that id (never enqueued, or expired after its TTL)."""


class PayloadError(NbqueueError):
    """A job's stored payload can't be loaded (corrupt, or written by something else)."""


class CodeMismatchError(NbqueueError):
    """The worker imported different source for the function than the caller had."""


class InvalidTransition(NbqueueError):
    """The job is not in a state that allows the operation (e.g. cancel a finished job)."""


class ResultTimeout(NbqueueError, TimeoutError):
    """``job.result(timeout=...)`` gave up waiting; the job goes on."""


class JobCanceled(NbqueueError):
    """The job was canceled, so it has no result."""


class JobFailed(NbqueueError):
    """The job raised on the worker; carries the worker's traceback.

    IPython shows the worker's traceback (not local frames) through ``_render_traceback_``.
    """

    def __init__(self, job_id: str, func: str, exc_info: str, traceback: str):
        self.job_id = job_id
        self.func = func
        self.exc_info = exc_info
        self.traceback = traceback
        super().__init__(f"job {job_id} ({func}) failed on the worker: {exc_info}")

    @property
    def _has_traceback(self) -> bool:
        return self.traceback.strip() != self.exc_info.strip()  # not just the message again

    def __str__(self) -> str:
        if not self._has_traceback:
            return self.args[0]
        return f"{self.args[0]}\n\nWorker traceback:\n{self.traceback.rstrip()}"

    def _render_traceback_(self) -> list:
        if not self._has_traceback:
            return [f"JobFailed: {self.args[0]}"]
        header = f"JobFailed: job {self.job_id} ({self.func}) failed on the worker. Worker traceback:"
        return [header, *self.traceback.rstrip().splitlines()]


class SecretError(NbqueueError, ValueError):
    """The signing secret can't be used (an empty secret, an unreadable key file)."""


class SignatureError(NbqueueError):
    """A job's or result's signature does not match (or is missing where a secret requires one).

    Nothing was imported or unpickled: the data was changed in Redis, or signed with another secret.
    """
