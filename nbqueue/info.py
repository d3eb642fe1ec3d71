"""A snapshot of queues and workers, for ``nbqueue info`` and the notebook dashboard."""
from __future__ import annotations

import json
import time
from typing import Iterator, NamedTuple, Optional, Union

import redis

from . import keys
from .connection import get_connection
from .heartbeat import HEARTBEAT


class QueueStats(NamedTuple):
    name: str
    queued: int
    started: int
    failed: int


class WorkerInfo(NamedTuple):
    name: str
    host: str
    pid: int
    queues: list
    mode: str
    seen_ago: float  # seconds since the last heartbeat
    jobs: list  # (job id, function, started_at) of the jobs it holds


class Snapshot(NamedTuple):
    queues: list
    workers: list


def snapshot(connection: Union[redis.Redis, str, None] = None) -> Snapshot:
    """Counts per queue and the live workers with what each is running (two round trips)."""
    conn = get_connection(connection)
    now = time.time()
    with conn.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.QUEUES)
        pipe.zrange(keys.ACTIVE, 0, -1)
        pipe.zrangebyscore(keys.WORKERS, now - 3 * HEARTBEAT, "+inf")
        queue_names, active_ids, worker_names = pipe.execute()
    names = sorted(n.decode() for n in queue_names)
    active = [i.decode() for i in active_ids]
    live = [w.decode() for w in worker_names]
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(keys.queue(name))
            pipe.zcard(keys.failed(name))
        for job_id in active:
            pipe.hmget(keys.job(job_id), "queue", "func", "worker", "started_at")
        for name in live:
            pipe.hgetall(keys.worker(name))
        replies = pipe.execute()
    counts = replies[:2 * len(names)]
    jobs = replies[2 * len(names):2 * len(names) + len(active)]
    workers = replies[2 * len(names) + len(active):]
    held: dict = {}
    started: dict = {}
    for job_id, (queue, func, worker, started_at) in zip(active, jobs):
        if queue is None:
            continue
        started[queue.decode()] = started.get(queue.decode(), 0) + 1
        held.setdefault((worker or b"").decode(), []).append(
            (job_id, (func or b"?").decode(), float(started_at) if started_at else None))
    queues = [QueueStats(n, counts[2 * i], started.get(n, 0), counts[2 * i + 1]) for i, n in enumerate(names)]
    infos = []
    for name, fields in zip(live, workers):
        if not fields:
            continue
        text = {k.decode(): v.decode() for k, v in fields.items()}
        infos.append(WorkerInfo(
            name, text.get("host", "?"), int(text.get("pid", 0)), text.get("queues", "").split(","),
            text.get("mode", "?"), now - float(text.get("seen", now)), held.get(name, []),
        ))
    return Snapshot(queues, infos)


def render(snap: Snapshot, now: Optional[float] = None) -> str:
    """The snapshot as text for a terminal."""
    now = time.time() if now is None else now
    lines = [f"{'queue':<24}{'queued':>8}{'started':>9}{'failed':>8}"]
    lines += [f"{q.name:<24}{q.queued:>8}{q.started:>9}{q.failed:>8}" for q in snap.queues] or ["(no queues yet)"]
    lines.append("")
    lines.append(f"workers: {len(snap.workers)}")
    for w in snap.workers:
        doing = ", ".join(
            f"{job_id} {func.replace(':', '.')}" + (f" for {now - t:.1f} s" if t else "")
            for job_id, func, t in w.jobs) or "idle"
        lines.append(f"  {w.name}  [{','.join(w.queues)}] {w.mode}  {doing}  (seen {w.seen_ago:.1f} s ago)")
    return "\n".join(lines)


def watch_events(connection: Union[redis.Redis, str, None] = None) -> Iterator[str]:
    """Yield one line per job event, as it is published (blocks)."""
    conn = get_connection(connection)
    pubsub = conn.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(keys.EVENTS_PATTERN)
    try:
        for message in pubsub.listen():
            try:
                event = json.loads(message["data"])
            except ValueError:
                continue
            stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("t", time.time()))))
            extra = " ".join(f"{k}={event[k]}" for k in ("queue", "worker", "attempt", "delay") if k in event)
            yield f"{stamp} {event.get('id')} {event.get('status')} {extra}".rstrip()
    finally:
        pubsub.close()
