"""A group of jobs handled as one: what ``Queue.map`` returns."""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, List, Optional, Sequence

from . import keys
from .errors import InvalidTransition, NoSuchJob, ResultTimeout
from .job import Job, Waiter
from .seconds import deadline


class Group:
    """Jobs in order, e.g. ``q.map(tasks.square, range(100))``; ``results()`` waits for all."""

    def __init__(self, jobs: Sequence[Job]):
        self.jobs: List[Job] = list(jobs)

    @property
    def ids(self) -> List[str]:
        return [job.id for job in self.jobs]

    def results(self, timeout: Optional[float] = None) -> list:
        """Every job's result, in order, waiting up to ``timeout`` seconds in all (``None``: as long
        as it takes). The first failed job in order raises its ``JobFailed`` (``JobCanceled``).
        Waits on one connection for all the jobs, through a Redis restart or outage."""
        until = deadline(timeout)
        values = []
        if not self.jobs:
            return values
        with Waiter(self.jobs[0].connection, self.ids) as waiter:
            for job in self.jobs:
                outcome = waiter.outcome(job.id, until)
                if outcome is None:
                    unreachable = " (Redis is unreachable)" if waiter.lost else ""
                    raise ResultTimeout(f"{len(waiter.outcomes)} of {len(self)} jobs are done after {timeout} s"
                                        f"{unreachable}; they go on: call results() again to wait longer.")
                if outcome[0] is None:
                    raise job._missing()
                values.append(job._value(outcome))
        return values

    def statuses(self) -> Counter:
        """How many jobs are in each status now, e.g. ``Counter({'finished': 98, 'started': 2})``;
        jobs that expired count as ``expired``."""
        if not self.jobs:
            return Counter()
        conn = self.jobs[0].connection
        with conn.pipeline(transaction=False) as pipe:
            for job in self.jobs:
                pipe.hget(keys.job(job.id), "status")
            return Counter(s.decode() if s else "expired" for s in pipe.execute())

    def cancel(self) -> int:
        """Cancel every job not done yet (running ones are asked to stop, without waiting);
        returns how many were canceled or asked to stop."""
        canceled = 0
        for job in self.jobs:
            try:
                job.cancel(wait=0)
                canceled += 1
            except (InvalidTransition, NoSuchJob):
                pass
        return canceled

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __getitem__(self, index: Any) -> Any:
        return self.jobs[index]

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses().items()))
        return f"<Group of {len(self)} jobs: {counts or 'empty'}>"
