"""Named queues: put calls on them, look at what waits there."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import redis

from . import keys, signing
from .connection import get_connection
from .errors import EnqueueError, InvalidQueueName, JobExists
from .job import (
    DEFAULT_FAILURE_TTL, DEFAULT_LOST_RETRIES, DEFAULT_RESULT_TTL, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT, QUEUED, Job,
)
from .serialization import dumps_call, function_ref

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}\Z")
_BATCH = 1000  # jobs per script call in enqueue_many


def check_queue_name(name: Any) -> str:
    """Return ``name`` if nbqueue accepts it as a queue name, else raise ``InvalidQueueName``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidQueueName(
            f"Invalid queue name {name!r}: use 1 to 100 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit, e.g. Queue('low') or Queue('reports-2024')."
        )
    return name


class Call(NamedTuple):
    """One call for ``enqueue_many``; plain ``(func, args)`` or ``(func, args, kwargs)`` tuples work too."""

    func: Callable
    args: tuple = ()
    kwargs: Optional[dict] = None
    job_id: Optional[str] = None


@dataclass(frozen=True)
class Options:
    """Job options, kept apart from the function's own keywords.

    ``timeout``: seconds the job may run (None: no limit). ``result_ttl`` / ``failure_ttl``:
    seconds a finished / failed job is kept (None: forever). ``retries``: re-runs after the job
    raises, ``retry_delay`` seconds after the first failure, doubling each time (with jitter).
    ``lost_retries``: re-runs after the worker running it was lost (killed, hung, cut off).
    """

    timeout: Optional[float] = DEFAULT_TIMEOUT
    result_ttl: Optional[float] = DEFAULT_RESULT_TTL
    failure_ttl: Optional[float] = DEFAULT_FAILURE_TTL
    retries: int = 0
    retry_delay: float = DEFAULT_RETRY_DELAY
    lost_retries: int = DEFAULT_LOST_RETRIES

    @classmethod
    def from_keywords(cls, options: dict) -> "Options":
        if not options:
            return _DEFAULTS
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise EnqueueError(
                f"Unknown job option(s) {', '.join(sorted(unknown))}: the options are "
                f"{', '.join(f.name for f in fields(cls))}. To pass keywords to the function, use "
                f"enqueue(f, ...) or the kwargs= argument."
            )
        return cls(**options)

    def stored(self) -> list:
        """Field/value pairs for the job hash: only options that differ from the defaults."""
        if self is _DEFAULTS:
            return []
        pairs: list = []
        for field in fields(self):
            value, default = getattr(self, field.name), field.default
            if field.name in ("retries", "lost_retries"):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise EnqueueError(f"{field.name}={value!r} is not valid: give a whole number, 0 or more.")
            elif value is None and field.name != "retry_delay":
                pairs += [field.name, "none"]  # no time limit / keep forever
                continue
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise EnqueueError(f"{field.name}={value!r} is not valid: give a number of seconds > 0"
                                   + ("." if field.name == "retry_delay" else ", or None for no limit."))
            if value != default:
                pairs += [field.name, repr(value)]
        return pairs


_DEFAULTS = Options()


def _delay_ms(delay: Union[float, timedelta, None]) -> int:
    if delay is None:
        return 0
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise EnqueueError(f"delay={delay!r} is not valid: give seconds or a timedelta.")
    return max(0, int(seconds * 1000))


class Queue:
    """A named queue in Redis; made on the fly by the first enqueue.

    >>> q = Queue("low")
    >>> job = q.enqueue(tasks.send_mail, msg)      # every keyword goes to send_mail
    >>> job.result(timeout=10)
    """

    def __init__(self, name: str = "default", connection: Union[redis.Redis, str, None] = None, *,
                 secret: signing.Secret = None):
        self.name = check_queue_name(name)
        self._connection = connection
        self._signer: Any = signing.UNSET if secret is None else signing.from_value(secret)

    @property
    def signer(self) -> Optional[signing.Signer]:
        """What signs this queue's jobs and checks their results (``secret=``, else the default); None: unsigned."""
        if self._signer is signing.UNSET:
            self._signer = signing.default(self.connection)  # found on first use: the connection is lazy
        return self._signer

    @property
    def connection(self) -> redis.Redis:
        if not isinstance(self._connection, redis.Redis):
            self._connection = get_connection(self._connection)
        return self._connection

    @property
    def key(self) -> str:
        return keys.queue(self.name)

    def enqueue(self, func: Callable, *args: Any, **kwargs: Any) -> Job:
        """Put ``func(*args, **kwargs)`` on the queue. Every keyword goes to ``func``; options: ``enqueue_call``."""
        return self.enqueue_call(func, args, kwargs)

    def enqueue_call(
        self,
        func: Callable,
        args: Iterable = (),
        kwargs: Optional[dict] = None,
        *,
        job_id: Optional[str] = None,
        at_front: bool = False,
        delay: Union[float, timedelta, None] = None,
        **options: Any,
    ) -> Job:
        """Put a call on the queue with job options (see ``Options``).

        ``job_id``: your own id (must be new). ``at_front``: run it before the jobs already
        waiting. ``delay``: seconds (or a timedelta) to wait before it is queued.
        """
        return self.enqueue_many([Call(func, tuple(args), kwargs, job_id)], at_front=at_front, delay=delay,
                                 **options)[0]

    def enqueue_in(self, delay: Union[float, timedelta], func: Callable, *args: Any, **kwargs: Any) -> Job:
        """Queue ``func(*args, **kwargs)`` after ``delay`` seconds (or a timedelta)."""
        return self.enqueue_call(func, args, kwargs, delay=delay)

    def enqueue_at(self, when: datetime, func: Callable, *args: Any, **kwargs: Any) -> Job:
        """Queue ``func(*args, **kwargs)`` at ``when`` (an aware datetime; naive means local time)."""
        now = datetime.now(when.tzinfo) if when.tzinfo else datetime.now()
        return self.enqueue_call(func, args, kwargs, delay=when - now)

    def enqueue_many(
        self,
        calls: Iterable[Union[Call, tuple]],
        *,
        at_front: bool = False,
        delay: Union[float, timedelta, None] = None,
        **options: Any,
    ) -> list[Job]:
        """Put many calls on the queue in as few round trips as possible; all or none.

        Each call is a ``Call`` or a tuple ``(func, args)`` / ``(func, args, kwargs)``. Every call is
        checked and pickled before anything is written, so a bad one enqueues nothing.
        """
        stored = Options.from_keywords(options).stored()
        signer = self.signer
        argv: list = []  # per job: id, index of its function, data, signature
        ids: list[str] = []
        funcs: list[bytes] = []
        table: dict = {}  # (path, code hash) -> index: each function travels once per script call
        chosen: list[str] = []  # ids the caller picked; random ones can't clash
        last_func, index, mac = None, 0, None
        for call in calls:
            call = call if isinstance(call, Call) else Call(*call)
            if call.func is not last_func:  # many calls of one function are checked once
                ref, last_func = function_ref(call.func), call.func
                index = table.setdefault((ref.path, ref.code_hash), len(table) + 1)
                mac = signer.job_mac(ref.path, ref.code_hash, stored) if signer else None
            job_id = self._job_id(call.job_id)
            data = dumps_call(ref, tuple(call.args), dict(call.kwargs or {}))
            argv += [job_id, index, data, signing.Signer.sign_job(mac, job_id, data) if mac is not None else b""]
            ids.append(job_id)
            funcs.append(ref.path.encode())
            if call.job_id is not None:
                chosen.append(job_id)
        head = [self.name, "1" if at_front else "0", _delay_ms(delay), "1" if chosen else "0",
                len(stored) // 2, *stored, len(table), *[x for pair in table for x in pair]]
        self._write(head, argv, chosen)
        conn, queue = self.connection, self.name.encode()
        status = b"scheduled" if head[2] else b"queued"
        return [Job(i, conn, {"status": status, "queue": queue, "func": f}, secret=signer) for i, f in zip(ids, funcs)]

    @staticmethod
    def _job_id(job_id: Optional[str]) -> str:
        if job_id is None:
            return secrets.token_hex(16)  # 128 random bits, like uuid4, in a sixth of the time
        if not isinstance(job_id, str) or not _NAME.match(job_id):
            raise EnqueueError(f"job_id={job_id!r} is not valid: use 1 to 100 letters, digits, '_', '-' or '.'.")
        return job_id

    def _write(self, head: list, argv: list, chosen: list) -> None:
        if not argv:
            return
        script_keys = [keys.QUEUES, self.key, keys.wake(self.name), keys.SCHEDULED]
        chunks = [argv[i:i + 4 * _BATCH] for i in range(0, len(argv), 4 * _BATCH)]
        if head[1] == "1":
            chunks.reverse()  # the first chunk must end up in front
        if len(chunks) > 1 and chosen:  # the script checks ids per chunk; check all before writing any
            self._check_new_ids(chosen)
        try:
            if len(chunks) == 1:
                keys.send(self.connection, keys.evalsha("enqueue", script_keys, head + chunks[0]))
            else:
                with self.connection.pipeline(transaction=True) as pipe:
                    for chunk in chunks:
                        keys.run(pipe, "enqueue", script_keys, head + chunk)
                    pipe.execute()
        except redis.ResponseError as exc:
            if "NBQ_EXISTS" in str(exc):
                job_id = str(exc).split("NBQ_EXISTS", 1)[1].strip()
                raise JobExists(
                    f"A job with id {job_id!r} already exists; nothing was enqueued. Pick a new job_id, "
                    f"or fetch the existing one with Job.fetch({job_id!r})."
                ) from None
            raise

    def _check_new_ids(self, ids: list) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(keys.job(job_id))
            taken = [i for i, exists in zip(ids, pipe.execute()) if exists]
        if taken:
            raise JobExists(f"A job with id {taken[0]!r} already exists; nothing was enqueued. Pick a new job_id.")

    def __len__(self) -> int:
        return self.connection.llen(self.key)

    @property
    def count(self) -> int:
        return len(self)

    @property
    def job_ids(self) -> list[str]:
        """Ids of the queued jobs, next to run first."""
        return [i.decode() for i in self.connection.lrange(self.key, 0, -1)]

    @property
    def jobs(self) -> list[Job]:
        return [Job(i, self.connection, {"status": QUEUED.encode()}, secret=self.signer) for i in self.job_ids]

    @property
    def failed_job_ids(self) -> list[str]:
        """Ids of this queue's failed jobs, oldest failure first (expired ones are dropped)."""
        ids = [i.decode() for i in self.connection.zrange(keys.failed(self.name), 0, -1)]
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(keys.job(job_id))
            alive = pipe.execute()
        gone = [i for i, exists in zip(ids, alive) if not exists]
        if gone:
            self.connection.zrem(keys.failed(self.name), *gone)
        return [i for i, exists in zip(ids, alive) if exists]

    @property
    def failed_jobs(self) -> list[Job]:
        """This queue's failed jobs (with ``traceback``, ``attempt``, ``workers``), oldest first."""
        return [Job.fetch(i, self.connection, secret=self.signer) for i in self.failed_job_ids]

    def is_empty(self) -> bool:
        return len(self) == 0

    def empty(self) -> int:
        """Cancel every job waiting on this queue (as RQ's ``empty``); returns how many."""
        ids = self.job_ids
        if not ids:
            return 0
        replies = keys.send(self.connection, *[
            keys.evalsha("cancel", [keys.SCHEDULED], [job_id, DEFAULT_RESULT_TTL]) for job_id in ids])
        return sum(reply == 1 for reply in replies)

    @classmethod
    def all(cls, connection: Union[redis.Redis, str, None] = None) -> list["Queue"]:
        """Every queue that has been used, by name."""
        conn = get_connection(connection)
        return [cls(n.decode(), conn) for n in sorted(conn.smembers(keys.QUEUES))]

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    def map(self, func: Callable, iterable: Iterable, **job_options: Any) -> "Group":
        """One job ``func(item)`` per item, enqueued in one step (all or none); returns a ``Group``.

        Each item is the one argument, as with the builtin ``map``. For several arguments map a
        function taking a tuple, or use ``enqueue_many([(func, (a, b)), ...])`` and ``Group(jobs)``.
        ``job_options`` are those of ``enqueue_many`` (``timeout``, ``result_ttl``, ...).
        """
        from .group import Group

        return Group(self.enqueue_many([Call(func, (item,)) for item in iterable], **job_options))
