"""Waiting for many jobs at once, as ``concurrent.futures`` does for futures.

``as_completed(jobs)`` yields each job as it ends; ``wait(jobs, return_when=...)`` returns the
done and not-done sets. Both listen through the process's one watcher (``job.Waiter``), through
a Redis restart or outage, and never poll.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import NamedTuple, Optional

from .errors import InvalidOption, ResultTimeout
from .job import Job, Waiter
from .schema import CANCELED, FAILED
from .seconds import deadline

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "DoneAndNotDone", "as_completed", "wait"]


class DoneAndNotDone(NamedTuple):
    done: set[Job]
    not_done: set[Job]


def _unique(jobs: Iterable[Job]) -> dict:
    return {job.ref: job for job in jobs}  # by ref: what the Waiter reads and hears


def as_completed(jobs: Iterable[Job], timeout: Optional[float] = None) -> Iterator[Job]:
    """Yield each job as it ends (finished, failed, canceled, or expired), the ones that ended
    already first; ``ResultTimeout`` if some are not done ``timeout`` seconds after the call."""
    until = deadline(timeout)
    by_id = _unique(jobs)
    if not by_id:
        return
    with Waiter(next(iter(by_id.values())).connection, list(by_id)) as waiter:
        given = 0
        while given < len(by_id):
            ended = waiter.ended(until)
            if not ended:
                raise ResultTimeout(f"{given} of {len(by_id)} jobs are done after {timeout} s; the rest go on.")
            for job_id in ended:
                given += 1
                yield by_id[job_id]


def wait(jobs: Iterable[Job], timeout: Optional[float] = None,
         return_when: str = ALL_COMPLETED) -> DoneAndNotDone:
    """Wait until the jobs are done (``ALL_COMPLETED``), until one is (``FIRST_COMPLETED``), or
    until one failed or was canceled (``FIRST_EXCEPTION``, else all done), or ``timeout`` seconds;
    returns ``(done, not_done)`` sets of jobs, never raises for time."""
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise InvalidOption(f"return_when={return_when!r}: use ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION")
    until = deadline(timeout)
    by_id = _unique(jobs)
    done: set[Job] = set()
    if by_id:
        with Waiter(next(iter(by_id.values())).connection, list(by_id)) as waiter:
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
