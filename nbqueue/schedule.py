"""Schedules that live in Redis: ``q.schedule(f, every=300)`` or ``cron="0 9 * * 1-5"``, fired by the workers.

There is no scheduler process. A schedule is a hash (``keys.schedule(name, queue)``) holding the call
as enqueue would store it (checked by the same guard, pickled, signed), its rule and catch-up policy,
plus its name in its queue's sorted set by next due time (``keys.schedules(queue)``; the name -> queue
registry ``keys.SCHEDULE_QUEUES`` finds it by name). The queue sweeps of the heartbeat ask for due
schedules in the round trip they make anyway (``sweep.lua``: one ZRANGEBYSCORE, nothing when none is
due); a worker that sees one reads it, checks its signature, and runs ``fire.lua``, which
queues the tick's job and advances the schedule only if no other worker did so first: one job per
tick however many workers run. A schedule outlives the process (a notebook kernel) that made it.

Signing: the client signs the call as a job of the pseudo-id ``schedule:<name>:<queue>:<rule>:<missed>``
(so the rule and queue can't be changed either); the firing worker checks that and signs each job it
queues with its own secret (workers and clients share one), so a fired job is an ordinary signed
job. A worker without a secret queues unsigned jobs. As with any repeating job, someone who can
write to Redis can make a schedule fire early or often (by its due time); not run other code.

Missed ticks (no worker ran, or Redis was away): ``missed="once"`` (default) queues one job for them
all when a worker comes back, ``"all"`` (``catch_up=True``) one per missed tick, the last
``MAX_CATCH_UP``; ``"skip"`` none (a tick seen within ``LATE`` seconds of its time is not missed).
"""
from __future__ import annotations

import json
import logging
import math
import reprlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import redis

from . import keys, signing
from .connection import get_connection
from .errors import MalformedData, ScheduleError
from .rules import Rule, as_datetime
from .serialization import dumps_call, function_ref

if TYPE_CHECKING:  # pragma: no cover
    from .queue import Queue

log = logging.getLogger("nbqueue.worker")

MISSED = ("once", "all", "skip")
MAX_CATCH_UP = 100  # jobs queued at most for the missed ticks of one schedule (missed="all")
LATE = 2.5  # seconds: a tick first seen later than this after its time was missed (heartbeat.QUIET)
DUE_BATCH = 10  # schedules a heartbeat looks at, at most
BROKEN_RETRY = 60_000  # ms: a schedule that can't be fired is looked at again this much later
_FIELDS = ("queue", "func", "rule", "missed", "next", "last_run", "last_job", "fired", "error")


@dataclass(frozen=True)
class Schedule:
    """One schedule as ``schedules()`` lists it (times are aware UTC datetimes; None: not yet)."""

    name: str
    queue: str
    func: str
    rule: str  # "every 5m", "cron 0 9 * * 1-5 (Europe/Berlin)"
    missed: str
    next_run: Optional[datetime]
    last_run: Optional[datetime] = None
    last_job_id: Optional[str] = None
    last_status: Optional[str] = None  # the last job's status (None: expired, or none yet)
    fired: int = 0
    error: Optional[str] = None  # why the last tick queued nothing (a broken hash, a bad signature)

    @staticmethod
    def remove(name: str, connection: Union[redis.Redis, str, None] = None) -> bool:
        """Delete the schedule ``name``; True if there was one. Jobs it already queued go on."""
        return remove(get_connection(connection), name)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not keys.NAME.fullmatch(name):
        raise ScheduleError(f"name={reprlib.repr(name)} is not valid: use 1 to 100 letters, digits, '_', '-' or '.', "
                            f"starting with a letter or digit, e.g. name='nightly-refresh'. Nothing was scheduled.")
    return name


def _missed(missed: Optional[str], catch_up: Any) -> str:
    if not isinstance(catch_up, bool):
        raise ScheduleError(f"catch_up={catch_up!r} is not valid: give True (one job per missed tick) or False. "
                            f"Nothing was scheduled.")
    if missed is None:
        return "all" if catch_up else "once"
    if missed not in MISSED or (catch_up and missed != "all"):
        raise ScheduleError(f"missed={missed!r} is not valid: give 'once' (one job for all missed ticks), 'all' "
                            f"(one per missed tick, at most {MAX_CATCH_UP}) or 'skip' (none); catch_up=True means "
                            f"'all'. Nothing was scheduled.")
    return missed


def _pseudo_id(name: str, queue: str, rule: str, missed: str) -> bytes:
    """What a schedule's signature binds in place of a job id (':' can't be in a job id)."""
    return f"schedule:{name}:{queue}:{rule}:{missed}".encode()


def create(queue: Queue, func: Callable, args: Iterable, kwargs: Optional[dict], *, every: Any, cron: Any,
           name: Optional[str], timezone: Any, missed: Optional[str], catch_up: Any, options: dict) -> Schedule:
    """Store a schedule (replacing one of the same name); see ``Queue.schedule_call``."""
    from .queue import Options

    rule = Rule.make(every, cron, timezone)
    policy = _missed(missed, catch_up)
    stored = Options.from_keywords(options).stored()
    ref = function_ref(func)  # the enqueue guard: importable by path, no lambda, no generator
    if ref.bound_to is not None:
        raise ScheduleError(f"Can't schedule a bound method ({ref.path}): schedule a module-level function, "
                            f"or a function that makes the object and calls it. Nothing was scheduled.")
    name = check_name(name if name is not None else ref.path.replace(":", "."))
    try:
        args, kwargs = tuple(args), dict(kwargs or {})
    except (TypeError, ValueError):
        raise ScheduleError("args must be a tuple (or list) and kwargs a dict. Nothing was scheduled.") from None
    data = dumps_call(ref, args, kwargs)
    signer = queue.signer
    pseudo = _pseudo_id(name, queue.name, rule.stored(), policy)
    sig = signer.sign_job(signer.job_mac(ref.path, ref.code_hash, stored), pseudo.decode(), data) if signer else b""
    conn = queue.connection
    seconds, micros = conn.time()
    now = seconds * 1000 + micros // 1000
    due = rule.next_after(now)
    fields = {"queue": queue.name, "func": ref.path, "code": ref.code_hash, "data": data, "sig": sig,
              "options": json.dumps(stored), "rule": rule.stored(), "missed": policy, "token": secrets.token_hex(8),
              "next": due, "created_at": now, "fired": 0}
    keys.register(conn, [queue.name])  # so the sweeps look at its queue
    old = conn.hget(keys.SCHEDULE_QUEUES, name)
    if old is not None and old.decode(errors="replace") != queue.name:
        remove(conn, name)  # it fired on another queue: its keys live there
    with conn.pipeline(transaction=True) as pipe:  # replaces a schedule of that name whole
        pipe.delete(keys.schedule(name, queue.name))
        pipe.hset(keys.schedule(name, queue.name), mapping=fields)
        pipe.zadd(keys.schedules(queue.name), {name: due})
        pipe.execute()
    conn.hset(keys.SCHEDULE_QUEUES, name, queue.name)
    return Schedule(name, queue.name, ref.path, rule.describe(), policy, as_datetime(due))


def remove(conn: redis.Redis, name: str) -> bool:
    raw = conn.hget(keys.SCHEDULE_QUEUES, name)
    queue = raw.decode(errors="replace") if raw is not None else None
    if queue is None or not keys.NAME.fullmatch(queue):
        return bool(conn.hdel(keys.SCHEDULE_QUEUES, name))
    with conn.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.schedules(queue), name)
        pipe.delete(keys.schedule(name, queue))
        removed, deleted = pipe.execute()
    conn.hdel(keys.SCHEDULE_QUEUES, name)
    return bool(removed or deleted)


def schedules(connection: Union[redis.Redis, str, None] = None) -> list:
    """Every schedule (a ``Schedule`` each), next due first: for ``nbqueue schedule list`` and the dashboard."""
    conn = get_connection(connection)
    where = [(n.decode(errors="replace"), q.decode(errors="replace"))
             for n, q in conn.hgetall(keys.SCHEDULE_QUEUES).items()]
    where = [(n, q) for n, q in where if keys.NAME.fullmatch(q)]
    with conn.pipeline(transaction=False) as pipe:
        for name, queue in where:
            pipe.zscore(keys.schedules(queue), name)
            pipe.hmget(keys.schedule(name, queue), *_FIELDS)
        replies = pipe.execute()
    names = [(name, math.nan if score is None else score) for (name, _), score in zip(where, replies[::2])]
    rows = replies[1::2]
    with conn.pipeline(transaction=False) as pipe:
        for row in rows:
            last = _text(row[6])
            pipe.hget(keys.job(last), "status") if last and keys.id_tag(last) else pipe.echo("")
        statuses = pipe.execute()
    listed = [_listed(name, score, row, status) for (name, score), row, status in zip(names, rows, statuses)]
    return sorted(listed, key=lambda s: (s.next_run is None, s.next_run and s.next_run.timestamp() or 0, s.name))


def render(listed: list) -> str:
    """``schedules()`` as a table for the terminal (times in UTC)."""
    if not listed:
        return "no schedules"
    rows = [("NAME", "QUEUE", "RULE", "NEXT RUN (UTC)", "LAST JOB", "STATUS", "FIRED")]
    for s in listed:
        when = s.next_run.strftime("%Y-%m-%d %H:%M:%S") if s.next_run else "-"
        rows.append((s.name, s.queue, s.rule, when, s.last_job_id or "-",
                     s.error and "broken" or s.last_status or "-", str(s.fired)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"{s.name}: {s.error}" for s in listed if s.error]
    return "\n".join(lines)


def _text(raw: Optional[bytes]) -> Optional[str]:
    return None if raw is None else raw.decode(errors="replace")


def _int(raw: Optional[bytes]) -> Optional[int]:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _listed(name: str, score: float, row: list, status: Optional[bytes]) -> Schedule:
    queue, func, rule_text, missed, _, last_run, last_job, fired, error = (_text(x) for x in row)
    try:
        rule = Rule.from_stored(rule_text or "").describe()
    except ValueError:
        rule, error = "?", error or f"the stored rule {reprlib.repr(rule_text)} is not valid"
    next_ms = int(score) if math.isfinite(score) and abs(score) < 2 ** 53 else None
    return Schedule(name, queue or "?", func or "?", rule, missed or "?", as_datetime(next_ms),
                    as_datetime(_int(row[5])), last_job, _text(status) or None, _int(row[7]) or 0, error)


class Firer:
    """What a worker's heartbeat uses to fire due schedules (``sweep.lua``'s reply in, jobs out)."""

    def __init__(self, connection: redis.Redis, signer: Optional[signing.Signer]):
        self.connection, self.signer = connection, signer
        self._warned: dict = {}  # schedule name -> monotonic time of its last warning

    def fire_due(self, queue: str, reply: list) -> int:
        """Fire the schedules of ``queue`` in ``sweep.lua``'s reply; returns the jobs queued. Never
        raises for one broken schedule (it is logged and looked at again later); connection errors pass."""
        now = int(reply[0])
        queued = 0
        for raw_name, raw_due in zip(reply[1::2], reply[2::2]):
            name = raw_name.decode(errors="replace")
            try:
                queued += self._fire(queue, name, raw_name, raw_due, now)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception as exc:  # a bug or junk written by hand: never let it stop the heartbeat
                self._warn(name, f"can't fire schedule {name!r}: {type(exc).__name__}: {exc}")
        return queued

    def _fire(self, on: str, name: str, raw_name: bytes, raw_due: bytes, now: int) -> int:
        due = float(raw_due)
        due = int(due) if math.isfinite(due) else now  # -inf: written by hand; fire it now
        key = keys.schedule(name, on) if keys.NAME.fullmatch(name) else None
        stored = self.connection.hgetall(key) if key else {}
        if not stored:  # a name in the set without a hash (junk, or removed meanwhile): drop it
            self._run(key or keys.schedule("-", on), raw_name, raw_due, b"", "", "", on, [])
            return 0
        assert key is not None  # stored: read from it
        token = stored.get(b"token", b"")
        try:
            queue, func, code, data, options, rule, missed = self._parse(name, stored)
            if queue != on:
                raise MalformedData(f"it names queue {queue[:40]!r} but is kept with queue {on!r}")
        except (ValueError, TypeError, KeyError) as exc:
            why = f"schedule {name!r} is broken ({exc}); remove it, or schedule it again"
            self._warn(name, why)
            self._run(key, raw_name, raw_due, token, str(now + BROKEN_RETRY), why, on, [])
            return 0
        ticks = rule.ticks(due, now, MAX_CATCH_UP if missed == "all" else 1)  # oldest first
        if missed == "skip" and now - ticks[-1] > LATE * 1000:
            ticks = []
        error = ""
        if self.signer is not None and not self.signer.job_matches(
                stored.get(b"sig"), _pseudo_id(name, queue, rule.stored(), missed),
                signing.job_head(func, code, signing.options_of(options)), data):
            error = (f"schedule {name!r} is not signed with this worker's secret (changed in Redis, or made by a "
                     f"client with another secret): no job queued; schedule it again")
            self._warn(name, error)
            ticks = []
        jobs = [keys.new_id(queue) for _ in ticks]
        sigs = self._sign(func.decode(), code.decode(), options, jobs, data)
        fired = self._run(key, raw_name, raw_due, token, str(rule.next_after(now, anchor=due)), error, queue,
                          [x for i, s, t in zip(jobs, sigs, ticks) for x in (i, s, keys.events(i), t)],
                          func, code, data, options)
        if fired > 0:
            log.info("schedule %s: queued %s on %s", name, " ".join(jobs), queue)
        return max(fired, 0)

    @staticmethod
    def _parse(name: str, stored: dict) -> tuple:
        queue = stored[b"queue"].decode()
        if not keys.NAME.fullmatch(queue):
            raise MalformedData(f"queue {queue[:40]!r} is not a queue name")
        func, code, data = stored[b"func"], stored.get(b"code", b""), stored[b"data"]
        func.decode(), code.decode()  # UnicodeDecodeError (a ValueError) for junk
        options = json.loads(stored.get(b"options", b"[]"))
        if not isinstance(options, list) or len(options) % 2 or not all(isinstance(x, str) for x in options):
            raise MalformedData("its options are not a list of names and values")
        signing.options_of(options)  # an option nobody signs: AssertionError would be a bug; a name: junk
        missed = stored.get(b"missed", b"once").decode()
        if missed not in MISSED:
            raise MalformedData(f"missed={missed[:20]!r}")
        return queue, func, code, data, options, Rule.from_stored(stored[b"rule"].decode()), missed

    def _sign(self, func: str, code: str, options: list, jobs: list, data: bytes) -> list:
        if self.signer is None or not jobs:
            return [b""] * len(jobs)
        mac = self.signer.job_mac(func, code, options)
        return [self.signer.sign_job(mac, job_id, data) for job_id in jobs]

    def _run(self, key: str, raw_name: bytes, raw_due: bytes, token: bytes, next_due: str, error: str, queue: str,
             jobs: list, func: bytes = b"", code: bytes = b"", data: bytes = b"",
             options: Optional[list] = None) -> int:
        script_keys = [keys.schedules(queue), key, keys.queue(queue), keys.wake(queue),
                       *[keys.job(i, queue) for i in jobs[::4]]]
        options = options or []
        return int(keys.run(self.connection, "fire", script_keys,
                            [raw_name, raw_due, token, next_due, error, queue, func, code, data, len(options) // 2,
                             *options, *jobs]))

    def _warn(self, name: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(name, -math.inf) >= 60:
            if len(self._warned) > 1000:
                self._warned.clear()
            self._warned[name] = now
            log.warning("%s", message)
