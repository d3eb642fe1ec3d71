"""Running one taken job, in this process or in a forked child, and describing how it ended."""
from __future__ import annotations

import asyncio
import contextvars
import ctypes
import inspect
import logging
import math
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple, Optional

from . import flow, job as jobs, keys, schema, signing
from .child import EXIT_NO_PIPE, Forked, end_orphans, exit_now, settle
from .errors import CodeMismatchError, DependencyError, PayloadError
from .events import capture_output
from .forkserver import ForkServer
from .serialization import check_code, dumps_result, loads_call, source_hash
from .summary import needed as summary_needed, summarise

log = logging.getLogger("nbqueue.worker")

MAX_TTL = 2**31 - 1  # seconds (68 years): the longest TTL passed to Redis
RESULT_MAX = 64 * 2**20  # bytes: the largest pickled result a job may store in Redis
CANCEL_GRACE = 2.0  # seconds an inline async job has to end after its task is canceled


class Taken(NamedTuple):
    """A job as the dequeue script hands it to a worker."""

    queue: str
    id: str
    attempt: int
    func: Optional[str]
    data: Optional[bytes]
    code: str
    timeout: Optional[float]  # None: no limit
    result_ttl: int  # -1: keep forever
    failure_ttl: int
    refused: str = ""  # why the signature check refused the job ("": it may run)
    on_success: Optional[str] = None  # "module:qualname" of a function to enqueue with the job, after
    on_failure: Optional[str] = None
    deps: bool = False  # it takes results of other jobs (flow.py)
    signer: Optional[signing.Signer] = None  # checks those results' signatures
    has_dependents: bool = False  # jobs waited for it when it was taken

    @classmethod
    def from_reply(cls, reply: list, signer: Optional[signing.Signer] = None) -> Taken:
        """The dequeue script's reply, its signature checked with ``signer`` (None: unsigned mode)."""
        queue, job_id, attempt, func, data, code, timeout, result_ttl, failure_ttl = reply[:9]
        callbacks = reply[13:15]
        refused = "" if signer is None else signer.job_refusal(reply[1], reply[3], reply[5], reply[6:12], reply[4],
                                                               reply[12], callbacks)
        if refused:  # nothing of it is acted on, not even its options
            timeout = result_ttl = failure_ttl = None
            callbacks = [None, None]
        on_success, on_failure = (c.decode(errors="replace") if c else None for c in callbacks)
        return cls(
            queue.decode(), job_id.decode(), int(attempt), func.decode(errors="replace") if func else None, data,
            code.decode(errors="replace") if code else "",
            _seconds(timeout, schema.DEFAULT_TIMEOUT), _ttl(result_ttl, schema.DEFAULT_RESULT_TTL),
            _ttl(failure_ttl, schema.DEFAULT_FAILURE_TTL), refused, on_success, on_failure,
            len(reply) > 15 and bool(reply[15]), signer, len(reply) > 16 and bool(reply[16]),
        )


def _seconds(raw: Optional[bytes], default: float) -> Optional[float]:
    """A job's timeout as stored: ``none`` or infinite is no limit; junk, NaN or <= 0 the default."""
    try:
        value = schema.decode_option(raw, default)
    except (TypeError, ValueError):
        value = math.nan
    if value is None or raw is None:
        return value
    if not value > 0:  # NaN, zero, negative, junk: written by hand, not by enqueue
        log.warning("a job's stored timeout or TTL %r is not a number of seconds above 0; using %g", raw, default)
        return default
    return value


def _ttl(raw: Optional[bytes], default: int) -> int:
    value = _seconds(raw, default)
    return -1 if value is None else int(min(max(1.0, value), MAX_TTL))


class Outcome(NamedTuple):
    """How an attempt ended: the status and the fields to store with it."""

    status: str  # finished or failed
    fields: list  # field/value pairs for the job hash
    summary: str  # one line for the worker's log ("ok" or the error)

    @classmethod
    def failure(cls, exc_line: str, text: Optional[str] = None) -> Outcome:
        """A failed attempt: its one-line error and its traceback (by default, just that line)."""
        return cls(schema.FAILED, ["exc", exc_line, "error", text or exc_line + "\n"], exc_line)


class JobInterrupted(BaseException):
    """Raised asynchronously into an inline job's thread to stop it (cancel, timeout, stop)."""


REASONS = {
    "cancel": "Canceled: the job was canceled while it ran",
    "lost": "LeaseLost: this worker lost the job's lease, so it runs elsewhere now",
    "stop": "WorkerInterrupted: the worker was told to stop now (second signal) while the job ran",
    "timeout": "JobTimeout: the job ran longer than its timeout of {timeout:g} s and was stopped",
}


def run_job(taken: Taken, connection: Any, on_task: Optional[Callable[[Callable[[], None]], None]] = None) -> Outcome:
    """Import, check and call the job's function here; never raises. A coroutine function's job
    runs on an event loop of its own in this thread; ``on_task`` is given a function that cancels it."""
    current = jobs.Job(taken.id, connection, {"status": schema.STARTED.encode(), "queue": taken.queue.encode()},
                       queue=taken.queue)
    token = jobs._current.set(current)
    try:
        if taken.refused:  # checked before anything is imported or unpickled
            return Outcome.failure(taken.refused)
        if not taken.func:
            raise PayloadError("The job has no function recorded; it was not written by nbqueue's enqueue.")
        try:
            func, args, kwargs = loads_call(taken.func, taken.data or b"")
            check_code(taken.func, func, taken.code)
        except (PayloadError, CodeMismatchError, ImportError) as exc:
            line = f"{type(exc).__name__}: {exc}"
            return Outcome.failure(line)
        if taken.deps:  # results of the jobs it depends on, read now (not through the client)
            try:
                allow = connection.hget(keys.job(taken.id, taken.queue), "allow_failure") == b"1"
                args, kwargs = flow.substitute(args, kwargs, connection, taken.signer, allow)
            except DependencyError as exc:
                return Outcome.failure(f"DependencyFailed: {exc}")

        me = os.getpid()
        try:
            ttls = (taken.result_ttl, taken.failure_ttl)
            with capture_output(current, taken.attempt, ttls):  # output, logging, progress
                try:
                    value = func(*args, **kwargs)
                    if inspect.iscoroutine(value):
                        value = run_coroutine(value, on_task)
                finally:
                    if os.getpid() != me:  # a process the job forked returned into nbqueue: it ends here
                        exit_now(0)
                    settle()
        except BaseException as exc:  # the job's own failure, whatever it is
            return _failed(exc)
        return _result(value)
    except BaseException as exc:  # a bug of ours or an interrupt; the worker goes on
        return _failed(exc)
    finally:
        jobs._current.reset(token)


def run_coroutine(coro: Any, on_task: Optional[Callable[[Callable[[], None]], None]] = None) -> Any:
    """Run an ``async def`` job's coroutine to its end on a new event loop in this thread (the
    job's own: its output, ``get_current_job()`` and fencing stay this thread's). ``on_task`` gets
    a thread-safe function that cancels it: the job sees ``CancelledError`` where it awaits, and
    its ``finally`` blocks and ``async with`` exits run. Tasks it left running are canceled too."""
    if _loop_running():  # e.g. testing mode in a notebook cell, which runs on the kernel's loop
        return _in_own_thread(lambda: run_coroutine(coro, on_task))
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(coro)
        if on_task is not None:
            def cancel() -> None:
                loop.call_soon_threadsafe(task.cancel)

            on_task(cancel)
        value = loop.run_until_complete(task)
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in left:
            t.cancel()
        if left:  # given CANCEL_GRACE to end; one that refuses is dropped with the loop
            loop.run_until_complete(asyncio.wait(left, timeout=CANCEL_GRACE))
        loop.run_until_complete(loop.shutdown_asyncgens())
        return value
    finally:  # interrupted (JobInterrupted): nothing more runs on it
        loop.close()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_own_thread(call: Callable[[], Any]) -> Any:
    """``call()`` in a new thread (where no event loop runs), its value or its exception here."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed back to the caller as it is
            box["error"] = exc

    context = contextvars.copy_context()  # get_current_job() there too
    # not named nbqueue-*: the job's output from it is captured as from a thread the job started
    thread = threading.Thread(target=lambda: context.run(run), name="async-job", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _result(value: Any) -> Outcome:
    try:
        blob = dumps_result(value)
    except BaseException as exc:  # pickling runs the value's own code (__reduce__), which can raise anything
        line = (f"ResultError: the job returned {type(value).__name__}, which can't be pickled: "
                f"{type(exc).__name__}: {exc}")
        return Outcome.failure(line)
    if len(blob) > RESULT_MAX:
        return Outcome.failure(
            f"ResultTooLarge: the job returned {type(value).__name__} of {len(blob) / 2**20:.1f} MiB pickled, over "
            f"nbqueue's limit of {RESULT_MAX / 2**20:.0f} MiB for a result kept in Redis; write big results to a "
            f"file or a store and return where they are")
    summary = summarise(value, len(blob)) if summary_needed(value) else None  # best effort, bounded, never fails
    return Outcome(schema.FINISHED, ["result", blob] + ([schema.SUMMARY, summary] if summary else []), "ok")


def _failed(exc: BaseException) -> Outcome:
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is run_job.__code__:
        tb = tb.tb_next  # start at the user's function, not in nbqueue
    line = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return Outcome.failure(line.splitlines()[-1] if line else type(exc).__name__, text)


class Child:
    """A forked child running one job; the parent reads its ``Outcome`` from the child's pipe.

    With ``forks``, the fork server forks it and it is sent the job (``job_runner`` runs it)."""

    def __init__(self, taken: Taken, connection: Any, forks: Optional[ForkServer] = None):
        self.taken = taken
        self.stop_reason: Optional[str] = None
        payload = b"" if forks is None else pickle.dumps(taken._replace(signer=None), pickle.HIGHEST_PROTOCOL)
        if forks is None:
            warm()
        self._process = Forked(lambda: _outcome_bytes(run_job(taken, connection)), _INTERRUPTED, forks, payload)
        self.pid = self._process.pid

    def kill(self, reason: str) -> None:
        """Stop the child (and its process group) now; its attempt fails with ``reason``."""
        self.stop_reason = reason
        self._process.kill()

    def wait(self) -> Outcome:
        """Wait for the outcome, killing the child at the job's timeout; always reaps it."""
        ended = self._process.wait(self.taken.timeout)
        if ended.timed_out and not self.stop_reason:
            self.stop_reason = REASONS["timeout"].format(timeout=self.taken.timeout) + " (killed)"
        if self._process.killed or ended.data is None:  # it could not end what it started
            end_orphans()  # (if adopting) its processes, even those that left its group (setsid)
        if self.stop_reason:
            return Outcome.failure(self.stop_reason)
        if ended.data is not None:
            try:
                return Outcome(*pickle.loads(ended.data))
            except Exception:
                pass
        return Outcome.failure(_death(ended.status))


def job_runner(connection: Any, signer: Optional[signing.Signer]) -> Callable[[bytes], bytes]:
    """What a fork server's child runs: the job the worker sent (its ``Taken``, pickled without
    its signer, which the server has from the worker), run as a child forked by the worker runs it.
    Call it in the process the fork server is forked from: it warms that process up (``warm``)."""
    warm()
    warm_jobs(connection)

    def run(payload: bytes) -> bytes:
        taken = pickle.loads(payload)._replace(signer=signer)
        return _outcome_bytes(run_job(taken, connection))
    return run


_warm = False


def warm() -> None:
    """Fill, once, the caches a job's child would otherwise fill again each time, in the process the
    children are forked from, so each inherits them: the compiled patterns of the tokenizer that
    hashing a job function's source (``check_code``) runs on, cloudpickle's first dump (together
    ~3 ms of each child's CPU time otherwise)."""
    global _warm
    if not _warm:
        _warm = True
        source_hash(run_job)
        dumps_result(None)


def warm_jobs(connection: Any) -> None:
    """Run the job path on a no-op job a few times here (no Redis call: it prints nothing), so the
    interpreter's specialized code and the caches it fills are there before the children are forked."""
    taken = Taken("nbqueue-warm", "0", 1, "nbqueue.execute:_noop", pickle.dumps(((), {})), "", None, 60, 60)
    for _ in range(_WARM_RUNS):
        _outcome_bytes(run_job(taken, connection))


_WARM_RUNS = 20


def _noop() -> None:
    """The job ``warm_jobs`` runs."""


def _outcome_bytes(outcome: Outcome) -> bytes:
    try:
        return pickle.dumps(tuple(outcome), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # only str and bytes inside, so no memory left
        return pickle.dumps(tuple(Outcome.failure(f"ResultError: {type(exc).__name__}: {exc}")))


_INTERRUPTED = _outcome_bytes(Outcome.failure(
    "JobInterrupted: a signal handler the job installed raised after the job's code returned, "
    "while nbqueue recorded how it ended"))  # what a child sends when it can't tell


def _death(status: Optional[int]) -> str:
    if status is None:
        return ("JobProcessDied: the worker's fork server died while the job ran, and the job's process "
                "with it (a new fork server runs the next jobs)")
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return f"JobProcessDied: the job's process was killed by {sig} before it finished"
    code = os.waitstatus_to_exitcode(status)
    if code == EXIT_NO_PIPE:
        return ("JobProcessDied: the job's process could not send its outcome to the worker: the job closed "
                "or broke the pipe nbqueue reads it from (did it close file descriptors it did not open?)")
    return f"JobProcessDied: the job's process exited with code {code} before it finished"


class Running:
    """One attempt a worker slot is running, and how to interrupt it from another thread."""

    def __init__(self, taken: Taken):
        self.taken = taken
        self.reason: Optional[str] = None  # why it was interrupted: cancel, lost, timeout, stop
        self.began = False  # execute() was called (a job taken ahead waits for its turn)
        self.deadline: Optional[float] = None  # inline timeout, on the monotonic clock
        self._child: Optional[Child] = None
        self._thread_id: Optional[int] = None  # an inline job's thread while it may be interrupted
        self._cancel_task: Optional[Callable[[], None]] = None  # an inline async job's: cancels it
        self._lock = threading.Lock()

    def reason_text(self) -> str:
        return REASONS.get(self.reason or "stop", "").format(timeout=self.taken.timeout or 0)

    def execute(self, connection: Any, inline: bool, forks: Optional[ForkServer] = None) -> Outcome:
        """Run the job (in this thread, or in a forked child: by ``forks`` if given) and say how it ended."""
        self.began = True
        if inline:
            outcome = self._run_inline(connection)
        else:
            with self._lock:
                self._child = Child(self.taken, connection, forks)
                if self.reason is not None:  # interrupted before it started
                    self._child.kill(self.reason_text())
            outcome = self._child.wait()
        if self.reason == "cancel":
            return Outcome(schema.CANCELED, ["exc", self.reason_text()], "canceled")
        if self.reason in ("timeout", "stop") or (self.reason and outcome is None):
            return Outcome.failure(self.reason_text())
        if outcome is None:  # no reason, no outcome: the job's process ended without saying how
            return Outcome.failure("JobProcessDied: the job's process ended without reporting an outcome")
        return outcome

    def _run_inline(self, connection: Any) -> Optional[Outcome]:
        if self.taken.timeout is not None:
            self.deadline = time.monotonic() + self.taken.timeout
        outcome = None
        try:
            with self._lock:
                if self.reason is not None:  # interrupted before it started
                    return None
                self._thread_id = threading.get_ident()
            outcome = run_job(self.taken, connection, self._on_task)
        except JobInterrupted:
            pass  # arrived just after the job returned; self.reason says why
        finally:
            _mend_streams()
        while True:  # disarm, even if a late interrupt lands in the middle of it
            try:
                with self._lock:
                    self._cancel_task = None
                    if self._thread_id is not None:
                        self._thread_id = None
                        _raise_in_thread(threading.get_ident(), None)  # drop a pending one
                break
            except JobInterrupted:
                continue
        return outcome

    def _escalate(self) -> None:
        """An async job still runs ``CANCEL_GRACE`` s after its cancel (it caught ``CancelledError``,
        or blocks its loop): interrupt its thread as a plain inline job's."""
        with self._lock:
            if self._thread_id is not None:
                _raise_in_thread(self._thread_id, JobInterrupted)

    def _on_task(self, cancel: Callable[[], None]) -> None:
        """An inline async job's task exists: interrupts cancel it (or it was interrupted already)."""
        with self._lock:
            self._cancel_task = cancel
            if self.reason is not None:
                cancel()

    def interrupt(self, reason: str) -> None:
        """Stop the job: kill the child; cancel an inline async job's task (``CancelledError`` in
        the job); or raise ``JobInterrupted`` in the inline job's thread."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            if self._child is not None:
                self._child.kill(self.reason_text())
            elif self._cancel_task is not None:
                self._cancel_task()
                escalate = threading.Timer(CANCEL_GRACE, self._escalate)
                escalate.daemon = True
                escalate.start()
            elif self._thread_id is not None:
                _raise_in_thread(self._thread_id, JobInterrupted)


def _mend_streams() -> None:
    """An inline job closed the worker's stdout or stderr: open them again on their descriptors."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, f"__{name}__")
        if old is None or not old.closed:
            continue  # the usual case: one attribute read
        try:
            fresh = open(fd, "w", buffering=1, closefd=False, errors="backslashreplace")
        except OSError:
            continue  # the descriptor itself is gone
        setattr(sys, f"__{name}__", fresh)
        if getattr(sys, name) is old:
            setattr(sys, name, fresh)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.acquire()  # not setStream: it flushes the closed stream first
                try:
                    handler.stream = fresh
                finally:
                    handler.release()


def _raise_in_thread(thread_id: int, exc_type: Optional[type]) -> None:
    """Raise ``exc_type`` in a thread when it next runs Python code (CPython); None clears it.

    A thread blocked in C code (a long ``time.sleep``, a C extension) sees it only on return.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None)
