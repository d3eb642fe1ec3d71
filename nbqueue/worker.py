"""The worker: takes jobs from its queues in priority order and runs them.

Taking a job and recording who holds it is one script (``dequeue.lua``); an idle worker blocks
in Redis on its queues' wake flags, so it costs no CPU and starts a new job at once.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from typing import Iterable, Optional, Union

import redis

from . import keys
from .connection import describe, get_connection
from .execute import Child, Outcome, Taken, WorkerInterrupted, run_job
from .queue import check_queue_name

log = logging.getLogger("nbqueue.worker")

LEASE = 6.0  # seconds an attempt holds its job without renewal
HEARTBEAT = 2.0  # seconds between heartbeats (and lease renewals)
IDLE_WAKE = 5.0  # an idle worker looks around at least this often


class Worker:
    """Serve ``queues`` (first = highest priority), running each job in a forked child or inline."""

    def __init__(
        self,
        queues: Iterable[str] = ("default",),
        connection: Union[redis.Redis, str, None] = None,
        *,
        name: Optional[str] = None,
        inline: bool = False,
        burst: bool = False,
    ):
        self.queues = [check_queue_name(q) for q in queues] or ["default"]
        self.connection = get_connection(connection)
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(2)}"
        self.inline = inline or not hasattr(os, "fork")
        self.burst = burst
        self.jobs_run = 0
        self._stopping = False
        self._idle = False
        self._child: Optional[Child] = None
        self._held: Optional[Taken] = None
        self._in_inline_job = False
        self._done = threading.Event()
        self._queue_keys = [keys.queue(q) for q in self.queues]
        self._wake_keys = [keys.wake(q) for q in self.queues]

    # --- the loop -------------------------------------------------------------------------
    def work(self) -> int:
        """Run jobs until stopped (or, with ``burst``, until the queues are empty); returns jobs run."""
        if sys.path[0] != os.getcwd() and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # so tasks.py beside the worker imports
        restore = self._install_signals()
        self._register()
        beat = threading.Thread(target=self._heartbeat, name="nbqueue-heartbeat", daemon=True)
        beat.start()
        mode = "inline" if self.inline else "fork"
        log.info("worker %s serving %s (%s mode) on %s", self.name, ", ".join(self.queues), mode,
                 describe(self.connection))
        try:
            while not self._stopping:
                taken = self._take()
                if taken is not None:
                    self._run(taken)
                elif self.burst:
                    break
                else:
                    self._wait_for_work()
        except _Stop:
            self.connection.connection_pool.disconnect()  # a blocking call was cut off mid-reply
        finally:
            self._done.set()
            restore()
            self._unregister()
            log.info("worker %s stopped after %d job(s)", self.name, self.jobs_run)
        return self.jobs_run

    def _take(self) -> Optional[Taken]:
        reply = self._redis(lambda: keys.run(
            self.connection, "dequeue", [keys.ACTIVE, *self._queue_keys, *self._wake_keys],
            [self.name, int(LEASE * 1000), *self.queues]))
        return Taken.from_reply(reply) if reply else None

    def _wait_for_work(self) -> None:
        """Block until a wake flag of one of our queues is set (or a while passes)."""
        self._idle = True
        try:
            if self._stopping:
                return
            self._redis(lambda: self.connection.blpop(self._wake_keys, timeout=IDLE_WAKE))
        finally:
            self._idle = False

    def _run(self, taken: Taken) -> None:
        self._held = taken
        started = time.perf_counter()
        if self.inline:
            self._in_inline_job = True
            try:
                outcome = run_job(taken, self.connection)
            finally:
                self._in_inline_job = False
        else:
            self._child = Child(taken, self.connection)
            outcome = self._child.wait()
            self._child = None
        elapsed = time.perf_counter() - started
        self._finish(taken, outcome)
        self._held = None
        self.jobs_run += 1
        log.info("%s %s %s %s %s", taken.id, taken.func, taken.queue, _duration(elapsed),
                 "ok" if outcome.status == "finished" else f"failed: {outcome.summary}")

    def _finish(self, taken: Taken, outcome: Outcome) -> None:
        ttl = taken.result_ttl if outcome.status == "finished" else taken.failure_ttl
        written = self._redis(lambda: keys.run(
            self.connection, "finish", [keys.ACTIVE, keys.failed(taken.queue)],
            [taken.id, self.name, taken.attempt, outcome.status, ttl, *outcome.fields]))
        if not written:
            log.warning("%s: not recording the outcome: this attempt no longer holds the job", taken.id)

    def _redis(self, call):
        """Run a Redis call, waiting out a lost connection (logged once) instead of dying."""
        delay, warned = 0.1, False
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not warned:
                    log.warning("lost Redis at %s (%s); retrying with backoff", describe(self.connection), exc)
                    warned = True
                if self._stopping and self._held is None:
                    raise _Stop() from None
                time.sleep(delay)  # waiting for Redis to come back, not for a job
                delay = min(delay * 2, 5.0)
            else:
                if warned:
                    log.warning("Redis is back")

    # --- presence -------------------------------------------------------------------------
    def _register(self) -> None:
        now = time.time()
        with self.connection.pipeline() as pipe:
            pipe.hset(keys.worker(self.name), mapping={
                "host": socket.gethostname(), "pid": os.getpid(), "queues": ",".join(self.queues),
                "mode": "inline" if self.inline else "fork", "started_at": now, "seen": now,
            })
            pipe.expire(keys.worker(self.name), int(HEARTBEAT * 5))
            pipe.zadd(keys.WORKERS, {self.name: now})
            pipe.execute()

    def _unregister(self) -> None:
        try:
            with self.connection.pipeline() as pipe:
                pipe.delete(keys.worker(self.name))
                pipe.zrem(keys.WORKERS, self.name)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not unregister worker %s: %s", self.name, exc)

    def _heartbeat(self) -> None:
        """Every few seconds: say we are alive and renew the lease of the job we hold."""
        while not self._done.wait(HEARTBEAT):
            try:
                now = time.time()
                with self.connection.pipeline() as pipe:
                    pipe.hset(keys.worker(self.name), mapping={"seen": now, "job": self._held.id if self._held else ""})
                    pipe.expire(keys.worker(self.name), int(HEARTBEAT * 5))
                    pipe.zadd(keys.WORKERS, {self.name: now})
                    if self._held is not None:
                        pipe.zadd(keys.ACTIVE, {self._held.id: int((now + LEASE) * 1000)}, xx=True)
                    pipe.execute()
            except redis.RedisError:
                pass  # the main loop reports a lost connection

    # --- stopping -------------------------------------------------------------------------
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # e.g. a worker in a notebook thread: stop it with request_stop()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    def _on_signal(self, signum: int, frame) -> None:
        if self._stopping:
            log.warning("stopping now (%s again)", signal.Signals(signum).name)
            self.stop_now()
        else:
            log.warning("warm shutdown (%s): finishing the current job; send it again to stop now",
                        signal.Signals(signum).name)
            self.request_stop()

    def request_stop(self) -> None:
        """Stop after the current job."""
        self._stopping = True
        if self._idle and threading.current_thread() is threading.main_thread():
            raise _Stop()  # break out of the blocking wait

    def stop_now(self) -> None:
        """Stop at once; the running job is marked failed, not left started."""
        self._stopping = True
        child = self._child
        if child is not None:
            child.kill("WorkerInterrupted: the worker was told to stop now (second signal) while the job ran")
        elif self._in_inline_job and threading.current_thread() is threading.main_thread():
            raise WorkerInterrupted()
        elif self._idle and threading.current_thread() is threading.main_thread():
            raise _Stop()


class _Stop(BaseException):
    """Unwinds the worker loop from a signal handler while it is idle."""


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
