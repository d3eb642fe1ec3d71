"""Jobs that feed jobs: a ``Job`` or ``Group`` among a call's arguments (or in ``depends_on``) is a
dependency, and its result is passed in.

At enqueue, ``extract`` walks the arguments (only lists, tuples and dicts of the builtin types, at
most ``MAX_DEPTH`` deep and ``MAX_ITEMS`` items: the common call of plain values costs one type check
per argument) and puts a small placeholder where each Job (``Result``) or Group (``Results``) was.
The job waits ``deferred`` until its dependencies end (``scripts/defer.lua``); the script that
records a dependency's end (``finish.lua``, ``cancel.lua``, through ``deps.lua``) releases it onto
its queue, or fails it ("dependency <id> failed") and its own dependents down the chain.

Those scripts must name every key they touch, and a job's dependents are only known by reading its
dependents set, so the caller reads them just before (``dependents_of``: breadth first, and down the
chain only through dependents that will fail) and passes them in; the script first checks that the
sets still hold exactly what was passed (a set only grows while its job has not ended) and else
writes nothing and returns 3, and the caller reads again. A job without dependents pays one EXISTS in
the script and nothing more.

One gap: a job that the recovery fails or cancels (``recover.lua``, its
worker lost once too often) has its dependents dealt with by the recovering worker's heartbeat right
after (``release``, the same check), in a second step, as is its ``on_failure`` callback
(``callbacks.after_recovery``); a worker killed in between leaves them deferred (and no callback).
Requeueing a failed dependency does not re-arm the dependents it failed (they can be requeued).

On the worker, ``substitute`` reads each dependency's outcome from Redis when the job starts, checks
its signature before unpickling (as ``Job.result`` does) and puts the result where the placeholder
was; a Group's becomes the list of results. With ``allow_failure=True`` a failed or canceled
dependency's place holds its ``JobFailed`` / ``JobCanceled`` error (what ``Job.result()`` raises).
Results never travel through the client.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis

from . import keys
from .errors import Contention, DependencyError, EnqueueError, JobCanceled, JobFailed, NbqueueError
from .group import Group
from .job import _NESTING, Job
from .schema import DEFAULT_FAILURE_TTL, DEFERRED, FINISHED, OUTCOME, TERMINAL
from .serialization import loads_result

log = logging.getLogger("nbqueue.worker")

MAX_DEPTH = _NESTING  # containers within containers looked into for jobs
MAX_ITEMS = 10_000  # container items looked at per call
MAX_NODES = 100_000  # dependents read for one job's end
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
_CONTAINERS = (list, tuple, dict)


class Result:
    """Stands in the arguments for the result of the job ``id`` (a Job given as an argument; its ref)."""

    __slots__ = ("id",)

    def __init__(self, job_id: str):
        self.id = job_id

    def __reduce__(self) -> tuple:
        return (Result, (self.id,))

    def __repr__(self) -> str:
        return f"<result of job {self.id}>"


class Results:
    """Stands for the list of results of a group's jobs (a Group given as an argument; their refs)."""

    __slots__ = ("ids",)

    def __init__(self, ids: Iterable[str]):
        self.ids = tuple(ids)

    def __reduce__(self) -> tuple:
        return (Results, (self.ids,))

    def __repr__(self) -> str:
        return f"<results of {len(self.ids)} jobs>"


def _swap(value: Any, depth: int, budget: list, found: list) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, Job):
        found.append(value.ref)
        return Result(value.ref)
    if isinstance(value, Group):
        found.extend(value.refs)
        return Results(value.refs)
    if kind not in _CONTAINERS or depth >= MAX_DEPTH or budget[0] < len(value):
        return value
    budget[0] -= len(value)
    if kind is dict:
        new = {k: _swap(v, depth + 1, budget, found) for k, v in value.items()}
        return value if all(new[k] is v for k, v in value.items()) else new
    items = [_swap(v, depth + 1, budget, found) for v in value]
    return value if all(a is b for a, b in zip(items, value)) else kind(items)


def extract(args: tuple, kwargs: dict) -> tuple[tuple, dict, list[str]]:
    """The call with a placeholder for each Job or Group in it, and the refs of those jobs."""
    for a in args:  # the common case, plain values only: one type check each (~0.2 us in all)
        if type(a) not in _PLAIN:
            break
    else:
        if not kwargs or all(type(v) in _PLAIN for v in kwargs.values()):
            return args, kwargs, []
    found: list = []
    budget = [MAX_ITEMS]
    new_args = _swap(args, 0, budget, found)
    new_kwargs = _swap(kwargs, 0, budget, found)
    return new_args, new_kwargs, found


def ids_of(depends_on: Any, tag: str) -> list[str]:
    """The refs of the jobs ``depends_on`` names: a Job, a Group, a job id (one nbqueue made, a ref,
    or an id chosen at enqueue: of the enqueuing queue, whose tag is ``tag``), or a list/tuple/set of them."""
    if depends_on is None:
        return []
    items = depends_on if isinstance(depends_on, (list, tuple, set, frozenset)) else [depends_on]
    ids: list = []
    for item in items:
        if isinstance(item, Job):
            ids.append(item.ref)
        elif isinstance(item, Group):
            ids.extend(item.refs)
        elif isinstance(item, str) and keys.REF.fullmatch(item):
            ids.append(item if ":" in item or keys.id_tag(item) else keys.ref(item, tag))
        else:
            raise EnqueueError(f"depends_on={depends_on!r} is not valid: give a Job, a Group, a job id, or a list "
                               f"of them. Nothing was enqueued.")
    return ids


def check_cycles(connection: redis.Redis, new: dict) -> None:
    """Refuse a batch in which a job would wait for itself: ``new`` maps each new job's ref to the refs
    it waits for. Only jobs with ids the caller chose can close a loop (through each other, or through a
    job still waiting for an old job of that id), so ``enqueue`` calls this only then."""
    chosen = set(new)
    frontier = {d for deps in new.values() for d in deps}
    edges = dict(new)
    seen: set = set()
    while frontier and len(seen) < MAX_NODES:
        stored = [d for d in frontier if d not in edges]
        if stored:
            with connection.pipeline(transaction=False) as pipe:
                for d in stored:
                    pipe.hget(keys.job(d), "deps")
                for d, raw in zip(stored, pipe.execute()):
                    edges[d] = raw.decode(errors="replace").split() if raw else []
        seen |= frontier
        frontier = {d for f in frontier for d in edges.get(f, ())} - seen
    for start in chosen:  # a loop among the edges that passes through a new job
        stack, visited = list(edges.get(start, ())), set()
        while stack:
            node = stack.pop()
            if node == start:
                raise EnqueueError(f"Job {keys.split(start)[0]!r} would wait for itself (a cycle of dependencies "
                                   f"through job ids you chose). Nothing was enqueued.")
            if node not in visited:
                visited.add(node)
                stack.extend(edges.get(node, ()))


def dependents_of(connection: redis.Redis, job_id: str, failing: bool) -> tuple[list, list]:
    """The dependents of the job ``job_id`` (a ref) as the end scripts take them (``deps.lua``): their
    keys and their ``[n, ref, parent, expanded, queue, id, channel, ...]`` values. With ``failing`` (the job failed
    or was canceled), the dependents that will fail have their own dependents read too, down the chain. Members that are
    no job id (junk written by hand) are removed from the set first."""
    nodes: list = []  # [id, parent index, expanded, queue]
    frontier = [(0, job_id)]
    expanded = {job_id}
    while frontier and len(nodes) < MAX_NODES:
        with connection.pipeline(transaction=False) as pipe:
            for _, parent in frontier:
                pipe.zrange(keys.dependents(parent), 0, -1)
            lists = pipe.execute(raise_on_error=False)
        members = []
        for (_, parent), found in zip(frontier, lists):
            if isinstance(found, Exception):  # junk of another type: the script counts it as none
                found = []
            good = []
            for raw in found:
                name = raw.decode(errors="replace")
                if keys.REF.fullmatch(name) and name.encode() == raw and (":" in name or keys.id_tag(name)):
                    good.append(name)
                else:
                    log.warning("dropping %r from the dependents of job %s: it is no job id", raw, parent)
                    connection.zrem(keys.dependents(parent), raw)
            members.append(good)
        flat = [m for found in members for m in found]
        with connection.pipeline(transaction=False) as pipe:
            for member in flat:
                pipe.hmget(keys.job(member), "status", "allow_failure", "queue")
            rows = iter(pipe.execute())
        following = []
        for (index, _), found in zip(frontier, members):
            for member in found:
                status, allow, queue = next(rows)
                expand = (failing and status == DEFERRED.encode() and allow != b"1" and member not in expanded)
                nodes.append([member, index, "1" if expand else "0", (queue or b"").decode(errors="replace")])
                if expand:
                    expanded.add(member)
                    following.append((len(nodes), member))
        frontier = following
    node_keys: list = []
    values: list = [len(nodes)]
    for member, parent, expand, queue in nodes:
        job_id, tag = keys.split(member)
        node_keys += [keys.job(job_id, tag=tag), keys.queue(queue), keys.wake(queue), keys.failed(queue),
                      keys.dependents(job_id, tag=tag)]
        values += [member, parent, expand, queue, job_id, keys.events(job_id, tag=tag)]
    return node_keys, values


def end_with_dependents(connection: redis.Redis, script: str, job_id: str, script_keys: list, head: list,
                        tail: list, failing: bool, first: Any) -> Any:
    """Run an end script (``finish``, ``cancel``) whose first call, ``first`` (its reply), was made with
    no dependents passed and said 3 (the job has dependents): read them and call again until the
    dependents read are still those in Redis."""
    reply = first
    for _ in range(100):
        if reply != 3:
            return reply
        node_keys, values = dependents_of(connection, job_id, failing)
        reply = keys.run(connection, script, [*script_keys, keys.dependents(job_id), *node_keys],
                         [*head, *values, *tail], tag=keys.split(job_id)[1])
    raise Contention(f"the dependents of job {job_id} kept changing while they were read")


def release(connection: redis.Redis, job_ids: Iterable[str]) -> None:
    """Release or fail the dependents of jobs that ended outside finish and cancel (a lost worker's
    job that the recovery failed or canceled); jobs that did not end are passed over."""
    for job_id in job_ids:  # refs
        plain, tag = keys.split(job_id)
        script_keys, head = [keys.job(job_id)], [plain, DEFAULT_FAILURE_TTL, job_id]
        first = keys.run(connection, "release", [*script_keys, keys.dependents(job_id)], [*head, 0], tag=tag)
        if first == 3:
            status = connection.hget(keys.job(job_id), "status")
            end_with_dependents(connection, "release", job_id, script_keys, head, [], status != FINISHED.encode(),
                                first)


# --- on the worker -------------------------------------------------------------------------------
def _placeholders(value: Any, depth: int, budget: list, found: set) -> None:
    kind = type(value)
    if kind is Result:
        found.add(value.id)
    elif kind is Results:
        found.update(value.ids)
    elif kind in _CONTAINERS and depth < MAX_DEPTH and budget[0] >= len(value):
        budget[0] -= len(value)
        for item in (value.values() if kind is dict else value):
            if type(item) not in _PLAIN:
                _placeholders(item, depth + 1, budget, found)


def _put(value: Any, depth: int, budget: list, results: dict) -> Any:
    kind = type(value)
    if kind is Result:
        return results[value.id]
    if kind is Results:
        return [results[i] for i in value.ids]
    if kind not in _CONTAINERS or depth >= MAX_DEPTH or budget[0] < len(value):
        return value
    budget[0] -= len(value)
    if kind is dict:
        return {k: _put(v, depth + 1, budget, results) for k, v in value.items()}
    return kind(_put(v, depth + 1, budget, results) for v in value)


def substitute(args: tuple, kwargs: dict, connection: redis.Redis, signer: Any,
               allow_failure: bool) -> tuple[tuple, dict]:
    """The call with each placeholder replaced by its dependency's result, read from Redis now and
    checked with ``signer``; ``DependencyError`` if one can't be given."""
    wanted: set = set()
    _placeholders((args, kwargs), -1, [MAX_ITEMS * 2], wanted)
    if not wanted:
        return args, kwargs
    order = sorted(wanted)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in order:
            pipe.hmget(keys.job(job_id), [*OUTCOME, "func"])
        rows = pipe.execute()
    results = {}
    for job_id, row in zip(order, rows):
        *outcome, func = row
        outcome[0] = outcome[0].decode() if outcome[0] is not None else None
        job = Job(job_id, connection, {"func": func} if func else None, secret=signer)
        if outcome[0] is None:
            raise DependencyError(f"dependency {job_id}'s result is gone: the job expired (its result_ttl) or "
                                  f"was deleted before this job started")
        if outcome[0] not in TERMINAL:
            raise DependencyError(f"dependency {job_id} is {outcome[0]}, so it has no result yet (was this job "
                                  f"requeued before its dependency ended?)")
        try:
            if signer is None and outcome[0] == FINISHED:  # an unsigned worker checks no signature
                results[job_id] = loads_result(outcome[1])
            else:
                results[job_id] = job._value(outcome)
        except (JobFailed, JobCanceled) as exc:
            if not allow_failure:
                raise DependencyError(f"dependency {job_id} failed") from None
            results[job_id] = exc
        except NbqueueError as exc:  # its signature does not match: nothing was unpickled
            raise DependencyError(str(exc)) from None
    new_args, new_kwargs = _put((args, kwargs), -1, [MAX_ITEMS * 2], results)
    return tuple(new_args), dict(new_kwargs)

