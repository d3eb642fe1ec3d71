"""Named queues: put calls on them, look at what waits there."""
from __future__ import annotations

import reprlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import FunctionType
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Union

import redis

from . import flow, keys, signing, testing, wire
from .connection import describe, get_connection, is_cluster
from .errors import CrossSlotDependency, EnqueueError, JobExists, RedisFull
from .job import Job, cancel, cancel_command, dumps_meta
from .options import (  # noqa: F401 - MAX_*, check_seconds and check_count: also nbqueue.queue's, as before
    MAX_DELAY,
    MAX_RETRIES,
    MAX_RETRY_DELAY,
    MAX_TIMEOUT,
    MAX_TTL,
    Options,
    _delay_ms,
    _until,
    check_count,
    check_seconds,
)
from .schema import DEFAULT_FAILURE_TTL, DEFAULT_RESULT_TTL, DEFERRED, QUEUED, SCHEDULED
from .seconds import as_seconds
from .serialization import FunctionRef, describe as describe_func, dumps_call, function_ref, resolve

if TYPE_CHECKING:  # pragma: no cover
    from .group import Group
    from .schedule import Schedule

_BATCH = 1000  # jobs per script call in enqueue_many


class Call(NamedTuple):
    """One call for ``enqueue_many``; plain ``(func, args)`` or ``(func, args, kwargs)`` tuples work too."""

    func: Callable
    args: Iterable[Any] = ()  # a tuple or list
    kwargs: Optional[dict] = None
    job_id: Optional[str] = None


def _as_call(call: Any) -> Call:
    """A ``(func, args[, kwargs])`` tuple as a ``Call``; ``EnqueueError`` for any other shape."""
    try:
        return Call(*call)
    except TypeError:
        raise EnqueueError(f"{reprlib.repr(call)} is no call: give Call(func, args, kwargs) or a tuple (func, args) "
                           f"or (func, args, kwargs), e.g. enqueue_many([(tasks.add, (1, 2))]). "
                           f"Nothing was enqueued.") from None


class Queue:
    """A named queue in Redis; made on the fly by the first enqueue.

    >>> q = Queue("low")
    >>> job = q.enqueue(tasks.send_mail, msg)      # every keyword goes to send_mail
    >>> job.result(timeout=10)
    """

    def __init__(self, name: str = "default", connection: Union[redis.Redis, str, None] = None, *,
                 secret: signing.Secret = None, is_async: Optional[bool] = None):
        """``is_async=False``: run each job at enqueue, here, with no worker (``nbqueue.testing``);
        default: True, or False inside ``with nbqueue.testing.sync():``."""
        self.name = keys.check_queue_name(name)
        self._connection = connection
        self._signer: Any = signing.UNSET if secret is None else signing.from_value(secret)
        if is_async is not None and not isinstance(is_async, bool):
            raise EnqueueError(f"is_async={is_async!r}: give True or False.")
        self._is_async = is_async
        self._plans: dict[FunctionType, _Plan] = {}  # function -> its _Plan (enqueue's fast path)

    @property
    def is_async(self) -> bool:
        """False: jobs run at enqueue in this process (testing mode)."""
        return (not testing.sync_by_default()) if self._is_async is None else self._is_async

    @property
    def signer(self) -> Optional[signing.Signer]:
        """What signs this queue's jobs and checks their results (``secret=``, else the default); None: unsigned."""
        if self._signer is signing.UNSET:
            self._signer = signing.default(self.connection)  # found on first use: the connection is lazy
        return self._signer

    @property
    def connection(self) -> redis.Redis:
        if not getattr(self, "_resolved", False):
            self._connection, self._resolved = get_connection(self._connection), True  # may be a RedisCluster
        return self._connection

    @property
    def key(self) -> str:
        return keys.queue(self.name)

    @property
    def _tag(self) -> str:
        return keys.tag(self.name)

    def enqueue(self, func: Callable, *args: Any, **kwargs: Any) -> Job:
        """Put ``func(*args, **kwargs)`` on the queue. Every keyword goes to ``func``; options: ``enqueue_call``."""
        return self._enqueue_one(func, args, kwargs) or self.enqueue_call(func, args, kwargs)

    def _enqueue_one(self, func: Callable, args: tuple, kwargs: dict) -> Optional[Job]:
        """``enqueue``'s fast path: one job with default options under an id made here, the one
        ``enqueue_many`` would write, in the same one script call. What every job of ``func`` shares
        (its checked path and code hash, its signing head, the script call up to the job's own values)
        is made once per queue and function (``_plan``); the guard still checks each time that ``func``
        is what its path imports. None: the call needs ``enqueue_many`` (a Job or Group among its
        arguments, a bound method, a function that changed, testing mode)."""
        if not isinstance(func, FunctionType) or not self.is_async:
            return None
        plan = self._plans.get(func) or self._plan(func)
        try:
            if resolve(plan.path) is not func:  # redefined since (a module reloaded): the guard says why
                return None
        except ImportError:
            return None
        args, kwargs, found = flow.extract(args, kwargs)
        if found:
            return None
        job_id = keys.new_id(self.name)
        data = dumps_call(plan.ref, args, kwargs)
        sig = signing.Signer.sign_job(plan.mac, job_id, data) if plan.mac is not None else b""
        conn = self.connection
        keys.register(conn, [self.name])  # once per process and connection (a lookup after that)
        try:
            wire.send(conn, (*plan.head, plan.job_key + job_id, *plan.middle, job_id, 1, data, sig))
        except redis.ResponseError as exc:
            _raise_if_full(exc, conn, 1)
            raise
        return Job._enqueued(job_id, self._tag, conn, self.name, plan.path, self.signer)

    def _plan(self, func: FunctionType) -> _Plan:
        """Check ``func`` as ``enqueue_many`` does and make its ``_Plan``."""
        ref = function_ref(func)
        signer = self.signer
        mac = signer.job_mac(ref.path, ref.code_hash, [], [None, None]) if signer else None
        head = keys.evalsha("enqueue", [self.key, keys.wake(self.name), keys.scheduled(self.name), "job key"],
                            [self.name, "0", 0, "0", "", 0, 1, ref.path, ref.code_hash], tag=self._tag)
        if len(self._plans) >= 256:  # functions of reloaded modules are let go
            self._plans.clear()
        plan = self._plans[func] = _Plan(ref.path, ref, mac, head[:6], keys.job("", tag=self._tag), head[7:])
        return plan

    def enqueue_call(
        self,
        func: Callable,
        args: Iterable = (),
        kwargs: Optional[dict] = None,
        *,
        job_id: Optional[str] = None,
        at_front: bool = False,
        delay: Union[float, timedelta, None] = None,
        meta: Optional[dict] = None,
        unique_key: Optional[str] = None,
        on_success: Optional[Callable] = None,
        on_failure: Optional[Callable] = None,
        depends_on: Any = None,
        allow_failure: bool = False,
        **options: Any,
    ) -> Job:
        """Put a call on the queue with job options (see ``Options``).

        ``job_id``: your own id (must be new). ``at_front``: run it before the jobs already
        waiting. ``delay``: seconds (or a timedelta), 0 to 10 years, to wait before it is queued.
        ``meta``: a dict of JSON values kept with the job (``job.meta``). ``unique_key``: while a
        job enqueued with this key is queued, scheduled or running, this returns that job and
        enqueues nothing (checked atomically: many enqueuers at once make one job).
        ``on_success`` / ``on_failure``: importable functions enqueued on this queue as
        ``f(job)`` when the job finished / failed for good (no retry left), by the worker that ran it.
        ``depends_on``: a Job, Group or job id (or a list of them) to wait for without taking its
        result; a Job or Group among the arguments is waited for and its result passed in (``flow``).
        ``allow_failure``: run even if a dependency failed or was canceled (its place in the
        arguments then holds its ``JobFailed`` / ``JobCanceled`` error); by default the job fails
        with "dependency <id> failed".
        """
        return self.enqueue_many([Call(func, args, kwargs, job_id)], at_front=at_front, delay=delay, meta=meta,
                                 unique_key=unique_key, on_success=on_success, on_failure=on_failure,
                                 depends_on=depends_on, allow_failure=allow_failure, **options)[0]

    def enqueue_in(self, delay: Union[float, timedelta], func: Callable, *args: Any, **kwargs: Any) -> Job:
        """Queue ``func(*args, **kwargs)`` after ``delay`` seconds (or a timedelta), 0 to 10 years."""
        return self.enqueue_call(func, args, kwargs, delay=delay)

    def enqueue_at(self, when: datetime, func: Callable, *args: Any, **kwargs: Any) -> Job:
        """Queue ``func(*args, **kwargs)`` at ``when`` (an aware datetime; naive means local time),
        at most 10 years ahead; a time already past queues it now."""
        return self.enqueue_call(func, args, kwargs, delay=_until(when))

    def enqueue_many(
        self,
        calls: Iterable[Union[Call, tuple]],
        *,
        at_front: bool = False,
        delay: Union[float, timedelta, None] = None,
        meta: Optional[dict] = None,
        unique_key: Optional[str] = None,
        on_success: Optional[Callable] = None,
        on_failure: Optional[Callable] = None,
        depends_on: Any = None,
        allow_failure: bool = False,
        **options: Any,
    ) -> list[Job]:
        """Put many calls on the queue in as few round trips as possible; all or none.

        Each call is a ``Call`` or a tuple ``(func, args)`` / ``(func, args, kwargs)``. Every call is
        checked and pickled before anything is written, so a bad one enqueues nothing.
        ``depends_on`` and ``allow_failure`` (see ``enqueue_call``) apply to every call.
        """
        stored = Options.from_keywords(options).stored()
        for name, value in (("at_front", at_front), ("allow_failure", allow_failure)):
            if not isinstance(value, bool):
                raise EnqueueError(f"{name}={reprlib.repr(value)} is not valid: give True or False. "
                                   f"Nothing was enqueued.")
        tag = self._tag
        ordering = flow.ids_of(depends_on, tag)
        graph: dict = {}  # job ref -> the refs it waits for (only jobs that wait)
        signer = self.signer
        callbacks = [_callback_path(name, f) for name, f in (("on_success", on_success), ("on_failure", on_failure))]
        argv: list = []  # per job: id, index of its function, data, signature
        ids: list[str] = []
        funcs: list[bytes] = []
        table: dict = {}  # (path, code hash) -> index: each function travels once per script call
        chosen: list[str] = []  # ids the caller picked; random ones can't clash
        last_func, index, mac = None, 0, None
        for call in calls:
            call = call if isinstance(call, Call) else _as_call(call)
            if call.func is not last_func:  # many calls of one function are checked once
                ref, last_func = function_ref(call.func), call.func
                index = table.setdefault((ref.path, ref.code_hash), len(table) + 1)
                mac = signer.job_mac(ref.path, ref.code_hash, stored, callbacks) if signer else None
            job_id = self._job_id(call.job_id)
            try:
                args, kwargs = tuple(call.args), dict(call.kwargs or {})
            except (TypeError, ValueError):
                raise EnqueueError(f"Can't enqueue {describe_func(call.func)}: its arguments must be a tuple "
                                   f"(or list) and its keyword arguments a dict, not {reprlib.repr(call.args)} and "
                                   f"{reprlib.repr(call.kwargs)}. Nothing was enqueued.") from None
            args, kwargs, found = flow.extract(args, kwargs)
            if found or ordering:
                graph[keys.ref(job_id, tag)] = list(dict.fromkeys(found + ordering))
            data = dumps_call(ref, args, kwargs)
            argv += [job_id, index, data, signing.Signer.sign_job(mac, job_id, data) if mac is not None else b""]
            ids.append(job_id)
            funcs.append(ref.path.encode())
            if call.job_id is not None:
                chosen.append(job_id)
        fields = stored if meta is None else [*stored, "meta", dumps_meta(meta)]  # meta is not signed
        for name, path in zip(signing.CALLBACK_FIELDS, callbacks):
            if path is not None:
                fields += [name, path]
        if unique_key is not None:
            if len(ids) != 1:
                raise EnqueueError("unique_key is for one job (enqueue_call), not for many. Nothing was enqueued.")
            if not isinstance(unique_key, str) or not 0 < len(unique_key) <= 200:
                raise EnqueueError(f"unique_key={reprlib.repr(unique_key)} is not valid: give a text of 1 to 200 "
                                   f"characters. Nothing was enqueued.")
            kept = Options.from_keywords(options)
            ttls = [t for t in (kept.result_ttl, kept.failure_ttl) if t is not None]
            fields += ["unique_key", unique_key, "unique_ttl",
                       MAX_TTL if len(ttls) < 2 else int(max(ttls)) + UNIQUE_QUEUEING]
        funcs_table = [len(table), *[x for pair in table for x in pair]]
        if graph:
            if delay is not None:
                raise EnqueueError("delay= and dependencies can't be combined: a job that depends on others is queued "
                                   "when they end. Nothing was enqueued.")
            if unique_key is not None:
                raise EnqueueError("unique_key= and dependencies can't be combined yet. Nothing was enqueued.")
            if chosen:
                flow.check_cycles(self.connection, graph)
            self._write_deferred(["1" if at_front else "0", "1" if chosen else "0", "1" if allow_failure else "0",
                                  DEFAULT_FAILURE_TTL, len(fields) // 2, *fields, *funcs_table], argv, graph)
        else:
            head = [self.name, "1" if at_front else "0", _delay_ms(delay), "1" if chosen else "0", "",
                    len(fields) // 2, *fields, *funcs_table]
            holder = self._write(head, argv, chosen, unique_key)
            if holder is not None:  # a job with the same unique_key is queued or running: that one
                return [Job(holder, self.connection, secret=signer, queue=self.name)]
        conn, queue = self.connection, self.name.encode()
        # as far as we know: deferred ones may be queued
        status = (SCHEDULED if delay and _delay_ms(delay) else QUEUED).encode()
        refs = [keys.ref(i, tag) for i in ids]
        jobs = [Job(r, conn, {"status": DEFERRED.encode() if r in graph else status, "queue": queue, "func": f,
                              "deps": " ".join(graph[r]).encode() if r in graph else None}, secret=signer)
                for r, f in zip(refs, funcs)]
        if not self.is_async:
            testing.run_now(self, jobs)
        return jobs

    def schedule(self, func: Callable, *args: Any, every: Union[float, timedelta, None] = None,
                 cron: Optional[str] = None, name: Optional[str] = None, timezone: Any = None,
                 **kwargs: Any) -> Schedule:
        """Queue ``func(*args, **kwargs)`` here ``every`` seconds (or a timedelta, at least 1 s), or at the
        times of a 5-field ``cron`` string (in ``timezone``, an IANA name; default UTC), from now on,
        until removed, by whichever worker is up (no scheduler process). ``name`` (default: the
        function's path) names it; scheduling a name again replaces that schedule. Options:
        ``schedule_call``."""
        return self.schedule_call(func, args, kwargs, every=every, cron=cron, name=name, timezone=timezone)

    def schedule_call(self, func: Callable, args: Iterable = (), kwargs: Optional[dict] = None, *,
                      every: Union[float, timedelta, None] = None, cron: Optional[str] = None,
                      name: Optional[str] = None, timezone: Any = None, catch_up: bool = False,
                      missed: Optional[str] = None, **options: Any) -> Schedule:
        """``schedule`` with job options as ``enqueue_call`` takes them (``timeout``, ``retries``,
        ``result_ttl``, ...). Ticks missed while no worker ran: ``missed="once"`` (default) queues one
        job when a worker is back, ``"all"`` (or ``catch_up=True``) one per missed tick (the last 100),
        ``"skip"`` none. The function is checked as enqueue checks it; a bad rule (``every=0``, a cron
        that never matches, such as Feb 30) raises ``ScheduleError`` and stores nothing."""
        from .schedule import create

        return create(self, func, args, kwargs, every=every, cron=cron, name=name, timezone=timezone,
                      missed=missed, catch_up=catch_up, options=options)

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name`` (whatever queue it fires on); True if there was one."""
        from .schedule import remove

        return remove(self.connection, name)

    def _job_id(self, job_id: Optional[str]) -> str:
        if job_id is None:
            return keys.new_id(self.name)  # the queue's tag and 112 random bits
        if not isinstance(job_id, str) or not keys.NAME.fullmatch(job_id):
            raise EnqueueError(f"job_id={job_id!r} is not valid: use 1 to 100 letters, digits, '_', '-' or '.'.")
        return job_id

    def _exists(self, job_id: str) -> JobExists:
        return JobExists(f"A job with id {job_id!r} already exists on queue {self.name!r}; nothing was enqueued. "
                         f"Pick a new job_id, or fetch the existing one with "
                         f"Job.fetch({job_id!r}, queue={self.name!r}).")

    def _write(self, head: list, argv: list, chosen: list, unique_key: Optional[str] = None) -> Optional[str]:
        """Run the enqueue script; for a unique job, the id of the job that holds its key, if one does."""
        if not argv:
            return None
        keys.register(self.connection, [self.name])
        tag = self._tag
        queue_keys = [self.key, keys.wake(self.name), keys.scheduled(self.name)]
        if unique_key is not None:
            return self._write_unique(head, argv, queue_keys, keys.unique(self.name, unique_key))
        chunks = [argv[i:i + 4 * _BATCH] for i in range(0, len(argv), 4 * _BATCH)]
        if head[1] == "1":
            chunks.reverse()  # the first chunk must end up in front
        if len(chunks) > 1 and chosen:  # the script checks ids per chunk; check all before writing any
            self._check_new_ids(chosen)
        job_key = keys.job("", tag=tag)  # + the id
        try:
            if len(chunks) == 1:
                wire.send(self.connection, keys.evalsha(
                    "enqueue", [*queue_keys, *[job_key + i for i in argv[::4]]], head + chunks[0], tag=tag))
            else:
                with wire.node_for(self.connection, queue_keys[0]).pipeline(transaction=True) as pipe:
                    for chunk in chunks:
                        keys.run(pipe, "enqueue", [*queue_keys, *[job_key + i for i in chunk[::4]]], head + chunk,
                                 tag=tag)
                    replies = pipe.execute(raise_on_error=False)
                errors = [r for r in replies if isinstance(r, Exception)]
                if errors:  # each chunk's script runs or not as a whole; the ones before a refusal ran
                    done = sum(len(c) // 4 for c, r in zip(chunks, replies) if not isinstance(r, Exception))
                    raise _full(self.connection, done, len(argv) // 4) if _out_of_memory(errors[0]) else errors[0]
        except redis.ResponseError as exc:
            _raise_if_full(exc, self.connection, len(argv) // 4)
            if "NBQ_EXISTS" in str(exc):
                raise self._exists(str(exc).split("NBQ_EXISTS", 1)[1].strip()) from None
            raise
        return None

    def _write_unique(self, head: list, argv: list, queue_keys: list, unique: str) -> Optional[str]:
        """Enqueue one job under a unique key (optimistic: the script checks the holder we saw)."""
        tag = self._tag
        for _ in range(UNIQUE_ROUNDS):
            seen = self.connection.get(unique)
            holder_key = keys.job_of(seen, tag) if seen else keys.job(argv[0], tag=tag)
            values = [*head[:4], seen or b"", *head[5:], *argv]
            try:
                wire.send(self.connection, keys.evalsha(
                    "enqueue", [*queue_keys, keys.job(argv[0], tag=tag), unique, holder_key], values, tag=tag))
                return None
            except redis.ResponseError as exc:
                _raise_if_full(exc, self.connection, 1)
                text = str(exc)
                if "NBQ_UNIQUE" in text:
                    return text.split("NBQ_UNIQUE", 1)[1].strip()
                if "NBQ_EXISTS" in text:
                    raise self._exists(argv[0]) from None
                if "NBQ_RETRY" not in text:
                    raise
        raise EnqueueError(f"unique_key: its holder changed {UNIQUE_ROUNDS} times while enqueuing; nothing was "
                           f"enqueued, try again.")

    def _write_deferred(self, head: list, argv: list, graph: dict) -> None:
        """Write jobs of which some wait for others (``scripts/defer.lua``), ``_BATCH`` jobs per call.
        ``graph``: ref of a job that waits -> the refs it waits for."""
        keys.register(self.connection, [self.name])
        tag = self._tag
        if is_cluster(self.connection):
            _check_slots(self.name, graph)
        base = [self.key, keys.wake(self.name), keys.failed(self.name)]
        calls = []
        for start in range(0, len(argv), 4 * _BATCH):
            script_keys, values = list(base), []
            for i in range(start, min(len(argv), start + 4 * _BATCH), 4):
                job_id = argv[i]
                ref = keys.ref(job_id, tag)
                deps = graph.get(ref, [])
                script_keys.append(keys.job(job_id, tag=tag))
                for dep in deps:
                    script_keys += [keys.job(dep), keys.dependents(dep)]
                values += [job_id, ref, *argv[i + 1:i + 4], len(deps), *deps]
            calls.append((script_keys, [self.name, *head, *values]))
        if len(calls) > 1:  # each call checks its own jobs; check all before writing any
            batch = set(graph) | {keys.ref(argv[i], tag) for i in range(0, len(argv), 4)}
            outside = sorted({d for deps in graph.values() for d in deps} - batch)
            with self.connection.pipeline(transaction=False) as pipe:
                for dep in outside:
                    pipe.exists(keys.job(dep))
                missing = [d for d, there in zip(outside, pipe.execute()) if not there]
            if missing:
                raise _no_dependency("a job", missing[0])
            if head[1] == "1":
                self._check_new_ids([argv[i] for i in range(0, len(argv), 4)])
        try:
            with wire.node_for(self.connection, calls[0][0][0]).pipeline(transaction=True) as pipe:
                for script_keys, values in calls:
                    keys.run(pipe, "defer", script_keys, values, tag=tag)
                pipe.execute()
        except redis.ResponseError as exc:
            _raise_if_full(exc, self.connection, len(argv) // 4)
            text = str(exc)
            if "NBQ_EXISTS" in text:
                raise self._exists(text.split("NBQ_EXISTS", 1)[1].strip()) from None
            if "NBQ_NODEP" in text:
                job_id, dep = text.split("NBQ_NODEP", 1)[1].split()[:2]
                raise _no_dependency(f"job {job_id}", dep) from None
            if "NBQ_CYCLE" in text:
                job_id = text.split("NBQ_CYCLE", 1)[1].strip()
                raise EnqueueError(f"Job {job_id!r} would wait for itself (it is among its own dependencies). "
                                   f"Nothing was enqueued.") from None
            raise

    def _check_new_ids(self, ids: list) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(keys.job(job_id, tag=self._tag))
            taken = [i for i, exists in zip(ids, pipe.execute()) if exists]
        if taken:
            raise self._exists(taken[0])

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
        return [Job(i, self.connection, {"status": QUEUED.encode()}, secret=self.signer, queue=self.name)
                for i in self.job_ids]

    @property
    def failed_job_ids(self) -> list[str]:
        """Ids of this queue's failed jobs, oldest failure first (expired ones are dropped)."""
        ids = [i.decode() for i in self.connection.zrange(keys.failed(self.name), 0, -1)]
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(keys.job(job_id, tag=self._tag))
            alive = pipe.execute()
        gone = [i for i, exists in zip(ids, alive) if not exists]
        if gone:
            self.connection.zrem(keys.failed(self.name), *gone)
        return [i for i, exists in zip(ids, alive) if exists]

    @property
    def failed_jobs(self) -> list[Job]:
        """This queue's failed jobs (with ``traceback``, ``attempt``, ``workers``), oldest first."""
        return [Job.fetch(i, self.connection, secret=self.signer, queue=self.name) for i in self.failed_job_ids]

    def is_empty(self) -> bool:
        return len(self) == 0

    def empty(self) -> int:
        """Cancel every job waiting on this queue (as RQ's ``empty``); returns how many."""
        ids = self.job_ids
        if not ids:
            return 0
        refs = [keys.ref(i, self._tag) for i in ids]
        replies = wire.send(self.connection, *[cancel_command(ref, self.name) for ref in refs])
        replies = [cancel(self.connection, ref, self.name, r) if r in (3, 4) else r  # 3: it has dependents
                   for ref, r in zip(refs, replies)]
        return sum(reply == 1 for reply in replies)

    @classmethod
    def all(cls, connection: Union[redis.Redis, str, None] = None) -> list[Queue]:
        """Every queue that has been used, by name."""
        conn = get_connection(connection)
        return [cls(n.decode(), conn) for n in sorted(conn.smembers(keys.QUEUES))]

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    def map(self, func: Callable, iterable: Iterable, **job_options: Any) -> Group:
        """One job ``func(item)`` per item, enqueued in one step (all or none); returns a ``Group``.

        Each item is the one argument, as with the builtin ``map``. For several arguments map a
        function taking a tuple, or use ``enqueue_many([(func, (a, b)), ...])`` and ``Group(jobs)``.
        ``job_options`` are those of ``enqueue_many`` (``timeout``, ``result_ttl``, ...).
        """
        from .group import Group

        group = Group(self.enqueue_many([Call(func, (item,)) for item in iterable], **job_options))
        kept = [job_options.get(name, default) for name, default in
                (("result_ttl", DEFAULT_RESULT_TTL), ("failure_ttl", DEFAULT_FAILURE_TTL))]
        seconds = [as_seconds(t) for t in kept if t is not None]
        return group.save(max(s for s in seconds if s is not None) + GROUP_QUEUEING if len(seconds) == 2 else None)


UNIQUE_QUEUEING = 7 * 24 * 3600  # seconds a unique key outlives its job's TTL: time it may wait queued
UNIQUE_ROUNDS = 20  # tries when concurrent enqueuers keep changing a unique key's holder
GROUP_QUEUEING = 7 * 24 * 3600  # seconds a saved group outlives its jobs' TTL: time they may wait queued


class _Plan(NamedTuple):
    """What every job of one function enqueued with default options shares (``Queue._enqueue_one``)."""

    path: str  # "module:qualname", checked by the guard
    ref: FunctionRef
    mac: Optional[signing._Hmac]  # the signing HMAC with the job's function and options absorbed; None: unsigned
    head: tuple  # the enqueue script's call up to its job key: EVALSHA, sha, 4 keys, the queue's 3 keys
    job_key: str  # + the id: the job key
    middle: tuple  # its values up to the job's own: channel prefix, queue, no front/delay/chosen ids/unique
    # key, no options, one function and its code hash


def _callback_path(name: str, func: Optional[Callable]) -> Optional[bytes]:
    """A callback's import path, checked by the guard; a bound method of an instance is refused."""
    if func is None:
        return None
    ref = function_ref(func)
    if ref.bound_to is not None:
        raise EnqueueError(f"{name}={describe_func(func)} is a method of an object, which can't travel as a "
                           f"callback: give a module-level function f(job). Nothing was enqueued.")
    return ref.path.encode()


def _no_dependency(who: str, dep: str) -> EnqueueError:
    dep = keys.split(dep)[0] if keys.REF.fullmatch(dep) else dep  # its id, not its ref
    return EnqueueError(f"Can't enqueue {who}: it depends on job {dep!r}, which does not exist (never enqueued here, "
                        f"or it expired after its TTL; a job of the same call must come after the jobs it depends "
                        f"on). Nothing was enqueued.")


def _check_slots(queue: str, graph: dict) -> None:
    """On a cluster: ``CrossSlotDependency`` unless every dependency in ``graph`` lives in ``queue``'s slot."""
    slot = wire.slot_of(("TYPE", keys.queue(queue)))
    for ref, deps in graph.items():
        for dep in deps:
            if wire.slot_of(("TYPE", keys.job(dep))) != slot:
                raise CrossSlotDependency(
                    f"Job {ref} on queue {queue!r} depends on job {dep}, which lives in another Redis Cluster hash "
                    f"slot (its queue's slot tag {{{keys.split(dep)[1]}}}, this queue's {{{keys.tag(queue)}}}): the "
                    f"step that ends a job releases its dependents atomically, which a cluster allows within one "
                    f"slot only. Enqueue both on one queue, or have the job wait for the other's result itself "
                    f"(Job.result). Nothing was enqueued.")


def _out_of_memory(exc: Exception) -> bool:
    """Whether Redis refused a write for maxmemory: an OOM reply, or (Redis 6.2) the same refusal met by a
    script at its first write, before it wrote anything, and reported as the script's error."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "-OOM command not allowed" in str(exc))


def _raise_if_full(exc: Exception, connection: redis.Redis, total: int) -> None:
    """Raise ``RedisFull`` for ``exc`` if it is Redis refusing the ``total`` jobs as it is full (none written)."""
    if _out_of_memory(exc):
        raise _full(connection, 0, total) from None


def _full(connection: redis.Redis, done: int, total: int) -> RedisFull:
    """The error for a Redis that refused to enqueue (OOM), saying how many jobs it took (most often none)."""
    took = "nothing was enqueued" if not done else f"only {done} of the {total} jobs were enqueued"
    return RedisFull(f"Redis at {describe(connection)} is full (its used memory reached maxmemory), so it "
                     f"refused the job(s): {took}. Free memory there (fewer or shorter-lived results, "
                     f"result_ttl=) or raise its maxmemory (CONFIG SET maxmemory ...).")
