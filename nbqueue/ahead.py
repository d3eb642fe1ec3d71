"""Jobs taken ahead and outcomes written ahead: how an inline slot running short jobs needs less
than one round trip per job.

While its jobs are short (the last one ran in under ``SHORT`` seconds), an inline worker with
one slot, on one server, takes up to ``AHEAD`` jobs per take (``dequeue.lua``: each with its own
lease and "started" event, only from the first queue that has jobs, and never more than half of
what it holds, so workers that wait still get work). The jobs it holds beyond the one it runs
are renewed by the heartbeat and can be canceled like a running one (they end canceled without
running). They go back to the front of their queue (``giveback.lua``) at a stop now, and when a
job before them runs longer than ``HOLD`` seconds (the heartbeat notices within a beat; other
workers run them meanwhile). After
each job the outcome is written at once, without waiting for its reply (``wire.post``: a result
appears as soon as its job ends); the replies are read with the next take's, one round trip for
the lot. An outcome whose reply was lost with a connection is recorded again the usual way (the
script's fencing makes that safe).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import redis

from . import keys, wire
from .execute import Outcome, Running, Taken

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

log = logging.getLogger("nbqueue.worker")

AHEAD = 8  # jobs an inline slot takes at most per take while its jobs are short
SHORT = 0.005  # seconds: a job that ran quicker than this lets its slot take ahead
HOLD = 0.2  # seconds jobs taken ahead wait behind one that runs long before they are given back


class Posted(NamedTuple):
    """An outcome written without waiting for its reply."""

    taken: Taken
    outcome: Outcome
    elapsed: float
    command: tuple  # the finish script's call, to send again if its reply was lost
    retry: Callable[[], Any]  # records it anew if its dependents changed (finish.lua's 3)


class Ahead:
    """One slot's jobs taken ahead (not started yet) and outcomes written ahead."""

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold  # seconds its jobs wait behind a long one before they are given back
        self.runs: deque[Running] = deque()
        self.posted: list[Posted] = []
        self.short = False  # the slot's last job ran in under SHORT seconds: take several next time
        self.began_at = 0.0  # when the slot's current job began (monotonic)

    def most(self) -> int:
        """How many jobs the slot's next take may ask for."""
        return AHEAD if self.short else 1


def give_back(worker: Worker, ahead: Ahead, drop: bool = False) -> None:
    """Give the jobs ``ahead`` holds back to the front of their queue (from any thread). One the
    script keeps (asked to cancel, or no longer this worker's) stays to be run (and so ended
    canceled, or discarded), or with ``drop`` is let go (its lease lapses). If Redis can't be
    reached they stay, unless ``drop``."""
    with worker._lock:
        runs = list(ahead.runs)
        ahead.runs.clear()
    if not runs:
        return
    queue = runs[0].taken.queue  # one take, one queue
    values = [x for run in runs for x in (run.taken.id, run.taken.attempt)]
    command = keys.evalsha("giveback", [keys.queue(queue), keys.wake(queue), keys.active(queue),
                                        *(keys.job(run.taken.id, queue) for run in runs)],
                           [worker.name, queue, *values], tag=keys.tag(queue))
    try:
        back = {i.decode() for i in wire.send(worker.connection, command)[0]}
    except redis.RedisError as exc:
        back = set()
        if not drop:
            log.warning("worker %s: could not give back %d job(s) taken ahead (%s); running them here",
                        worker.name, len(runs), exc)
    kept = [run for run in runs if run.taken.id not in back]
    with worker._lock:
        for run in runs:
            if (run.taken.id in back or drop) and worker._running.get(run.taken.id) is run:
                del worker._running[run.taken.id]
        if not drop:
            ahead.runs.extendleft(reversed(kept))
    if back:
        log.info("worker %s gave %d job(s) taken ahead back to queue %s", worker.name, len(back), queue)


def hold_deadline(ahead: Ahead) -> float:
    """When the jobs ``ahead`` holds are to be given back if the current job is still running."""
    return ahead.began_at + ahead.hold if ahead.runs else float("inf")


def overdue(ahead: Ahead) -> bool:
    return time.monotonic() >= hold_deadline(ahead)
