"""A group of jobs handled as one: what ``Queue.map`` returns."""
from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Optional

import redis

from . import keys
from .connection import get_connection
from .errors import InvalidTransition, NbqueueError, NoSuchGroup, NoSuchJob, ResultTimeout
from .job import Job
from .schema import DEFAULT_FAILURE_TTL, EXPIRED, TERMINAL, text
from .seconds import deadline
from .waiter import Waiter, in_thread


class Group:
    """Jobs in order, e.g. ``q.map(tasks.square, range(100))``; ``results()`` waits for all.

    A group that ``Queue.map`` made is kept in Redis under its ``id`` as long as its jobs are, so
    ``Group.fetch(id)`` brings it back, e.g. after a kernel restart."""

    def __init__(self, jobs: Sequence[Job], id: Optional[str] = None):
        self.jobs: list[Job] = list(jobs)
        self.id = id or "g-" + secrets.token_hex(12)

    @classmethod
    def fetch(cls, group_id: str, connection: Optional[redis.Redis] = None) -> Group:
        """The group saved under ``group_id``; ``NoSuchGroup`` if there is none (or it expired)."""
        conn = get_connection(connection)
        if not isinstance(group_id, str) or not keys.NAME.fullmatch(group_id):
            raise NoSuchGroup(f"No group {group_id!r}: a group id looks like 'g-…' (group.id).")
        ids = conn.lrange(keys.group(group_id), 0, -1)
        if not ids:
            raise NoSuchGroup(f"No group {group_id!r}: it was never saved here, or it expired with its jobs.")
        return cls([Job(i.decode(), conn) for i in ids], group_id)

    def save(self, ttl: Optional[float] = DEFAULT_FAILURE_TTL) -> Group:
        """Keep the group's job refs in Redis under ``id`` for ``ttl`` seconds (``None``: forever)."""
        if self.jobs:
            key = keys.group(self.id)
            with self.jobs[0].connection.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                for start in range(0, len(self.jobs), 10_000):
                    pipe.rpush(key, *self.refs[start:start + 10_000])
                if ttl is not None:
                    pipe.expire(key, max(1, int(ttl)))
                pipe.execute()
        return self

    @property
    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]

    @property
    def refs(self) -> list[str]:
        """The jobs' refs (``keys.py``): their ids, for ids nbqueue made."""
        return [job.ref for job in self.jobs]

    def results(self, timeout: Optional[float] = None, return_exceptions: bool = False) -> list:
        """Every job's result, in order, waiting up to ``timeout`` seconds in all (``None``: as long
        as it takes). The first failed job in order raises its ``JobFailed`` (``JobCanceled``), or
        with ``return_exceptions=True`` each failed job's error takes its place in the list.
        Listens through the process's one watcher, through a Redis restart or outage."""
        return self._results(timeout, return_exceptions)

    async def aresults(self, timeout: Optional[float] = None, return_exceptions: bool = False) -> list:
        """``results()`` for asyncio code, without blocking the event loop (``await group``)."""
        return await in_thread(lambda stop: self._results(timeout, return_exceptions, stop))

    def __await__(self) -> Generator[Any, None, list]:
        return self.aresults().__await__()

    def done(self) -> bool:
        """Whether every job ended."""
        counts = self.statuses()
        return sum(counts[s] for s in (*TERMINAL, EXPIRED)) == len(self)

    def _results(self, timeout: Optional[float], return_exceptions: bool,
                 stop: Optional[threading.Event] = None) -> list:
        until = deadline(timeout)
        values: list = []
        if not self.jobs:
            return values
        with Waiter(self.jobs[0].connection, self.refs, stop) as waiter:
            for job in self.jobs:
                outcome = waiter.outcome(job.ref, until)
                if outcome is None:
                    unreachable = " (Redis is unreachable)" if waiter.lost else ""
                    raise ResultTimeout(f"{len(waiter.outcomes)} of {len(self)} jobs are done after {timeout} s"
                                        f"{unreachable}; they go on: call results() again to wait longer.")
                try:
                    if outcome[0] is None:
                        raise job._missing()
                    values.append(job._value(outcome))
                except NbqueueError as exc:
                    if not return_exceptions:
                        raise
                    values.append(exc)
        return values

    def statuses(self) -> Counter:
        """How many jobs are in each status now, e.g. ``Counter({'finished': 98, 'started': 2})``;
        jobs that expired count as ``expired``."""
        if not self.jobs:
            return Counter()
        conn = self.jobs[0].connection
        with conn.pipeline(transaction=False) as pipe:
            for job in self.jobs:
                pipe.hget(job._key, "status")
            return Counter(text(s) if s else EXPIRED for s in pipe.execute())

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
        return f"<Group {self.id} of {len(self)} jobs: {counts or 'empty'}>"
