"""Jobs taken ahead and outcomes written ahead: how an inline slot running short jobs needs less
than one round trip per job.

While its jobs are short (the last one ran in under ``SHORT`` seconds), an inline worker with
one slot, on one server, takes up to ``AHEAD`` jobs per take (``dequeue.lua``: each with its own
lease and "started" event, only from the first queue that has jobs, and never more than half of
what it holds, so workers that wait still get work). The jobs it holds beyond the one it runs
are renewed by the heartbeat and can be canceled like a running one (they end canceled without
running); a stop now gives them back. After each job the outcome is written at once, without
waiting for its reply (``keys.post``: a result appears as soon as its job ends); the replies are
read with the next take's, one round trip for the lot. An outcome whose reply was lost with a
connection is recorded again the usual way (the script's fencing makes that safe).
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .execute import Outcome, Running, Taken

AHEAD = 8  # jobs an inline slot takes at most per take while its jobs are short
SHORT = 0.005  # seconds: a job that ran quicker than this lets its slot take ahead


class Posted(NamedTuple):
    """An outcome written without waiting for its reply."""

    taken: Taken
    outcome: Outcome
    elapsed: float
    command: tuple  # the finish script's call, to send again if its reply was lost


class Ahead:
    """One slot's jobs taken ahead (not started yet) and outcomes written ahead."""

    def __init__(self) -> None:
        self.runs: deque[Running] = deque()
        self.posted: list[Posted] = []
        self.short = False  # the slot's last job ran in under SHORT seconds: take several next time

    def most(self) -> int:
        """How many jobs the slot's next take may ask for."""
        return AHEAD if self.short else 1
