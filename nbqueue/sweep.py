"""The periodic sweeps of each queue: recovery of lapsed leases, promotion of due scheduled jobs,
firing of due schedules. Keys are per queue (``keys.py``), and a script may touch only keys it was
given, so each sweep is two steps: ``sweep.lua`` reads what is due on a queue (one call per queue,
nothing written but its beat), then only for a queue where something is, ``recover.lua`` /
``promote.lua`` / ``fire.lua`` get the keys of those jobs and check each one again (a lease renewed
or a job moved in between is left alone), so the two steps stay correct under races.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Optional

from . import callbacks, flow, keys, wire
from .schedule import DUE_BATCH

log = logging.getLogger("nbqueue.worker")

BATCH = 100  # jobs recovered or promoted per queue and sweep at most


def commands(queues: Iterable[str], lease_ms: int, quiet_ms: int, quiet: Optional[dict] = None) -> list[tuple]:
    """The ``sweep.lua`` calls for ``queues``, to send with others in one round trip. ``quiet``:
    queue -> a longer quiet spell its recovery allows this once (after a hand-over of the duty)."""
    quiet = quiet or {}
    return [keys.evalsha("sweep", [keys.active(q), keys.beat(q), keys.scheduled(q), keys.schedules(q)],
                         [lease_ms, quiet.get(q, quiet_ms), BATCH, DUE_BATCH]) for q in queues]


def handle(connection: Any, queues: Iterable[str], replies: Iterable[Any], firer: Optional[Any] = None) -> list[str]:
    """Act on the replies of ``commands(queues)``: recover, promote and fire what they found.
    Returns the refs of the jobs recovered (re-queued, failed or canceled)."""
    from .schema import DEFAULT_FAILURE_TTL, DEFAULT_LOST_RETRIES, DEFAULT_RESULT_TTL

    recovered: list[str] = []
    for queue, reply in zip(queues, replies):
        if isinstance(reply, Exception):
            raise reply
        lapsed, due, fire = reply
        if lapsed:
            ids = [i for i in (r.decode(errors="replace") for r in lapsed) if keys.NAME.fullmatch(i)]
            junk = [i for i in lapsed if not keys.NAME.fullmatch(i.decode(errors="replace"))]
            if junk:
                connection.zrem(keys.active(queue), *junk)
            if ids:
                done = keys.run(connection, "recover",
                                [keys.active(queue), keys.queue(queue), keys.wake(queue), keys.failed(queue),
                                 *[keys.job(i, queue) for i in ids]],
                                [DEFAULT_LOST_RETRIES, queue, DEFAULT_FAILURE_TTL, DEFAULT_RESULT_TTL, *ids],
                                tag=keys.tag(queue))
                recovered += [keys.ref(i.decode(), keys.tag(queue)) for i in done]
        if due:
            promote(connection, queue, [i.decode(errors="replace") for i in due])
        if fire and firer is not None:
            firer.fire_due(queue, fire)
    if recovered:
        log.warning("re-queued or failed %d job(s) of lost workers: %s", len(recovered), " ".join(recovered))
        # those failed or canceled (lost too often): their dependents fail too. A worker that dies
        # right here leaves them deferred: the one gap in "released in the same step" (flow.py)
        flow.release(connection, recovered)
        callbacks.after_recovery(connection, recovered, firer.signer if firer is not None else None)
    return recovered


def promote(connection: Any, queue: str, ids: list[str]) -> int:
    """Move those of ``ids`` (scheduled on ``queue``) that are due to the back of the queue."""
    good = [i for i in ids if keys.NAME.fullmatch(i)]
    junk = [i for i in ids if not keys.NAME.fullmatch(i)]
    if junk:
        connection.zrem(keys.scheduled(queue), *junk)
    if not good:
        return 0
    return int(keys.run(connection, "promote",
                        [keys.scheduled(queue), keys.queue(queue), keys.wake(queue),
                         *[keys.job(i, queue) for i in good]], [queue, *good], tag=keys.tag(queue)))


def known_queues(connection: Any, own: Iterable[str]) -> list[str]:
    """The queues to sweep: those in ``keys.QUEUES`` (junk under that name: none) and ``own``."""
    import redis

    try:
        names = connection.smembers(keys.QUEUES)
    except redis.ResponseError:
        names = set()
    found = {n.decode(errors="replace") for n in names}
    return sorted({q for q in found if keys.NAME.fullmatch(q)} | set(own))


def sweep(connection: Any, queues: Iterable[str], lease_ms: int, quiet_ms: int,
          firer: Optional[Any] = None) -> list[str]:
    """One sweep of ``queues`` (one round trip, and more only where something is due)."""
    queues = list(queues)
    if not queues:
        return []
    replies = wire.send_grouped(connection, *commands(queues, lease_ms, quiet_ms))
    return handle(connection, queues, replies, firer)
