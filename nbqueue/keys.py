"""Where nbqueue keeps things in Redis: every key name is made here, every script lives here.

Layout version ``SCHEMA_VERSION`` (``nbq:`` prefix). Every queue has a slot tag, ``tag(queue)``: 4 hex
digits of the sha1 of its name. The keys of a queue and of its jobs carry ``{<tag>}``, so one
script only ever touches one Redis Cluster slot (``T`` below); different queues spread over shards.

Per queue ``<name>`` (tag ``T = tag(name)``):

- ``{T}:queue:<name>``      list of queued job ids, front first
- ``{T}:wake:<name>``       a one-element flag list, present while ``queue:<name>`` holds jobs;
                            idle workers block on these with BLPOP (several queues at once)
- ``{T}:active:<name>``     sorted set: id of a started job -> lease deadline (ms) of the attempt holding it
- ``{T}:scheduled:<name>``  sorted set: job id -> time (ms) it is due on the queue (delays, retries)
- ``{T}:beat:<name>``       time (ms) of the last recovery sweep of the queue (to see Redis was away)
- ``{T}:paused:<name>``     present while workers are suspended (``nbqueue suspend``): none takes from it
- ``{T}:failed:<name>``     sorted set: failed job id -> time it failed
- ``{T}:ended:<name>``      sorted set: the last ``ENDED_KEEP`` ended job ids of the queue -> end time
                            (s), written by ``finish.lua``: the dashboard's recent jobs and throughput
- ``{T}:stats:<name>``      hash: per final status, a ring of ``STATS_SLOTS`` counters of jobs ended per
                            ``STATS_BUCKET`` seconds (field ``<status>:<bucket % STATS_SLOTS>`` ->
                            ``"<bucket> <count>"``, bucket = time // STATS_BUCKET), written by ``finish.lua``
- ``{T}:unique:<name>:<key>``  the id of the last job enqueued on the queue with that ``unique_key``
- ``{T}:schedules:<name>``  sorted set: name of a schedule firing on the queue -> time (ms) its next tick is due
- ``{T}:schedule:<sname>``  hash: a schedule's call as enqueue signs it (``func``, ``code``, ``data``,
                            ``sig``, ``options``, ``queue``), ``rule``, ``missed``, ``token``, ``next``,
                            ``last_job`` (a ref), ``last_run``, ``fired``, ``error`` (``schedule.py``)
- ``{T}:wake-worker:<worker>``  on a cluster, the list a worker's waiter on this queue's slot blocks on
                            beside the flags, so a stop wakes it (``worker_wake_on``, ``takes.py``)

Per job (under its queue's tag; ``<id>`` as in the queue list, with no tag):

- ``{T}:job:<id>``          hash: the call (``func``, ``data``, ``code``), ``status``, times,
                            ``worker``, ``attempt``, ``result`` or ``error``/``exc``, options,
                            ``sig`` / ``rsig``: the job's and its outcome's signatures (``signing.py``),
                            ``schedule`` / ``tick``: the schedule that queued it and the tick (ms) it was
                            for, ``deps``: refs of its dependencies (space-separated), ``dep:<ref>``
- ``{T}:log:<id>``          list: the last lines a job printed or logged
- ``{T}:dependents:<id>``   sorted set: refs of the jobs waiting for this job (``deferred``), scored in
                            the order they were enqueued; dropped when the job ends (``flow.py``)
- channel ``{T}:ev:<id>``   one JSON message per state change of the job (plain PUBLISH)

Global keys, each touched alone (never in a script with the keys above):

- ``schema``                the layout version, ``SCHEMA_VERSION``; a Redis holding the previous
                            layout's keys without it is refused (``check_schema``, ``LayoutError``)
- ``queues``                set of queue names, added by the client once per process and queue (``register``)
- ``schedule-queues``       hash: schedule name -> the queue it fires on (to find its keys)
- ``group:<id>``            list: a group's job refs, in order, kept as long as its jobs
- ``suspended``             present while workers are suspended (each queue's ``paused`` flag is what they read)
- ``duty``                  the duty lease: ``"<worker> <token>"`` of the one worker that runs the sweeps
                            (recovery, promotion, schedules) for the whole deployment, with a short
                            expiry (``heartbeat.Duty``, ``duty.lua``)
- ``workers``               sorted set: worker name -> last heartbeat (s)
- ``worker:<name>``         hash: host, pid, queues, mode, started_at, token (tells two workers of one
                            name apart), ``done`` (jobs it ran, written with each heartbeat); expires
                            without heartbeats
- ``wake-worker:<name>``    list the worker's own threads block on too, so a stop wakes them
- channel ``ctl:<worker>``  requests to a worker (cancel a job it runs)
- channel ``watcher:<token>``  wakes one process's event watcher (``watcher.py``)

Job ids and refs. An id nbqueue makes (``new_id``) is the queue's tag and 28 random hex digits, so
its keys follow from the id alone. An id the caller chose (``job_id=``) lives under its queue's tag
and is found only with the queue (``JobQueueUnknown`` otherwise). Where Redis keeps a pointer to a
job that may be of another queue (``deps``, dependents sets, group lists, a schedule's
``last_job``), it keeps the job's *ref*: the id itself when the id carries the tag it lives under
(every made id), else ``<tag>:<id>`` (ids have no ``:``, so the two never mix up). ``job``, ``log``,
``dependents`` and ``events`` take an id with its queue (or tag), or a ref alone.

Scripts (``scripts/*.lua``) get every key they touch in ``KEYS``, built here; they build no key
(channel names: from a prefix passed in ``ARGV``). They are sent with EVALSHA. A line
``-- #include NAME`` in a script is replaced by ``scripts/NAME.lua`` (shared Lua functions).
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import select
import threading
import weakref
from collections.abc import Iterable
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Optional

from redis import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, ResponseError, TryAgainError

try:  # redis[hiredis] brings it; its own packer costs a fifth of redis-py's wrapper around it
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - an old hiredis, or none
    _pack_command = None  # type: ignore[assignment]

from .connection import is_cluster
from .errors import JobQueueUnknown, LayoutError

PREFIX = "nbq:"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")  # queue names and job ids, as they go into keys
REF = re.compile(r"(?:([0-9a-f]{4}):)?([A-Za-z0-9][A-Za-z0-9_.\-]{0,99})")  # a job ref: [<tag>:]<id>
_MADE = re.compile(r"[0-9a-f]{32}")  # the shape of an id nbqueue makes
_TAG = re.compile(r"[0-9a-f]{4}")

SCHEMA = PREFIX + "schema"
SCHEMA_VERSION = "2"
QUEUES = PREFIX + "queues"
DUTY = PREFIX + "duty"
WORKERS = PREFIX + "workers"
SUSPENDED = PREFIX + "suspended"
SCHEDULE_QUEUES = PREFIX + "schedule-queues"
# only the previous layout wrote these
OLD_LAYOUT = (PREFIX + "active", PREFIX + "scheduled", PREFIX + "beat", PREFIX + "schedules")


@lru_cache(maxsize=4096)
def tag(queue: str) -> str:
    """The slot tag of a queue: 4 lowercase hex digits of the sha1 of its name."""
    return hashlib.sha1(queue.encode()).hexdigest()[:4]


def new_id(queue: str) -> str:
    """A new job id for ``queue``: its tag and 28 random hex digits (32 in all, as uuid4 hex)."""
    return tag(queue) + secrets.token_hex(14)


def id_tag(job_id: str) -> Optional[str]:
    """The tag an id carries (an id nbqueue made), else None."""
    return job_id[:4] if _MADE.fullmatch(job_id) else None


def ref(job_id: str, tag_: str) -> str:
    """How Redis points to the job ``job_id`` living under ``tag_`` (see the module docstring)."""
    return job_id if id_tag(job_id) == tag_ else f"{tag_}:{job_id}"


def split(job: str, queue: Optional[str] = None) -> tuple[str, str]:
    """``(id, tag)`` of a job given by ref, or by id and queue; ``JobQueueUnknown`` if neither tells
    where it lives (an id the caller chose, without its queue)."""
    if queue is not None:
        return (job.split(":", 1)[1] if ":" in job else job), tag(queue)
    if ":" in job:
        tag_, job_id = job.split(":", 1)
        if not _TAG.fullmatch(tag_):
            raise JobQueueUnknown(f"Job {job!r}: no job id, nor a ref (<tag>:<id>, the tag 4 hex digits).")
        return job_id, tag_
    found = id_tag(job)
    if found is None:
        raise JobQueueUnknown(f"Job {job!r}: an id chosen at enqueue lives under its queue; give the queue too "
                              f"(Job.fetch({job!r}, queue=...)).")
    return job, found


def ref_of(job: str, queue: Optional[str] = None) -> str:
    """The ref of a job given by ref, or by id and queue."""
    job_id, tag_ = split(job, queue)
    return ref(job_id, tag_)


def _q(kind: str, name: str) -> str:
    return f"{PREFIX}{{{tag(name)}}}:{kind}:{name}"


def queue(name: str) -> str:
    return _q("queue", name)


def wake(name: str) -> str:
    return _q("wake", name)


def active(name: str) -> str:
    """The queue's started jobs -> lease deadline (ms)."""
    return _q("active", name)


def scheduled(name: str) -> str:
    """The queue's scheduled jobs (delays, retries) -> due time (ms)."""
    return _q("scheduled", name)


def beat(name: str) -> str:
    """Time (ms) of the queue's last recovery sweep."""
    return _q("beat", name)


def paused(name: str) -> str:
    """Present while workers are suspended: the flag a take from this queue reads."""
    return _q("paused", name)


def failed(name: str) -> str:
    return _q("failed", name)


def schedules(name: str) -> str:
    """The schedules firing on queue ``name`` -> next due time (ms)."""
    return _q("schedules", name)


def schedule(name: str, queue_name: str) -> str:
    """A schedule's hash (its call, rule and last run), under the tag of the queue it fires on."""
    return f"{PREFIX}{{{tag(queue_name)}}}:schedule:{name}"


def _j(kind: str, job: str, queue_name: Optional[str], tag_: Optional[str]) -> str:
    if tag_ is None:
        job, tag_ = split(job, queue_name)
    return f"{PREFIX}{{{tag_}}}:{kind}:{job}"


def job(job: str, queue: Optional[str] = None, *, tag: Optional[str] = None) -> str:
    """A job's hash: from its ref, or its id and queue (or tag)."""
    return _j("job", job, queue, tag)


def log(job: str, queue: Optional[str] = None, *, tag: Optional[str] = None) -> str:
    """A job's output lines (the last ones), written while it runs."""
    return _j("log", job, queue, tag)


def dependents(job: str, queue: Optional[str] = None, *, tag: Optional[str] = None) -> str:
    """The refs of the jobs that wait for this job to end (its dependents), in the order they were enqueued."""
    return _j("dependents", job, queue, tag)


def events(job: str, queue: Optional[str] = None, *, tag: Optional[str] = None) -> str:
    """The channel of a job's state changes."""
    return _j("ev", job, queue, tag)


def events_prefix(tag_: str) -> str:
    """What a script puts before a job id to name its channel (jobs under ``tag_``)."""
    return f"{PREFIX}{{{tag_}}}:ev:"


EVENTS_PATTERN = PREFIX + "{*}:ev:*"
_CHANNEL = re.compile(PREFIX + r"\{([0-9a-f]{4})\}:ev:(.+)")


def channel_ref(channel: str) -> Optional[str]:
    """The ref of the job whose events channel this is (None: no such channel)."""
    found = _CHANNEL.fullmatch(channel)
    return ref(found.group(2), found.group(1)) if found else None


def job_of(raw_id: bytes, tag_: str) -> bytes:
    """The job key of an id read from Redis as is (it may be junk, not UTF-8), under ``tag_``."""
    return f"{PREFIX}{{{tag_}}}:job:".encode() + raw_id


ENDED_KEEP = 1000  # ended job ids kept per queue in ended:<name> (up to 99 more between trims)
STATS_BUCKET = 10  # seconds counted together in stats:<name>
STATS_SLOTS = 66  # buckets kept there (a ring: 11 minutes)


def ended(name: str) -> str:
    """The queue's recently ended job ids -> end time (capped at ``ENDED_KEEP``)."""
    return _q("ended", name)


def stats(name: str) -> str:
    """The queue's counts of ended jobs per status and ``STATS_BUCKET`` seconds (a ring)."""
    return _q("stats", name)


def unique(queue_name: str, key: str) -> str:
    """The id of the last job enqueued on the queue with ``unique_key=key``."""
    return f"{_q('unique', queue_name)}:{key}"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def group(group_id: str) -> str:
    """A group's job refs, in order (``Group.save``)."""
    return f"{PREFIX}group:{group_id}"


def control(worker_name: str) -> str:
    return f"{PREFIX}ctl:{worker_name}"


def watcher_wake(token: str) -> str:
    """The channel that wakes one process's event watcher (to subscribe anew, or to catch up)."""
    return f"{PREFIX}watcher:{token}"


def worker_wake(worker_name: str) -> str:
    """A list the worker's own threads block on beside the queues' flags, to stop them at once."""
    return f"{PREFIX}wake-worker:{worker_name}"


@cache
def script(name: str) -> Script:
    """The Lua script ``scripts/<name>.lua``."""
    text = _source(name)
    return Script(None, text)  # bytes need no client encoder


def _source(name: str) -> bytes:
    text = resources.files(__package__).joinpath("scripts").joinpath(f"{name}.lua").read_bytes()
    return re.sub(rb"^-- #include ([a-z_]+)$", lambda m: _source(m.group(1).decode()), text, flags=re.M)


SCRIPTS = ("enqueue", "dequeue", "finish", "renew", "recover", "promote", "cancel", "requeue", "output",
           "defer", "release", "sweep", "fire", "reflag", "duty", "giveback")


def run(client: Any, name: str, keys: list, args: list, tag: str = "") -> Any:
    """Run a script on ``client`` (a client, or a transaction pipeline) by EVALSHA; a server that
    lacks it (a restarted one) gets it loaded. ``ARGV[1]`` is the channel prefix of the jobs under
    ``tag`` (``events_prefix``; '' if none). Hot paths use ``send`` instead."""
    return script(name)(keys, [events_prefix(tag) if tag else "", *args], client=client)


def evalsha(name: str, keys: list, args: list, tag: str = "") -> tuple:
    """The EVALSHA command for a script (``ARGV[1]`` as ``run`` makes it), to give to ``send``."""
    return ("EVALSHA", script(name).sha, len(keys), *keys, events_prefix(tag) if tag else "", *args)


_checked: weakref.WeakKeyDictionary[Any, set] = weakref.WeakKeyDictionary()  # pool -> queues registered
_check_lock = threading.Lock()


def _pool(client: Any) -> Any:
    """What per-client facts are cached by: the connection pool (a cluster client: itself)."""
    return client if is_cluster(client) else client.connection_pool


def check_schema(client: Any) -> None:
    """Make sure the Redis holds this layout (once per process and connection pool): mark an empty
    one as ours; refuse, with ``LayoutError``, one that holds the previous layout's keys (before
    anything is read or written)."""
    pool = _pool(client)
    if pool in _checked:
        return
    if isinstance(client, RedisCluster):  # the previous layout never ran on a cluster (CROSSSLOT)
        version, old = client.get(SCHEMA), []
    else:
        with client.pipeline(transaction=False) as pipe:
            pipe.get(SCHEMA)
            for key in OLD_LAYOUT:
                pipe.exists(key)
            version, *old = pipe.execute()
        if version is None and not any(old):  # no lease, schedule or beat ever: jobs only enqueued, maybe
            old = [_old_queues(client)]
    if version is None and any(old):
        raise LayoutError(
            "This Redis holds the key layout of an older nbqueue (nbq:active, nbq:queue:<name>, ... with no "
            f"{SCHEMA}); this version keeps keys per queue slot tag and reads none of them. Finish or drop "
            "those jobs with the version that enqueued them, or remove the nbq:* keys, then start again.")
    if version is None:
        client.set(SCHEMA, SCHEMA_VERSION, nx=True)
        version = client.get(SCHEMA)
    if version is not None and version.decode(errors="replace") != SCHEMA_VERSION:
        raise LayoutError(f"This Redis holds nbqueue key layout {version.decode(errors='replace')!r} ({SCHEMA}); "
                          f"this version reads layout {SCHEMA_VERSION!r} only. Use a matching nbqueue.")
    with _check_lock:
        _checked.setdefault(pool, set())


def _old_queues(client: Any) -> bool:
    """Whether a queue of ``QUEUES`` (the first 1000) has keys of the previous layout (untagged)."""
    try:
        names = sorted(client.smembers(QUEUES))[:1000]
    except ResponseError:  # junk under that name: no queue of any layout
        return False
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            for kind in (b"queue:", b"failed:", b"ended:"):
                pipe.exists(PREFIX.encode() + kind + name)
        return any(pipe.execute())


def register(client: Any, queues: Iterable[str]) -> None:
    """Add queue names to ``QUEUES`` (once per process and connection pool), the layout checked first."""
    pool = _pool(client)
    known = _checked.get(pool)
    if known is None:
        check_schema(client)
        known = _checked[pool]
    new = [q for q in queues if q not in known]
    if new:
        client.sadd(QUEUES, *new)
        with _check_lock:
            known.update(new)


_local = threading.local()  # per thread: connection pool -> the thread's own connection


def send(client: Any, *commands: tuple) -> list:
    """Send ``commands`` in one round trip on this thread's own connection; return the replies.

    The hot paths (enqueue, take, finish, heartbeat) use this instead of the client: redis-py's
    per-command machinery costs more than the round trip itself on loopback (25k vs 65k PINGs/s
    here). The connection is one of the client's own pool, opened the pool's way (its Sentinel
    master lookup, TLS, AUTH), never to a host the client was not given. One found dead before
    anything was sent on it (the server closed it: a restart) is reopened first; a server that
    lost its scripts gets them loaded and the commands resent. Any other error drops the
    connection (the next call reconnects) and is raised: a command that may have run is never
    sent twice.

    On a cluster (a ``RedisCluster`` client) the commands must share one slot (asserted); they go
    to the master owning it (``_send_cluster``).
    """
    if is_cluster(client):
        return _send_cluster(client, commands)
    conn = _connection(client.connection_pool)
    packed = _pack(conn, commands)
    for attempt in range(2):
        posted = _local.posted.pop(conn, 0)
        try:
            if not posted:
                _ready(conn)
            conn.send_packed_command(packed)
            _local.early.setdefault(conn, []).extend(_reply_or_error(conn) for _ in range(posted))
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


def post(client: Any, *commands: tuple) -> None:
    """Write ``commands`` on this thread's own connection (standalone) without waiting for their
    replies: the next ``send`` on it reads them first, and ``collect`` returns them. A reply that
    is an error is returned as the exception; replies lost with a connection are not returned (the
    caller sends again what it got no reply for)."""
    conn = _connection(client.connection_pool)
    packed = _pack(conn, commands)
    posted = _local.posted.pop(conn, 0)
    try:
        if not posted:
            _ready(conn)
        conn.send_packed_command(packed)
    except BaseException:
        conn.disconnect()
        raise
    _local.posted[conn] = posted + len(commands)


def collect(client: Any) -> list:
    """The replies of the commands ``post`` wrote on this thread's connection that a ``send`` read
    since (in order); their count tells how many were lost with a connection."""
    return _local.early.pop(_connection(client.connection_pool), [])


def _reply_or_error(conn: Any) -> Any:
    try:
        return conn.read_response()
    except ResponseError as exc:  # the command's own error: the replies after it are still read
        return exc


def _pack(conn: Any, commands: Iterable[tuple]) -> Any:
    """The commands in the wire protocol, to send in one write (nbqueue's commands: a one-word name,
    then str, bytes and numbers)."""
    if _pack_command is not None:
        try:
            return [b"".join([_pack_command(command) for command in commands])]
        except TypeError:  # a value hiredis takes only redis-py's way (a bytearray, a memoryview)
            pass
    return conn.pack_commands(commands)


def worker_wake_on(worker_name: str, queue_name: str) -> str:
    """The worker's wake list on the slot of ``queue_name`` (its waker there blocks on it too)."""
    return f"{PREFIX}{{{tag(queue_name)}}}:wake-worker:{worker_name}"


def _first_error(replies: list) -> ResponseError:
    """The first error reply of a cluster round trip that kept being redirected."""
    return next(r for r in replies if isinstance(r, ResponseError))


def send_grouped(client: Any, *commands: tuple) -> list:
    """``send`` for commands of several slots: on a cluster, one round trip per slot (in the order
    each slot first appears), keyless commands with the first; standalone, one round trip. The
    replies in the commands' order."""
    if not is_cluster(client):
        return send(client, *commands)
    groups: dict = {}
    for i, command in enumerate(commands):
        groups.setdefault(slot_of(command), []).append(i)
    if None in groups and len(groups) > 1:
        keyless = groups.pop(None)
        groups[next(iter(groups))] += keyless
    replies: list = [None] * len(commands)
    for indexes in groups.values():
        for i, reply in zip(indexes, send(client, *(commands[i] for i in indexes))):
            replies[i] = reply
    return replies


def _connection(pool: Any) -> Any:
    """This thread's own connection of ``pool`` (a new one after a fork)."""
    if getattr(_local, "pid", None) != os.getpid():  # a forked child must not share the parent's sockets
        _local.pid, _local.connections = os.getpid(), weakref.WeakKeyDictionary()
        _local.posted, _local.early = weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary()  # conn -> (post)
    conn = _local.connections.get(pool)
    if conn is None:
        conn = _local.connections[pool] = pool.make_connection()
    return conn


def slot_of(command: tuple) -> Optional[int]:
    """The cluster slot of the keys of a command given to ``send`` (None: it has none); an
    ``AssertionError`` if they are in different slots."""
    name = (command[0] if isinstance(command[0], str) else command[0].decode()).upper()
    if name in ("EVALSHA", "EVAL"):
        names = command[3:3 + int(command[2])]
    elif name in ("BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX"):
        names = command[1:-1]
    elif name in ("PING", "ASKING", "PUBLISH"):
        names = ()
    else:
        names = command[1:2]
    slots = {key_slot(k if isinstance(k, bytes) else str(k).encode()) for k in names}
    assert len(slots) <= 1, f"one command's keys span slots {sorted(slots)}: {command[:4]}"
    return slots.pop() if slots else None


_REDIRECTED = (MovedError, AskError)  # MovedError is an AskError: the command did not run, ask elsewhere
_NOT_RUN = (TryAgainError, ClusterDownError)  # the command did not run: a failover or a migration under way
_stale: weakref.WeakSet[Any] = weakref.WeakSet()  # cluster clients whose slot map must be read anew


def _send_cluster(client: RedisCluster, commands: tuple) -> list:
    """``send`` on a cluster: one round trip to the master of the commands' slot, on this thread's
    own connection to it. A command answered MOVED or ASK did not run: the slot map is read anew
    (MOVED) and the commands that were redirected, only those, are sent once more to the node
    named (after ASKING, for ASK). A node that lost its scripts gets them loaded and the commands
    that failed so resent (commands after them in the packet ran once, before them). A lost connection,
    TRYAGAIN or CLUSTERDOWN (a failover under way) is raised as a ``ConnectionError`` (callers wait
    those out), and the slot map is read anew before the next call."""
    slots = {s for s in map(slot_of, commands) if s is not None}
    assert len(slots) <= 1, f"commands sent together must share a slot, not {sorted(slots)}"
    slot = slots.pop() if slots else None
    manager = client.nodes_manager
    if client in _stale:
        _stale.discard(client)
        manager.initialize()
    node = client.get_default_node() if slot is None else manager.get_node_from_slot(slot)
    replies: list = [None] * len(commands)
    todo, asking = list(range(len(commands))), False
    for attempt in range(3):
        for i, reply in zip(todo, _round_trip(client, node, [commands[i] for i in todo], asking)):
            replies[i] = reply
        errors = [r for r in replies if isinstance(r, ResponseError)]
        if not errors:
            return replies
        redirected = [i for i in todo if isinstance(replies[i], _REDIRECTED)]
        unloaded = [i for i in todo if isinstance(replies[i], NoScriptError)]
        other = [r for r in errors if not isinstance(r, (*_REDIRECTED, NoScriptError))]
        if other:
            if any(isinstance(r, _NOT_RUN) for r in other):
                _stale.add(client)
                raise RedisConnectionError(f"cluster not ready for slot {slot}: {other[0]}")
            raise other[0]
        if attempt == 2:
            break
        if redirected:
            error = replies[redirected[0]]
            asking = not isinstance(error, MovedError)
            if not asking:
                manager.initialize()
            node = manager.get_node(error.host, error.port)
            if node is None:  # a node the map does not know yet
                manager.initialize()
                node = manager.get_node(error.host, error.port)
            if node is None:
                _stale.add(client)
                raise RedisConnectionError(f"cluster: slot {slot} moved to unknown node {error.node_addr}")
            todo = redirected
        else:
            target = client.get_redis_connection(node)
            for name in SCRIPTS:
                target.script_load(script(name).script)
            todo, asking = unloaded, False
    raise _first_error(replies)


def _round_trip(client: RedisCluster, node: Any, commands: list, asking: bool) -> list:
    """Send ``commands`` to ``node`` in one packet (each after ASKING if ``asking``); the replies,
    errors as values. A lost connection is raised, and the slot map marked stale."""
    conn = _connection(client.get_redis_connection(node).connection_pool)
    sent = [c for command in commands for c in ((("ASKING",), command) if asking else (command,))]
    try:
        _ready(conn)
        conn.send_packed_command(_pack(conn, sent))
        replies = []
        for _ in sent:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:  # read whole: the connection stays in step
                replies.append(exc)
    except BaseException as exc:
        conn.disconnect()
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
            _stale.add(client)
        raise
    return replies[1::2] if asking else replies


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


def node_for(client: Any, key: str) -> Any:
    """The client to run a transaction (MULTI/EXEC pipeline, scripts too) on ``key``'s slot: ``client``
    itself, or on a cluster the plain client of the master holding that slot (redis-py's cluster
    pipelines refuse scripts). Every key of the transaction must share the slot."""
    if not isinstance(client, RedisCluster):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))
