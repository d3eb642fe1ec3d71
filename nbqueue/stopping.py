"""How a worker stops: signals (the first asks for a warm stop, the second stops now), the wake-ups
that reach its idle slots, the grace an inline job that ignores a stop gets, and unregistering."""
from __future__ import annotations

import logging
import os
import selectors
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis

from . import keys, wire
from .execute import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from .ahead import Ahead
    from .execute import Running
    from .takes import Takes

log = logging.getLogger("nbqueue.worker")

WAKE_RETRY = 0.5  # seconds between tries to wake idle slots for a stop, if Redis refused the first
WAKE_TRIES = 6
STOP_GRACE = 3.0  # seconds a "stop now" waits for an inline job that ignores it before exiting anyway


class _Stop(BaseException):
    """Unwinds a slot that is stopping while Redis is away."""


class Stopping:
    """The Worker's part that stops it (a mixin: it uses the worker's connection, lock, running jobs,
    wake-up socket pair and ``_finish``)."""

    connection: Any
    name: str
    concurrency: int
    inline: bool
    _lock: threading.Lock
    _running: dict[str, Running]
    _ahead: Optional[Ahead]
    _takes: Optional[Takes]
    _wait_keys: list
    _pid: int
    _wake: tuple
    _signals: list
    _stopping: bool
    _slots_ended: int
    _grace_until: Optional[float]
    _wake_pending: bool
    _wake_tries: int
    _give_back: Callable[..., None]
    _finish: Callable[..., Any]

    def _wait_for_slots(self, count: int) -> None:
        """The main thread: act on signals (handlers only wake it) until every slot has ended."""
        handled = 0
        with selectors.DefaultSelector() as waiting:
            waiting.register(self._wake[0], selectors.EVENT_READ)
            while True:
                with self._lock:
                    if self._slots_ended == count:
                        return
                grace = None if self._grace_until is None else self._grace_until - time.monotonic()
                if grace is not None and grace <= 0:
                    self._abandon()
                    return
                if self._wake_pending:  # a stop's push to idle slots failed: try again soon
                    grace = WAKE_RETRY if grace is None else min(grace, WAKE_RETRY)
                waiting.select(grace)
                try:
                    self._wake[0].recv(4096)
                except BlockingIOError:
                    pass
                handled = self._act_on_signals(handled)
                if self._wake_pending:
                    self._wake_slots()

    def _act_on_signals(self, handled: int) -> int:
        """The first stop signal asks for a warm stop, the second stops now; returns how many were seen."""
        for signum in self._signals[handled:]:
            handled += 1
            name = signal.Signals(signum).name
            if handled == 1:
                log.warning("warm shutdown (%s): finishing the current job(s); send it again to stop now", name)
                self.request_stop()
            elif handled == 2:
                log.warning("stopping now (%s again): running jobs are marked failed", name)
                self.stop_now()
        return handled

    def _poke(self) -> None:
        """Wake the main thread (from a signal handler, a slot, another thread)."""
        try:
            self._wake[1].send(b"!")
        except (IndexError, OSError):  # not working, or the pipe is full: it is awake anyway
            pass

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # e.g. a worker in a notebook thread: use request_stop()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _on_signal(self, signum: int, frame) -> None:
        """Only counts and wakes the main thread, which acts (never re-entered, never blocked)."""
        if os.getpid() == self._pid:  # not in a job's child that has not reset its handlers yet
            self._signals.append(signum)
            self._poke()

    def request_stop(self) -> None:
        """Stop after the running jobs."""
        self._stopping = True
        self._poke()
        if self._takes is not None:
            self._takes.stop()
        self._wake_slots()

    def _wake_slots(self) -> None:
        """Push a stop onto the lists idle slots block on; if Redis does not take it, the main
        thread tries again every ``WAKE_RETRY`` seconds (else idle slots notice within IDLE_WAKE)."""
        try:
            wake = [("RPUSH", key, *[b"stop"] * self.concurrency) for key in self._wake_lists()]
            wire.send_grouped(self.connection, *wake)
            self._wake_pending = False
        except redis.RedisError as exc:
            if not self._wake_pending:
                log.warning("worker %s: could not wake its idle slots to stop (%s); trying again", self.name, exc)
                self._wake_tries = WAKE_TRIES
            self._wake_tries -= 1
            self._wake_pending = self._wake_tries > 0  # then idle slots notice within IDLE_WAKE

    def stop_now(self) -> None:
        """Stop at once: running jobs are interrupted and marked failed, not left started.

        A fork-mode child is killed, so its slot records the failure at once; an inline job that
        ignores the interrupt (blocked in C code) is given ``STOP_GRACE`` seconds, then recorded
        failed by ``work()``, which returns.
        """
        self.request_stop()
        with self._lock:
            runs = list(self._running.values())
        self._give_back(self._ahead)  # jobs taken ahead go back to their queue
        for run in runs:
            if run.began:
                run.interrupt("stop")
        if runs and self.inline and self._grace_until is None:
            self._grace_until = time.monotonic() + STOP_GRACE
            self._poke()

    def _abandon(self) -> None:
        """Inline jobs that ignored a stop now: record them failed (their threads are left behind)."""
        with self._lock:
            runs = [run for run in self._running.values() if run.began]  # those taken ahead: given back
            self._running.clear()  # so a Redis that is away ends the recording instead of waiting for it
        for run in runs:
            try:
                self._finish(run.taken, Outcome.failure(run.reason_text()))
            except (_Stop, redis.RedisError):
                pass
        log.warning("worker %s exits with %d job(s) marked failed that ignored the stop", self.name, len(runs))

    def _wake_lists(self) -> list:
        """The lists the worker's own threads block on (a stop pushes onto them)."""
        own = [keys.worker_wake(self.name), self._wait_keys[-1]]  # the same key but on a cluster
        return [*dict.fromkeys(own), *(self._takes.wake_keys() if self._takes is not None else [])]

    def _unregister(self) -> None:
        try:
            wire.send_grouped(self.connection, ("DEL", keys.worker(self.name)), ("ZREM", keys.WORKERS, self.name),
                              *[("DEL", key) for key in self._wake_lists()])
        except redis.RedisError as exc:
            log.warning("could not unregister worker %s: %s", self.name, exc)

