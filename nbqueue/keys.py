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
- ``{T}:taken:<worker>:<n>``  string ``"<token> <q> <id> <attempt> ..."``: the last take of the worker's
                            slot ``n`` from queues of this slot that took jobs (the take's token, the index
                            of the queue they came from, each job and its attempt), kept for one lease: a
                            take sent again after a lost connection cut off its reply hands those jobs
                            over again (``dequeue.lua``), instead of leaving them leased to no one who knows
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
import re
import secrets
import threading
import weakref
from collections.abc import Iterable
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Optional

from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import ResponseError

from .connection import is_cluster
from .errors import InvalidQueueName, JobQueueUnknown, LayoutError

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


def check_queue_name(name: Any) -> str:
    """Return ``name`` if nbqueue accepts it as a queue name, else raise ``InvalidQueueName``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidQueueName(
            f"Invalid queue name {name!r}: use 1 to 100 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit, e.g. Queue('low') or Queue('reports-2024')."
        )
    return name


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


def taken(worker_name: str, queue_name: str, slot: int) -> str:
    """The last take of the worker's slot ``slot`` from ``queue_name``'s slot that took jobs (``dequeue.lua``)."""
    return f"{PREFIX}{{{tag(queue_name)}}}:taken:{worker_name}:{slot}"


def worker_wake_on(worker_name: str, queue_name: str) -> str:
    """The worker's wake list on the slot of ``queue_name`` (its waker there blocks on it too)."""
    return f"{PREFIX}{{{tag(queue_name)}}}:wake-worker:{worker_name}"
