"""A worker's heartbeat thread: presence, leases, requests; and the duty of the deployment.

Each worker says it is alive every ``HEARTBEAT`` seconds, and while it runs jobs, every
``RENEW`` seconds it renews the lease of each attempt it holds (learning which it lost and which
were canceled); an idle one sends two commands a beat (its presence, a bid for the duty) and a
few more every ``CHECK_EVERY`` beats (is its name still its own, its hash's expiry). In between
it listens on the worker's control channel, so a cancel arrives at once.

The duty: one worker at a time, holding a short lease on it (``keys.DUTY``, ``Duty``), runs the
sweeps of the whole deployment every ``SWEEP`` seconds (``Duty.sweep``): re-queue the jobs of
workers whose leases lapsed, move due scheduled jobs to their queues, fire due schedules
(``schedule.py``). Every other worker bids for it with each beat (``SET NX``), so when the holder
dies its lease lapses and another takes over within ``DUTY_LEASE + HEARTBEAT`` seconds; a worker
that stops gives it back at once. The sweeps are safe to run by two at once (each step is one
script), so a holder that stalled and lost the duty does no harm: the lease is about cost.

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
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis

from . import keys, sweep, wire
from .errors import MalformedData, WorkerTakenOver
from .schedule import DUE_BATCH, Firer

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

log = logging.getLogger("nbqueue.worker")

LEASE = 5.0  # seconds an attempt holds its job without renewal
RENEW = 1.0  # seconds between heartbeats of a worker running jobs (renewals of their leases)
HEARTBEAT = 2.0  # seconds between heartbeats of an idle worker: a live worker is seen this often
CHECK_EVERY = 10  # an idle worker checks its name is its own (and refreshes its hash) every this many beats
WORKER_TTL = 3 * CHECK_EVERY * HEARTBEAT  # seconds a worker's hash outlives its last check
RETRY = 0.5  # seconds between two tries of a beat while Redis is away
SWEEP = 1.0  # seconds between two sweeps of the duty's holder
DUTY_LEASE = 3.0  # seconds the duty is held without renewal
DUTY_RENEW = DUTY_LEASE / 2  # the holder renews it with the first sweep this long after the last renewal
DUTY_MAX = 10  # seconds: a longer expiry of the duty key (or none) is cut to this (Redis 7+)
BATCH = sweep.BATCH  # jobs recovered or promoted per queue and sweep at most (a full batch: the next sweep at once)
QUEUES_EVERY = 10  # sweeps between two reads of the queue names (keys.QUEUES) by the duty's holder
QUIET = 2.5  # no sweep for this long: Redis (or every worker) was away, so leases get a fresh start
CONTACT = 3.0  # beats answered at most this far apart prove this worker's Redis was there all along
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
        self._beats = 0
        self._written: dict = {}  # the changing fields of the worker's hash as last written
        self._next_beat = 0.0
        self._last_sent: Optional[float] = None  # when the last answered round trip was sent (monotonic)
        self._contact_since = 0.0  # since when round trips were answered at most CONTACT apart
        self.duty = Duty(worker.connection, Firer(worker.connection, worker.signer), self._send,
                         f"{worker.name} {self.token}", worker.queues)

    def stop(self) -> None:
        """End the thread; the duty, if held, is given back at once."""
        self._stopped.set()
        self.duty.close()

    def run(self) -> None:
        why = "the heartbeat thread ended unexpectedly"
        try:
            why = self._loop() or why
        finally:  # whatever ended it (a BaseException goes on to threading's excepthook)
            self.duty.close()
            if not self._stopped.is_set():
                self.worker.heartbeat_ended(why)

    def _loop(self) -> Optional[str]:
        pubsub = None
        try:
            while not self._stopped.is_set():
                try:
                    if pubsub is None:
                        pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(keys.control(self.worker.name))
                    if time.monotonic() >= self._next_beat:
                        self.beat()
                    if self.duty.held and time.monotonic() >= self.duty.next_sweep:
                        self.duty.sweep(self.contact())
                    self.worker.enforce_deadlines()
                    wake = min(self._next_beat, self.duty.next_sweep if self.duty.held else self._next_beat,
                               self.worker.next_deadline())
                    message = pubsub.get_message(timeout=max(0.0, wake - time.monotonic()))
                    if message:
                        self._on_request(message["data"])
                except WorkerTakenOver as exc:
                    return str(exc)
                except (redis.ConnectionError, redis.TimeoutError, OSError):  # as redis-py reports a lost link
                    wire.close_pubsub(pubsub)  # the worker's loop reports the lost connection once
                    pubsub = None
                    self._stopped.wait(RETRY)
                except Exception:  # a bug, or Redis state broken by hand: log it, never die of it
                    self._errors.warning("worker %s: error in the heartbeat; going on", self.worker.name,
                                         exc_info=True)
                    wire.close_pubsub(pubsub)
                    pubsub = None
                    self._stopped.wait(RENEW)
        finally:
            wire.close_pubsub(pubsub)
        return None

    def _send(self, *commands: tuple) -> list:
        """``wire.send``, noting when Redis answered (``contact``)."""
        sent = time.monotonic()
        replies = wire.send_grouped(self.connection, *commands)  # one round trip (on a cluster, one per slot)
        if self._last_sent is None or time.monotonic() - self._last_sent > CONTACT:
            self._contact_since = sent  # a gap: Redis may have been away for longer than a lease allows
        self._last_sent = sent
        return replies

    def contact(self) -> float:
        """Seconds for which this thread's round trips were answered at most ``CONTACT`` apart, up
        to now (0: the last one was longer ago)."""
        now = time.monotonic()
        if self._last_sent is None or now - self._last_sent > CONTACT:
            return 0.0
        return now - self._contact_since

    def beat(self) -> None:
        """One round trip: presence, renewals, a bid for the duty; the name checked now and then."""
        worker = self.worker
        held = worker.held()
        now = time.time()
        name = keys.worker(worker.name)
        registering, self._register = self._register, False
        self._beats += 1
        check = registering or bool(held) or self._beats % CHECK_EVERY == 0
        changing = {"jobs": " ".join(held), "done": worker.jobs_run}
        commands: list = []
        asked = check  # replies[0] is the token
        if asked:
            commands.append(("HGET", name, "token"))
        if registering or changing != self._written:
            fields = {**changing, "seen": now}
            if registering:  # only then: a worker that lost its name to another must not write it back
                fields.update(host=socket.gethostname(), pid=os.getpid(), queues=",".join(worker.queues),
                              mode=worker.mode, concurrency=worker.concurrency, started_at=worker.started_at,
                              token=self.token)
            commands.append(("HSET", name, *[x for pair in fields.items() for x in pair]))
            check = True
        if check:
            commands.append(("EXPIRE", name, int(WORKER_TTL)))
        commands.append(("ZADD", keys.WORKERS, now, worker.name))
        bid = not self.duty.held and not self.duty.closed
        if bid:  # now and then by the script, which also clears junk left in the key
            commands.append(self.duty.hold() if self._beats % CHECK_EVERY == 0 else self.duty.take())
        by_queue = worker.held_by_queue()
        bid_at = len(commands) - 1
        first_renew = len(commands)
        commands += [keys.evalsha("renew", [keys.active(q), *[keys.job(i, q) for i in jobs]],
                                  [worker.name, int(LEASE * 1000), *_flat(jobs)]) for q, jobs in by_queue.items()]
        replies = self._send(*commands)
        self._next_beat = time.monotonic() + (RENEW if held else HEARTBEAT)
        self._written = changing
        if registering or not asked:  # registering: read before this beat wrote the token
            pass
        elif replies[0] is None:  # the hash expired (Redis was away long) or was deleted
            self._register = True
        elif replies[0] != self.token.encode():
            raise WorkerTakenOver(f"another worker registered as {worker.name} (token {replies[0][:40]!r}); "
                                  f"two workers must not share a name, as leases are held by name")
        for renewed, jobs in zip(replies[first_renew:], by_queue.values()):
            reply = [i.decode() for i in renewed]
            split = reply.index("|")
            for job_id in reply[:split]:  # the verdicts are about the attempts we sent
                worker.interrupt(job_id, "lost", attempt=jobs[job_id])
            for job_id in reply[split + 1:]:
                worker.interrupt(job_id, "cancel", attempt=jobs[job_id])
        if bid and replies[bid_at] in (1, b"OK"):
            self.duty.taken()

    def _on_request(self, data: object) -> None:
        try:
            job_id, attempt = parse_request(data)
        except ValueError as exc:
            junk = data[:60] if isinstance(data, bytes) else data
            self._bad_requests.warning("worker %s: ignored a malformed control message (%s): %r%s",
                                       self.worker.name, exc, junk, "..." if junk != data else "")
            return
        self.worker.interrupt(job_id, "cancel", attempt=attempt)


class Duty:
    """This worker's side of the duty lease: a bid (``take``), the sweeps while held, the release.

    ``send`` is the heartbeat's round trip. After a hand-over the last sweep may be several
    seconds old, which ``recover.lua`` would take for Redis having been away (and give every
    lease a fresh start, delaying the recovery of the dead holder's own jobs by a lease): the new
    holder first reads when that sweep was and, if its own round trips were answered all along
    since, tells the first sweep to allow for that gap.
    """

    def __init__(self, connection: Any, firer: Firer, send: Callable[..., list], token: str, own: list):
        self.connection, self.firer, self.send, self.token = connection, firer, send, token
        self._own = list(own)  # this worker's queues: swept even before they are in keys.QUEUES
        self._queues: list = sorted(set(own))  # the queues the sweeps look at (re-read now and then)
        self._sweeps = 0
        self.held = False
        self.closed = False  # stopping: bids no more
        self.next_sweep = 0.0
        self._fresh = False  # just taken: the first sweep allows for the gap of the hand-over
        self._renewed = 0.0  # when the lease was last set or renewed (monotonic)

    def take(self) -> tuple:
        """The bid sent with each beat: the duty if nobody holds it."""
        return ("SET", keys.DUTY, self.token, "NX", "PX", int(DUTY_LEASE * 1000))

    def hold(self, lease: float = DUTY_LEASE) -> tuple:
        """Renew the duty if held (0: give it back), take it if free or junk (``duty.lua``)."""
        return keys.evalsha("duty", [keys.DUTY], [self.token, int(lease * 1000), int(DUTY_MAX)])

    def taken(self) -> None:
        if not self.held:
            log.info("%s now holds the duty: recovery, promotion and schedules for every worker",
                     self.token.split(" ")[0])
        self.held, self._fresh = True, True
        self._renewed = self.next_sweep = time.monotonic()  # (a little later than the bid: on the safe side)

    def sweep(self, contact: float) -> None:
        """One sweep, the duty renewed in the same round trip if due; ``contact``: seconds for which
        this worker's Redis answered without a gap (``Heartbeat.contact``)."""
        if self._sweeps % QUEUES_EVERY == 0:  # queues made since: swept from now on
            self._queues = sweep.known_queues(self.connection, self._own)
        self._sweeps += 1
        queues = self._queues
        quiet = self._quiet_after_handover(contact, queues) if self._fresh else {}
        self._fresh = False  # read (a failure above tries again with the next sweep)
        sent = time.monotonic()
        renew = [self.hold()] if sent - self._renewed >= DUTY_RENEW else []
        replies = self.send(*renew, *sweep.commands(queues, int(LEASE * 1000), int(QUIET * 1000), quiet))
        if renew and replies[0] == 1:
            self._renewed = sent
        elif renew:
            self.held = False
            log.info("%s no longer holds the duty", self.token.split(" ")[0])
        found = replies[len(renew):]
        more = any(not isinstance(r, Exception) and (len(r[0]) >= BATCH or len(r[1]) >= BATCH
                                                      or len(r[2]) >= 1 + 2 * DUE_BATCH) for r in found)
        sweep.handle(self.connection, queues, found, self.firer)
        self.next_sweep = time.monotonic() + (0.0 if more else SWEEP)

    def _quiet_after_handover(self, contact: float, queues: list) -> dict:
        """Queue -> the quiet spell its first recovery may allow: the time since its last sweep
        plus ``QUIET``, if this worker's round trips were answered all along since then (or since
        at most ``QUIET`` after it: a gap a sweep allows anyway)."""
        beats = queues
        replies = self.send(("TIME",), *[("GET", keys.beat(q)) for q in queues])
        seconds, micros = replies[0]
        now = int(seconds) * 1000 + int(micros) // 1000
        since = now - int(contact * 1000)
        quiet = {}
        for beat, last in zip(beats, replies[1:]):
            try:
                last_ms = int(last)
            except (TypeError, ValueError):
                continue
            if since - int(QUIET * 1000) <= last_ms <= now:
                quiet[beat] = now - last_ms + int(QUIET * 1000)
        return quiet

    def close(self) -> None:
        """Bid no more; give the duty back if held (a stop). Never raises."""
        self.closed = True
        if not self.held:
            return
        self.held = False
        try:
            wire.send(self.connection, self.hold(0))
        except (redis.RedisError, OSError):
            pass  # it lapses within DUTY_LEASE


def _flat(held: dict) -> list:
    return [x for job_id, attempt in held.items() for x in (job_id, attempt)]
