"""A snapshot of queues and workers, for ``nbqueue info`` and the notebook dashboard."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from queue import Empty, SimpleQueue
from typing import Any, NamedTuple, Optional, Union

import redis

from . import keys
from .connection import get_connection
from .heartbeat import HEARTBEAT
from .schema import CANCELED, FAILED, FINISHED, SYNC
from .watcher import get_watcher

WINDOW = 600.0  # seconds: "recent" counts of finished/failed/canceled jobs
RATE_WINDOW = 60.0  # seconds: throughput is measured over this


class QueueStats(NamedTuple):
    name: str
    queued: int
    started: int
    failed: int  # in the failed registry (kept for their failure TTL)
    finished_recent: int = 0  # ended in the last ``WINDOW`` seconds
    failed_recent: int = 0
    canceled_recent: int = 0
    rate: float = 0.0  # jobs ended per second over the last ``RATE_WINDOW`` seconds


class WorkerInfo(NamedTuple):
    name: str
    host: str
    pid: int
    queues: list
    mode: str
    seen_ago: float  # seconds since the last heartbeat
    jobs: list  # (job id, function, started_at) of the jobs it holds
    done: int = 0  # jobs it ended since it registered
    started_at: Optional[float] = None


class Snapshot(NamedTuple):
    queues: list
    workers: list
    recent: list = []  # (job id, queue, end time) of the jobs that ended last, newest first


def _num(value: object) -> Optional[float]:
    """A finite number from a Redis reply (bytes, str, number), else None: junk never raises."""
    try:
        number = float(value.decode() if isinstance(value, bytes) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return number if math.isfinite(number) else None


def _counts(fields: dict, now: float) -> tuple:
    """(finished, failed, canceled) in the last ``WINDOW`` s and the rate over ``RATE_WINDOW`` s,
    from a queue's ring of counters (``keys.stats``); junk fields are skipped."""
    bucket_now = int(now // keys.STATS_BUCKET)
    window = int(WINDOW // keys.STATS_BUCKET)  # buckets back, besides the current one
    rate_back = int(RATE_WINDOW // keys.STATS_BUCKET) - 1
    totals = dict.fromkeys((FINISHED, FAILED, CANCELED), 0)
    last = 0
    for field, value in fields.items():
        try:
            status = field.decode().split(":", 1)[0]
            bucket, count = (int(x) for x in value.decode().split())
        except (ValueError, UnicodeDecodeError):
            continue
        if status in totals and 0 <= bucket_now - bucket < window and count > 0:
            totals[status] += count
            last += count if bucket_now - bucket <= rate_back else 0
    span = now - (bucket_now - rate_back) * keys.STATS_BUCKET  # from the oldest bucket counted to now
    return totals[FINISHED], totals[FAILED], totals[CANCELED], last / span


def served_queues(connection: Union[redis.Redis, str, None] = None) -> set:
    """The queues some live worker serves (two round trips)."""
    conn = get_connection(connection)
    names = conn.zrangebyscore(keys.WORKERS, time.time() - 3 * HEARTBEAT, "+inf")
    if not names:
        return set()
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(keys.worker(name.decode()), "queues")
        replies = pipe.execute()
    return {q for reply in replies if reply for q in reply.decode(errors="replace").split(",") if q}


def snapshot(connection: Union[redis.Redis, str, None] = None, recent: int = 0) -> Snapshot:
    """Counts per queue, the live workers with what each is running, and the ``recent`` jobs
    that ended last on each queue (three round trips)."""
    conn = get_connection(connection)
    now = time.time()
    with conn.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.QUEUES)
        pipe.zrangebyscore(keys.WORKERS, now - 3 * HEARTBEAT, "+inf", withscores=True)
        queue_names, worker_seen = pipe.execute()
    keys.check_schema(conn)  # another layout's keys are never half-read
    names = sorted(n.decode(errors="replace") for n in queue_names)
    live = [w.decode(errors="replace") for w, _ in worker_seen]  # scored by their last heartbeat
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrange(keys.active(name), 0, -1)
        active_lists = pipe.execute()
    active = [(name, i.decode(errors="replace")) for name, found in zip(names, active_lists) for i in found]
    per_queue = 3 + (recent > 0)
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(keys.queue(name))
            pipe.zcard(keys.failed(name))
            pipe.hgetall(keys.stats(name))
            if recent > 0:
                pipe.zrange(keys.ended(name), -recent, -1, withscores=True)
        for name, job_id in active:
            pipe.hmget(keys.job(job_id, name), "queue", "func", "worker", "started_at")
        for name in live:
            pipe.hgetall(keys.worker(name))
        replies = pipe.execute()
    counts = replies[:per_queue * len(names)]
    jobs = replies[per_queue * len(names):per_queue * len(names) + len(active)]
    workers = replies[per_queue * len(names) + len(active):]
    held: dict = {}
    started: dict = {}
    for (_, job_id), (queue, func, worker, started_at) in zip(active, jobs):
        if queue is None:
            continue
        name = queue.decode(errors="replace")
        started[name] = started.get(name, 0) + 1
        held.setdefault((worker or b"").decode(errors="replace"), []).append(
            (job_id, (func or b"?").decode(errors="replace"), _num(started_at)))
    queues, ended = [], []
    for i, name in enumerate(names):
        reply = counts[per_queue * i:per_queue * (i + 1)]
        queues.append(QueueStats(name, reply[0], started.get(name, 0), reply[1], *_counts(reply[2], now)))
        if recent > 0:
            ended += [(keys.ref(job_id.decode(errors="replace"), keys.tag(name)), name, t) for job_id, t in reply[3]]
    infos = []
    for name, (_, seen), fields in zip(live, worker_seen, workers):
        if not fields:
            continue
        text = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        infos.append(WorkerInfo(
            name, text.get("host", "?"), int(_num(text.get("pid")) or 0), text.get("queues", "").split(","),
            text.get("mode", "?"), now - seen, held.get(name, []),
            int(_num(text.get("done")) or 0), _num(text.get("started_at")),
        ))
    ended.sort(key=lambda e: -e[2])
    return Snapshot(queues, infos, ended[:recent] if recent > 0 else [])


def rate_text(rate: float) -> str:
    """Jobs per second, e.g. "0.88/s", "12/s" ("0/s": none)."""
    return "0/s" if rate <= 0 else f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s"


def render(snap: Snapshot, now: Optional[float] = None) -> str:
    """The snapshot as text for a terminal."""
    now = time.time() if now is None else now
    head = f"{'queue':<24}{'queued':>8}{'started':>9}{'finished':>10}{'failed':>8}{'canceled':>10}{'rate':>9}"
    lines = [f"{'':<41}{'- last ' + str(int(WINDOW // 60)) + ' min -':^28}{'(1 min)':>9}", head]
    lines += [f"{q.name:<24}{q.queued:>8}{q.started:>9}{q.finished_recent:>10}{q.failed_recent:>8}"
              f"{q.canceled_recent:>10}{rate_text(q.rate):>9}" for q in snap.queues] or ["(no queues yet)"]
    kept = {q.name: q.failed for q in snap.queues if q.failed}
    if kept:
        kept_text = ", ".join(f"{n} {c}" for n, c in kept.items())
        lines.append(f"failed jobs kept: {kept_text} (nbqueue requeue <queue>)")
    lines.append("")
    lines.append(f"workers: {len(snap.workers)}")
    for w in snap.workers:
        doing = ", ".join(
            f"{job_id} {func.replace(':', '.')}" + (f" for {now - t:.1f} s" if t else "")
            for job_id, func, t in w.jobs) or "idle"
        lines.append(f"  {w.name}  [{','.join(w.queues)}] {w.mode}  {doing}  ({w.done} done, "
                     f"seen {w.seen_ago:.1f} s ago)")
    return "\n".join(lines)


def watch_events(connection: Union[redis.Redis, str, None] = None) -> Iterator[str]:
    """Yield one line per job event, as it is published (blocks), through the process's watcher.
    A dropped connection is reopened; if Redis can't be reached (or refuses us) the error is raised."""
    conn = get_connection(connection)
    events: SimpleQueue[Any] = SimpleQueue()
    sub = get_watcher(conn).watch(on_event=events.put, all_jobs=True, on_error=events.put)
    try:
        while True:
            try:
                event = events.get(timeout=1.0)  # a timeout: Ctrl-C is seen at once everywhere
            except Empty:
                continue
            if isinstance(event, Exception):
                raise event if isinstance(event, redis.RedisError) else redis.ConnectionError(str(event))
            if not isinstance(event, dict) or event.get("status") == SYNC:
                continue  # junk on a job channel, or the watcher's own (re-)subscription
            stamp = time.strftime("%H:%M:%S", time.localtime(_num(event.get("t")) or time.time()))
            extra = " ".join(f"{k}={event[k]}" for k in ("queue", "worker", "attempt", "delay") if k in event)
            yield f"{stamp} {event.get('id')} {event.get('status')} {extra}".rstrip()
    finally:
        sub.close()
