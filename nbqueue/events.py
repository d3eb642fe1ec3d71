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
from redis.commands.core import Script

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
        _publish(job.connection, job.id, _attempt(job), None, record)
    else:
        warnings.warn("nbqueue.progress() was called outside a job; nothing was recorded",
                      RuntimeWarning, stacklevel=2)


# Append a running attempt's output and progress, unless another attempt holds the job by now
# (its worker hung past the lease and the job ran again elsewhere): writes are fenced by attempt.
# KEYS[1] job hash, KEYS[2] log list. ARGV[1] job id, ARGV[2] channel, ARGV[3] attempt,
# ARGV[4] lines kept, ARGV[5] ttl of the lines (0: keep it), ARGV[6] progress JSON or '', ARGV[7..] lines.
# Returns 1 if written, 0 if refused. Events carry Redis time, like the other events of a job.
_WRITE = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if cur[1] ~= 'started' or cur[2] ~= ARGV[3] then return 0 end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
if #ARGV > 6 then
  local lines = {unpack(ARGV, 7)}
  redis.call('RPUSH', KEYS[2], unpack(lines))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
  redis.call('PUBLISH', ARGV[2], cjson.encode({id = ARGV[1], status = 'log', lines = lines, t = now}))
end
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[6])
  local event = cjson.decode(ARGV[6])
  event.id, event.status, event.t = ARGV[1], 'progress', now
  redis.call('PUBLISH', ARGV[2], cjson.encode(event))
end
return 1
"""
_write_script = Script(None, _WRITE.encode())  # type: ignore[arg-type]


def _publish(conn: redis.Redis, job_id: str, attempt: int, lines: Optional[list], record: Optional[dict],
             ttl: int = LOG_TTL) -> bool:
    """Store and publish output lines and progress of attempt ``attempt``; False if it was refused."""
    args = [job_id, keys.events(job_id), attempt, LOG_MAX_LINES, ttl, json.dumps(record) if record else "",
            *(lines or ())]
    return _write_script([keys.job(job_id), log_key(job_id)], args, client=conn) == 1


def _attempt(job: Job) -> int:
    """The attempt running ``job`` now (read when it starts, so later attempts are told apart)."""
    if job.attempt:
        return job.attempt
    raw = job.connection.hget(keys.job(job.id), "attempt")
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
        if self.fenced or not (lines or record or final):
            return
        try:
            self.fenced = not _publish(self.job.connection, self.job.id, self.attempt, lines, record,
                                       ttl if final else LOG_TTL)
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
    Lines are flushed every ~0.1 s (never one Redis call per print) to ``nbq:log:<id>`` (its
    last ``LOG_MAX_LINES``) and published as ``log`` events — only while ``attempt`` (default:
    the one running when it starts) still holds the job.
    """

    def __init__(self, job: Job, attempt: Optional[int] = None):
        self.job = job
        self.attempt = attempt

    def __enter__(self) -> "capture_output":
        self.live = _Live(self.job, self.attempt or _attempt(self.job))
        _router.add(self.live)
        _live[self.job.id] = self.live
        self.live.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _live.pop(self.job.id, None)
        _router.remove()
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
        self._barriers: dict = {}  # token -> Event set once the thread has caught up to it
        self._ready = threading.Event()  # the thread listens (its wake channel is subscribed)
        self._fresh: list = []  # (subscription, job id) added since the thread last looked

    def watch(self, job_ids: Iterable[str] = (), on_event: Callable[[dict], None] = lambda e: None,
              on_tick: Optional[Callable[[], None]] = None, all_jobs: bool = False) -> Subscription:
        """Call ``on_event`` with each event of ``job_ids`` (or of every job) until ``close()``."""
        sub = Subscription(self, on_event, on_tick, all_jobs)
        self._change(sub, add=list(job_ids))
        return sub

    def catch_up(self, timeout: float = 0.5) -> bool:
        """Wait until the thread has handled every event published before this call, and has
        ticked once (so coalesced updates are out). False if it did not within ``timeout``."""
        if not self.running:
            return True
        token, done = uuid.uuid4().hex, threading.Event()
        self._barriers[token] = done
        deadline = time.monotonic() + timeout
        try:
            if not self._ready.wait(timeout):
                return not self.running
            self.connection.publish(self._wake, token)
            while not done.wait(0.02):  # the thread may end meanwhile (nothing left to watch)
                if not self.running:
                    return True
                if time.monotonic() > deadline:
                    return False
            return True
        except redis.RedisError:
            return False
        finally:
            self._barriers.pop(token, None)

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
                self._fresh.append((sub, job_id))
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
                    self._ready.clear()
                    break
                wanted, want_all = set(self._channels), any(s.all_jobs for s in self._subs)
                fresh, self._fresh = self._fresh, []
            try:
                if pubsub is None:
                    self._ready.clear()
                    pubsub = self.connection.pubsub()
                    pubsub.subscribe(self._wake)
                    subscribed, pattern = set(), False
                active = subscribed
                subscribed, pattern = self._apply(pubsub, subscribed, pattern, wanted, want_all)
                for sub, job_id in fresh:  # already subscribed: no confirmation will come, sync now
                    if keys.events(job_id) in active and not sub.closed:
                        self._call(sub.on_event, {"id": job_id, "status": SYNC})
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
            except Exception as exc:  # a lost connection, as redis-py reports it (not always a RedisError)
                log.debug("watcher lost Redis (%r); reconnecting", exc)
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
        if channel == self._wake:
            if kind == "subscribe":
                self._ready.set()
            elif kind == "message":
                done = self._barriers.get(_text(message.get("data")))
                if done is not None:  # everything published before the barrier has been handled
                    self._tick()
                    done.set()
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


def catch_up(timeout: float = 0.5) -> None:
    """Let every watcher of this process handle what was published so far (see ``Watcher.catch_up``)."""
    for watcher in list(_watchers.values()):
        watcher.catch_up(timeout)


def _after_fork() -> None:
    global _watchers_lock, _router
    _watchers_lock = threading.Lock()
    if _router.saved:  # a job's child: the parent's jobs are not ours to capture
        sys.stdout, sys.stderr = _router.saved
        logging.getLogger().removeHandler(_router.handler)
    _router = _Router()
    _watchers.clear()
    _live.clear()
    for watcher in list(_watchers_alive):
        watcher._reset()  # the parent's thread does not exist here


os.register_at_fork(after_in_child=_after_fork)
