"""Waiting for jobs to end: ``Waiter`` (one job, a group, ``as_completed``) and ``in_thread``, which
runs such a wait in an event loop's executor for ``await``."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional

import redis

from . import keys
from .schema import OUTCOME, SYNC, TERMINAL
from .watcher import get_watcher

logger = logging.getLogger("nbqueue")

RECHECK = 2.0  # seconds: a waiter re-reads the statuses this often (an event lost while Redis was away)
STOPPABLE = 0.25  # seconds: a waiter that may be stopped looks at its stop flag this often


class Waiter:
    """Waits for jobs to end, listening through the process's one watcher (``watcher.py``: one
    pub/sub connection for every wait, view and ``info --watch`` of the process) and reading
    outcomes in pipelines. A job is read when its channel says it ended, when the watcher
    (re-)subscribes to it (a ``sync``: first subscribe, or after a reconnect), and every
    ``RECHECK`` s; through a lost or restarted Redis it backs off and reads again, until the
    caller's deadline. So no change is missed, and nothing polls faster than ``RECHECK``."""

    def __init__(self, connection: redis.Redis, ids: Iterable[str], stop: Optional[threading.Event] = None):
        self.connection = connection
        self.stop = stop  # set by another thread: give up (an awaiting task was canceled)
        self.waiting: dict[str, Optional[str]] = dict.fromkeys(ids)  # id -> last status seen, in order
        self.outcomes: dict[str, list] = {}  # id -> outcome of a job that ended (status None: no such job)
        self._sub: Any = None  # the watcher subscription, once the first read left jobs waiting
        self._flagged: dict[str, None] = {}  # ids to read (an end or a sync came), in order; set on the watcher thread
        self._signal = threading.Condition()
        self._read_once = False
        self._given: set = set()  # ids ``ended()`` returned already
        self._full_read = 0.0  # when every waiting job's status was last read (monotonic)
        self.lost = False  # Redis is away (logged once)

    def status(self, job_id: str) -> str:
        """The status last seen of a job (``?`` if none was read yet)."""
        outcome = self.outcomes.get(job_id)
        return (outcome[0] if outcome else self.waiting.get(job_id)) or "?"

    def outcome(self, job_id: str, deadline: Optional[float]) -> Optional[list]:
        """The outcome of ``job_id`` once it ended; ``None`` if it has not by ``deadline`` (monotonic)."""
        self._until(lambda: job_id in self.outcomes, deadline)
        return self.outcomes.get(job_id)

    def ended(self, deadline: Optional[float]) -> list[str]:
        """Ids of jobs that ended since the last call, in the order seen, waiting up to ``deadline``
        for one; ``[]`` if none did by then (or every job was returned already)."""
        def fresh() -> list[str]:
            return [i for i in self.outcomes if i not in self._given]

        self._until(lambda: bool(fresh()) or not self.waiting, deadline)
        new = fresh()
        self._given.update(new)
        return new

    def _on_event(self, event: Any) -> None:
        """On the watcher's thread: note a job to read (it ended, or events may have been missed)."""
        if not isinstance(event, dict):  # any JSON may come on a job's channel
            return
        job_id, status = event.get("id"), event.get("status")
        if isinstance(job_id, str) and job_id in self.waiting and (status == SYNC or status in TERMINAL
                                                                   or not isinstance(status, str)):
            with self._signal:
                self._flagged[job_id] = None
                self._signal.notify_all()

    def _take(self, timeout: float) -> list[str]:
        """The ids flagged, waiting up to ``timeout`` s for one."""
        with self._signal:
            if not self._flagged:
                self._signal.wait(timeout)
            flagged, self._flagged = self._flagged, {}
        return [i for i in flagged if i in self.waiting]

    def _until(self, done: Callable[[], bool], deadline: Optional[float]) -> bool:
        """Read and listen until ``done()``; False if ``deadline`` (monotonic) passed or ``stop`` was set."""
        delay, tried = 0.05, False
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0 and tried) or (self.stop is not None and self.stop.is_set()):
                return False
            tried = True
            try:
                if not self._read_once:  # a job that ended already needs no subscription
                    self._read(list(self.waiting))
                    self._read_once = True
                elif self._sub is None:  # its syncs (subscribed, or already watched) read them all again
                    self._sub = get_watcher(self.connection).watch(list(self.waiting), self._on_event)
                    self._full_read = time.monotonic()
                else:
                    slice_ = RECHECK if self.stop is None else STOPPABLE
                    flagged = self._take(slice_ if remaining is None else max(0.0, min(remaining, slice_)))
                    if flagged:
                        self._read(flagged)
                    elif time.monotonic() - self._full_read >= RECHECK or remaining is not None and remaining <= slice_:
                        self._read(list(self.waiting))
                if self.lost:
                    self.lost = False
                    logger.warning("nbqueue: Redis is back; still waiting for %d job(s)", len(self.waiting))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not self.lost:
                    self.lost = True
                    logger.warning("nbqueue: lost Redis while waiting for job(s) (%s); waiting for it to come back",
                                   exc)
                pause = delay if remaining is None else max(0.0, min(delay, remaining))
                time.sleep(pause)  # Redis is away: wait for it, not for a job
                delay = min(delay * 2, 2.0)
        return True

    def _read(self, ids: list) -> None:
        """Read the outcome of jobs in pipelines; the ones that ended move to ``outcomes``."""
        if len(ids) == len(self.waiting):
            self._full_read = time.monotonic()
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hmget(keys.job(job_id), OUTCOME)
                rows = pipe.execute()
            for job_id, row in zip(chunk, rows):
                row[0] = row[0].decode() if row[0] is not None else None
                if row[0] is None or row[0] in TERMINAL:
                    self.outcomes[job_id] = row
                    self.waiting.pop(job_id, None)
                else:
                    self.waiting[job_id] = row[0]

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def in_thread(call: Callable[[threading.Event], Any]) -> Any:
    """Run a blocking wait ``call(stop)`` in the loop's executor, so the event loop goes on; if the
    awaiting task is canceled, ``stop`` is set and the wait gives up within ``STOPPABLE`` s."""
    stop = threading.Event()
    try:
        return await asyncio.get_running_loop().run_in_executor(None, call, stop)
    except asyncio.CancelledError:
        stop.set()
        raise
