"""Where nbqueue keeps things in Redis: every key name is made here, every script lives here.

Layout (``nbq:`` prefix):

- ``queues``            set of queue names
- ``queue:<name>``      list of queued job ids, front first
- ``wake:<name>``       a one-element flag list, present while ``queue:<name>`` holds jobs;
                        idle workers block on these with BLPOP (several queues at once)
- ``job:<id>``          hash: the call (``func``, ``data``, ``code``), ``status``, times,
                        ``worker``, ``attempt``, ``result`` or ``error``/``exc``, options,
                        ``sig`` / ``rsig``: the job's and its outcome's signatures (``signing.py``),
                        ``schedule`` / ``tick``: the schedule that queued it and the tick (ms) it was for
- ``active``            sorted set: job id -> lease deadline (ms) of the attempt holding it
- ``scheduled``         sorted set: job id -> time (ms) it is due on its queue (delays, retries)
- ``beat``              time (ms) of the last recovery sweep (to see Redis was away)
- ``duty``              the duty lease: the token of the one worker that runs the sweeps (recovery,
                        promotion, schedules) for the whole deployment, with a short expiry
                        (``heartbeat.Duty``)
- ``failed:<name>``     sorted set: failed job id -> time it failed
- ``ended:<name>``      sorted set: the last ``ENDED_KEEP`` ended job ids of the queue -> end time
                        (s), written by ``finish.lua``: the dashboard's recent jobs and throughput
- ``stats:<name>``      hash: per final status, a ring of ``STATS_SLOTS`` counters of jobs ended per
                        ``STATS_BUCKET`` seconds (field ``<status>:<bucket % STATS_SLOTS>`` ->
                        ``"<bucket> <count>"``, bucket = time // STATS_BUCKET), written by
                        ``finish.lua``: finished/failed/canceled in the last minutes, throughput
- ``log:<id>``          list: the last lines a job printed or logged
- ``group:<id>``        list: a group's job ids, in order, kept as long as its jobs
- ``unique:<key>``      the id of the last job enqueued with that ``unique_key``
- ``suspended``         present while workers are suspended (``nbqueue suspend``): they take nothing
- ``schedules``         sorted set: schedule name -> time (ms) its next tick is due
- ``schedule:<name>``   hash: a schedule's call as enqueue signs it (``func``, ``code``, ``data``,
                        ``sig``, ``options``, ``queue``), ``rule``, ``missed``, ``token``, ``next``,
                        ``last_job``, ``last_run``, ``fired``, ``error`` (``schedule.py``)
- ``dependents:<id>``   sorted set: ids of the jobs waiting for this job (``deferred``), scored in
                        the order they were enqueued; dropped when the job ends (``flow.py``)
- ``workers``           sorted set: worker name -> last heartbeat (s)
- ``worker:<name>``     hash: host, pid, queues, mode, started_at, token (tells two workers of one
                        name apart), ``done`` (jobs it ran, written with each heartbeat); expires
                        without heartbeats
- ``wake-worker:<name>``  list the worker's own threads block on too, so a stop wakes them
- channel ``ev:<id>``   one JSON message per state change of the job
- channel ``ctl:<worker>``  requests to a worker (cancel a job it runs)
- channel ``watcher:<token>``  wakes one process's event watcher (``watcher.py``)

Scripts (``scripts/*.lua``) take the prefix as ``ARGV[1]`` and are sent with EVALSHA. A line
``-- #include NAME`` in a script is replaced by ``scripts/NAME.lua`` (shared Lua functions).
"""
from __future__ import annotations

import os
import re
import select
import threading
import weakref
from functools import lru_cache
from importlib import resources
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

PREFIX = "nbq:"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")  # queue names and job ids, as they go into keys

QUEUES = PREFIX + "queues"
ACTIVE = PREFIX + "active"
SCHEDULED = PREFIX + "scheduled"
BEAT = PREFIX + "beat"
DUTY = PREFIX + "duty"
WORKERS = PREFIX + "workers"
SUSPENDED = PREFIX + "suspended"
SCHEDULES = PREFIX + "schedules"


def queue(name: str) -> str:
    return f"{PREFIX}queue:{name}"


def wake(name: str) -> str:
    return f"{PREFIX}wake:{name}"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_of(raw_id: bytes) -> bytes:
    """The job key of an id read from Redis as is (it may be junk, not UTF-8)."""
    return PREFIX.encode() + b"job:" + raw_id


def schedule(name: str) -> str:
    """A schedule's hash (its call, rule and last run)."""
    return f"{PREFIX}schedule:{name}"


def failed(name: str) -> str:
    return f"{PREFIX}failed:{name}"


ENDED_KEEP = 1000  # ended job ids kept per queue in ended:<name> (up to 99 more between trims)
STATS_BUCKET = 10  # seconds counted together in stats:<name>
STATS_SLOTS = 66  # buckets kept there (a ring: 11 minutes)


def ended(name: str) -> str:
    """The queue's recently ended job ids -> end time (capped at ``ENDED_KEEP``)."""
    return f"{PREFIX}ended:{name}"


def stats(name: str) -> str:
    """The queue's counts of ended jobs per status and ``STATS_BUCKET`` seconds (a ring)."""
    return f"{PREFIX}stats:{name}"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def events(job_id: str) -> str:
    return f"{PREFIX}ev:{job_id}"


def unique(key: str) -> str:
    """The id of the last job enqueued with ``unique_key=key``."""
    return f"{PREFIX}unique:{key}"


def group(group_id: str) -> str:
    """A group's job ids, in order (``Group.save``)."""
    return f"{PREFIX}group:{group_id}"


def dependents(job_id: str) -> str:
    """The jobs that wait for ``job_id`` to end (its dependents), in the order they were enqueued."""
    return f"{PREFIX}dependents:{job_id}"


def log(job_id: str) -> str:
    """A job's output lines (the last ones), written while it runs."""
    return f"{PREFIX}log:{job_id}"


def control(worker_name: str) -> str:
    return f"{PREFIX}ctl:{worker_name}"


def watcher_wake(token: str) -> str:
    """The channel that wakes one process's event watcher (to subscribe anew, or to catch up)."""
    return f"{PREFIX}watcher:{token}"


def worker_wake(worker_name: str) -> str:
    """A list the worker's own threads block on beside the queues' flags, to stop them at once."""
    return f"{PREFIX}wake-worker:{worker_name}"


EVENTS_PATTERN = PREFIX + "ev:*"


@lru_cache(maxsize=None)
def script(name: str) -> Script:
    """The Lua script ``scripts/<name>.lua``."""
    text = _source(name)
    return Script(None, text)  # type: ignore[arg-type]  # bytes need no client encoder


def _source(name: str) -> bytes:
    text = resources.files(__package__).joinpath("scripts", f"{name}.lua").read_bytes()
    return re.sub(rb"^-- #include ([a-z_]+)$", lambda m: _source(m.group(1).decode()), text, flags=re.M)


SCRIPTS = ("enqueue", "dequeue", "finish", "renew", "recover", "promote", "cancel", "requeue", "output",
           "defer", "release", "due", "fire", "duty")


def run(client: Any, name: str, keys: list, args: list) -> Any:
    """Run a script on ``client`` (a client, or a transaction pipeline) by EVALSHA; a server that
    lacks it (a restarted one) gets it loaded. Hot paths use ``send`` instead."""
    return script(name)(keys, [PREFIX, *args], client=client)


def evalsha(name: str, keys: list, args: list) -> tuple:
    """The EVALSHA command for a script, to give to ``send``."""
    return ("EVALSHA", script(name).sha, len(keys), *keys, PREFIX, *args)


_local = threading.local()  # per thread: connection pool -> the thread's own connection


def send(client: Redis, *commands: tuple) -> list:
    """Send ``commands`` in one round trip on this thread's own connection; return the replies.

    The hot paths (enqueue, take, finish, heartbeat) use this instead of the client: redis-py's
    per-command machinery costs more than the round trip itself on loopback (25k vs 65k PINGs/s
    here). The connection is one of the client's own pool, opened the pool's way (its Sentinel
    master lookup, TLS, AUTH), never to a host the client was not given. One found dead before
    anything was sent on it (the server closed it: a restart) is reopened first; a server that
    lost its scripts gets them loaded and the commands resent. Any other error drops the
    connection (the next call reconnects) and is raised: a command that may have run is never
    sent twice.
    """
    if getattr(_local, "pid", None) != os.getpid():  # a forked child must not share the parent's sockets
        _local.pid, _local.connections = os.getpid(), weakref.WeakKeyDictionary()
    pool = client.connection_pool
    conn = _local.connections.get(pool)
    if conn is None:
        conn = _local.connections[pool] = pool.make_connection()
    packed = conn.pack_commands(commands)
    for attempt in range(2):
        try:
            _ready(conn)
            conn.send_packed_command(packed)
            return [conn.read_response() for _ in commands]
        except NoScriptError:  # every script is gone (a restart) and every reply read up to here
            conn.disconnect()
            if attempt:
                raise
            for name in SCRIPTS:
                client.script_load(script(name).script)
        except BaseException:
            conn.disconnect()
            raise
    raise AssertionError("unreachable")


def _ready(conn: Any) -> None:
    """Make ``conn`` fit to send on: connected through ``connect()`` (which a Sentinel-managed
    connection overrides to ask for the master; sending alone would dial its default host), and
    with nothing to read while idle: an idle socket that is readable was closed by the server (a
    restart: it reads EOF) or holds a stray reply; either way it is reopened before anything was
    sent on it. A poll of the socket costs about a microsecond (redis-py's ``can_read`` several)."""
    sock = conn._sock  # redis-py's socket (None: not connected); its public is_connected is 5.x+ only
    if sock is not None:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return
        conn.disconnect()
    conn.connect()


def close_pubsub(pubsub: Any) -> None:
    """Close a pub/sub (if any) whatever state its connection is in: a dead one may fail to close,
    and is dropped either way."""
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:
            pass
