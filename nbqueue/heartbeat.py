"""A worker's heartbeat thread: presence, leases, recovery of lost jobs, due jobs, requests.

Every ``HEARTBEAT`` seconds, in one round trip, it says the worker is alive, renews the lease
of each attempt the worker holds (learning which it lost and which were canceled), re-queues
the jobs of workers whose leases lapsed, moves due scheduled jobs to their queues, and asks for
due schedules (``schedule.py``; a due one is fired in further round trips, only then). In between
it listens on the worker's control channel, so a cancel arrives at once.

It never dies of a bad message or an error: a malformed request is logged (rate-limited) and
ignored, any other error is logged and the beat goes on. It ends on purpose only when another
worker took over its name (leases are held by name, so two workers must not share one); the
worker then stops taking jobs, gives back the running ones and exits with an error.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Optional

import redis

from . import keys, sweep
from .errors import MalformedData, WorkerTakenOver
from .schedule import Firer

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

log = logging.getLogger("nbqueue.worker")

LEASE = 5.0  # seconds an attempt holds its job without renewal
HEARTBEAT = 1.0  # seconds between heartbeats
QUIET = 2.5 * HEARTBEAT  # no heartbeat from any worker for this long: Redis (or every worker) was away
QUEUES_EVERY = 10  # beats between two reads of the queue names (keys.QUEUES)
MAX_REQUEST = 1024  # bytes: a control request is a small JSON object
LOG_EVERY = 10.0  # seconds between two log lines about the same kind of trouble
_ATTEMPT = re.compile(r"[0-9]{1,18}")


class Throttled:
    """Logs a warning at most once every ``every`` seconds, counting the ones it held back."""

    def __init__(self, every: float = LOG_EVERY):
        self.every = every
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            message += f" (and {self._held} more like it in the last {self.every:g} s)"
        log.warning(message, *args, exc_info=exc_info)
        self._next, self._held = now + self.every, 0


def parse_request(data: object) -> tuple:
    """The ``(job id, attempt)`` of a control request ``{"cancel": id, "attempt": n}`` (attempt 0:
    whichever attempt runs); ``MalformedData`` (a ``ValueError``) saying what is wrong with anything else."""
    if not isinstance(data, bytes) or len(data) > MAX_REQUEST:
        raise MalformedData(f"not a request of at most {MAX_REQUEST} bytes")
    try:
        request = json.loads(data.decode())
    except ValueError:  # not UTF-8, not JSON
        raise MalformedData("not JSON") from None
    if not isinstance(request, dict):
        raise MalformedData("not a JSON object")
    job_id, attempt = request.get("cancel"), request.get("attempt")
    if not isinstance(job_id, str) or not keys.NAME.fullmatch(job_id):
        raise MalformedData("'cancel' is not a job id")
    if attempt is None or attempt is False:  # cancel.lua sends false for a job with no attempt field
        return job_id, 0
    if isinstance(attempt, str) and _ATTEMPT.fullmatch(attempt):  # cancel.lua sends the hash field as is
        attempt = int(attempt)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise MalformedData("'attempt' is not a whole number")
    return job_id, attempt


class Heartbeat(threading.Thread):
    """The thread; ``stop()`` ends it. Ending any other way, it tells ``worker.heartbeat_ended``."""

    def __init__(self, worker: Worker):
        super().__init__(name=f"nbqueue-heartbeat-{worker.name}", daemon=True)
        self.worker = worker
        self.connection = worker.connection
        self.token = secrets.token_hex(8)  # tells this worker from another one of the same name
        self._register = True  # write the token with the next beat
        self._stopped = threading.Event()
        self._bad_requests = Throttled()
        self._errors = Throttled()
        self._firer = Firer(worker.connection, worker.signer)
        self._queues = sorted(set(worker.queues))  # the queues the next sweep looks at
        self._beats = 0

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        why = "the heartbeat thread ended unexpectedly"
        try:
            why = self._loop() or why
        finally:  # whatever ended it (a BaseException goes on to threading's excepthook)
            if not self._stopped.is_set():
                self.worker.heartbeat_ended(why)

    def _loop(self) -> Optional[str]:
        pubsub = None
        next_beat = 0.0
        try:
            while not self._stopped.is_set():
                try:
                    if pubsub is None:
                        pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(keys.control(self.worker.name))
                    now = time.monotonic()
                    if now >= next_beat:
                        self.beat()
                        next_beat = now + HEARTBEAT
                    self.worker.enforce_deadlines()
                    wait = min(next_beat, self.worker.next_deadline()) - time.monotonic()
                    message = pubsub.get_message(timeout=max(0.0, wait))
                    if message:
                        self._on_request(message["data"])
                except WorkerTakenOver as exc:
                    return str(exc)
                except (redis.ConnectionError, redis.TimeoutError, OSError):  # as redis-py reports a lost link
                    keys.close_pubsub(pubsub)  # the worker's loop reports the lost connection once
                    pubsub = None
                    self._stopped.wait(HEARTBEAT)
                except Exception:  # a bug, or Redis state broken by hand: log it, never die of it
                    self._errors.warning("worker %s: error in the heartbeat; going on", self.worker.name,
                                         exc_info=True)
                    keys.close_pubsub(pubsub)
                    pubsub = None
                    self._stopped.wait(HEARTBEAT)
        finally:
            keys.close_pubsub(pubsub)
        return None

    def beat(self) -> None:
        """One round trip: presence, renewals, recovery, promotion."""
        worker = self.worker
        held = worker.held()
        now = time.time()

        presence = {
            "host": socket.gethostname(), "pid": os.getpid(), "queues": ",".join(worker.queues),
            "mode": worker.mode, "concurrency": worker.concurrency, "seen": now,
            "jobs": " ".join(held), "started_at": worker.started_at, "done": worker.jobs_run,
        }
        registering, self._register = self._register, False
        if registering:  # only then: a worker that lost its name to another must not write it back
            presence["token"] = self.token
        by_queue = worker.held_by_queue()
        swept = list(self._queues)  # every queue known at the last beat: each sweep covers them all
        commands = [
            ("HGET", keys.worker(worker.name), "token"),
            ("HSET", keys.worker(worker.name), *[x for pair in presence.items() for x in pair]),
            ("EXPIRE", keys.worker(worker.name), int(HEARTBEAT * 10)),
            ("ZADD", keys.WORKERS, now, worker.name),
            *sweep.commands(swept, int(LEASE * 1000), int(QUIET * 1000)),
            *[keys.evalsha("renew", [keys.active(q), *[keys.job(i, q) for i in jobs]],
                           [worker.name, int(LEASE * 1000), *_flat(jobs)]) for q, jobs in by_queue.items()],
        ]
        replies = keys.send_grouped(self.connection, *commands)  # one round trip (on a cluster, one per slot)
        owner = replies[0]
        if owner is None:  # the hash expired (Redis was away long) or was deleted: register again
            self._register = True
        elif owner != self.token.encode() and not registering:
            raise WorkerTakenOver(f"another worker registered as {worker.name} (token {owner[:40]!r}); "
                            f"two workers must not share a name, as leases are held by name")
        for renewed, jobs in zip(replies[4 + len(swept):], by_queue.values()):
            reply = [i.decode() for i in renewed]
            split = reply.index("|")
            for job_id in reply[:split]:  # the verdicts are about the attempts we sent
                worker.interrupt(job_id, "lost", attempt=jobs[job_id])
            for job_id in reply[split + 1:]:
                worker.interrupt(job_id, "cancel", attempt=jobs[job_id])
        sweep.handle(self.connection, swept, replies[4:4 + len(swept)], self._firer)
        self._beats += 1
        if self._beats % QUEUES_EVERY == 1:  # queues made since: swept from the next beat on
            self._queues = sweep.known_queues(self.connection, worker.queues)

    def _on_request(self, data: object) -> None:
        try:
            job_id, attempt = parse_request(data)
        except ValueError as exc:
            junk = data[:60] if isinstance(data, bytes) else data
            self._bad_requests.warning("worker %s: ignored a malformed control message (%s): %r%s",
                                       self.worker.name, exc, junk, "..." if junk != data else "")
            return
        self.worker.interrupt(job_id, "cancel", attempt=attempt)


def _flat(held: dict) -> list:
    return [x for job_id, attempt in held.items() for x in (job_id, attempt)]
