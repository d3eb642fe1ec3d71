"""A group of jobs handled as one: what ``Queue.map`` returns."""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Iterator, List, Optional, Sequence

from . import keys
from .errors import InvalidTransition, NoSuchJob, ResultTimeout
from .job import Job


class Group:
    """Jobs in order, e.g. ``q.map(tasks.square, range(100))``; ``results()`` waits for all."""

    def __init__(self, jobs: Sequence[Job]):
        self.jobs: List[Job] = list(jobs)

    @property
    def ids(self) -> List[str]:
        return [job.id for job in self.jobs]

    def results(self, timeout: Optional[float] = None) -> list:
        """Every job's result, in order, waiting up to ``timeout`` seconds in all (``None``: as long
        as it takes). The first failed job in order raises its ``JobFailed`` (``JobCanceled``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for job in self.jobs:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(job.result(timeout=remaining))
            except ResultTimeout:
                done = sum(n for s, n in self.statuses().items() if s in ("finished", "failed", "canceled"))
                raise ResultTimeout(f"{done} of {len(self)} jobs are done after {timeout} s; "
                                    f"they go on: call results() again to wait longer.") from None
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
