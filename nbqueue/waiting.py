"""Waiting for many jobs at once, as ``concurrent.futures`` does for futures.

``as_completed(jobs)`` yields each job as it ends (``for``, or ``async for`` in asyncio code);
``wait(jobs, return_when=...)`` returns the done and not-done sets (``await async_wait(...)`` in
asyncio code). All listen through the process's one watcher (``waiter.Waiter``), through a Redis
restart or outage, and never poll; the async forms wait in the loop's executor, so the loop goes on.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import NamedTuple, Optional

from .errors import InvalidOption, ResultTimeout
from .job import Job
from .schema import CANCELED, FAILED
from .seconds import deadline
from .waiter import Waiter, in_thread

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "AsCompleted", "DoneAndNotDone", "as_completed",
           "async_wait", "wait"]


class DoneAndNotDone(NamedTuple):
    done: set[Job]
    not_done: set[Job]


def _unique(jobs: Iterable[Job]) -> dict:
    return {job.ref: job for job in jobs}  # by ref: what the Waiter reads and hears


def as_completed(jobs: Iterable[Job], timeout: Optional[float] = None) -> AsCompleted:
    """Each job as it ends (finished, failed, canceled, or expired), the ones that ended already
    first: ``for job in as_completed(jobs)``, or ``async for`` in asyncio code; ``ResultTimeout`` if
    some are not done ``timeout`` seconds after the call."""
    return AsCompleted(jobs, timeout)


class AsCompleted:
    """What ``as_completed`` returns: iterate it with ``for`` (blocking) or ``async for`` (the loop
    goes on; canceling the iterating task stops the wait); each iteration yields every job once."""

    def __init__(self, jobs: Iterable[Job], timeout: Optional[float]):
        self._timeout, self._until = timeout, deadline(timeout)
        self._by_id = _unique(jobs)

    def __iter__(self) -> Iterator[Job]:
        if not self._by_id:
            return
        with Waiter(next(iter(self._by_id.values())).connection, list(self._by_id)) as waiter:
            given = 0
            while given < len(self._by_id):
                for job_id in self._ended(waiter, given):
                    given += 1
                    yield self._by_id[job_id]

    async def __aiter__(self) -> AsyncIterator[Job]:
        if not self._by_id:
            return
        stop = threading.Event()  # set when the iterating task is canceled: the executor's wait gives up
        loop = asyncio.get_running_loop()
        waiter = Waiter(next(iter(self._by_id.values())).connection, list(self._by_id), stop)
        try:
            given = 0
            while given < len(self._by_id):
                for job_id in await loop.run_in_executor(None, self._ended, waiter, given):
                    given += 1
                    yield self._by_id[job_id]
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            waiter.close()

    def _ended(self, waiter: Waiter, given: int) -> list[str]:
        ended = waiter.ended(self._until)
        if not ended and not (waiter.stop is not None and waiter.stop.is_set()):
            raise ResultTimeout(f"{given} of {len(self._by_id)} jobs are done after {self._timeout} s; the rest go on.")
        return ended


def wait(jobs: Iterable[Job], timeout: Optional[float] = None,
         return_when: str = ALL_COMPLETED) -> DoneAndNotDone:
    """Wait until the jobs are done (``ALL_COMPLETED``), until one is (``FIRST_COMPLETED``), or
    until one failed or was canceled (``FIRST_EXCEPTION``, else all done), or ``timeout`` seconds;
    returns ``(done, not_done)`` sets of jobs, never raises for time."""
    return _wait(jobs, timeout, return_when)


async def async_wait(jobs: Iterable[Job], timeout: Optional[float] = None,
                     return_when: str = ALL_COMPLETED) -> DoneAndNotDone:
    """``wait`` for asyncio code: the event loop goes on meanwhile; canceling the awaiting task
    stops the wait."""
    jobs = list(jobs)
    return await in_thread(lambda stop: _wait(jobs, timeout, return_when, stop))


def _wait(jobs: Iterable[Job], timeout: Optional[float], return_when: str,
          stop: Optional[threading.Event] = None) -> DoneAndNotDone:
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise InvalidOption(f"return_when={return_when!r}: use ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION")
    until = deadline(timeout)
    by_id = _unique(jobs)
    done: set[Job] = set()
    if by_id:
        with Waiter(next(iter(by_id.values())).connection, list(by_id), stop) as waiter:
            while len(done) < len(by_id):
                ended = waiter.ended(until)
                if not ended:
                    break
                done.update(by_id[i] for i in ended)
                if return_when == FIRST_COMPLETED:
                    break
                if return_when == FIRST_EXCEPTION and any(
                        (waiter.outcomes[i][0] or FAILED) in (FAILED, CANCELED) for i in ended):
                    break
    return DoneAndNotDone(done, {job for job in by_id.values() if job not in done})
