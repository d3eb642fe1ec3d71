"""Running one taken job, in this process or in a forked child, and describing how it ended."""
from __future__ import annotations

import ctypes
import gc
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any, NamedTuple, Optional

from . import job as jobs
from . import signing
from .errors import CodeMismatchError, PayloadError
from .events import capture_output
from .serialization import check_code, dumps_result, loads_call


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

    @classmethod
    def from_reply(cls, reply: list, signer: Optional[signing.Signer] = None) -> "Taken":
        """The dequeue script's reply, its signature checked with ``signer`` (None: unsigned mode)."""
        queue, job_id, attempt, func, data, code, timeout, result_ttl, failure_ttl = reply[:9]
        refused = "" if signer is None else _refusal(signer, reply)
        if refused:  # nothing of it is acted on, not even its options
            timeout = result_ttl = failure_ttl = None
        return cls(
            queue.decode(), job_id.decode(), int(attempt), func.decode(errors="replace") if func else None, data,
            code.decode(errors="replace") if code else "",
            _seconds(timeout, jobs.DEFAULT_TIMEOUT), _ttl(result_ttl, jobs.DEFAULT_RESULT_TTL),
            _ttl(failure_ttl, jobs.DEFAULT_FAILURE_TTL), refused,
        )


def _refusal(signer: signing.Signer, reply: list) -> str:
    """"" if the job's signature matches, else the error line it fails with."""
    job_id, func, data, code, options, sig = reply[1], reply[3], reply[4], reply[5], reply[6:12], reply[12]
    if not sig:
        return ("SignatureError: unsigned job refused: this worker has a secret and the job carries no signature, "
                "so it was not enqueued by a client with that secret; it was not imported or unpickled")
    head = signing.job_head(func or b"", code or b"", options)
    if signer.job_matches(sig, job_id, head, data or b""):
        return ""
    return ("SignatureError: signature does not match: the job's function, arguments or options were changed "
            "after it was enqueued, or it was signed with another secret; it was not imported or unpickled")


def _seconds(raw: Optional[bytes], default: float) -> Optional[float]:
    if raw is None:
        return default
    return None if raw == b"none" else float(raw)


def _ttl(raw: Optional[bytes], default: int) -> int:
    value = _seconds(raw, default)
    return -1 if value is None else max(1, int(value))


class Outcome(NamedTuple):
    """How an attempt ended: the status and the fields to store with it."""

    status: str  # finished or failed
    fields: list  # field/value pairs for the job hash
    summary: str  # one line for the worker's log ("ok" or the error)

    @classmethod
    def failure(cls, exc_line: str, text: Optional[str] = None) -> "Outcome":
        """A failed attempt: its one-line error and its traceback (by default, just that line)."""
        return cls(jobs.FAILED, ["exc", exc_line, "error", text or exc_line + "\n"], exc_line)


class JobInterrupted(BaseException):
    """Raised asynchronously into an inline job's thread to stop it (cancel, timeout, stop)."""


REASONS = {
    "cancel": "Canceled: the job was canceled while it ran",
    "lost": "LeaseLost: this worker lost the job's lease, so it runs elsewhere now",
    "stop": "WorkerInterrupted: the worker was told to stop now (second signal) while the job ran",
    "timeout": "JobTimeout: the job ran longer than its timeout of {timeout:g} s and was stopped",
}


def run_job(taken: Taken, connection: Any) -> Outcome:
    """Import, check and call the job's function here; never raises."""
    token = jobs._current.set(jobs.Job(taken.id, connection, {"status": b"started", "queue": taken.queue.encode()}))
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

        try:
            with capture_output(jobs.get_current_job(), taken.attempt, (taken.result_ttl, taken.failure_ttl)):  # output, logging, progress
                value = func(*args, **kwargs)
        except BaseException as exc:  # the job's own failure, whatever it is
            return _failed(exc)
        try:
            return Outcome(jobs.FINISHED, ["result", dumps_result(value)], "ok")
        except Exception as exc:
            line = f"ResultError: the job returned {type(value).__name__}, which can't be pickled: {exc}"
            return Outcome.failure(line)
    except BaseException as exc:  # a bug of ours or an interrupt; the worker goes on
        return _failed(exc)
    finally:
        jobs._current.reset(token)


def _failed(exc: BaseException) -> Outcome:
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is run_job.__code__:
        tb = tb.tb_next  # start at the user's function, not in nbqueue
    line = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return Outcome.failure(line.splitlines()[-1] if line else type(exc).__name__, text)


class Child:
    """A forked child running one job; the parent reads its ``Outcome`` from a pipe."""

    def __init__(self, taken: Taken, connection: Any):
        self.taken = taken
        self.stop_reason: Optional[str] = None
        read_fd, write_fd = os.pipe()
        self._parent = os.getpid()
        gc.freeze()  # the child's collector leaves the parent's objects alone: no copy-on-write storm
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child, measured by the tests' outcomes
            os.close(read_fd)
            self._child_main(write_fd, connection)  # never returns
        gc.unfreeze()  # the parent's own garbage is collected as before
        os.close(write_fd)
        self._fd = read_fd

    def _child_main(self, write_fd: int, connection: Any) -> None:
        code = 0
        try:
            _die_with_parent(self._parent)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker to decide
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            outcome = run_job(self.taken, connection)
            try:
                blob = pickle.dumps(outcome)
            except Exception as exc:
                blob = pickle.dumps(Outcome.failure(f"ResultError: {exc}"))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(blob)
        except BaseException:
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def kill(self, reason: str) -> None:
        """Stop the child now; its attempt fails with ``reason``."""
        self.stop_reason = reason
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> Outcome:
        """Wait for the outcome, killing the child at the job's timeout."""
        deadline = None if self.taken.timeout is None else time.monotonic() + self.taken.timeout
        chunks = []
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.kill(REASONS["timeout"].format(timeout=self.taken.timeout) + " (killed)")
                remaining = None
            try:
                ready, _, _ = select.select([self._fd], [], [], remaining)
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
                continue
            if not ready:
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._fd)
        _, status = os.waitpid(self.pid, 0)
        if self.stop_reason:
            return Outcome.failure(self.stop_reason)
        if chunks:
            try:
                return pickle.loads(b"".join(chunks))
            except Exception:
                pass
        line = _death(status)
        return Outcome.failure(line)


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()  # looked up once, not in every child


def _die_with_parent(parent: int) -> None:
    """Linux: the child is killed when its worker dies, so a lost worker's job stops with it."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(1)


def _death(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return f"JobProcessDied: the job's process was killed by {sig} before it finished"
    return f"JobProcessDied: the job's process exited with code {os.waitstatus_to_exitcode(status)} before it finished"


class Running:
    """One attempt a worker slot is running, and how to interrupt it from another thread."""

    def __init__(self, taken: Taken):
        self.taken = taken
        self.reason: Optional[str] = None  # why it was interrupted: cancel, lost, timeout, stop
        self.deadline: Optional[float] = None  # inline timeout, on the monotonic clock
        self._child: Optional[Child] = None
        self._thread_id: Optional[int] = None  # an inline job's thread while it may be interrupted
        self._lock = threading.Lock()

    def reason_text(self) -> str:
        return REASONS.get(self.reason or "stop", "").format(timeout=self.taken.timeout or 0)

    def execute(self, connection: Any, inline: bool) -> Outcome:
        """Run the job (in this thread, or in a forked child) and say how it ended."""
        if inline:
            outcome = self._run_inline(connection)
        else:
            with self._lock:
                self._child = Child(self.taken, connection)
                if self.reason is not None:  # interrupted before it started
                    self._child.kill(self.reason_text())
            outcome = self._child.wait()
        if self.reason == "cancel":
            return Outcome(jobs.CANCELED, ["exc", self.reason_text()], "canceled")
        if self.reason in ("timeout", "stop") or (self.reason and outcome is None):
            return Outcome.failure(self.reason_text())
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
            outcome = run_job(self.taken, connection)
        except JobInterrupted:
            pass  # arrived just after the job returned; self.reason says why
        while True:  # disarm, even if a late interrupt lands in the middle of it
            try:
                with self._lock:
                    if self._thread_id is not None:
                        self._thread_id = None
                        _raise_in_thread(threading.get_ident(), None)  # drop a pending one
                break
            except JobInterrupted:
                continue
        return outcome

    def interrupt(self, reason: str) -> None:
        """Stop the job: kill the child, or raise ``JobInterrupted`` in the inline job's thread."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            if self._child is not None:
                self._child.kill(self.reason_text())
            elif self._thread_id is not None:
                _raise_in_thread(self._thread_id, JobInterrupted)


def _raise_in_thread(thread_id: int, exc_type: Optional[type]) -> None:
    """Raise ``exc_type`` in a thread when it next runs Python code (CPython); None clears it.

    A thread blocked in C code (a long ``time.sleep``, a C extension) sees it only on return.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None)
