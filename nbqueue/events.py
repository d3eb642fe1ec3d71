"""What a running job says while it runs: its progress and its output.

Core, no IPython (the listening side is ``watcher.py``). Besides the state changes the scripts publish,
a job's channel (``keys.events``) carries ``{"id", "status": "progress", "done", "total", "message", "t"}`` and
``{"id", "status": "log", "lines": [...], "t"}``, where ``t`` is the worker's clock ("sec.usec").
The output of a job is also kept in the Redis list ``keys.log`` (its last lines).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable
from typing import Any, Optional

import redis

from . import keys
from .errors import InvalidProgress
from .job import Job, get_current_job
from .schema import DEFAULT_FAILURE_TTL, DEFAULT_RESULT_TTL

log = logging.getLogger("nbqueue.events")

FLUSH_INTERVAL = 0.1  # seconds between flushes of a job's output and progress (<= 10 events/s each)
LOG_MAX_LINES = 1000  # lines kept per job, in Redis and in memory between flushes
LOG_MAX_LINE = 2000  # characters kept per line
LOG_TTL = DEFAULT_FAILURE_TTL  # seconds the lines live while the job runs (its own TTL once it ends)


def _line(text: str) -> str:
    if len(text) <= LOG_MAX_LINE:
        return text
    return text[:LOG_MAX_LINE] + f"… [{len(text) - LOG_MAX_LINE} more characters]"


# --- inside a job: progress and output ----------------------------------------------------------
_live: dict = {}  # job id -> _Live, the jobs capturing output in this process


def progress(done: float, total: Optional[float] = None, message: Optional[str] = None) -> None:
    """Report the progress of the running job, e.g. ``progress(i, len(items), "resizing")``.

    Stored in the job (``job.progress``) and published to watchers, at most ~10 times a second
    (the last report always). Outside a job this warns and does nothing.
    """
    for name, value in (("done", done), ("total", total)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or (isinstance(value, float) and not math.isfinite(value))):
            raise InvalidProgress(f"progress({name}={value!r}): give a finite number")
    record = {"done": done, "total": total, "message": None if message is None else str(message)}
    job = get_current_job()
    live = _live.get(job.id) if job else (next(iter(_live.values())) if len(_live) == 1 else None)
    if live is not None:  # a thread the job started has no current job; one live job is it
        live.set_progress(record)
    elif job is not None:
        _publish(job.connection, job.ref, _attempt(job), None, record)
    else:
        warnings.warn("nbqueue.progress() was called outside a job; nothing was recorded",
                      RuntimeWarning, stacklevel=2)




def _publish(conn: redis.Redis, job_id: str, attempt: int, lines: Optional[list], record: Optional[dict],
             ttl: int = LOG_TTL) -> bool:
    """Store and publish output lines and progress of attempt ``attempt``; False if it was refused."""
    plain, tag = keys.split(job_id)  # job_id: a ref
    args = [plain, keys.events(plain, tag=tag), attempt, LOG_MAX_LINES, ttl, json.dumps(record) if record else "",
            *(lines or ())]
    return keys.script("output")([keys.job(plain, tag=tag), keys.log(plain, tag=tag)], args, client=conn) == 1


def _attempt(job: Job) -> int:
    """The attempt running ``job`` now (read when it starts, so later attempts are told apart)."""
    if job.attempt:
        return job.attempt
    raw = job.connection.hget(job._key, "attempt")
    return int(raw or 0)


class _Live:
    """What one running job says (output lines, latest progress), flushed by a small thread."""

    def __init__(self, job: Job, attempt: int):
        self.job, self.attempt = job, attempt
        self.fenced = False  # another attempt holds the job: write nothing more
        self.lock = threading.Lock()
        self.lines: deque = deque(maxlen=LOG_MAX_LINES)
        self.skipped = 0
        self.partial = {"stdout": "", "stderr": ""}
        self.progress: Optional[dict] = None
        self.warned = False
        self.written = False  # something reached Redis: the lines get the job's TTL at the end
        self.publishing = threading.Lock()  # one flush at a time, so lines reach Redis in order

    def add_text(self, stream: str, text: str) -> None:
        with self.lock:
            pieces = (self.partial[stream] + text).split("\n")
            self.partial[stream] = pieces.pop().rsplit("\r", 1)[-1][-LOG_MAX_LINE:]
            for piece in pieces:  # a carriage return shows what a terminal would: the text after it
                self._append(piece.rstrip("\r").rsplit("\r", 1)[-1])
        _flusher.wake()

    def add_line(self, text: str) -> None:
        with self.lock:
            for piece in text.splitlines() or [""]:
                self._append(piece)
        _flusher.wake()

    def _append(self, line: str) -> None:
        if len(self.lines) == LOG_MAX_LINES:
            self.skipped += 1
        self.lines.append(_line(line))

    def set_progress(self, record: dict) -> None:
        with self.lock:
            self.progress = record
        _flusher.wake()

    def flush(self, final: bool = False, ttl: int = LOG_TTL) -> None:
        with self.publishing:
            self._flush(final, ttl)

    def _flush(self, final: bool, ttl: int) -> None:
        with self.lock:
            if final:
                for stream, text in self.partial.items():
                    if text:
                        self._append(text)
                    self.partial[stream] = ""
            lines, record = list(self.lines), self.progress
            if self.skipped:
                lines.insert(0, f"[nbqueue: {self.skipped} earlier lines skipped]")
            self.lines.clear()
            self.skipped, self.progress = 0, None
        if self.fenced or not (lines or record or (final and self.written)):
            return  # a silent job costs no Redis call at all
        try:
            self.fenced = not _publish(self.job.connection, self.job.ref, self.attempt, lines, record,
                                       ttl if final else LOG_TTL)
            self.written = True
        except redis.RedisError as exc:
            if not self.warned:
                self.warned = True
                print(f"nbqueue: could not store the output of job {self.job.id}: {exc}", file=sys.__stderr__)

    def stop(self, ttl: int) -> None:
        self.flush(final=True, ttl=ttl)


class _Flusher:
    """One thread per process, started at the first output, that flushes every running job's
    lines and progress ~0.1 s after they were written: one Redis call per job per flush, never
    one per print; it sleeps, costing nothing, while no job writes."""

    def __init__(self) -> None:
        self._pending = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def wake(self) -> None:
        if self._pid != os.getpid():  # first use, or a forked child (the thread did not follow)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="nbqueue-output", daemon=True)
            self._thread.start()
        if not self._pending.is_set():
            self._pending.set()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            time.sleep(FLUSH_INTERVAL)  # gather what is written meanwhile into one write
            self._pending.clear()
            for live in list(_live.values()):
                live.flush()


_flusher = _Flusher()


class _Router:
    """Routes output to the job that wrote it: one pair of stand-ins for ``sys.stdout``/``stderr``
    and one root logging handler per process, installed while any job captures (inline workers
    may run several jobs at once, each in its own thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_thread: dict = {}  # thread ident -> _Live
        self.saved: tuple = ()
        self.handler = _LogHandler(self)

    def live_for(self, ident: Optional[int], name: str) -> Optional[_Live]:
        """The job thread's own; a thread the job started (not nbqueue's, not the main thread)
        goes to the job if only one is running."""
        live = self.by_thread.get(ident)
        if live is None and len(self.by_thread) == 1 and not name.startswith("nbqueue-") and name != "MainThread":
            live = next(iter(self.by_thread.values()))
        return live

    def add(self, live: _Live) -> None:
        with self.lock:
            if not self.by_thread:
                self.saved = (sys.stdout, sys.stderr)
                sys.stdout, sys.stderr = _Tee(sys.stdout, self, "stdout"), _Tee(sys.stderr, self, "stderr")
                logging.getLogger().addHandler(self.handler)
            self.by_thread[threading.get_ident()] = live

    def remove(self) -> None:
        with self.lock:
            self.by_thread.pop(threading.get_ident(), None)
            if not self.by_thread and self.saved:
                logging.getLogger().removeHandler(self.handler)
                sys.stdout, sys.stderr = self.saved
                self.saved = ()


class _Tee:
    """A stand-in for ``sys.stdout``/``sys.stderr``: writes through and keeps a copy for the job."""

    def __init__(self, original: Any, router: _Router, stream: str):
        self._original, self._router, self._stream = original, router, stream

    def write(self, text: str) -> int:
        written = self._original.write(text)
        thread = threading.current_thread()
        live = self._router.live_for(thread.ident, thread.name)
        if live is not None:
            live.add_text(self._stream, str(text))
        return written

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self._original, name)


class _LogHandler(logging.Handler):
    """Keeps each job's ``logging`` records (those that pass the loggers' levels)."""

    def __init__(self, router: _Router):
        super().__init__()
        self.router = router
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        live = self.router.live_for(record.thread, record.threadName or "")
        if live is None:
            return
        try:
            live.add_line(self.format(record))
        except Exception:  # pragma: no cover - logging's own convention
            self.handleError(record)


_router = _Router()


class capture_output:
    """``with capture_output(job, attempt):`` tee stdout, stderr and logging of a running job to Redis.

    What the job's thread (and threads it starts) writes still reaches the worker's terminal.
    Lines are flushed every ~0.1 s (never one Redis call per print) to ``keys.log`` (its
    last ``LOG_MAX_LINES``) and published as ``log`` events — only while ``attempt`` (default:
    the one running when it starts) still holds the job.
    """

    def __init__(self, job: Job, attempt: Optional[int] = None,
                 ttls: tuple = (DEFAULT_RESULT_TTL, DEFAULT_FAILURE_TTL)):
        self.job = job
        self.attempt = attempt
        self.ttls = ttls  # the job's result and failure TTLs (-1: kept forever), which its lines get

    def __enter__(self) -> capture_output:
        self.live = _Live(self.job, self.attempt or _attempt(self.job))
        _router.add(self.live)
        _live[self.job.id] = self.live
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _live.pop(self.job.id, None)
        _router.remove()
        ttl = self.ttls[exc_type is not None]
        self.live.stop(LOG_TTL if ttl < 0 else ttl)


def _after_fork() -> None:
    global _router
    if _router.saved:  # a job's child: the parent's jobs are not ours to capture
        sys.stdout, sys.stderr = _router.saved
        logging.getLogger().removeHandler(_router.handler)
    _router = _Router()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork)
