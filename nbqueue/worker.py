"""The worker: takes jobs from its queues in priority order and runs them.

Taking a job and recording who holds it is one script (``dequeue.lua``). Each of the worker's
``concurrency`` slots is a thread that takes a job, runs it (in a forked child, or inline in the
thread) and records the outcome; an idle slot blocks in Redis on its queues' wake flags, so it
costs no CPU and starts a new job at once. The heartbeat thread renews the slots' leases.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

import redis

from . import child, forkserver, keys, signing, takes, wire
from .ahead import AHEAD, HOLD, SHORT, Ahead, Posted, give_back, hold_deadline, overdue
from .connection import connection_options, describe, get_connection, is_cluster
from .errors import ForkServerGone, WorkerError
from .execute import _INTERRUPTED, Outcome, Running, Taken, job_runner
from .heartbeat import HEARTBEAT, LEASE, Heartbeat
from .pausing import _pause, is_suspended, resume, suspend
from .recording import Recording
from .seconds import as_seconds
from .stopping import Stopping, _Stop

log = logging.getLogger("nbqueue.worker")

IDLE_WAKE = 30.0  # an idle slot looks around at least this often (a stop or a job wakes it at once)
MAX_IDLE = 10 * 365 * 24 * 3600.0  # seconds: the longest --max-idle
WINDOW = 2  # ids of each queue a take starts knowing (dequeue.lua); doubled while others take them first,
# one fewer after each take it served
MAX_WINDOW = 256
TAKE_ROUNDS = 20  # takes in a row whose window was stale, at most, before the loop looks again


class Worker(Recording, Stopping):
    """Serve ``queues`` (first = highest priority), running each job in a forked child or inline.

    On a cluster, queues on different slots are taken from in priority order too (``takes.py``).

    ``adopt_orphans`` (fork mode, Linux): this process becomes a subreaper, so the processes a
    killed job leaves, even those that left its process group (``setsid``), come to it and are
    killed and reaped; for a process that runs only the worker, as ``nbqueue worker`` does.
    """

    def __init__(
        self,
        queues: Iterable[str] = ("default",),
        connection: Union[redis.Redis, str, None] = None,
        *,
        name: Optional[str] = None,
        inline: bool = False,
        burst: bool = False,
        concurrency: int = 1,
        allow_eviction: bool = False,
        secret: signing.Secret = None,
        require_signed: bool = False,
        adopt_orphans: bool = False,
        max_jobs: Optional[int] = None,
        max_idle: Optional[float] = None,
    ):
        """``allow_eviction``: run even on a Redis whose ``maxmemory-policy`` evicts keys (else
        ``EvictingRedis`` is raised: eviction drops jobs silently). ``secret``: checks jobs and signs
        outcomes (a list: the first signs, all verify); default: ``$NBQUEUE_SECRET``, a key file, or the
        embedded server's. ``require_signed``: refuse to start without one. ``max_jobs``: stop (warm)
        after running that many jobs; ``max_idle``: stop after that many seconds with nothing to do."""
        self.queues = [keys.check_queue_name(q) for q in queues] or ["default"]
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise WorkerError(f"concurrency={concurrency!r}: give a whole number of jobs at once, 1 or more.")
        self.connection = get_connection(connection, evicting="allow" if allow_eviction else "refuse")
        self.signer = signing.get(self.connection, secret)
        if self.signer is None and require_signed:
            raise WorkerError("--require-signed: no signing secret is set; set NBQUEUE_SECRET (or "
                              "NBQUEUE_SECRET_FILE) to the clients' secret (in Python: Worker(secret=...)).")
        host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())
        self.name = name or f"{host}.{os.getpid()}.{secrets.token_hex(2)}"
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,200}", self.name):
            raise WorkerError(f"Invalid worker name {self.name!r}: use letters, digits, '_', '-' or '.'.")
        self.inline = inline or not hasattr(os, "fork")
        self.mode = "inline" if self.inline else "fork"
        self.burst = burst
        self.concurrency = concurrency
        if max_jobs is not None and (not isinstance(max_jobs, int) or isinstance(max_jobs, bool) or max_jobs < 1):
            raise WorkerError(f"max_jobs={max_jobs!r}: give a whole number of jobs, 1 or more (None: no limit).")
        self.max_jobs = max_jobs
        idle = None if max_idle is None else as_seconds(max_idle)
        if max_idle is not None and (idle is None or not 0 < idle <= MAX_IDLE):
            raise WorkerError(f"max_idle={max_idle!r}: give a number of seconds above 0 (None: no limit).")
        self.max_idle = idle
        self._taken = 0  # jobs taken so far (max_jobs)
        self._active_at = time.monotonic()  # when a job last started or ended (max_idle)
        self.adopt_orphans = adopt_orphans and not self.inline
        self.started_at = time.time()
        self.jobs_run = 0
        self._stopping = False
        self._running: dict[str, Running] = {}
        self._lock = threading.Lock()
        self._redis_down = False
        self._failure: Optional[str] = None  # why the heartbeat ended, if it did
        self._pid = os.getpid()
        self._wake: tuple = ()  # the main thread's wake-up socket pair while it works (read end, write end)
        self._signals: list = []  # the stop signals received, in order
        self._suspended = False  # the last take found workers suspended
        self.callbacks_here = False  # run callbacks at once in this process (testing mode), not queued
        self._slots_ended = 0
        self._grace_until: Optional[float] = None  # a stop now waits this long for inline jobs
        self._wake_pending = False  # a stop could not be pushed to idle slots yet (_wake_slots)
        self._wake_tries = 0
        self._forks: Optional[forkserver.ForkServer] = None  # fork mode, while working: forks the jobs
        self._ahead: Optional[Ahead] = None  # the slot's jobs taken ahead (one slot, inline: ahead.py)
        # the take: per queue its 4 keys, and the job key prefix and channel prefix of its jobs; per run of
        # queues on one slot (one run standalone: all the queues; takes.py)
        runs = takes.runs_of(self.connection, self.queues, split=self.split_runs)
        self._takes_of = {tuple(run): (
            [k for q in run for k in (keys.queue(q), keys.wake(q), keys.active(q), keys.paused(q))],
            [(q, keys.job("", q).encode(), keys.events_prefix(keys.tag(q))) for q in run]) for run in runs}
        self._token, self._takes_sent = secrets.token_hex(4), itertools.count()  # a take's token: "<token>.<n>"
        self._sent = threading.local()  # each slot's _Sent (_take_command)
        self._windows: dict = {}  # queue -> its first ids (bytes) as the last take saw them (dequeue.lua)
        self._window = WINDOW
        own = keys.worker_wake_on(self.name, self.queues[0]) if is_cluster(self.connection) else keys.worker_wake(
            self.name)  # on a cluster, in the slot of the flags it is waited on with
        self._wait_keys = [*map(keys.wake, self.queues), own]
        self._takes = takes.Takes(self, runs, self._take_run, self._redis) if len(runs) > 1 else None
        # a worker that may take ahead (inline, one slot, one server: _serve) learns enough ids to take
        # AHEAD next; with several slots the others are the ones waiting for work
        self._look_ahead = 2 * AHEAD if (self.inline and concurrency == 1 and self._takes is None
                                         and not is_cluster(self.connection)) else 0
        socket_timeout = connection_options(self.connection).get("socket_timeout")
        # block for less than the client's read timeout (redis-py's default is 5 s), or reads get cut off
        self._idle_wait = IDLE_WAKE if not socket_timeout else max(0.1, min(IDLE_WAKE, socket_timeout - 1))
        if self.max_idle is not None:
            self._idle_wait = max(0.1, min(self._idle_wait, self.max_idle))

    split_runs = False  # tests: take run by run (one per queue) on a standalone server, as on a cluster
    ahead_hold = HOLD  # seconds jobs taken ahead wait behind a long one before they are given back

    # --- the loop -------------------------------------------------------------------------
    def work(self) -> int:
        """Run jobs until stopped (or, with ``burst``, until the queues are empty); returns jobs run."""
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # so tasks.py beside the worker imports
        self._pid = os.getpid()
        self._signals, self._slots_ended, self._grace_until = [], 0, None
        self._forks = self._fork_server()
        try:
            return self._work()
        finally:
            if self._forks is not None:
                self._forks.close()
                self._forks = None

    def _fork_server(self) -> Optional[forkserver.ForkServer]:
        """Fork mode: the fork server, started now, while this process runs one thread (else None:
        each job is forked from here, as from a process that runs threads, which Python 3.12+ warns of)."""
        if self.inline:
            return None
        if not forkserver.usable():
            log.info("worker %s forks each job itself: this process runs other threads already (or is "
                     "not Linux), so no fork server can be forked from it", self.name)
            return None
        try:
            return forkserver.ForkServer(job_runner(self.connection, self.signer), _INTERRUPTED)
        except (OSError, ForkServerGone) as exc:
            log.error("worker %s: no fork server (%s); forking each job itself", self.name, exc)
            return None

    def _work(self) -> int:
        heartbeat = Heartbeat(self)
        keys.register(self.connection, self.queues)  # the layout checked, the queues known to all
        if self.connection.exists(keys.SUSPENDED):  # suspended before our queues were known: theirs too
            _pause(self.connection, self.queues, True)
        heartbeat.beat()  # register before taking anything
        self._wake = socket.socketpair()  # portable, unlike a pipe in select()
        for end in self._wake:
            end.setblocking(False)
        undo_adopt = child.adopt_orphans() if self.adopt_orphans else (lambda: None)
        restore = self._install_signals()
        if self.signer is None:
            log.warning("worker %s: %s", self.name, signing.UNSIGNED_WARNING)
        else:
            log.info("worker %s checks job signatures (secret from %s)", self.name, self.signer.source)
        log.info("worker %s serving %s (%s mode%s) on %s", self.name, ", ".join(self.queues), self.mode,
                 f", {self.concurrency} at once" if self.concurrency > 1 else "", describe(self.connection))
        try:
            heartbeat.start()
            slots = [threading.Thread(target=self._slot, args=(i,), name=f"nbqueue-slot-{i}", daemon=True)
                     for i in range(self.concurrency)]
            for slot in slots:
                slot.start()
            self._wait_for_slots(len(slots))
        finally:
            heartbeat.stop()
            if self._takes is not None:  # its wakers were woken by the stop: they return at once
                self._takes.join(timeout=2.0)
            restore()
            undo_adopt()
            self._unregister()
            for end in self._wake:
                end.close()
            self._wake = ()
            log.info("worker %s stopped after %d job(s)", self.name, self.jobs_run)
        if self._failure:
            raise WorkerError(f"worker {self.name} stopped because its heartbeat ended: {self._failure}")
        return self.jobs_run

    def _slot(self, index: int = 0) -> None:
        self._sent.slot = _Sent(self.name, index)
        try:
            self._serve()
        finally:
            with self._lock:
                self._slots_ended += 1
            self._poke()

    def _serve(self) -> None:
        taken: Optional[Taken] = None
        first = True
        # inline on one server, a slot running short jobs takes several per round trip (ahead.py)
        ahead = self._ahead = Ahead(self.ahead_hold) if self._look_ahead else None
        while first or taken is not None or not (self._stopping or self.burst):
            if os.getpid() != self._pid:  # a process a job forked came back here: never a second worker
                child.exit_now(0)
            try:
                if first:
                    first, taken = False, self._take(ahead)
                elif taken is not None:  # _run records the outcome and takes the next job in one round trip
                    taken = self._run(taken, ahead=ahead)
                else:
                    taken = self._wait_and_take(ahead)
                    if taken is None:
                        self._idle()
            except _Stop:
                break
            except Exception:  # a bug, or a job hash broken by hand: log it, never die of it
                log.exception("worker %s: unexpected error; going on", self.name)
                taken = None
                self._give_back(ahead, drop=True)
                time.sleep(1.0)  # not a hot loop if it keeps happening
        self._give_back(ahead, drop=True)  # only jobs asked to cancel are left (a stop now)

    def _give_back(self, ahead: Optional[Ahead], drop: bool = False) -> None:
        """Jobs taken ahead that will not run here now: back to their queue's front (``ahead.py``)."""
        if ahead is not None:
            give_back(self, ahead, drop)

    def _take_command(self, queues: Optional[list] = None, most: int = 1) -> tuple:
        """The take (``dequeue.lua``) of up to ``most`` jobs from ``queues`` (one run; default: all,
        standalone) with the job keys of the queues' windows as last seen. Until ``_settled`` reads
        its reply it is this slot's take in flight: if a lost connection cuts the reply off, the next
        take from those queues is that take sent again, marked so (the jobs it took, if it ran, come
        back with its reply, not leased to no one who knows until their leases lapse)."""
        queues = queues or self.queues
        run = tuple(queues)
        slot = self._slot_sent()
        sent = slot.in_flight.get(run)
        if sent is not None and sent[0] == most:
            return _sent_again(sent[1])
        take_keys, take_jobs = self._takes_of[run]
        job_keys, values = [], []
        windows = self._windows
        for q, job_key, channel in take_jobs:
            window = windows.get(q, ())
            job_keys += [job_key + i for i in window]
            values += [q, channel, len(window), *window]
        token = f"{self._token}.{next(self._takes_sent)}"
        args = [self.name, int(LEASE * 1000), max(self._window, self._look_ahead), len(queues), most, *values]
        command = keys.evalsha("dequeue", [*take_keys, slot.record(run), *job_keys], [token, *args])
        slot.in_flight[run] = (most, command)
        return command

    def _slot_sent(self) -> _Sent:
        try:
            return self._sent.slot
        except AttributeError:  # not a slot's thread (a test calling in): as slot 0
            self._sent.slot = _Sent(self.name, 0)
            return self._sent.slot

    def _settled(self, reply: Any, queues: Optional[list] = None, most: int = 1) -> Any:
        """A take's reply once it is not 'retry' (taken again with the fresh windows it returned)."""
        queues = queues or self.queues
        in_flight = self._slot_sent().in_flight
        for rounds_left in range(TAKE_ROUNDS, -1, -1):  # the last take's reply is read too: it may hold jobs
            in_flight.pop(tuple(queues), None)  # its reply is read
            stale = reply[0] == b"retry" and any(self._windows.get(q) for q in queues)
            if reply[1]:
                self._windows = {**self._windows, **dict(zip(queues, reply[1]))}  # ids as bytes, as sent back
            if reply[0] != b"retry":
                if self._window > WINDOW:  # the window held the head: try one id fewer (every id costs a key sent)
                    self._window -= 1
                return reply
            if stale:  # others took the ids we knew of: look further ahead next time
                self._window = min(self._window * 2, MAX_WINDOW)
            if not rounds_left:
                break
            reply = self._redis(lambda: wire.send(self.connection, self._take_command(queues, most))[0])
        return [b"none", []]

    def _take(self, ahead: Optional[Ahead] = None) -> Optional[Taken]:
        if not self._may_take():
            return None
        most = self._reserve(ahead)
        reply = self._take_reply(most)
        self._ended_ahead(ahead)
        return self._taken_from(reply, ahead, most)

    def _take_reply(self, most: int = 1) -> Any:
        """Take a job, or up to ``most`` (a slot reserved them): the take's settled reply."""
        if self._takes is not None:
            return self._redis(self._takes.take)  # waits only while no shard of its queues answers
        return self._redis(lambda: self._take_run(self.queues, most))

    def _take_run(self, queues: list, most: int = 1) -> Any:
        """Take a job (up to ``most``) from the first of ``queues`` (one run: they share a slot) that
        has one; a lost connection is raised."""
        reply = wire.send(self.connection, self._take_command(queues, most))[0]
        return self._settled(reply, queues, most)

    def _wait_and_take(self, ahead: Optional[Ahead] = None) -> Optional[Taken]:
        """Block until a wake flag of one of our queues is set (or a stop, or a while passes), then
        take a job. Both go in one packet: the server runs the take as soon as the wait returns,
        with no round trip in between."""
        if not self._may_take():
            self._redis(lambda: self.connection.blpop([keys.worker_wake(self.name)], self._idle_wait))
            return None
        if self._takes is not None:  # queues on several slots: wait for a waker, then take in order
            self._takes.wait(self._idle_wait)
            return self._taken_from([b"none", []] if self._stopping else self._takes.take())
        most = self._reserve(ahead)
        _, reply = self._redis(lambda: wire.send(
            self.connection, ("BLPOP", *self._wait_keys, self._idle_wait), self._take_command(None, most)))
        self._ended_ahead(ahead)
        return self._taken_from(self._settled(reply, None, most), ahead, most)

    def _may_take(self) -> bool:
        """Whether a slot may take a job now (not stopping, under ``max_jobs``); reserves one."""
        with self._lock:
            if self._stopping or self._suspended or (self.max_jobs is not None and self._taken >= self.max_jobs):
                self._suspended = False  # looked at again by the next take
                return False
            self._taken += 1
            return True

    def _reserve(self, ahead: Optional[Ahead]) -> int:
        """How many jobs a slot that reserved one asks its take for (more are reserved, under ``max_jobs``)."""
        want = 1 if ahead is None else ahead.most()
        if want == 1:
            return 1
        with self._lock:
            extra = want - 1 if self.max_jobs is None else max(0, min(want - 1, self.max_jobs - self._taken))
            self._taken += extra
        return 1 + extra

    def _taken_from(self, reply: Any, ahead: Optional[Ahead] = None, most: int = 1) -> Optional[Taken]:
        """The take's reply as a job (jobs after the first go to ``ahead``); None if there was none
        (the reservations not used are given back)."""
        got = (len(reply) - 2) // 17 if reply[0] == b"job" else 0
        with self._lock:
            self._taken -= most - got
            if not got:
                self._suspended = reply[0] == b"suspended"  # suspended: the next wait blocks on our own list only
        if not got:
            return None
        self._active_at = time.monotonic()
        taken = [Taken.from_reply(reply[2 + 17 * i:19 + 17 * i], self.signer) for i in range(got)]
        if got > 1:
            assert ahead is not None
            runs = [Running(t) for t in taken[1:]]
            with self._lock:
                self._running.update((run.taken.id, run) for run in runs)
                ahead.runs.extend(runs)
        return taken[0]

    def _idle(self) -> None:
        """Nothing to take: with ``max_idle``, stop once idle that long (no job running)."""
        if self.max_idle is None or self._stopping:
            return
        with self._lock:
            busy = bool(self._running)
        if not busy and time.monotonic() - self._active_at >= self.max_idle:
            log.info("worker %s: idle for %g s (--max-idle): stopping", self.name, self.max_idle)
            self.request_stop()

    def run_one(self) -> Optional[str]:
        """Take one job from the queues, run it here and record how it ended, taking no next one;
        its id, or None if the queues were empty (``nbqueue.testing`` runs jobs this way)."""
        taken = self._take()
        if taken is None:
            return None
        self._run(taken, then_take=False)
        return taken.id

    def _run(self, taken: Taken, then_take: bool = True, ahead: Optional[Ahead] = None) -> Optional[Taken]:
        """Run one job, record how it ended, and return the next job (if not stopping)."""
        with self._lock:
            run = self._running.get(taken.id)
            if run is None or run.taken is not taken:  # else: taken ahead, registered then
                run = self._running[taken.id] = Running(taken)
        if self._failure:  # taken just as the heartbeat ended: nobody would renew its lease
            run.interrupt("lost")
        started = time.perf_counter()
        if ahead is not None:
            ahead.began_at = time.monotonic()
        try:
            outcome = run.execute(self.connection, self.inline, self._forks)
        finally:
            with self._lock:
                self._running.pop(taken.id, None)  # gone already if a stop now gave up on it
        elapsed = time.perf_counter() - started
        if ahead is not None:
            ahead.short = elapsed < SHORT
        if run.reason == "lost":
            log.warning("%s %s: this worker lost the job's lease (it runs elsewhere now, or was given back "
                        "at a stop); its outcome is discarded", taken.id, taken.func)
            self._count_run()
            self._log_end(taken, outcome, 0, elapsed)
            return self._next_ahead(ahead) if then_take else None
        return self._finish(taken, outcome, then_take=then_take, ahead=ahead, elapsed=elapsed)[1]

    def _next_ahead(self, ahead: Optional[Ahead]) -> Optional[Taken]:
        """The next job taken ahead, if any (a stop now gives those back instead)."""
        if ahead is None or not ahead.runs:
            return None
        if self._grace_until is not None or self._failure:
            self._give_back(ahead)
            return None
        with self._lock:  # the heartbeat may give them back meanwhile (ahead.py)
            return ahead.runs.popleft().taken if ahead.runs else None

    def _finish(self, taken: Taken, outcome: Outcome, then_take: bool = False, ahead: Optional[Ahead] = None,
                elapsed: float = 0.0) -> tuple:
        """Record the outcome (fenced by our attempt) and act on it; with ``then_take``, take the next
        job too, or with one taken ahead, write the outcome without waiting and go on with that one.
        Returns (1 recorded, 2 recorded and a retry scheduled, 0 not ours any more, None written
        ahead; the next job)."""
        command, retry = self._finish_command(taken, outcome)
        following = self._next_ahead(ahead) if then_take else None
        if following is not None:
            assert ahead is not None
            try:
                wire.post(self.connection, command)
                ahead.posted.append(Posted(taken, outcome, elapsed, command, retry))
                return None, following
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # recorded below, the usual way
        together = then_take and following is None and self._takes is None and self._may_take()
        most = self._reserve(ahead) if together else 1
        replies = self._redis(lambda: wire.send(self.connection, command, self._take_command(None, most)) if together
                              else wire.send(self.connection, command))  # the take built anew: sent again if lost
        self._ended_ahead(ahead)
        if then_take and following is None:
            following = (self._taken_from(self._settled(replies[1], None, most), ahead, most) if together
                         else self._taken_from(self._take_reply()) if self._takes is not None and self._may_take()
                         else None)
        written = self._ended(taken, outcome, replies[0], retry, elapsed)
        return written, following

    def _count_run(self) -> None:
        with self._lock:
            self.jobs_run += 1
            self._active_at = time.monotonic()
            reached = self.max_jobs is not None and self.jobs_run >= self.max_jobs
        if reached and not self._stopping:
            log.info("worker %s: ran %d job(s) (--max-jobs): stopping", self.name, self.jobs_run)
            self.request_stop()

    def _redis(self, call: Callable):
        """Run a Redis call, waiting out a lost connection (logged once) instead of dying."""
        delay = 0.05
        while True:
            try:
                result = call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                with self._lock:
                    if not self._redis_down:
                        self._redis_down = True
                        log.warning("lost Redis at %s (%s); retrying with backoff", describe(self.connection), exc)
                if self._stopping and not self._running:
                    raise _Stop() from None
                time.sleep(delay)  # waiting for Redis to come back, not for a job
                delay = min(delay * 2, 2.0)
                continue
            if self._redis_down:
                with self._lock:
                    if self._redis_down:
                        self._redis_down = False
                        log.warning("Redis at %s is back", describe(self.connection))
            return result

    # --- what the heartbeat asks --------------------------------------------------------------
    def held(self) -> dict:
        """Job id -> attempt of the jobs this worker runs now."""
        with self._lock:
            return {job_id: run.taken.attempt for job_id, run in self._running.items()}

    def held_by_queue(self) -> dict:
        """Queue -> {job id -> attempt} of the jobs this worker runs now."""
        found: dict = {}
        with self._lock:
            for job_id, run in self._running.items():
                found.setdefault(run.taken.queue, {})[job_id] = run.taken.attempt
        return found

    def interrupt(self, job_id: str, reason: str, attempt: int = 0) -> None:
        """Stop a running job for ``reason`` (cancel, lost, timeout, stop)."""
        with self._lock:
            run = self._running.get(job_id)
        if run is not None and (not attempt or attempt == run.taken.attempt):
            run.interrupt(reason)

    def enforce_deadlines(self) -> None:
        """Stop inline jobs past their timeout (fork mode enforces it in the waiting slot)."""
        now = time.monotonic()
        with self._lock:
            late = [run for run in self._running.values() if run.deadline is not None and run.deadline <= now]
        for run in late:
            run.interrupt("timeout")
        if self._ahead is not None and overdue(self._ahead):  # held behind a long job: others may run them
            self._give_back(self._ahead)

    def next_deadline(self) -> float:
        with self._lock:
            deadlines = [run.deadline for run in self._running.values() if run.deadline is not None and not run.reason]
        return min([*deadlines, hold_deadline(self._ahead) if self._ahead is not None else float("inf")])

    def heartbeat_ended(self, why: str) -> None:
        """Nobody renews the leases any more: take no more jobs, give the running ones back (another
        worker re-runs them once their leases lapse) and let ``work`` raise ``WorkerError``."""
        log.error("worker %s: %s; stopping: no more jobs taken, running ones given back", self.name, why)
        self._failure = why
        self.request_stop()
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            run.interrupt("lost")


__all__ = ["HEARTBEAT", "LEASE", "Worker", "is_suspended", "resume", "suspend"]


def _sent_again(command: tuple) -> tuple:
    """A take's command marked as that take sent again: '=' before its token (``dequeue.lua``'s ARGV[2])."""
    at = 3 + command[2] + 1  # "EVALSHA", sha, number of keys, the keys, ARGV[1], then the token
    return (*command[:at], "=" + command[at], *command[at + 1:])


class _Sent:
    """A slot's takes: the one sent from each run of queues whose reply it has not read yet (the run
    -> its ``most`` and its command), and the keys its takes are recorded under."""

    def __init__(self, worker_name: str, index: int):
        self.worker_name, self.index = worker_name, index
        self.in_flight: dict[tuple, tuple] = {}
        self._records: dict[tuple, str] = {}

    def record(self, run: tuple) -> str:
        key = self._records.get(run)
        if key is None:
            key = self._records[run] = keys.taken(self.worker_name, run[0], self.index)
        return key
