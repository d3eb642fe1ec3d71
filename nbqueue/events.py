"""Live events of jobs: progress and output of a running job, and the watcher that listens.

Core, no IPython. Besides the state changes the scripts publish, a job's channel ``nbq:ev:<id>``
carries ``{"id", "status": "progress", "done", "total", "message", "t"}`` and
``{"id", "status": "log", "lines": [...], "t"}``, where ``t`` is the worker's clock ("sec.usec").
The output of a job is also kept in the Redis list ``nbq:log:<id>`` (its last lines).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections import deque
from typing import Any, Callable, Iterable, Optional

import redis

from . import keys
from .connection import describe, get_connection
from .job import DEFAULT_FAILURE_TTL, DEFAULT_RESULT_TTL, Job, get_current_job

log = logging.getLogger("nbqueue.events")

FLUSH_INTERVAL = 0.1  # seconds between flushes of a job's output and progress (<= 10 events/s each)
LOG_MAX_LINES = 1000  # lines kept per job, in Redis and in memory between flushes
LOG_MAX_LINE = 2000  # characters kept per line
LOG_TTL = DEFAULT_FAILURE_TTL  # seconds the lines live while the job runs (its own TTL once it ends)
SYNC = "sync"  # the watcher's own event: "re-read this job, events may have been missed"


def log_key(job_id: str) -> str:
    return f"{keys.PREFIX}log:{job_id}"


def _clock() -> str:
    return f"{time.time():.6f}"


def _line(text: str) -> str:
    return text if len(text) <= LOG_MAX_LINE else text[:LOG_MAX_LINE] + f"… [{len(text) - LOG_MAX_LINE} more characters]"


# --- inside a job: progress and output ----------------------------------------------------------
_live: dict = {}  # job id -> _Live, the jobs capturing output in this process


def progress(done: float, total: Optional[float] = None, message: Optional[str] = None) -> None:
    """Report the progress of the running job, e.g. ``progress(i, len(items), "resizing")``.

    Stored in the job (``job.progress``) and published to watchers, at most ~10 times a second
    (the last report always). Outside a job this warns and does nothing.
    """
    for name, value in (("done", done), ("total", total)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"progress({name}={value!r}): give a number")
    record = {"done": done, "total": total, "message": None if message is None else str(message)}
    job = get_current_job()
    live = _live.get(job.id) if job else (next(iter(_live.values())) if len(_live) == 1 else None)
    if live is not None:  # a thread the job started has no current job; one live job is it
        live.set_progress(record)
    elif job is not None:
        _publish(job.connection, job.id, None, record)
    else:
        warnings.warn("nbqueue.progress() was called outside a job; nothing was recorded",
                      RuntimeWarning, stacklevel=2)


def _publish(conn: redis.Redis, job_id: str, lines: Optional[list], record: Optional[dict],
             ttl: int = LOG_TTL) -> None:
    with conn.pipeline(transaction=False) as pipe:
        if lines:
            pipe.rpush(log_key(job_id), *lines)
            pipe.ltrim(log_key(job_id), -LOG_MAX_LINES, -1)
            pipe.expire(log_key(job_id), ttl)
            pipe.publish(keys.events(job_id), json.dumps(
                {"id": job_id, "status": "log", "lines": lines, "t": _clock()}))
        if record:
            pipe.hset(keys.job(job_id), "progress", json.dumps(record))
            pipe.publish(keys.events(job_id), json.dumps(
                {"id": job_id, "status": "progress", **record, "t": _clock()}))
        pipe.execute()


class _Live:
    """What one running job says (output lines, latest progress), flushed by a small thread."""

    def __init__(self, job: Job):
        self.job = job
        self.lock = threading.Lock()
        self.lines: deque = deque(maxlen=LOG_MAX_LINES)
        self.skipped = 0
        self.partial = {"stdout": "", "stderr": ""}
        self.progress: Optional[dict] = None
        self.warned = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"nbqueue-output-{job.id}", daemon=True)

    def add_text(self, stream: str, text: str) -> None:
        with self.lock:
            pieces = (self.partial[stream] + text).split("\n")
            self.partial[stream] = pieces.pop().rsplit("\r", 1)[-1][-LOG_MAX_LINE:]
            for piece in pieces:  # a carriage return shows what a terminal would: the text after it
                self._append(piece.rstrip("\r").rsplit("\r", 1)[-1])

    def add_line(self, text: str) -> None:
        with self.lock:
            for piece in text.splitlines() or [""]:
                self._append(piece)

    def _append(self, line: str) -> None:
        if len(self.lines) == LOG_MAX_LINES:
            self.skipped += 1
        self.lines.append(_line(line))

    def set_progress(self, record: dict) -> None:
        with self.lock:
            self.progress = record

    def flush(self, final: bool = False, ttl: int = LOG_TTL) -> None:
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
        if not (lines or record or final):
            return
        try:
            _publish(self.job.connection, self.job.id, lines, record, ttl)
            if final and not lines:
                self.job.connection.expire(log_key(self.job.id), ttl)
        except redis.RedisError as exc:
            if not self.warned:
                self.warned = True
                print(f"nbqueue: could not store the output of job {self.job.id}: {exc}", file=sys.__stderr__)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def start(self) -> None:
        self.thread.start()

    def stop(self, ttl: int) -> None:
        self._stop.set()
        self.thread.join()
        self.flush(final=True, ttl=ttl)


class _Tee:
    """A stand-in for ``sys.stdout``/``sys.stderr``: writes through and keeps a copy."""

    def __init__(self, original: Any, live: _Live, stream: str):
        self._original, self._live, self._stream = original, live, stream

    def write(self, text: str) -> int:
        written = self._original.write(text)
        if threading.current_thread() is not self._live.thread:
            self._live.add_text(self._stream, str(text))
        return written

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self._original, name)


class _LogHandler(logging.Handler):
    """Keeps the job's ``logging`` records (those that pass the loggers' levels)."""

    def __init__(self, live: _Live):
        super().__init__()
        self.live = live
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self.live.thread:
            return
        try:
            self.live.add_line(self.format(record))
        except Exception:  # pragma: no cover - logging's own convention
            self.handleError(record)


class capture_output:
    """``with capture_output(job):`` tee stdout, stderr and logging records of a running job to Redis.

    The worker's terminal still shows everything. Lines are flushed every ~0.1 s (never one Redis
    call per print) to ``nbq:log:<id>`` (its last ``LOG_MAX_LINES``) and published as ``log`` events.
    """

    def __init__(self, job: Job):
        self.job = job
        self.live = _Live(job)
        self._saved: tuple = ()
        self._handler = _LogHandler(self.live)

    def __enter__(self) -> "capture_output":
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self.live, "stdout")
        sys.stderr = _Tee(sys.stderr, self.live, "stderr")
        logging.getLogger().addHandler(self._handler)
        _live[self.job.id] = self.live
        self.live.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _live.pop(self.job.id, None)
        logging.getLogger().removeHandler(self._handler)
        sys.stdout, sys.stderr = self._saved
        self.live.stop(self._ttl(failed=exc_type is not None))

    def _ttl(self, failed: bool) -> int:
        """The TTL the job itself gets when it ends (forever: ``LOG_TTL``, the lines stay bounded)."""
        name, default = ("failure_ttl", DEFAULT_FAILURE_TTL) if failed else ("result_ttl", DEFAULT_RESULT_TTL)
        try:
            raw = self.job.connection.hget(keys.job(self.job.id), name)
        except redis.RedisError:
            return LOG_TTL
        if raw in (None, b""):
            return default
        return LOG_TTL if raw == b"none" else max(1, int(float(raw)))


# --- the watcher --------------------------------------------------------------------------------
class Subscription:
    """Someone watching some jobs (or all of them): ``on_event(event)``, and ``on_tick()`` a few
    times a second, both called on the watcher's thread. ``close()`` when done."""

    def __init__(self, watcher: "Watcher", on_event: Callable[[dict], None],
                 on_tick: Optional[Callable[[], None]], all_jobs: bool):
        self.watcher, self.on_event, self.on_tick, self.all_jobs = watcher, on_event, on_tick, all_jobs
        self.job_ids: set = set()
        self.closed = False

    def add(self, job_ids: Iterable[str]) -> None:
        self.watcher._change(self, add=list(job_ids))

    def remove(self, job_ids: Iterable[str]) -> None:
        self.watcher._change(self, remove=list(job_ids))

    def close(self) -> None:
        self.watcher._change(self, close=True)


class Watcher:
    """One thread and one pub/sub connection per process (and Redis) for every watched job.

    It SUBSCRIBEs to the channels of the watched jobs only, adding and dropping them as watchers
    come and go, so a kernel watching 3 jobs does not receive the events of a busy farm; a
    dashboard asks for ``all_jobs`` (PSUBSCRIBE ``nbq:ev:*``). Each subscribe confirmation — first
    subscribe or re-subscribe after a reconnect — is delivered as a ``sync`` event, telling the
    watcher to re-read the job: nothing published before or during a gap is lost. The thread
    ends when nothing is watched and starts again on demand; after ``fork`` the child starts fresh.
    """

    TICK = 0.2  # seconds between on_tick calls

    def __init__(self, connection: redis.Redis):
        self.connection = connection
        self._reset()
        _watchers_alive.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._subs: set = set()
        self._channels: dict = {}  # channel name -> set of subscriptions
        self._thread: Optional[threading.Thread] = None
        self._wake = f"{keys.PREFIX}watcher:{uuid.uuid4().hex}"

    def watch(self, job_ids: Iterable[str] = (), on_event: Callable[[dict], None] = lambda e: None,
              on_tick: Optional[Callable[[], None]] = None, all_jobs: bool = False) -> Subscription:
        """Call ``on_event`` with each event of ``job_ids`` (or of every job) until ``close()``."""
        sub = Subscription(self, on_event, on_tick, all_jobs)
        self._change(sub, add=list(job_ids))
        return sub

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _change(self, sub: Subscription, add: list = (), remove: list = (), close: bool = False) -> None:
        with self._lock:
            if sub.closed:
                return
            if close:
                remove, sub.closed = list(sub.job_ids), True
                self._subs.discard(sub)
            else:
                self._subs.add(sub)
            for job_id in add:
                sub.job_ids.add(job_id)
                self._channels.setdefault(keys.events(job_id), set()).add(sub)
            for job_id in remove:
                sub.job_ids.discard(job_id)
                subs = self._channels.get(keys.events(job_id), set())
                subs.discard(sub)
                if not subs:
                    self._channels.pop(keys.events(job_id), None)
            if self._subs and not self.running:
                self._thread = threading.Thread(target=self._run, name="nbqueue-watcher", daemon=True)
                self._thread.start()
                return
        if add or remove:
            try:  # wake the thread, so it subscribes now rather than at its next tick
                self.connection.publish(self._wake, b"")
            except redis.RedisError:
                pass

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        pubsub, delay, next_tick = None, 0.1, time.monotonic()
        subscribed: set = set()
        pattern = False
        me = threading.current_thread()
        while True:
            with self._lock:
                if self._thread is not me:  # fork or a replaced thread
                    return
                if not self._subs:
                    self._thread = None
                    break
                wanted, want_all = set(self._channels), any(s.all_jobs for s in self._subs)
            try:
                if pubsub is None:
                    pubsub = self.connection.pubsub()
                    pubsub.subscribe(self._wake)
                    subscribed, pattern = set(), False
                subscribed, pattern = self._apply(pubsub, subscribed, pattern, wanted, want_all)
                message = pubsub.get_message(timeout=max(0.0, next_tick - time.monotonic()))
                for _ in range(1000):
                    if message is None:
                        break
                    self._dispatch(message)
                    message = pubsub.get_message(timeout=0)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.TICK
                    self._tick()
                delay = 0.1
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.debug("watcher lost Redis (%s); reconnecting", exc)
                self._close(pubsub)
                pubsub = None
                time.sleep(delay)  # backoff while Redis is away
                delay = min(delay * 2, 5.0)
        self._close(pubsub)

    @staticmethod
    def _close(pubsub: Any) -> None:
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass

    def _apply(self, pubsub: Any, subscribed: set, pattern: bool, wanted: set, want_all: bool) -> tuple:
        new, gone = sorted(wanted - subscribed), sorted(subscribed - wanted)
        for i in range(0, len(new), 1000):
            pubsub.subscribe(*new[i:i + 1000])
        for i in range(0, len(gone), 1000):
            pubsub.unsubscribe(*gone[i:i + 1000])
        if want_all != pattern:
            (pubsub.psubscribe if want_all else pubsub.punsubscribe)(keys.EVENTS_PATTERN)
        return wanted, want_all

    def _dispatch(self, message: dict) -> None:
        kind, channel = message["type"], _text(message.get("channel"))
        if kind in ("message", "pmessage") and channel == self._wake:
            return
        prefix = keys.events("")
        job_id = channel[len(prefix):] if channel.startswith(prefix) else None
        with self._lock:
            if kind in ("message", "subscribe"):
                targets = [s for s in self._channels.get(channel, ()) if not s.all_jobs]
            elif kind in ("pmessage", "psubscribe"):
                targets = [s for s in self._subs if s.all_jobs]
            else:
                return
        if kind in ("subscribe", "psubscribe"):
            event = {"id": job_id, "status": SYNC}
        else:
            try:
                event = json.loads(message["data"])
            except (TypeError, ValueError):
                return
        for sub in targets:
            self._call(sub.on_event, event)

    def _tick(self) -> None:
        with self._lock:
            ticks = [s.on_tick for s in self._subs if s.on_tick is not None]
        for on_tick in ticks:
            self._call(on_tick)

    @staticmethod
    def _call(func: Callable, *args: Any) -> None:
        try:
            func(*args)
        except Exception:  # one broken watcher must not stop the others
            log.exception("nbqueue watcher callback failed")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


_watchers: dict = {}  # description of the Redis -> Watcher
_watchers_alive: "weakref.WeakSet[Watcher]" = weakref.WeakSet()
_watchers_lock = threading.Lock()


def get_watcher(connection: Any = None) -> Watcher:
    """This process's watcher for ``connection`` (default: the resolved Redis)."""
    conn = get_connection(connection)
    name = describe(conn)
    with _watchers_lock:
        watcher = _watchers.get(name)
        if watcher is None:
            watcher = _watchers[name] = Watcher(conn)
        return watcher


def _after_fork() -> None:
    global _watchers_lock
    _watchers_lock = threading.Lock()
    _watchers.clear()
    _live.clear()
    for watcher in list(_watchers_alive):
        watcher._reset()  # the parent's thread does not exist here


os.register_at_fork(after_in_child=_after_fork)
