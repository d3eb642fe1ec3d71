"""What nbqueue keeps in Redis, by name: job statuses, event kinds, job hash fields, option defaults.

One home for the words the core, the CLI and the notebook layer share (key *names* live in
``keys.py``). ``Status`` is a ``str`` enum: ``Status.FINISHED == "finished"`` and hashes alike, so
statuses compare with what Redis returns (decoded) and what Lua writes. The Lua scripts
(``nbqueue/scripts/*.lua``) keep their literal strings, for speed and for reading; a test
(``tests/test_schema.py``) checks that every status and every job/schedule hash field they use is
named here.

The job hash (``keys.job(id)``) holds ``JOB_FIELDS``; options are stored only when they differ
from ``DEFAULTS``, as text (``encode_option``; ``"none"``: no limit / kept forever) and read back
with ``decode_option``.
"""
from __future__ import annotations

import math
from enum import Enum
from typing import Optional, Union


class Status(str, Enum):
    """A job's status, as kept in its hash's ``status`` field."""

    DEFERRED = "deferred"  # waits for its dependencies to end, in no queue list (flow.py)
    QUEUED = "queued"
    SCHEDULED = "scheduled"  # delayed, or a retry waiting for its time
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    __hash__ = str.__hash__  # equal to its text, so it must hash as the text does
    __str__ = str.__str__  # "finished", never "Status.FINISHED" (Python 3.12 changed Enum's)
    __format__ = str.__format__  # type: ignore[assignment]  # the text's formatting, as __str__
    __repr__ = str.__repr__  # 'canceled', as job.cancel() showed before there was an enum

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


DEFERRED, QUEUED, SCHEDULED, STARTED = Status.DEFERRED, Status.QUEUED, Status.SCHEDULED, Status.STARTED
FINISHED, FAILED, CANCELED = Status.FINISHED, Status.FAILED, Status.CANCELED
STATUSES: frozenset[str] = frozenset(Status)
TERMINAL: frozenset[str] = frozenset({FINISHED, FAILED, CANCELED})  # ended: it has an outcome
WAITING: frozenset[str] = frozenset({DEFERRED, QUEUED, SCHEDULED})  # not taken yet: cancel drops it at once
ORDER = (DEFERRED, QUEUED, SCHEDULED, STARTED, FINISHED, FAILED, CANCELED)  # the order views list them in
EXPIRED = "expired"  # no status: what views and counts say of a job whose hash is gone (its TTL passed)
REFUSED = "refused"  # the worker's word to finish.lua: failed, never retried (its signature did not match)

# --- events: what a job's channel carries (JSON with "id", "status" = the kind, "t") -------------
RETRYING = "retrying"  # failed, a retry is scheduled ("delay" in seconds)
LOST = "lost"  # its worker was lost; a "queued", "failed" or "canceled" event follows
LOG = "log"  # output lines: "lines"
PROGRESS = "progress"  # "done", "total", "message"
SYNC = "sync"  # the watcher's own (never published): "re-read this job, events may have been missed"
EVENTS: frozenset[str] = STATUSES | {RETRYING, LOST, LOG, PROGRESS}  # what scripts and workers publish
CHANGES: frozenset[str] = STATUSES | {RETRYING, LOST}  # the events that change what a job is

# --- the job hash ---------------------------------------------------------------------------------
JOB_FIELDS: dict[str, str] = {
    "func": "module:qualname of the function", "data": "the pickled call", "code": "its serializer",
    "sig": "the call's signature", "queue": "its queue", "status": "a Status",
    "enqueued_at": "time (s.us)", "started_at": "time of the last start", "ended_at": "time it ended",
    "worker": "the worker of the last attempt", "workers": "every worker that held it, space-separated",
    "attempt": "times it was started", "failures": "attempts that raised", "lost": "attempts whose worker was lost",
    "cancel": "1: cancel asked while it runs", "result": "the pickled return value", "rsig": "its signature",
    "summary": "a finished job's result summary (JSON, summary.py)", "ssig": "its signature",
    "exc": "ExceptionType: message", "error": "the traceback", "progress": "the last progress (JSON)",
    "meta": "the caller's dict (JSON)", "timeout": "option", "result_ttl": "option", "failure_ttl": "option",
    "retries": "option", "retry_delay": "option", "lost_retries": "option",
    "on_success": "function enqueued after it finished", "on_failure": "function enqueued after it failed",
    "deps": "ids it waits for, space-separated", "pending": "dependencies not ended yet",
    "allow_failure": "1: runs even if a dependency failed", "at_front": "1: queued at the front once free",
    "dependents": "1: jobs wait for it", "unique_key": "its unique key", "unique_ttl": "that key's TTL",
    "schedule": "the schedule that fired it", "tick": "the tick it was fired for (ms)",
}
JOB_FIELD_PREFIXES = ("dep:",)  # "dep:<id>": a dependency not ended yet
READ_FIELDS = ("func", "queue", "status", "enqueued_at", "started_at", "ended_at", "worker", "attempt", "exc",
               "workers", "failures", "lost", "deps")  # what Job.refresh() reads
OUTCOME = ("status", "result", "error", "exc", "attempt", "rsig")  # what a waiter reads of a job that ended
SUMMARY, SUMMARY_SIG = "summary", "ssig"
VIEW_FIELDS = ("status", "queue", "worker", "attempt", "enqueued_at", "started_at", "ended_at", "progress", "exc",
               "error", SUMMARY, SUMMARY_SIG)  # what a notebook view of one job reads
OPTION_FIELDS = ("timeout", "result_ttl", "failure_ttl", "retries", "retry_delay", "lost_retries")  # signed, in order
CALLBACK_FIELDS = ("on_success", "on_failure")  # signed with the call when a job has some

# --- a schedule's hash (keys.schedule(name)) ------------------------------------------------------
SCHEDULE_FIELDS: dict[str, str] = {
    "queue": "its queue", "func": "the function", "data": "the pickled call", "code": "its serializer",
    "sig": "the call's signature", "rule": "every=/cron= (JSON)", "missed": "once, all or skip",
    "next": "next due time (ms)", "last_run": "time it last fired (ms)", "last_job": "the job it queued last",
    "fired": "jobs it queued", "error": "why it can't be fired", "token": "changes when it is replaced",
    "options": "job options (JSON)", "created_at": "time it was made (ms)",
}

# --- options: defaults and their encoding -----------------------------------------------------------
DEFAULT_TIMEOUT = 3600  # seconds a job may run
DEFAULT_RESULT_TTL = 24 * 3600  # finished and canceled jobs are kept a day
DEFAULT_FAILURE_TTL = 7 * 24 * 3600  # failed jobs a week, to be looked at and requeued
DEFAULT_RETRY_DELAY = 1.0  # seconds before the first retry; doubles with each failure
DEFAULT_LOST_RETRIES = 3  # re-runs after the job's worker was lost
DEFAULTS: dict[str, Union[int, float]] = {
    "timeout": DEFAULT_TIMEOUT, "result_ttl": DEFAULT_RESULT_TTL, "failure_ttl": DEFAULT_FAILURE_TTL,
    "retries": 0, "retry_delay": DEFAULT_RETRY_DELAY, "lost_retries": DEFAULT_LOST_RETRIES,
}
NONE = "none"  # an option's stored None: no limit (timeout), kept forever (TTLs)


def encode_option(value: Optional[float]) -> str:
    """An option's value as the job hash keeps it: ``"none"`` for None, else its repr (``30``, ``1.5``)."""
    return NONE if value is None else repr(value)


def decode_option(raw: Optional[bytes], default: float) -> Optional[float]:
    """A stored option: ``default`` if absent, None for ``"none"`` or infinity; ``ValueError`` if junk."""
    if raw is None:
        return default
    if raw in (NONE, NONE.encode()):
        return None
    value = float(raw)
    return None if value == math.inf else value


def text(status: Union[bytes, str, None]) -> Optional[str]:
    """A status as Redis returned it (bytes, or str with decode_responses), as text; None stays None."""
    return status.decode(errors="replace") if isinstance(status, bytes) else status
