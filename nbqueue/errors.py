"""Every error nbqueue raises on purpose, in one tree; each says what went wrong and how to fix it.

::

    NbqueueError
    ├── EnqueueError (ValueError) ........ the call can't be enqueued; nothing was written
    │   ├── InvalidQueueName ............. a queue name nbqueue does not accept
    │   ├── JobExists .................... the chosen job_id is taken
    │   ├── CrossSlotDependency .......... on a cluster, a dependency lives in another slot
    │   └── ScheduleError ................ a schedule's rule, name or options can't be used
    ├── WorkerError (ValueError) ......... a worker can't start as asked (or can't go on)
    │   ├── WorkerTakenOver .............. another worker registered under this worker's name
    │   └── ForkServerGone ............... no fork server to be had (handled: the worker forks by itself)
    ├── InvalidURL (ValueError) .......... a Redis URL nbqueue can't use
    ├── InvalidConnection (TypeError) .... connection= is no client, URL or None
    ├── ConnectionFailed (redis.ConnectionError)  the Redis can't be reached
    ├── RedisFull ........................ Redis is full (maxmemory): nothing was written
    ├── EvictingRedis .................... Redis may evict keys when full; a worker refuses it
    ├── ServerError (RuntimeError) ....... the embedded server can't be found, started or stopped
    ├── InvalidProgress (TypeError, ValueError)  progress() was given no finite number
    ├── NoSuchJob (LookupError) .......... no job with that id (or it expired)
    │   └── JobQueueUnknown .............. a job id you chose, looked up without its queue
    ├── LayoutError ...................... the Redis holds another key layout (an older nbqueue's)
    ├── NoSuchGroup (LookupError) ........ no group with that id (or it expired)
    ├── InvalidTransition ................ the job's state does not allow it
    ├── ResultTimeout (TimeoutError) ..... result(timeout=...) gave up; the job goes on
    ├── InvalidTimeout (ValueError) ...... a wait was given no number of seconds (NaN, negative, ...)
    ├── InvalidOption (ValueError) ....... an argument nbqueue can't use (wait's return_when=, ...)
    ├── UnpicklableHandle (TypeError) .... a Job handle was pickled (not as a job's argument)
    ├── JobCanceled ...................... the job was canceled: no result
    ├── JobFailed ........................ the job raised on the worker
    ├── PayloadError ..................... a stored payload can't be loaded
    ├── MalformedData (ValueError) ....... a record in Redis is not as nbqueue writes it (by hand?)
    ├── FunctionNotFound (ImportError) ... a job's function or callback can't be imported here
    ├── Contention (RuntimeError) ........ the data a script needs kept changing while it was read
    ├── SecretError (ValueError) ......... the signing secret can't be used
    ├── SignatureError ................... a job's or result's signature does not match
    ├── CodeMismatchError ................ the worker has other source for the function
    └── DependencyError .................. a dependency's result can't be passed in (on the worker)

A builtin in brackets is a second base, so code that catches it (``except ValueError``) keeps
working. The first line of a message says it all (the ``nbqueue`` command prints only that line);
later lines are detail, such as a log tail or a worker's traceback. Errors of redis-py itself
(``redis.ConnectionError`` while a connection is in use, ``redis.ResponseError``) pass through.
Outside the tree, on purpose: ``AssertionError`` for a broken invariant (a bug), the command line's
``click`` errors and the notebook's IPython ``UsageError`` (each framework's own way to print a
one-line message), and control flow inside the worker. ``tests/test_errors.py`` reads every
``raise`` in the package and holds it to this.
"""
from __future__ import annotations

import redis


class NbqueueError(Exception):
    """Base class of nbqueue's errors."""


class EnqueueError(NbqueueError, ValueError):
    """The call can't be enqueued (the guard, an unpicklable argument, a bad option). Nothing was written."""


class InvalidQueueName(EnqueueError):
    """A queue name nbqueue does not accept."""


class JobExists(EnqueueError):
    """A job with the requested ``job_id`` already exists."""


class CrossSlotDependency(EnqueueError):
    """On a Redis Cluster, a job's dependency is a job of a queue in another hash slot: the step that
    records a job's end releases its dependents atomically, which one script can do only within one
    slot. Nothing was written."""


class ScheduleError(EnqueueError):
    """A schedule can't be made as asked (its every=/cron=, timezone, name or catch-up rule). Nothing was written."""


class WorkerError(NbqueueError, ValueError):
    """A worker can't start as asked (a bad name or concurrency)."""


class InvalidURL(NbqueueError, ValueError):
    """A Redis URL nbqueue can't use."""


class InvalidConnection(NbqueueError, TypeError):
    """``connection=`` is neither a ``redis.Redis`` client, a URL nor None."""


class ConnectionFailed(NbqueueError, redis.ConnectionError):
    """nbqueue could not reach the Redis it was told (or chose) to use."""


class ServerError(NbqueueError, RuntimeError):
    """The embedded server could not be found, started or stopped."""


class InvalidProgress(NbqueueError, TypeError, ValueError):
    """``progress()`` was given something other than a finite number."""


class NoSuchJob(NbqueueError, LookupError):
    """No job with that id (never enqueued, or expired after its TTL)."""


class JobQueueUnknown(NoSuchJob):
    """A job id chosen by the caller (``job_id=...``) was looked up without its queue: its keys live
    under the queue's slot tag, so give ``queue=`` (ids nbqueue makes carry their queue's tag)."""


class LayoutError(NbqueueError):
    """The Redis holds keys of another nbqueue key layout (the previous, untagged one): nothing is read
    or written until it is drained with the version that wrote it, or the ``nbq:*`` keys are removed."""


class NoSuchGroup(NbqueueError, LookupError):
    """No group with that id: never saved, or expired with its jobs."""


class PayloadError(NbqueueError):
    """A job's stored payload can't be loaded (corrupt, or written by something else)."""


class CodeMismatchError(NbqueueError):
    """The worker imported different source for the function than the caller had."""


class DependencyError(NbqueueError):
    """A dependency's result can't be passed to the job that takes it (gone, failed, or its signature
    does not match); the job fails with "DependencyFailed: ..." before its function runs."""


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


class RedisFull(NbqueueError):
    """Redis refused a write because it is full (used memory at ``maxmemory``): nothing was written."""


class EvictingRedis(NbqueueError):
    """Redis may evict keys when full (a ``maxmemory-policy`` other than ``noeviction``), which
    drops jobs silently; a worker refuses it unless allowed (``--allow-eviction``)."""


class WorkerTakenOver(WorkerError):
    """Another worker registered under this worker's name (leases are held by name): this one stops."""


class ForkServerGone(WorkerError):
    """The worker's fork server (or its keeper) is gone; the worker handles it (a new server, or
    it forks jobs itself), so it never reaches the caller."""


class SecretError(NbqueueError, ValueError):
    """The signing secret can't be used (an empty secret, an unreadable key file)."""


class SignatureError(NbqueueError):
    """A job's or result's signature does not match (or is missing where a secret requires one).

    Nothing was imported or unpickled: the data was changed in Redis, or signed with another secret.
    """


class InvalidTimeout(NbqueueError, ValueError):
    """A wait (``result(timeout=)``, ``cancel(wait=)``, ``Group.results(timeout=)``) was given NaN, a
    negative number or no number: give seconds, 0 or more, or None."""


class InvalidOption(NbqueueError, ValueError):
    """An argument nbqueue can't use, e.g. ``wait(return_when=...)`` not one of its three constants."""


class UnpicklableHandle(NbqueueError, TypeError):
    """A ``Job`` handle was pickled: as a job's argument it is passed as its result, never as itself."""


class MalformedData(NbqueueError, ValueError):
    """A record read from Redis (a schedule's hash, a control message) is not as nbqueue writes it:
    written by hand or by other code. The reader says what is wrong and goes on."""


class FunctionNotFound(NbqueueError, ImportError):
    """A job's function (or callback) can't be imported on this worker: no such module or name."""


class Contention(NbqueueError, RuntimeError):
    """The data a script needs (e.g. a job's dependents) kept changing while it was read, 100 times."""
