"""How a worker takes jobs from queues that live on different Redis Cluster slots.

One take script (``dequeue.lua``) sees only the queues of one slot. The worker's queues, in
priority order, are cut into *runs* of neighbours that share a slot; standalone, or when every
queue shares one slot, there is one run and the worker takes and waits as it always did (one
round trip: ``BLPOP`` on the wake flags, then the take). With several runs:

- a take tries the runs in priority order, one round trip each, until one gives a job: whenever
  several queues hold jobs, the first of them in priority order is taken;
- an idle slot waits in this process for a *waker*: one thread per run, which blocks in ``BLPOP``
  on that run's wake flags (and the worker's own wake list on that slot) only while some slot is
  idle, so an idle worker costs one blocked command per run (renewed every ``IDLE_WAKE``
  seconds) and ≈ 0 CPU;
- a wake flag a waker popped is never lost: the take that follows runs that run's script, which
  sets the flags anew, or, if it did not get that far (a higher run had a job, or no slot was
  idle any more), ``reflag.lua`` sets them anew, so other workers blocked on them still wake.

A run whose shard can't be reached is passed over (logged once), its neighbours served meanwhile.
Stopping pushes onto each run's wake list: the wakers return at once.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis

from . import keys, wire
from .connection import is_cluster

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

log = logging.getLogger("nbqueue.worker")


def runs_of(connection: Any, queues: list[str], split: bool = False) -> list[list[str]]:
    """``queues`` (priority order) cut into runs of neighbours on one slot (standalone: one run, or
    with ``split`` one per slot as on a cluster: tests run the cluster's way on one server so)."""
    if not (split or is_cluster(connection)):
        return [list(queues)]
    runs: list[list[str]] = []
    last = None
    for name in queues:
        slot = wire.slot_of(("LLEN", keys.queue(name)))
        if runs and slot == last:
            runs[-1].append(name)
        else:
            runs.append([name])
        last = slot
    return runs


class Run:
    """One run of queues on one slot: its take, its wait and its reflag commands."""

    def __init__(self, worker_name: str, queues: list[str]):
        self.queues = queues
        self.wake_key = keys.worker_wake_on(worker_name, queues[0])
        self.wait_keys = [*map(keys.wake, queues), self.wake_key]
        self.reflag = keys.evalsha("reflag", [*map(keys.queue, queues), *map(keys.wake, queues)], [])
        self.popped = False  # a waker popped one of its flags, and no take of this run ran since
        self.down = False  # its last take found its shard unreachable


class Takes:
    """The takes and waits of a worker whose queues span several slots (``len(runs) > 1``)."""

    def __init__(self, worker: Worker, runs: list[list[str]], take_run: Callable[[list[str]], Any],
                 redis_call: Callable[[Callable[[], Any]], Any]):
        self.worker = worker
        self.connection = worker.connection
        self.runs = [Run(worker.name, queues) for queues in runs]
        self._take_run = take_run  # the worker's take from one run's queues: its settled reply (dequeue.lua);
        # it raises a lost connection (this passes over that run)
        self._redis = redis_call  # the worker's: waits out a lost Redis
        self._cond = threading.Condition()
        self._idle = 0  # slots waiting for a waker
        self._woken = 0  # wake-ups given that no idle slot took yet
        self._stopping = False
        self._wakers: list[threading.Thread] = []

    # --- taking ---------------------------------------------------------------------------
    def take(self) -> Any:
        """Try the runs in priority order: the first reply that is a job (or "suspended"), else "none".
        A run whose shard can't be reached is passed over (the others are served meanwhile); only
        when none can be reached is the error raised (the worker waits it out)."""
        reply: Any = [b"none", []]
        tried, lost = 0, None
        for run in self.runs:
            tried += 1
            with self._cond:
                run.popped = False  # this take sets its flags anew
            try:
                got = self._take_run(run.queues)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                lost = exc
                self._down(run, exc)
                continue
            self._down(run, None)
            if got[0] in (b"job", b"suspended"):
                reply = got
                break
        if lost is not None and tried == len(self.runs) and all(run.down for run in self.runs):
            raise lost
        self._reflag(self.runs[tried:])
        return reply

    def _down(self, run: Run, exc: Optional[BaseException]) -> None:
        """Log once when a run's shard is lost (``exc``) and when it is back."""
        if (exc is not None) == run.down:
            return
        run.down = exc is not None
        if run.down:
            log.warning("worker %s: lost the shard of queue(s) %s (%s); serving the others meanwhile",
                        self.worker.name, ", ".join(run.queues), exc)
        else:
            log.warning("worker %s: the shard of queue(s) %s is back", self.worker.name, ", ".join(run.queues))

    def _reflag(self, runs: list[Run]) -> None:
        """Set anew the flags of the runs a waker popped and no take looked at since."""
        with self._cond:
            popped = [run for run in runs if run.popped]
            for run in popped:
                run.popped = False
        for run in popped:
            def reflag(run: Run = run) -> Any:
                return wire.send(self.connection, run.reflag)
            self._redis(reflag)

    # --- waiting --------------------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        """Block (an idle slot) until a waker saw a flag set, a stop, or ``timeout`` seconds."""
        self._start_wakers()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._idle += 1
            self._cond.notify_all()  # wakers that sat out (no idle slot) block in Redis again
            try:
                while not self._woken and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(left)
                if self._woken:
                    self._woken -= 1
            finally:
                self._idle -= 1

    def _start_wakers(self) -> None:
        with self._cond:
            if self._wakers or self._stopping:
                return
            self._wakers = [threading.Thread(target=self._waker, args=(run,), daemon=True,
                                             name=f"nbqueue-waker-{self.worker.name}-{i}")
                            for i, run in enumerate(self.runs)]
        for thread in self._wakers:
            thread.start()

    def _waker(self, run: Run) -> None:
        """Block in Redis on ``run``'s wake flags while some slot is idle; wake one when a flag is set."""
        wait = self.worker._idle_wait
        while True:
            with self._cond:
                while not self._idle and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                reply = self._redis(lambda: wire.send(self.connection, ("BLPOP", *run.wait_keys, wait))[0])
            except BaseException:  # the worker is stopping while Redis is away (its _Stop)
                return
            if reply is None:
                continue
            if reply[0] == run.wake_key.encode():  # a stop (or a resume): the slots look for themselves
                with self._cond:
                    self._woken = self._idle
                    self._cond.notify_all()
                continue
            with self._cond:
                run.popped = True
                if self._idle > self._woken:
                    self._woken += 1
                    self._cond.notify()
                    continue
            self._reflag([run])  # every slot got busy meanwhile: others may take it

    def stop(self) -> None:
        """Wake every slot and waker: the worker stops (the caller pushes onto ``wake_keys``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def wake_keys(self) -> list[str]:
        return [run.wake_key for run in self.runs]

    def join(self, timeout: float = 5.0) -> None:
        for thread in self._wakers:
            thread.join(timeout)

