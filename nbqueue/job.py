"""The job handle: what a caller holds after ``enqueue`` and a worker holds while running."""
from __future__ import annotations

import json
import reprlib
import threading
from collections.abc import Generator
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import redis

from . import keys, signing
from .connection import get_connection
from .errors import (
    EnqueueError,
    InvalidTransition,
    JobCanceled,
    JobFailed,
    NbqueueError,
    NoSuchJob,
    ResultTimeout,
    SignatureError,
    UnpicklableHandle,
)
from .schema import (  # noqa: F401  (statuses and defaults re-exported for older imports)
    CALLBACK_FIELDS,
    CANCELED,
    DEFAULT_FAILURE_TTL,
    DEFAULT_LOST_RETRIES,
    DEFAULT_RESULT_TTL,
    DEFAULT_RETRY_DELAY,
    DEFAULT_TIMEOUT,
    DEFERRED,
    FAILED,
    FINISHED,
    OPTION_FIELDS,
    OUTCOME,
    QUEUED,
    READ_FIELDS,
    SCHEDULED,
    STARTED,
    SUMMARY,
    SUMMARY_SIG,
    SYNC,
    TERMINAL,
    Status,
)
from .seconds import deadline
from .serialization import loads_args, loads_result
from .summary import parse as parse_summary
from .waiter import Waiter, in_thread

_NESTING = 4  # flow.MAX_DEPTH: how deep a Job argument is looked for
DESCRIPTION_MAX = 200  # characters of a job's description
META_MAX = 64 * 1024  # bytes of a job's meta, as JSON
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 40, 40, 6, 4


def dumps_meta(meta: Any) -> str:
    """``meta`` as the JSON kept in the job hash; ``EnqueueError`` if it is no dict JSON can hold, or too big."""
    if isinstance(meta, str):  # e.g. %enqueue ... --meta '{"run": 3}'
        try:
            meta = json.loads(meta)
        except ValueError:
            pass
    if not isinstance(meta, dict):
        raise EnqueueError(f"meta={reprlib.repr(meta)} is not valid: give a dict (of JSON values).")
    try:
        text = json.dumps(meta, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise EnqueueError(
            f"meta can't be kept as JSON: {exc}. Give str, numbers, bools, None, lists and dicts.") from None
    if len(text) > META_MAX:
        raise EnqueueError(f"meta is {len(text):,} bytes as JSON, over the {META_MAX:,} bytes a job may keep.")
    return text


_current: ContextVar[Optional[Job]] = ContextVar("nbqueue_current_job", default=None)


def get_current_job() -> Optional[Job]:
    """The job this code runs in when called inside a job on a worker, else ``None``."""
    return _current.get()


def _time(value: Optional[bytes]) -> Optional[datetime]:
    return datetime.fromtimestamp(float(value), tz=timezone.utc) if value else None


def _text(value: bytes) -> str:
    return value.decode()


# job hash field -> (attribute, how to read it); absent fields leave the class defaults below
_READ: dict[str, tuple[str, Callable[[bytes], Any]]] = {
    "func": ("func_name", _text), "queue": ("queue", _text), "status": ("_status", _text),
    "enqueued_at": ("enqueued_at", _time), "started_at": ("started_at", _time), "ended_at": ("ended_at", _time),
    "worker": ("worker", _text), "attempt": ("attempt", int), "workers": ("workers", lambda v: v.decode().split()),
    "failures": ("failures", int), "lost": ("lost", int), "exc": ("exc_info", _text),
    "deps": ("dependencies", lambda v: tuple(v.decode().split())),
}


class Job:
    """A handle on one job in Redis. Attributes reflect the last ``refresh()``; ``status`` is always fresh."""

    func_name: Optional[str] = None  # "module:qualname"
    queue: Optional[str] = None
    _status: Optional[str] = None
    enqueued_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    worker: Optional[str] = None  # the worker of the last attempt
    attempt = 0  # times it was started
    workers: tuple = ()  # every worker that held it, in order
    failures = 0  # attempts that raised
    lost = 0  # attempts whose worker was lost
    exc_info: Optional[str] = None  # "ExceptionType: message" of a failure
    dependencies: tuple = ()  # ids of the jobs it waits for (a Job or Group argument, depends_on)

    def __init__(self, job_id: str, connection: Optional[redis.Redis] = None, fields: Optional[dict] = None, *,
                 secret: signing.Secret = None, queue: Optional[str] = None):
        """``job_id``: the job's id (with ``queue`` if you chose it at enqueue) or its ref (``keys.py``);
        ``JobQueueUnknown`` if neither tells where it lives. ``secret``: to check the result's signature
        (see ``signing``); default: the queue's default."""
        self.id, self._tag = keys.split(job_id, queue)
        self.ref = keys.ref(self.id, self._tag)  # how Redis points to it (the id, for an id nbqueue made)
        self._key = keys.job(self.id, tag=self._tag)
        if queue is not None:
            self.queue = queue
        self.connection = get_connection(connection)
        self._meta: Optional[dict] = None
        self._call: Optional[tuple] = None
        self._description: Optional[str] = None
        self._secret = secret
        if fields:
            self._load(fields)

    @classmethod
    def _enqueued(cls, job_id: str, tag: str, connection: redis.Redis, queue: str, func: str,
                  secret: Optional[signing.Signer]) -> Job:
        """The handle ``Queue.enqueue`` returns for a job it just queued under an id it made (tagged
        ``tag``): what ``Job(job_id, connection, {status, queue, func}, secret=secret)`` makes, without
        parsing any of it again."""
        job = cls.__new__(cls)
        job.id, job._tag, job.ref, job._key = job_id, tag, job_id, f"{keys.PREFIX}{{{tag}}}:job:{job_id}"
        job.connection, job.queue, job.func_name, job._status = connection, queue, func, QUEUED
        job._meta = job._call = job._description = None
        job._secret = secret
        return job

    @classmethod
    def fetch(cls, job_id: str, connection: Optional[redis.Redis] = None, *, secret: signing.Secret = None,
              queue: Optional[str] = None) -> Job:
        """The job with this id (give its ``queue`` too if you chose the id at enqueue); ``NoSuchJob``
        if it does not exist (or has expired), ``JobQueueUnknown`` for a chosen id without its queue."""
        job = cls(job_id, connection, secret=secret, queue=queue)
        job.refresh()
        return job

    def refresh(self) -> Job:
        values = self.connection.hmget(self._key, READ_FIELDS)
        if values[2] is None:
            raise self._missing()
        self._load(dict(zip(READ_FIELDS, values)))
        return self

    def _load(self, fields: dict) -> None:
        for name, value in fields.items():  # a field Redis doesn't have resets the attribute
            attribute, read = _READ[name]
            setattr(self, attribute, getattr(Job, attribute) if value is None else read(value))

    @property
    def status(self) -> str:
        """The job's status now: deferred (waiting for its dependencies), queued, scheduled, started,
        finished, failed or canceled."""
        status = self.connection.hget(self._key, "status")
        if status is None:
            raise self._missing()
        self._status = status.decode()
        return self._status

    @property
    def is_done(self) -> bool:
        return self.status in TERMINAL

    # --- what the job is: its call and metadata ---------------------------------------------
    @property
    def meta(self) -> dict:
        """A dict of your own kept with the job (JSON): given at enqueue (``meta=``), updated by
        the job with ``get_current_job().meta[...] = ...`` and ``save_meta()``. Read once, then
        cached; ``refresh_meta()`` reads it again. Not signed: no secrets, nothing trusted."""
        if self._meta is None:
            self.refresh_meta()
        assert self._meta is not None
        return self._meta

    def refresh_meta(self) -> dict:
        raw = self.connection.hget(self._key, "meta")
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            value = {}
        self._meta = value if isinstance(value, dict) else {}
        return self._meta

    def save_meta(self) -> None:
        """Write ``meta`` to Redis as JSON (``EnqueueError`` if it can't be: see ``dumps_meta``)."""
        self.connection.hset(self._key, "meta", dumps_meta(self.meta))

    @property
    def args(self) -> tuple:
        """The call's positional arguments (unpickled here once the job's signature is checked)."""
        return self._call_args()[1]

    @property
    def kwargs(self) -> dict:
        """The call's keyword arguments (see ``args``)."""
        return self._call_args()[2]

    @property
    def description(self) -> str:
        """The call as text, e.g. ``tasks.add(20, 22)``, capped at ``DESCRIPTION_MAX`` characters;
        ``tasks.add(…)`` if its arguments can't be loaded here."""
        if self._description is None:
            try:
                _, args, kwargs = self._call_args()
                parts = [_short.repr(a) for a in args] + [f"{k}={_short.repr(v)}" for k, v in kwargs.items()]
                text = f"{self._func_name()}({', '.join(parts)})"
            except (NbqueueError, ImportError, AttributeError):
                text = f"{self._func_name()}(…)"
            self._description = text if len(text) <= DESCRIPTION_MAX else text[:DESCRIPTION_MAX - 1] + "…"
        return self._description

    def _func_name(self) -> str:
        if self.func_name is None:
            raw = self.connection.hget(self._key, "func")
            self.func_name = raw.decode(errors="replace") if raw else None
        return self._func()

    def _call_args(self) -> tuple:
        """``(instance or None, args, kwargs)`` of the call, read once its signature is checked."""
        if self._call is None:
            fields = ("func", "code", *OPTION_FIELDS, "data", "sig", *CALLBACK_FIELDS)
            values = self.connection.hmget(self._key, fields)
            if values[0] is None:
                raise self._missing()
            func, code, *options, data, sig, on_success, on_failure = values
            if self.func_name is None:  # read here anyway: description needs no second round trip
                self.func_name = func.decode(errors="replace")
            signer = signing.get(self.connection, self._secret)
            if signer is not None:
                refusal = signer.job_refusal(self.id.encode(), func, code, options, data, sig, (on_success, on_failure))
                if refusal:
                    raise SignatureError(f"job {self.id}: {refusal}")
            self._call = loads_args(data or b"")
        return self._call

    @property
    def return_value(self) -> Any:
        """The result if the job finished, else ``None``; never waits (RQ's ``return_value``).
        A result whose signature does not match raises ``SignatureError``, as ``result()`` does."""
        outcome = self.connection.hmget(self._key, OUTCOME)
        if outcome[0] != FINISHED.encode():
            return None
        outcome[0] = FINISHED
        return self._value(outcome)

    def done(self) -> bool:
        """Whether the job ended (finished, failed or canceled), as ``Future.done()``."""
        return self.status in TERMINAL

    @property
    def traceback(self) -> Optional[str]:
        """The worker's traceback of a failed job."""
        error = self.connection.hget(self._key, "error")
        return error.decode() if error is not None else None

    def result(self, timeout: Optional[float] = None) -> Any:
        """The job's return value, waiting up to ``timeout`` seconds (``None``: as long as it takes).

        Raises ``JobFailed`` with the worker's traceback, ``JobCanceled``, or ``ResultTimeout``;
        ``SignatureError`` (nothing unpickled) if the result's signature does not match.
        Waits on the job's event channel, not by polling, and through a Redis restart or outage.
        """
        return self._value(self._wait(timeout))

    async def aresult(self, timeout: Optional[float] = None) -> Any:
        """``result()`` for asyncio code: waits without blocking the event loop (``await job`` is
        the same with no timeout). Canceling the awaiting task stops the wait."""
        return await in_thread(lambda stop: self._value(self._wait(timeout, stop)))

    def __await__(self) -> Generator[Any, None, Any]:
        return self.aresult().__await__()

    def _value(self, outcome: list) -> Any:
        """The return value of a job that ended (``outcome``: its ``OUTCOME`` fields, the status
        decoded, as a ``Waiter`` reads them), or its error raised."""
        status, result, error, exc, attempt, sig = outcome
        if status == FINISHED:
            self._check_result(result, attempt, sig)
            return loads_result(result)
        if status == FAILED:
            raise JobFailed(self.id, self._func(), exc.decode() if exc else "failed",
                            error.decode() if error else "(no traceback recorded)")
        raise JobCanceled(f"job {self.id} ({self._func()}) was canceled, so it has no result.")

    def _func(self) -> str:
        return (self.func_name or "?").replace(":", ".")

    def _check_result(self, result: Optional[bytes], attempt: Optional[bytes], sig: Optional[bytes]) -> None:
        """Raise ``SignatureError`` unless a worker with our secret wrote this result (when we have one)."""
        signer = signing.get(self.connection, self._secret)
        if signer is None:
            return
        if signer.outcome_matches(sig, self.id.encode(), attempt or b"", FINISHED.encode(), result or b"", b"", b""):
            return
        why = ("carries no signature: the worker that ran it has no secret (give workers the clients' secret)"
               if not sig else "signature does not match: it was changed in Redis, or signed with another secret")
        raise SignatureError(f"job {self.id} ({self._func()}): the result {why}; it was not unpickled "
                             f"(secret from {signer.source}).")

    def summary(self) -> Optional[dict]:
        """The worker's short description of a finished job's result (see ``nbqueue.summary``),
        read without fetching the result; None if there is none, or it is junk or not signed
        with our secret (when we have one)."""
        fields = self.connection.hmget(self._key, "status", "attempt", SUMMARY, SUMMARY_SIG)
        return self.checked_summary(*fields)

    def checked_summary(self, status: Optional[bytes], attempt: Optional[bytes], raw: Optional[bytes],
                        sig: Optional[bytes]) -> Optional[dict]:
        """``summary()`` from job hash fields already read (status, attempt, summary, ssig)."""
        if status != FINISHED.encode() or not raw:
            return None
        signer = signing.get(self.connection, self._secret)
        if signer is not None and not signer.summary_matches(sig, self.id.encode(), attempt or b"",
                                                             FINISHED.encode(), raw):
            return None
        return parse_summary(raw)

    def _wait(self, timeout: Optional[float], stop: Optional[threading.Event] = None) -> list:
        """The job's outcome once it ended (see ``_value``), waiting up to ``timeout`` seconds."""
        until = deadline(timeout)
        with Waiter(self.connection, [self.ref], stop) as waiter:
            outcome = waiter.outcome(self.ref, until)
            if outcome is None:
                state = "has had no answer from Redis" if waiter.lost else f"is still {waiter.status(self.ref)}"
                raise ResultTimeout(f"job {self.id} ({self._func()}) {state} after {timeout} s; "
                                    f"it goes on: call result() again to wait longer.")
        if outcome[0] is None:
            raise self._missing()
        return outcome

    def cancel(self, wait: Optional[float] = 5.0) -> str:
        """Cancel the job and return its status after that.

        A queued, scheduled or deferred job is canceled at once (the jobs that wait for it fail:
        "dependency <id> failed"). A running job's worker is asked to stop it
        (fork mode kills the child); this waits up to ``wait`` seconds for it to end — "canceled",
        or "finished"/"failed" if it ended first.
        """
        deadline(wait, "wait")  # a bad wait is refused before anything is asked
        reply = cancel(self.connection, self.ref, self.queue)
        if reply is None:
            raise NoSuchJob(f"No job {self.id!r} to cancel.")
        if reply == 1:
            self._status = CANCELED
        elif reply == 2:
            try:
                self._status = self._wait(wait)[0] if wait else STARTED
            except ResultTimeout:
                self._status = STARTED
        else:
            raise InvalidTransition(
                f"job {self.id} is {reply.decode()}; only a queued, scheduled or running job can be canceled.")
        return self._status

    def requeue(self) -> None:
        """Put a failed (or canceled) job back at the end of its queue."""
        queue = self.queue
        for _ in range(5):
            if queue is None:
                raw = self.connection.hget(self._key, "queue")
                queue = raw.decode(errors="replace") if raw is not None else ""
            status = keys.run(self.connection, "requeue",
                              [self._key, keys.log(self.id, tag=self._tag), keys.failed(queue), keys.queue(queue),
                               keys.wake(queue)], [self.id, queue], tag=self._tag)
            if status != 4:  # 4: it is of another queue than we thought
                break
            queue = None
        if status is None:
            raise NoSuchJob(f"No job {self.id!r} to requeue.")
        if status != 1:
            raise InvalidTransition(
                f"job {self.id} is {status.decode()}; only a failed or canceled job can be requeued.")
        self._status = QUEUED

    def _missing(self) -> NoSuchJob:
        where = ("" if keys.id_tag(self.id) == self._tag else
                 f" on queue {self.queue!r}" if self.queue else f" (tag {self._tag})")
        return NoSuchJob(f"No job {self.id!r}{where}: it was never enqueued here, or it expired after its TTL.")

    def __reduce__(self) -> tuple:
        raise UnpicklableHandle(f"a Job handle can't be pickled; as an argument of a job, a Job (or Group) is "
                                f"passed as its result when it sits at the top level or in lists, tuples and "
                                f"dicts up to {_NESTING} deep")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self._func()} {self._status or '?'}>"

    @property
    def progress(self) -> Optional[dict]:
        """The last progress the job reported (``{"done", "total", "message"}``), or ``None``."""
        raw = self.connection.hget(self._key, "progress")
        return json.loads(raw) if raw else None

    def logs(self, tail: Optional[int] = None) -> list:
        """The job's captured output (stdout, stderr, logging), one string per line; its last
        ``tail`` lines if given. Kept while the job is kept, at most the last 1000 lines."""

        if tail is not None and tail <= 0:
            return []
        start = 0 if tail is None else -tail
        return [line.decode(errors="replace")
                for line in self.connection.lrange(keys.log(self.id, tag=self._tag), start, -1)]


def cancel_command(ref: str, queue: str) -> tuple:
    """The cancel script's call for one job of ``queue`` (passing no dependents), to give to ``wire.send``."""
    script_keys, head = _cancel_args(ref, queue)
    return keys.evalsha("cancel", [*script_keys, keys.dependents(ref)], [*head, 0], tag=keys.tag(queue))


def _cancel_args(ref: str, queue: str) -> tuple:
    job_id, tag = keys.split(ref)
    return ([keys.job(job_id, tag=tag), keys.queue(queue), keys.scheduled(queue)],
            [job_id, DEFAULT_RESULT_TTL, DEFAULT_FAILURE_TTL, queue, keys.control(""), ref])


def cancel(connection: redis.Redis, ref: str, queue: Optional[str] = None, first: Any = None) -> Any:
    """Run the cancel script for one job (its dependents read and passed if it has any): its reply.
    ``queue``: the job's queue if known (else read); ``first``: the reply of ``cancel_command`` sent already."""
    from . import flow

    job_id, tag = keys.split(ref)
    for _ in range(5):
        if queue is None:
            raw = connection.hget(keys.job(job_id, tag=tag), "queue")
            queue = raw.decode(errors="replace") if raw is not None else ""
        script_keys, head = _cancel_args(ref, queue)
        if first is None:
            first = keys.run(connection, "cancel", [*script_keys, keys.dependents(ref)], [*head, 0], tag=tag)
        reply = flow.end_with_dependents(connection, "cancel", ref, script_keys, head, [], True, first)
        if reply != 4:  # 4: it is of another queue than we thought
            return reply
        queue, first = None, None
    return reply
