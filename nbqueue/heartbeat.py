"""A worker's heartbeat thread: presence, leases, recovery of lost jobs, due jobs, requests.

Every ``HEARTBEAT`` seconds, in one round trip, it says the worker is alive, renews the lease
of each attempt the worker holds (learning which it lost and which were canceled), re-queues
the jobs of workers whose leases lapsed, and moves due scheduled jobs to their queues. In
between it listens on the worker's control channel, so a cancel arrives at once.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

import redis

from . import keys
from .job import DEFAULT_FAILURE_TTL, DEFAULT_LOST_RETRIES

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

log = logging.getLogger("nbqueue.worker")

LEASE = 5.0  # seconds an attempt holds its job without renewal
HEARTBEAT = 1.0  # seconds between heartbeats
BATCH = 100  # jobs recovered or promoted per heartbeat at most
QUIET = 2.5 * HEARTBEAT  # no heartbeat from any worker for this long: Redis (or every worker) was away


class Heartbeat(threading.Thread):
    """The thread; ``stop()`` ends it."""

    def __init__(self, worker: "Worker"):
        super().__init__(name=f"nbqueue-heartbeat-{worker.name}", daemon=True)
        self.worker = worker
        self.connection = worker.connection
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        pubsub = None
        next_beat = 0.0
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
            except redis.RedisError:
                pubsub = None  # the worker's loop reports the lost connection once
                self._stopped.wait(HEARTBEAT)
        if pubsub is not None:
            pubsub.close()

    def beat(self) -> None:
        """One round trip: presence, renewals, recovery, promotion."""
        worker = self.worker
        held = worker.held()
        now = time.time()

        presence = {
            "host": socket.gethostname(), "pid": os.getpid(), "queues": ",".join(worker.queues),
            "mode": worker.mode, "concurrency": worker.concurrency, "seen": now,
            "jobs": " ".join(held), "started_at": worker.started_at,
        }
        commands = [
            ("HSET", keys.worker(worker.name), *[x for pair in presence.items() for x in pair]),
            ("EXPIRE", keys.worker(worker.name), int(HEARTBEAT * 10)),
            ("ZADD", keys.WORKERS, now, worker.name),
            keys.evalsha("recover", [keys.ACTIVE, keys.BEAT],
                         [DEFAULT_LOST_RETRIES, BATCH, DEFAULT_FAILURE_TTL, int(LEASE * 1000), int(QUIET * 1000)]),
            keys.evalsha("promote", [keys.SCHEDULED], [BATCH]),
        ]
        if held:
            commands.append(keys.evalsha("renew", [keys.ACTIVE], [worker.name, int(LEASE * 1000), *_flat(held)]))
        replies = keys.send(self.connection, *commands)
        if held:
            reply = [i.decode() for i in replies[5]]
            split = reply.index("|")
            for job_id in reply[:split]:  # the verdicts are about the attempts we sent
                worker.interrupt(job_id, "lost", attempt=held[job_id])
            for job_id in reply[split + 1:]:
                worker.interrupt(job_id, "cancel", attempt=held[job_id])
        recovered = replies[3]
        if recovered:
            log.warning("re-queued or failed %d job(s) of lost workers: %s", len(recovered),
                        " ".join(i.decode() for i in recovered))

    def _on_request(self, data: bytes) -> None:
        try:
            request = json.loads(data)
        except ValueError:
            return
        if "cancel" in request:
            self.worker.interrupt(str(request["cancel"]), "cancel", attempt=int(request.get("attempt") or 0))


def _flat(held: dict) -> list:
    return [x for job_id, attempt in held.items() for x in (job_id, attempt)]
