"""The listening side of job events: one thread per process updates every watcher.

Core, no IPython; the notebook's widgets and dashboard sit on top of it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from typing import Any, Callable, Optional

import redis

from . import keys, wire
from .connection import describe, get_connection, is_cluster
from .schema import SYNC

log = logging.getLogger("nbqueue.watcher")



class Subscription:
    """Someone watching some jobs (or all of them): ``on_event(event)``, and ``on_tick()`` a few
    times a second, and ``on_error(exc)`` each time connecting to Redis fails (the watcher goes on
    trying), all called on the watcher's thread. ``close()`` when done."""

    def __init__(self, watcher: Watcher, on_event: Callable[[dict], None],
                 on_tick: Optional[Callable[[], None]], all_jobs: bool,
                 on_error: Optional[Callable[[Exception], None]] = None):
        self.watcher, self.on_event, self.on_tick, self.all_jobs = watcher, on_event, on_tick, all_jobs
        self.on_error = on_error
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
    dashboard asks for ``all_jobs`` (PSUBSCRIBE ``keys.EVENTS_PATTERN``). Each subscribe confirmation — first
    subscribe or re-subscribe after a reconnect — is delivered as a ``sync`` event, telling the
    watcher to re-read the job: nothing published before or during a gap is lost. ``Job.result``,
    ``Group.results``, ``as_completed``/``wait`` (``waiter.Waiter``), ``nbqueue info --watch`` and the
    notebook's views all listen here. The thread ends ``LINGER`` s after nothing is watched and
    starts again on demand; after ``fork`` the child starts fresh.
    """

    TICK = 0.2  # seconds between on_tick calls
    LINGER = 1.0  # seconds the thread (and its connection) outlives the last watch: waits in a row share it

    def __init__(self, connection: redis.Redis):
        self.connection = connection
        self._reset()
        _watchers_alive.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._subs: set = set()
        self._channels: dict = {}  # channel name -> set of subscriptions
        self._thread: Optional[threading.Thread] = None
        self._wake = keys.watcher_wake(uuid.uuid4().hex)
        self._barriers: dict = {}  # token -> Event set once the thread has caught up to it
        self._ready = threading.Event()  # the thread listens (its wake channel is subscribed)
        self._fresh: list = []  # (subscription, job id) added since the thread last looked

    def watch(self, job_ids: Iterable[str] = (), on_event: Callable[[dict], None] = lambda e: None,
              on_tick: Optional[Callable[[], None]] = None, all_jobs: bool = False,
              on_error: Optional[Callable[[Exception], None]] = None) -> Subscription:
        """Call ``on_event`` with each event of ``job_ids`` (or of every job) until ``close()``."""
        sub = Subscription(self, on_event, on_tick, all_jobs, on_error)
        self._change(sub, add=list(job_ids))
        return sub

    def catch_up(self, timeout: float = 0.5) -> bool:
        """Wait until the thread has handled every event published before this call, and has
        ticked once (so coalesced updates are out). False if it did not within ``timeout``.
        On a cluster a barrier goes through every primary: messages keep their order per node
        they were published on, not across nodes."""
        if not self.running:
            return True
        publishers = _each_primary(self.connection)
        barriers = {uuid.uuid4().hex: threading.Event() for _ in publishers}
        self._barriers.update(barriers)
        deadline = time.monotonic() + timeout
        try:
            if not self._ready.wait(timeout):
                return not self.running
            for publisher, token in zip(publishers, barriers):
                publisher.publish(self._wake, token)
            for done in barriers.values():
                while not done.wait(0.02):  # the thread may end meanwhile (nothing left to watch)
                    if not self.running:
                        return True
                    if time.monotonic() > deadline:
                        return False
            return True
        except redis.RedisError:
            return False
        finally:
            for token in barriers:
                self._barriers.pop(token, None)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _change(self, sub: Subscription, add: Iterable[str] = (), remove: Iterable[str] = (),
                close: bool = False) -> None:
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
        pubsub, delay, next_tick, idle_since = None, 0.1, time.monotonic(), None
        subscribed: set = set()
        pattern = False
        me = threading.current_thread()
        while True:
            with self._lock:
                if self._thread is not me:  # fork or a replaced thread
                    return
                if not self._subs:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= self.LINGER:
                        self._thread = None
                        self._ready.clear()
                        break
                else:
                    idle_since = None
                wanted, want_all = set(self._channels), any(s.all_jobs for s in self._subs)
                fresh, self._fresh = self._fresh, []
            connecting = pubsub is None
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
                wire.close_pubsub(pubsub)
                pubsub = None
                if connecting:  # not a dropped connection (redis-py's own retries are spent): Redis is away
                    with self._lock:
                        told = [s.on_error for s in self._subs if s.on_error is not None]
                    for on_error in told:
                        self._call(on_error, exc)
                time.sleep(delay)  # backoff while Redis is away
                delay = min(delay * 2, 5.0)
        wire.close_pubsub(pubsub)

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
        job_id = keys.channel_ref(channel) if isinstance(channel, str) else None  # the job's ref
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
            if job_id is not None and isinstance(event, dict):
                event["id"] = job_id  # its ref, as subscribers know the job
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
_watchers_alive: weakref.WeakSet[Watcher] = weakref.WeakSet()
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




def _each_primary(client: Any) -> list:
    """``client`` itself, or on a cluster a plain client of each primary."""
    if not is_cluster(client):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


def _after_fork() -> None:
    global _watchers_lock
    _watchers_lock = threading.Lock()
    _watchers.clear()
    for watcher in list(_watchers_alive):
        watcher._reset()  # the parent's thread does not exist here


os.register_at_fork(after_in_child=_after_fork)
